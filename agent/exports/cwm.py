"""CWM's trajectory dumps, out and back in: Learnt from facebookresearch/cwm: `cwm/rl/envs/api.py` (Transition), `cwm/rl/lib/dump_traj.py`
(`transition_to_dict`, `trajectory_to_dict`, `rollout_to_dict`), `cwm/rl/envs/dialog.py`
(how observations are rendered) and `cwm/rl/envs/envs/swerl_tool.py` (the SWE-RL environment
whose protocol this runner implements). A dump file is JSON Lines; each line is
``{"rollouts": [ROLLOUT, ...], "metrics": [...]}``; a ROLLOUT is ``{"traj": {"transitions":
[...], "truncation_return"?}, "data_src", "start_args", "begin_step", "end_step", "metrics",
"rl_task_args", "pivotal"}``; a transition (the "minimal" dump, without token ids) is
``{"action_str", "rewards", "observation_str", "terminal", "context_switch", "outcomes",
"info"}``. Mapping of one episode:

* transition 0 is the environment's start: empty ``action_str``; ``observation_str`` the whole
  rendered prompt (our step 1 ``prompt_delta``); ``info`` CWM's SWE-RL info dict
  (``source``, ``instance_id``, ``message``, ``eval_duration``, ``pred_patch``).
* transition k is our step k: ``action_str`` = ``raw_reply``; ``observation_str`` = the text
  the runner appended after the reply (our step k+1 ``prompt_delta``: end of turn, the
  observation message, the assistant header and ``<think>\\n``), or ``""`` when the step ended
  the episode; ``outcomes`` ``{"pass": false}`` as SWE-RL writes for every non-final step;
  ``info`` ``{"duration": seconds in the sandbox}``.
* ``start_args`` holds SWE-RL's episode arguments (``instance_id``, ``issue``, ``docker_url``
  = our image, ``repo_root_path`` = our workdir) plus ``repo`` and ``base_commit`` (SWE-bench's
  name); ``data_src`` is left at its "unknown" values (it names a dataset file and line).
* the episode's end is a ``terminal`` transition carrying ``outcomes.pass`` (the graded result;
  false when ungraded) and ``info.message``/``info.pred_patch`` (reason and submission). When
  our last step has an observation (an ending decided after it, e.g. context exhausted), the end
  is an extra terminal transition with an empty action, since CWM requires terminal transitions
  to have no observation. A trajectory without an ending (killed run) has no terminal transition,
  which is how CWM represents a truncated trajectory.

Assumptions where the public material is silent or tokens are needed: ``rewards`` is null
(CWM keeps one reward per action token, and we have no token ids; null is what a transition
without rewards holds); the leading ``<|eot_id|>`` of an observation is always written (CWM
omits it when the action's tokens already ended with that token, which text cannot tell), and
on import it is added back where missing so that ``prompt_delta`` keeps our invariant;
``rl_task_args.env_config`` is ``"swerl_tool_env"`` with the header's protocol as ``init_args``.

Lossless round trip: everything of ours that CWM's fields cannot carry, or that would not be
rebuilt identically from them, goes in ``info["cwm_runner"]`` (per transition: only the step
fields whose rebuilt value differs; transition 0 also the header's, the terminal transition the
ending's), so ours -> CWM -> ours gives back an equal Trajectory. Import of a foreign file
rebuilds what it can: prompts and issue from the first observation, the protocol from the
system prompt, tool calls by parsing each reply with our parser, observations by parsing the
rendered messages, submissions from the submission feedback, the ending from the terminal
transition (status from SWE-RL's messages: "Max turns reached", "Context size exceeded", else
``submitted`` when a patch was submitted, else ``error``); exit codes and timings it does not
have stay empty. Unknown fields are kept: a transition's CWM fields in ``Step.extra["cwm"]``,
the rollout's (``data_src``, ``rl_task_args``, ``start_args``, ...) in ``Header.extra["cwm"]``,
the terminal transition's in ``Ending.extra["cwm"]``; where the schema has no ``extra`` field,
the rollout's go to ``Ending.extra["cwm_rollout"]`` and per-step ones are dropped with a warning.

Layouts accepted by `read_cwm`: dump lines (``{"rollouts": [...]}``), single rollouts
(``{"traj": ...}``), trajectories (``{"transitions": [...]}``), and one transition per line
(a new episode starts after each terminal transition); also a whole file holding one JSON value
of any of these, or a list of them. `write_cwm` writes dump lines (``layout="rollouts"``) or one
transition per line (``layout="transitions"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.exports.common import CWM_RUNNER_KEY, ConvertError
from agent.protocol import prompts
from agent.protocol.render import (
    BEGIN_OF_TEXT,
    END_HEADER,
    EOT,
    START_HEADER,
    Message,
    assistant_prefix,
    render_message,
    render_prompt,
)
from tools.parser import parse_reply
from tools.syntax import DEFAULT_TOOL_NAMES, THINK_END
from traces.schema import Ending, Evaluation, Header, ModelInfo, ProtocolSettings, Step, ToolCall, Trajectory

log = structlog.get_logger()


class CWMTransition(BaseModel):
    """One transition of CWM's minimal dump (token ids dropped); unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    action_str: str | None = ""
    rewards: list[float] | None = None
    observation_str: str | None = ""
    terminal: bool = False
    context_switch: bool = False
    outcomes: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)


class CWMTrajectory(BaseModel):
    model_config = ConfigDict(extra="allow")

    transitions: list[CWMTransition]


class CWMDataSource(BaseModel):
    path: str = ""
    line_no: int = -1
    pos: int = -1


class CWMTaskConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    env_config: str = "swerl_tool_env"
    reward_fn: str = ""
    path: str | None = None
    init_args: dict[str, Any] | None = None
    samples_per_prompt: int | None = None
    metrics_spec: dict[str, list[str]] = Field(default_factory=dict)


class CWMRollout(BaseModel):
    model_config = ConfigDict(extra="allow")

    traj: CWMTrajectory
    data_src: CWMDataSource = Field(default_factory=CWMDataSource)
    start_args: dict[str, Any] = Field(default_factory=dict)
    begin_step: int = -1
    end_step: int = -1
    metrics: dict[str, Any] = Field(default_factory=dict)
    rl_task_args: CWMTaskConfig = Field(default_factory=CWMTaskConfig)
    pivotal: list[dict[str, Any]] | None = None


class CWMDumpLine(BaseModel):
    model_config = ConfigDict(extra="allow")

    rollouts: list[CWMRollout]
    metrics: list[dict[str, Any]] | None = None


# -- CWM: parsing rendered text -------------------------------------------------------------------

MESSAGE_RE = re.compile(re.escape(START_HEADER) + r"(.*?)" + re.escape(END_HEADER) + r"\n\n(.*?)" + re.escape(EOT),
                        re.DOTALL)
SUBMISSION_RE = re.compile(r"\A<output>\nThe following patch content is marked as your final submission:\n\n"
                           r"<submission>\n(.*)\n</submission>\n", re.DOTALL)
OUTPUT_RE = re.compile(r"\A<output>\n(.*)\n</output>\n\n<budget>\n", re.DOTALL)
TIMEOUT_RE = re.compile(r"after a (\d+(?:\.\d+)?)-second session timeout")
CONTEXT_RE = re.compile(r"constrained by a (\d+) total context window")
TURNS_RE = re.compile(r"for at most (\d+) turns")
TOOL_NAME_RE = re.compile(r"^<tool: ([a-zA-Z_]+)>$", re.MULTILINE)
ISSUE_RE = re.compile(r"<issue_description>\n(.*)\n</issue_description>", re.DOTALL)


def parse_messages(text: str) -> list[Message]:
    """The complete messages in a rendered stretch of CWM's chat layout (headers and eot tokens)."""
    return [Message(role=role, content=content) for role, content in MESSAGE_RE.findall(text)]


def observation_delta(step: Step) -> str:
    """What the runner appends after a step's reply: eot, the observation message, the assistant header."""
    if step.observation is None:
        return ""
    message = Message(role=step.observation_role or "user", content=step.observation)
    return EOT + render_message(message) + assistant_prefix()


def _tools_from(system_prompt: str) -> list[str]:
    names = list(dict.fromkeys(TOOL_NAME_RE.findall(system_prompt)))
    return names or list(DEFAULT_TOOL_NAMES)


def _protocol_from(system_prompt: str) -> ProtocolSettings:
    """The limits the system prompt announces (CWM's prompt states all of them)."""
    values: dict[str, Any] = {"tools": _tools_from(system_prompt)}
    if match := TIMEOUT_RE.search(system_prompt):
        values["timeout_s"] = float(match.group(1))
    if match := CONTEXT_RE.search(system_prompt):
        values["context_size"] = int(match.group(1))
    if match := TURNS_RE.search(system_prompt):
        values["max_turns"] = int(match.group(1))
    return ProtocolSettings(**values)


# -- CWM: rebuilding our records from transitions -------------------------------------------------


def _rebuild_header(first: CWMTransition, start_args: dict[str, Any], started_at: datetime | None) -> Header:
    messages = parse_messages(first.observation_str or "")
    system = next((m.content for m in messages if m.role == "system"), "")
    user = next((m.content for m in messages if m.role == "user"), "")
    issue = start_args.get("issue")
    if not isinstance(issue, str):
        match = ISSUE_RE.search(user)
        issue = match.group(1) if match else ""
    instance = first.info.get("instance_id") or start_args.get("instance_id") or "cwm-episode"
    values: dict[str, Any] = dict(
        run_id="cwm-import", instance_id=str(instance), repo=str(start_args.get("repo", "")),
        commit=str(start_args.get("base_commit", "")), image=str(start_args.get("docker_url", "")),
        workdir=str(start_args.get("repo_root_path", prompts.DEFAULT_REPO_ROOT)),
        model=ModelInfo(kind="completions", name="cwm"), protocol=_protocol_from(system),
        system_prompt=system, user_prompt=user, issue=issue,
    )
    if started_at is not None:
        values["started_at"] = started_at
    return Header(**values)


def _split_observation(text: str) -> tuple[str | None, str | None]:
    """(role, content) of the observation message in a transition's observation_str."""
    messages = parse_messages(text)
    if not messages:
        return None, None
    return messages[0].role, messages[0].content


def _rebuild_step(index: int, tr: CWMTransition, previous_observation: str, header: Header, submitted: bool) -> Step:
    """Our step from one transition; `submitted`: a patch was accepted earlier in the episode."""
    reply = tr.action_str or ""
    delta = previous_observation
    if index > 1 and delta and not delta.startswith(EOT):
        delta = EOT + delta  # CWM leaves the eot token in the action's tokens; our delta carries it
    step = Step(index=index, prompt_delta=delta, raw_reply=reply, started_at=header.started_at)
    role, content = _split_observation(tr.observation_str or "")
    parsed = parse_reply(reply, header.protocol.tools)
    if parsed.call is not None:
        step.tool_call = ToolCall(name=parsed.call.name, body=parsed.call.body)
    elif role is not None:
        step.parse_error = content if role == "user" else parsed.error
    elif not (tr.terminal and submitted):
        step.parse_error = parsed.error
    step.observation, step.observation_role = content, role
    if content is not None and role is not None and role.startswith("tool: "):
        if step.tool_call is not None and step.tool_call.name == "submit" and (match := SUBMISSION_RE.match(content)):
            step.submission = match.group(1)
            step.output = step.submission
        elif match := OUTPUT_RE.match(content):
            step.output = match.group(1)
    duration = tr.info.get("duration")
    if isinstance(duration, (int, float)) and not tr.terminal:
        step.command_duration_s = float(duration)
    return step


def _ending_status(message: str, submission: str | None) -> str:
    if message.startswith(prompts.MAX_TURNS_REASON):
        return "max_turns"
    if message.startswith(prompts.CONTEXT_EXCEEDED_REASON):
        return "context_exceeded"
    if submission is not None and not message.startswith(("Timeout", "Tool call format error")):
        return "submitted"
    return "error"


def _rebuild_ending(tr: CWMTransition, steps: list[Step], header: Header) -> Ending:
    info = tr.info
    last_submission = next((s.submission for s in reversed(steps) if s.submission is not None), None)
    patch = info.get("pred_patch") if isinstance(info.get("pred_patch"), str) else last_submission
    message = str(info.get("message") or "")
    status = _ending_status(message, patch)
    final = None
    if status == "submitted" and steps and steps[-1].tool_call is None:
        final = steps[-1].raw_reply.split(THINK_END, 1)[-1].strip()
    evaluation = None
    duration = info.get("eval_duration")
    if isinstance(duration, (int, float)) and duration >= 0 and "pass" in tr.outcomes:
        evaluation = Evaluation(resolved=bool(tr.outcomes["pass"]), log=message)
    reason = prompts.SUBMITTED_REASON if status == "submitted" else message
    ended_at = steps[-1].started_at if steps else header.started_at
    return Ending(status=status, reason=reason, steps=len(steps), submission=patch, final_response=final,
                  evaluation=evaluation, ended_at=ended_at,
                  total_prompt_tokens=sum(s.prompt_tokens or 0 for s in steps),
                  total_completion_tokens=sum(s.completion_tokens or 0 for s in steps))


# -- CWM: export ----------------------------------------------------------------------------------


def _differences(actual: BaseModel, rebuilt: BaseModel) -> dict[str, Any]:
    """The fields of `actual` (JSON values) that `rebuilt` did not reproduce: what must travel along."""
    mine, theirs = actual.model_dump(mode="json"), rebuilt.model_dump(mode="json")
    return {name: value for name, value in mine.items() if theirs.get(name) != value}


def _apply(model: BaseModel, overrides: dict[str, Any]) -> BaseModel:
    if not overrides:
        return model
    return type(model).model_validate({**model.model_dump(mode="json"), **overrides})


def _swerl_info(header: Header, message: str = "", pred_patch: str | None = None) -> dict[str, Any]:
    """The info dict CWM's SWE-RL environment writes on its first and last transitions."""
    return {"source": "cwm-runner", "instance_id": header.instance_id, "message": message,
            "eval_duration": -1.0, "pred_patch": pred_patch}


def to_cwm(trajectory: Trajectory) -> CWMRollout:
    """Our trajectory as one CWM rollout (see the module docstring for the mapping)."""
    header, steps, ending = trajectory.header, trajectory.steps, trajectory.ending
    prompt = steps[0].prompt_delta if steps else render_prompt(
        [Message(role="system", content=header.system_prompt), Message(role="user", content=header.user_prompt)])
    first = CWMTransition(action_str="", rewards=[], observation_str=prompt, info=_swerl_info(header))
    transitions = [first]
    for position, step in enumerate(steps):
        following = steps[position + 1].prompt_delta if position + 1 < len(steps) else observation_delta(step)
        terminal = ending is not None and position == len(steps) - 1 and step.observation is None
        transitions.append(CWMTransition(action_str=step.raw_reply, observation_str=following, terminal=terminal,
                                         outcomes={"pass": False}, info={"duration": step.command_duration_s or 0.0}))
    if ending is not None and not transitions[-1].terminal:
        transitions.append(CWMTransition(action_str="", observation_str="", terminal=True, info={
            CWM_RUNNER_KEY: {"ending_only": True}}))
    if ending is not None:
        last = transitions[-1]
        last.outcomes = {"pass": bool(ending.evaluation.resolved) if ending.evaluation else False}
        kept = {CWM_RUNNER_KEY: last.info[CWM_RUNNER_KEY]} if CWM_RUNNER_KEY in last.info else {}
        last.info = {**_swerl_info(header, ending.reason, ending.submission), **kept}
    # Attach what a rebuild would not reproduce, in the order the import rebuilds (header, steps,
    # ending: each depends on the previous), so the import is exact.
    runner_info: dict[str, Any] = {}
    first.info[CWM_RUNNER_KEY] = runner_info
    runner_info["header"] = _differences(header, _from_transitions(transitions, {}, keep_foreign=False).header)
    rebuilt = _from_transitions(transitions, {}, keep_foreign=False)
    for step, again, tr in zip(steps, rebuilt.steps, transitions[1:]):
        changed = _differences(step, again)
        if changed:
            tr.info.setdefault(CWM_RUNNER_KEY, {})["step"] = changed
    if ending is not None:
        again_ending = _from_transitions(transitions, {}, keep_foreign=False).ending
        assert again_ending is not None  # the last transition is terminal
        transitions[-1].info.setdefault(CWM_RUNNER_KEY, {})["ending"] = _differences(ending, again_ending)
    protocol = header.protocol
    task = CWMTaskConfig(env_config="swerl_tool_env", init_args={
        "context_size": protocol.context_size, "session_timeout": protocol.timeout_s,
        "max_turns": protocol.max_turns, "max_action_len": protocol.max_reply_tokens,
        "plugins": "edit" in protocol.tools})
    # SWE-RL's episode arguments, plus SWE-bench's names for where the repository came from.
    start_args = {"instance_id": header.instance_id, "issue": header.issue, "docker_url": header.image,
                  "repo_root_path": header.workdir, "repo": header.repo, "base_commit": header.commit}
    return CWMRollout(traj=CWMTrajectory(transitions=transitions), start_args=start_args, rl_task_args=task)


def write_cwm(trajectories: Iterable[Trajectory], path: Path,
              layout: Literal["rollouts", "transitions"] = "rollouts") -> int:
    """Write CWM dump lines (one per trajectory) or one transition per line; returns the episode count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for trajectory in trajectories:
            rollout = to_cwm(trajectory)
            if layout == "rollouts":
                line = CWMDumpLine(rollouts=[rollout], metrics=[rollout.metrics])
                handle.write(line.model_dump_json() + "\n")
            else:
                for tr in rollout.traj.transitions:
                    handle.write(tr.model_dump_json() + "\n")
            count += 1
    return count


# -- CWM: import ----------------------------------------------------------------------------------


def _has_field(model: type[BaseModel], name: str) -> bool:
    return name in model.model_fields


def _cwm_fields(tr: CWMTransition) -> dict[str, Any]:
    """A foreign transition's own data, for the step's or ending's extras."""
    data = tr.model_dump(mode="json", exclude={"action_str", "observation_str"})
    data["info"] = {k: v for k, v in tr.info.items() if k != CWM_RUNNER_KEY}
    return data


def _from_transitions(transitions: list[CWMTransition], rollout_extra: dict[str, Any], keep_foreign: bool = True,
                      started_at: datetime | None = None) -> Trajectory:
    """Rebuild a Trajectory, applying the exact values our exporter attached (`info["cwm_runner"]`).

    `keep_foreign`: keep a foreign file's CWM fields in the extras (off while exporting, when the
    transitions are our own and only the rebuild itself is wanted).
    """
    if not transitions:
        raise ConvertError("a CWM trajectory needs at least its start transition")
    first, rest = transitions[0], transitions[1:]
    if first.action_str:
        raise ConvertError("the first transition has an action; CWM's start transition has none")
    runner = first.info.get(CWM_RUNNER_KEY) or {}
    foreign = keep_foreign and not runner
    start_args = rollout_extra.get("start_args") if isinstance(rollout_extra.get("start_args"), dict) else {}
    header = _rebuild_header(first, start_args or {}, started_at)
    if runner.get("header"):
        header = _apply(header, runner["header"])  # type: ignore[assignment]
    rollout_fields = rollout_extra if foreign and rollout_extra else {}
    if rollout_fields and _has_field(Header, "extra"):
        header = _apply(header, {"extra": {"cwm": rollout_fields}})  # type: ignore[assignment]
        rollout_fields = {}
    steps: list[Step] = []
    submitted = False
    previous = first.observation_str or ""
    dropped = 0
    for index, tr in enumerate(rest, start=1):
        info = tr.info.get(CWM_RUNNER_KEY) or {}
        if tr.terminal and info.get("ending_only"):
            break
        step = _rebuild_step(index, tr, previous, header, submitted)
        if info.get("step"):
            step = _apply(step, info["step"])  # type: ignore[assignment]
        if foreign:
            if _has_field(Step, "extra"):
                step = _apply(step, {"extra": {"cwm": _cwm_fields(tr)}})  # type: ignore[assignment]
            else:
                dropped += 1
        submitted = submitted or step.submission is not None
        steps.append(step)
        previous = tr.observation_str or ""
    if dropped:
        log.warning("convert.cwm_step_fields_dropped", steps=dropped,
                    hint="traces.schema.Step has no `extra` field to keep CWM's per-transition data")
    ending = None
    last = transitions[-1]
    if last.terminal and len(transitions) > 1:
        ending = _rebuild_ending(last, steps, header)
        info = last.info.get(CWM_RUNNER_KEY) or {}
        if "ending" in info:
            ending = _apply(ending, info["ending"])  # type: ignore[assignment]
        if foreign:
            extra = {"cwm": _cwm_fields(last), **({"cwm_rollout": rollout_fields} if rollout_fields else {})}
            ending = _apply(ending, {"extra": extra})  # type: ignore[assignment]
    elif rollout_fields:
        log.warning("convert.cwm_rollout_fields_dropped",
                    hint="the trajectory has no ending and traces.schema.Header has no `extra` field")
    return Trajectory(header=header, steps=steps, ending=ending)


def from_cwm(rollout: CWMRollout | CWMTrajectory | list[CWMTransition]) -> Trajectory:
    """One CWM episode (a rollout, a trajectory, or its transitions) as our Trajectory."""
    if isinstance(rollout, CWMRollout):
        extra = rollout.model_dump(mode="json", exclude={"traj"})
        truncation = getattr(rollout.traj, "truncation_return", None)
        if truncation is not None:
            extra["truncation_return"] = truncation
        return _from_transitions(rollout.traj.transitions, extra)
    transitions = rollout.transitions if isinstance(rollout, CWMTrajectory) else rollout
    extra = {}
    if isinstance(rollout, CWMTrajectory) and rollout.model_extra:
        extra = dict(rollout.model_extra)
    return _from_transitions(transitions, extra)


def _episodes(value: Any, where: str) -> Iterator[CWMRollout | CWMTrajectory | list[CWMTransition]]:
    """The episodes one JSON value holds, whatever the layout (a bare transition is yielded as a list)."""
    try:
        if isinstance(value, list):
            for item in value:
                yield from _episodes(item, where)
        elif isinstance(value, dict) and "rollouts" in value:
            yield from CWMDumpLine.model_validate(value).rollouts
        elif isinstance(value, dict) and "traj" in value:
            yield CWMRollout.model_validate(value)
        elif isinstance(value, dict) and "transitions" in value:
            yield CWMTrajectory.model_validate(value)
        elif isinstance(value, dict) and ("action_str" in value or "observation_str" in value):
            yield [CWMTransition.model_validate(value)]
        else:
            keys = ", ".join(sorted(value)[:6]) if isinstance(value, dict) else type(value).__name__
            raise ConvertError(f"{where}: not a CWM rollout, trajectory or transition (found {keys})")
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConvertError(f"{where}: {field}: {first['msg']}") from None


def _is_start(tr: CWMTransition) -> bool:
    return not tr.action_str and not tr.terminal and (tr.observation_str or "").startswith(BEGIN_OF_TEXT)


def read_cwm(path: Path | str) -> list[Trajectory]:
    """Every episode in a CWM file (see the module docstring for the layouts accepted)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConvertError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        values = [(f"{path}", json.loads(text))]
    except json.JSONDecodeError:
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                values.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ConvertError(f"{path}:{number}: not JSON ({error.msg})") from None
    trajectories: list[Trajectory] = []
    pending: list[CWMTransition] = []  # loose transitions (one per line) of the episode being read

    def flush() -> None:
        if pending:
            trajectories.append(from_cwm(list(pending)))
            pending.clear()

    for where, value in values:
        for episode in _episodes(value, where):
            if not isinstance(episode, list):
                flush()
                trajectories.append(from_cwm(episode))
                continue
            for tr in episode:
                if _is_start(tr):  # a start transition opens a new episode
                    flush()
                pending.append(tr)
                if tr.terminal:
                    flush()
    flush()
    if not trajectories:
        raise ConvertError(f"{path}: no CWM episode found")
    return trajectories

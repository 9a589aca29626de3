"""SWE-agent's ``.traj``. Learnt from SWE-agent's `sweagent/types.py` and `DefaultAgent.get_trajectory_data`: a JSON
object with ``trajectory`` (one entry per model call: ``action``, ``observation``, ``response``,
``thought``, ``execution_time``, ``state``, ``query``, ``extra_info``), ``history`` (the
messages: ``role``, ``content``, ``message_type``, ``agent``, and ``thought``/``action`` on
assistant messages), ``info`` (``submission``, ``exit_status``, ``model_stats`` with
``instance_cost``, ``tokens_sent``, ``tokens_received``, ``api_calls``), ``replay_config`` and
``environment``. Mapping: ``response`` is the raw reply; ``thought`` the reply without its tool
block (reasoning and prose); ``action`` the bash command for `bash`, else the literal
``<tool: NAME>`` block; ``observation`` is the tool's raw output as SWE-agent records the
environment's output (the parse error for a format error), while ``history`` holds the exact
observation message the model saw (budget block included); ``state`` has ``working_dir``;
``query`` is left empty (the full prompt per step would make the file quadratic; it is
``prompt_delta`` accumulated). ``exit_status``: ``submitted``, ``exit_context``,
``exit_cost`` (turn limit: SWE-agent's call limit ends the same way), ``exit_total_execution_time``
(wall clock), ``exit_error`` (error, interrupted, reply too long); an episode that submitted
before ending otherwise is ``submitted (exit_...)`` as SWE-agent's autosubmission writes it.
``instance_cost`` is 0 (a self-hosted model has no price); ``replay_config`` is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.exports.common import CWM_RUNNER_KEY
from tools.syntax import THINK_END, TOOL_CALL_RE
from traces.schema import Ending, Step, Trajectory


class SWEAgentStep(BaseModel):
    action: str
    observation: str
    response: str
    thought: str
    execution_time: float
    state: dict[str, str] = Field(default_factory=dict)
    query: list[dict[str, Any]] = Field(default_factory=list)
    extra_info: dict[str, Any] = Field(default_factory=dict)


class SWEAgentHistoryItem(BaseModel):
    role: str
    content: str
    message_type: str
    agent: str = "main"
    thought: str | None = None
    action: str | None = None


class SWEAgentModelStats(BaseModel):
    instance_cost: float = 0.0
    tokens_sent: int = 0
    tokens_received: int = 0
    api_calls: int = 0


class SWEAgentInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    submission: str | None = None
    exit_status: str | None = None
    model_stats: SWEAgentModelStats = Field(default_factory=SWEAgentModelStats)


class SWEAgentTrajectory(BaseModel):
    trajectory: list[SWEAgentStep]
    history: list[SWEAgentHistoryItem]
    info: SWEAgentInfo
    replay_config: str | None = None
    environment: str = ""


SWE_AGENT_EXIT_STATUS = {
    "submitted": "submitted",
    "context_exceeded": "exit_context",
    "max_turns": "exit_cost",
    "wall_clock": "exit_total_execution_time",
    "reply_too_long": "exit_error",
    "error": "exit_error",
    "interrupted": "exit_error",
}


def split_reply(step: Step) -> tuple[str, str]:
    """(thought, action) of a reply: the text without its tool block, and the action as SWE-agent
    shows one (a bash command as is, another tool as its literal block)."""
    reasoning, _, answer = step.raw_reply.partition(THINK_END)
    match = TOOL_CALL_RE.search(answer) if step.tool_call is not None else None
    rest = (answer[: match.start()] + answer[match.end():]) if match else answer
    thought = "\n\n".join(part.strip() for part in (reasoning, rest) if part.strip())
    call = step.tool_call
    if call is None:
        return thought, ""
    action = call.body if call.name == "bash" else f"<tool: {call.name}>\n{call.body}\n</tool>"
    return thought, action


def _exit_status(ending: Ending | None) -> str | None:
    if ending is None:
        return None
    status = SWE_AGENT_EXIT_STATUS[ending.status]
    if ending.submission is not None and ending.status != "submitted":
        return f"submitted ({status})"
    return status


def to_swe_agent(trajectory: Trajectory) -> SWEAgentTrajectory:
    """Our trajectory as a SWE-agent `.traj` document."""
    header, ending = trajectory.header, trajectory.ending
    steps: list[SWEAgentStep] = []
    history = [
        SWEAgentHistoryItem(role="system", content=header.system_prompt, message_type="system"),
        SWEAgentHistoryItem(role="user", content=header.user_prompt, message_type="observation"),
    ]
    for step in trajectory.steps:
        thought, action = split_reply(step)
        observation = step.output if step.output is not None else (step.observation or "")
        extra = step.model_dump(mode="json", include={
            "index", "finish_reason", "parse_error", "exit_code", "timed_out", "overflowed", "session_died",
            "model_latency_s", "prompt_tokens", "completion_tokens", "cached_tokens", "diff_stat", "submission",
        })
        if step.tool_call is not None:
            extra["tool"] = step.tool_call.model_dump()
        steps.append(SWEAgentStep(
            action=action, observation=observation, response=step.raw_reply, thought=thought,
            execution_time=step.command_duration_s or 0.0,
            state={"working_dir": step.cwd} if step.cwd else {}, extra_info=extra,
        ))
        history.append(SWEAgentHistoryItem(role="assistant", content=step.raw_reply, message_type="action",
                                           thought=thought, action=action))
        if step.observation is not None:
            history.append(SWEAgentHistoryItem(role="user", content=step.observation, message_type="observation"))
    sent = ending.total_prompt_tokens if ending else sum(s.prompt_tokens or 0 for s in trajectory.steps)
    received = ending.total_completion_tokens if ending else sum(s.completion_tokens or 0 for s in trajectory.steps)
    # What SWE-agent has no field for goes under a key of our own (SWE-agent's info is open-ended).
    ours = {"run_id": header.run_id, "instance_id": header.instance_id, "status": ending.status if ending else None,
            "reason": ending.reason if ending else None, "model": header.model.model_dump(), "repo": header.repo,
            "commit": header.commit}
    info = SWEAgentInfo(
        submission=ending.submission if ending else None,
        exit_status=_exit_status(ending),
        model_stats=SWEAgentModelStats(tokens_sent=sent, tokens_received=received, api_calls=len(trajectory.steps)),
        **{CWM_RUNNER_KEY: ours},
    )
    return SWEAgentTrajectory(trajectory=steps, history=history, info=info, replay_config=None,
                              environment=header.image)


def write_swe_agent(trajectory: Trajectory, path: Path) -> None:
    Path(path).write_text(json.dumps(to_swe_agent(trajectory).model_dump(mode="json", exclude_none=False),
                                     indent=2) + "\n", encoding="utf-8")

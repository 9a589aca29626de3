"""Replay that proves a trajectory: re-run a recorded episode and compare it with the recording.

`verify(path)` takes a trajectory file, starts a FRESH sandbox of the image it names, places the same
repository at the same commit in it, and runs the real pipeline (`agent.episode.solve.solve`, hence
`agent.episode.loop.run_episode`, the tools and the prompts) with the replay model re-issuing the recorded
replies, into a temporary trajectory. It then compares the two step by step: the system and user
prompts, and for every step the tool call, the observation's role and text (after normalisation, see
`traces.normalize`) and the exit code; then the ending's status and submission. The first divergence
is reported with its step, its field and a unified diff of recorded against replayed; counts say how
much matched. A recording that verifies shows that its observations are what this runner, this image
and this repository produce for those replies, so the trajectory can be trusted as evidence.

Why through `solve` and not a loop of our own: a verification must exercise exactly the code a real
run does (repository preparation and history pruning, prompt construction and truncation, the
session protocol), otherwise it proves a copy of the runner rather than the runner.

What is compared and what is not:

* Compared: `header.system_prompt`, `header.user_prompt`; per step `tool_call` (or the parse error
  when there was none), `observation_role`, `observation`, `exit_code` (unless the recording lacks
  it, as trajectories imported from CWM's format do); `ending.status` and `ending.submission`.
* Not compared: timings, token counts (the replay model hands back the recorded ones, so budgets and
  context limits are those of the recording), `prompt_delta` (it only repeats the previous
  observation), `diff_stat`, `cwd`, `output` (contained in the observation).
* Endings that the loop does not decide from the replies alone (`wall_clock`, `interrupted`,
  `error`, `reply_too_long`, and a `context_exceeded` raised by the server before a step) cannot be
  reproduced: the replay runs out of recorded replies instead. Their steps are still verified and a
  note says the ending was not.
* A torn or unfinished recording (killed runner) verifies its complete steps; the note says that
  its ending could not be.

Repository identity: for a git repository (or URL) the recorded commit is checked out, and a
repository without that commit is an error (`CannotReplay`). A plain directory is snapshotted into
a fresh one-commit repository whose id depends only on its files (fixed dates, see `agent.episode.repo`), so
a snapshot id different from the recorded one means the files differ: the report carries a warning
and the step comparison shows where the difference became visible. Trajectories recorded before
snapshots were made deterministic always warn.

Exit codes for `agent replay --verify`: 0 identical (after normalisation), 1 divergence, 2 cannot
replay (`CannotReplay`: unreadable file, missing repository or commit, missing image, no steps).
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import git
from pydantic import BaseModel, Field

from agent.episode.loop import LoopConfig
from agent.episode.repo import URL_PATTERN, RepoError
from agent.episode.solve import SolveRequest, solve
from agent.models.base import ModelError
from agent.models.replay import ReplayModel
from images.build import BASE_REPOSITORY, ImageBuildError, docker_client, ensure_base_image, image_exists
from sandbox.base import Sandbox, SandboxConfig, SandboxError
from sandbox.docker import DockerSandbox
from traces.normalize import DEFAULT, Normalizer, normalize
from traces.recorder import TrajectoryFormatError, read_trajectory
from traces.schema import Ending, Header, Step, Trajectory

# Endings decided outside the replies (clock, signals, server errors): a replay cannot reproduce them.
NOT_REPLAYED_ENDINGS = {
    "wall_clock": "the wall clock",
    "interrupted": "an interruption",
    "error": "an error outside the loop",
    "reply_too_long": "the model server",
}
EXIT_IDENTICAL, EXIT_DIVERGED, EXIT_CANNOT_REPLAY = 0, 1, 2


class CannotReplay(RuntimeError):
    """The episode cannot be re-run (exit code 2); the message says what is missing and what to pass."""


class Divergence(BaseModel):
    """One field that differs between the recording and the replay."""

    step: int | None = Field(description="1-based step index; None for the header or the ending")
    field: str
    recorded: str
    replayed: str
    diff: str = Field(description="unified diff, recorded -> replayed, of the compared (normalised) text")

    @property
    def where(self) -> str:
        return f"step {self.step} {self.field}" if self.step is not None else self.field


class VerifyReport(BaseModel):
    """What `verify` found; `ok` when nothing that could be compared differed."""

    trajectory: Path
    repo: str
    image: str
    recorded_commit: str
    replayed_commit: str
    repo_warning: str | None = None
    normalizers: list[str] = Field(default_factory=list)
    steps_recorded: int = 0
    steps_replayed: int = 0
    steps_compared: int = 0
    steps_identical: int = Field(default=0, description="byte-identical in every compared field")
    steps_normalized: int = Field(default=0, description="identical only after normalisation")
    steps_diverged: int = 0
    recorded_status: str | None = None
    replayed_status: str | None = None
    ending_checked: bool = False
    divergences: list[Divergence] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    replay_path: Path | None = Field(default=None, description="the replayed trajectory, when kept")

    @property
    def ok(self) -> bool:
        return not self.divergences

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    @property
    def exit_code(self) -> int:
        return EXIT_IDENTICAL if self.ok else EXIT_DIVERGED

    def render(self, all_diffs: bool = False) -> str:
        """A human-readable report: verdict, summary counts, notes, then the first divergence's diff."""
        verdict = "IDENTICAL" if self.ok else f"DIVERGED at {self.first.where}"  # type: ignore[union-attr]
        lines = [f"verify {self.trajectory}: {verdict}"]
        commit = self.replayed_commit[:12] or "?"
        lines.append(f"  repository  {self.repo} @ {commit}")
        lines.append(f"  image       {self.image}")
        lines.append(
            f"  steps       {self.steps_recorded} recorded, {self.steps_replayed} replayed, "
            f"{self.steps_compared} compared: {self.steps_identical} identical, "
            f"{self.steps_normalized} identical after normalisation, {self.steps_diverged} diverged"
        )
        ending = (f"{self.recorded_status} -> {self.replayed_status}" if self.ending_checked
                  else f"not verified (recorded: {self.recorded_status or 'none'})")
        lines.append(f"  ending      {ending}")
        lines.append(f"  normalisers {', '.join(self.normalizers) or 'none (strict)'}")
        if self.repo_warning:
            lines.append(f"warning: {self.repo_warning}")
        lines.extend(f"note: {note}" for note in self.notes)
        if self.divergences:
            others = [d.where for d in self.divergences[1:]]
            if others:
                shown = ", ".join(others[:10]) + (f", ... ({len(others) - 10} more)" if len(others) > 10 else "")
                lines.append(f"also differs: {shown}")
            for divergence in self.divergences if all_diffs else self.divergences[:1]:
                lines.append("")
                lines.append(divergence.diff.rstrip("\n"))
        return "\n".join(lines)


# -- locating what the recording ran on ---------------------------------------------------------


def resolve_repo(spec: str, trajectory_dir: Path) -> str:
    """A URL as is; a path as given (absolute, or relative to the working directory), else relative
    to the trajectory's directory (bundled examples record `repo` next to the file)."""
    if not spec:
        raise CannotReplay("the trajectory records no repository; pass --repo PATH_OR_GIT_URL")
    if URL_PATTERN.match(spec):
        return spec
    given = Path(spec).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, trajectory_dir / given]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve())
    looked = " or ".join(str(c) for c in candidates)
    raise CannotReplay(f"repository {spec!r} not found (looked for {looked}); pass --repo PATH_OR_GIT_URL")


def _is_repository_top(path: str) -> bool:
    """True for a URL or the top directory of a git work tree: those are checked out at the commit."""
    if URL_PATTERN.match(path):
        return True
    try:
        top = git.Repo(path, search_parent_directories=True).working_tree_dir
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False
    return top is not None and Path(top).resolve() == Path(path).resolve()


# -- comparing ------------------------------------------------------------------------------------


def unified_diff(recorded: str, replayed: str, label: str) -> str:
    lines = difflib.unified_diff(
        recorded.splitlines(), replayed.splitlines(),
        fromfile=f"recorded {label}", tofile=f"replayed {label}", lineterm="",
    )
    return "\n".join(lines) + "\n"


def _call_text(step: Step) -> str:
    if step.tool_call is not None:
        return f"<tool: {step.tool_call.name}>\n{step.tool_call.body}\n</tool>"
    if step.parse_error is not None:
        return f"(no tool call: {step.parse_error})"
    return "(no tool call: final response)"


def _compared_fields(step: Step) -> list[tuple[str, str, bool]]:
    """(field, text, normalise?) in the order a divergence is looked for."""
    return [
        ("tool_call", _call_text(step), False),
        ("observation_role", str(step.observation_role), False),
        ("observation", step.observation if step.observation is not None else "(none)", True),
        ("exit_code", str(step.exit_code), False),
    ]


def _step_summary(step: Step) -> str:
    return f"{_call_text(step)}\n{step.observation or ''}"


def compare_steps(
    recorded: Sequence[Step], replayed: Sequence[Step], normalizers: Sequence[Normalizer], report: VerifyReport
) -> None:
    """Fill the report's counts and step divergences."""
    unknown_exit_codes = 0
    for rec, rep in zip(recorded, replayed):
        report.steps_compared += 1
        exact, diverged = True, False
        for (name, before, squash), (_, after, _) in zip(_compared_fields(rec), _compared_fields(rep)):
            if before == after:
                continue
            if name == "exit_code" and rec.exit_code is None and rec.tool_call is not None:
                unknown_exit_codes += 1  # imported trajectories (CWM's format) carry no exit codes
                continue
            exact = False
            if squash:
                before, after = normalize(before, normalizers), normalize(after, normalizers)
                if before == after:
                    continue
            diverged = True
            label = f"step {rec.index} {name}"
            report.divergences.append(Divergence(step=rec.index, field=name, recorded=before, replayed=after,
                                                 diff=unified_diff(before, after, label)))
        if diverged:
            report.steps_diverged += 1
        elif exact:
            report.steps_identical += 1
        else:
            report.steps_normalized += 1
    if unknown_exit_codes:
        report.notes.append(f"{unknown_exit_codes} recorded tool calls have no exit code (an imported trajectory?): "
                            "their exit codes were not compared")
    if len(replayed) < len(recorded):
        missing = recorded[len(replayed)]
        end = "its end" if not replayed else f"step {replayed[-1].index}"
        text = f"(the replay ended after {end})"
        report.divergences.append(Divergence(step=missing.index, field="step", recorded=_step_summary(missing),
                                             replayed=text, diff=unified_diff(_step_summary(missing), text,
                                                                              f"step {missing.index}")))
        report.steps_diverged += len(recorded) - len(replayed)
    elif len(replayed) > len(recorded):
        extra = replayed[len(recorded)]
        text = "(the recording ended before this step)"
        report.divergences.append(Divergence(step=extra.index, field="step", recorded=text,
                                             replayed=_step_summary(extra),
                                             diff=unified_diff(text, _step_summary(extra), f"step {extra.index}")))


def compare_endings(recorded: Trajectory, replayed: Trajectory, ran_out: bool, report: VerifyReport) -> None:
    """Compare status and submission when the recorded ending is one the replies decide.

    `ran_out`: the replay asked for more replies than were recorded (and ended with an error).
    """
    end: Ending | None = recorded.ending
    complete = len(recorded.steps)
    if end is None:
        if recorded.torn_tail:
            report.notes.append(
                f"the file ends in a partial line (a run killed while writing): its {complete} complete steps "
                "were replayed and compared; the step being written and the ending cannot be verified"
            )
        else:
            report.notes.append(
                f"the recording has no end record (the run was killed): its {complete} steps were replayed "
                "and compared; the ending cannot be verified"
            )
        return
    same_length = len(replayed.steps) == complete
    if end.status in NOT_REPLAYED_ENDINGS:
        report.notes.append(
            f"the recording ended with '{end.status}' ({end.reason or 'no reason given'}), decided by "
            f"{NOT_REPLAYED_ENDINGS[end.status]}, not by the replies: its steps were verified, its ending cannot be"
        )
        return
    replay_end = replayed.ending
    if end.status == "context_exceeded" and same_length and ran_out:
        report.notes.append(
            "the recording ended with 'context_exceeded' reported by the model server before another reply; "
            "the replay has no server, so that ending cannot be verified (every step was)"
        )
        return
    report.ending_checked = True
    replayed_status = replay_end.status if replay_end else "(none)"
    if end.status != replayed_status:
        text_a = f"{end.status}: {end.reason}"
        text_b = f"{replayed_status}: {replay_end.reason if replay_end else ''}"
        report.divergences.append(Divergence(step=None, field="ending.status", recorded=text_a, replayed=text_b,
                                             diff=unified_diff(text_a, text_b, "ending.status")))
    submitted_a = end.submission if end.submission is not None else "(no submission)"
    submitted_b = (replay_end.submission if replay_end and replay_end.submission is not None
                   else "(no submission)")
    if submitted_a != submitted_b:
        report.divergences.append(Divergence(step=None, field="ending.submission", recorded=submitted_a,
                                             replayed=submitted_b,
                                             diff=unified_diff(submitted_a, submitted_b, "ending.submission")))


def compare_prompts(recorded: Trajectory, replayed: Trajectory, report: VerifyReport) -> None:
    for name in ("system_prompt", "user_prompt"):
        before, after = getattr(recorded.header, name), getattr(replayed.header, name)
        if before != after:
            field = f"header.{name}"
            report.divergences.append(Divergence(step=None, field=field, recorded=before, replayed=after,
                                                 diff=unified_diff(before, after, field)))


# -- the verification -----------------------------------------------------------------------------


def load(trajectory_path: Path | str) -> Trajectory:
    """Read a trajectory for replay, turning every reading problem into CannotReplay."""
    try:
        recorded = read_trajectory(Path(trajectory_path))
    except TrajectoryFormatError as error:
        raise CannotReplay(f"cannot read the trajectory: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CannotReplay(f"cannot read the trajectory {trajectory_path}: {error}") from None
    if not recorded.steps:
        raise CannotReplay(f"{trajectory_path} has no complete step to replay")
    return recorded


def _available_image(recorded: str) -> str:
    """The recorded image, or this machine's base image when the recording names an older base build.

    Base images are tagged by a hash of their recipe, so a recording made before the recipe changed
    names a tag this machine never built; the current base image is its successor.
    """
    if not recorded.startswith(BASE_REPOSITORY + ":"):
        return recorded
    try:
        client = docker_client()
        if image_exists(client, recorded):
            return recorded
        return ensure_base_image()
    except ImageBuildError:
        return recorded


def _docker_image_of(header: Header) -> str:
    """The Docker image to replay in: the recorded one, or for a bubblewrap recording the image its
    root filesystem was exported from (the same files, so the same observations)."""
    if header.sandbox_backend == "bwrap":
        return header.image_source
    return header.image


def verify(
    trajectory_path: Path | str,
    *,
    repo: str | None = None,
    image: str | None = None,
    normalizers: Sequence[Normalizer] = DEFAULT,
    open_sandbox: Callable[[SandboxConfig], Sandbox] = DockerSandbox,
    output: Path | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> VerifyReport:
    """Re-run the recorded episode in a fresh sandbox and compare it with the recording.

    `repo` and `image` override the header's; `output` keeps the replayed run's files (trajectory,
    patch, sandbox diff) in that directory instead of a temporary one. Raises CannotReplay when the
    episode cannot be re-run; a divergence is not an exception but the report's content.
    """
    path = Path(trajectory_path)
    recorded = load(path)
    header = recorded.header
    chosen_image = image or _available_image(_docker_image_of(header))
    if not chosen_image:
        raise CannotReplay("the trajectory records no Docker image it can be replayed in; pass --image IMAGE")
    in_image = header.repo_in_image and repo is None  # the image's own /testbed, at the recorded commit
    source = header.repo if in_image else resolve_repo(repo, Path.cwd()) if repo else resolve_repo(
        header.repo, path.resolve().parent)
    checkout = in_image or _is_repository_top(source)
    commit = (header.commit or None) if checkout else None
    with tempfile.TemporaryDirectory(prefix="cwm-verify-") as scratch:
        out = Path(output) if output is not None else Path(scratch)
        request = SolveRequest(
            repo=source, issue=header.issue, commit=commit, allow_dirty=commit is not None and not in_image,
            repo_in_image=in_image, base_patch=header.base_patch if in_image else "",
            base_hidden=header.base_hidden if in_image else [], image=chosen_image,
            output=out, instance_id=header.instance_id,
            loop=LoopConfig(max_turns=header.protocol.max_turns, context_size=header.protocol.context_size,
                            max_reply_tokens=header.protocol.max_reply_tokens, tools=tuple(header.protocol.tools)),
            sandbox=SandboxConfig(image=chosen_image, workdir=header.workdir, timeout_s=header.protocol.timeout_s,
                                  run_id=f"verify-{header.run_id}"[:40]),
        )
        model = ReplayModel(recorded)
        replayed = _run(request, model, open_sandbox, on_step, out / f"{header.instance_id}.traj.jsonl")
    ran_out = model.replies_left == 0 and replayed.ending is not None and replayed.ending.status == "error"
    report = VerifyReport(
        trajectory=path, repo=source, image=chosen_image, recorded_commit=header.commit,
        replayed_commit=replayed.header.commit, normalizers=[n.name for n in normalizers],
        steps_recorded=len(recorded.steps), steps_replayed=len(replayed.steps),
        recorded_status=recorded.ending.status if recorded.ending else None,
        replayed_status=replayed.ending.status if replayed.ending else None,
        replay_path=(out / f"{header.instance_id}.traj.jsonl") if output is not None else None,
    )
    if not checkout and header.commit and replayed.header.commit != header.commit:
        report.repo_warning = (
            f"{source} is a plain directory whose snapshot is commit {replayed.header.commit[:12]}, but the "
            f"recording's is {header.commit[:12]}: its files are not the recorded ones (or the recording "
            "predates deterministic snapshots); divergences below show where that became visible"
        )
    if checkout and not header.commit:
        report.notes.append("the trajectory records no commit: the repository's HEAD was used")
    compare_prompts(recorded, replayed, report)
    compare_steps(recorded.steps, replayed.steps, normalizers, report)
    compare_endings(recorded, replayed, ran_out, report)
    return report


def _run(
    request: SolveRequest,
    model: ReplayModel,
    open_sandbox: Callable[[SandboxConfig], Sandbox],
    on_step: Callable[[Step], None] | None,
    trajectory: Path,
) -> Trajectory:
    """Run the replay through `solve`; running out of recorded replies is an outcome, not a failure."""
    try:
        solve(request, lambda: model, open_sandbox, on_step=on_step)
    except ModelError as error:
        if model.replies_left != 0:  # pragma: no cover - the replay model fails only when exhausted
            raise CannotReplay(f"the replay model failed: {error}") from None
    except RepoError as error:
        what = "does not match the recording" if "has no commit" in str(error) else "cannot be prepared"
        raise CannotReplay(f"the repository {what}: {error}") from None
    except SandboxError as error:
        raise CannotReplay(f"cannot run the sandbox: {error}") from None
    try:
        return read_trajectory(trajectory)
    except TrajectoryFormatError as error:  # pragma: no cover - our own recorder wrote it
        raise CannotReplay(f"the replay left no readable trajectory: {error}") from None

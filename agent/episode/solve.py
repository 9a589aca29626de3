"""`agent solve`: one issue, one repository, one episode, end to end.

instance -> sandbox (repository at /testbed) -> loop <-> model / tools -> recorder -> files.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import BaseModel, Field, field_validator

from agent.episode.loop import LoopConfig, initial_messages, run_episode
from agent.episode.repo import PreparedRepo, place_in_sandbox, prepare_repo
from agent.models.base import Model
from agent.protocol import prompts
from agent.worldmodel.run import TraceLimits
from agent.worldmodel.traced_tests import Phase, check_node_id, fresh_traces_root, trace_phase
from sandbox.base import Sandbox, SandboxConfig
from sandbox.rootfs import read_meta
from traces.recorder import Recorder
from traces.schema import Ending, Header, ProtocolSettings, Step, TracedTest

log = structlog.get_logger()

try:
    from importlib.metadata import version as _version

    RUNNER_VERSION = _version("cwm-runner")
except Exception:  # pragma: no cover - running from a source tree without installing
    RUNNER_VERSION = "0+source"


class SolveRequest(BaseModel):
    repo: str
    issue: str
    commit: str | None = None
    allow_dirty: bool = False
    image: str
    output: Path
    instance_id: str | None = None
    loop: LoopConfig = LoopConfig()
    sandbox: SandboxConfig | None = None
    trace_tests: list[str] = Field(default_factory=list, description="pytest node ids traced before and after")
    trace_limits: TraceLimits = Field(default_factory=TraceLimits)

    @field_validator("trace_tests")
    @classmethod
    def _node_ids(cls, value: list[str]) -> list[str]:
        return [check_node_id(node_id) for node_id in value]


class SolveResult(BaseModel):
    instance_id: str
    trajectory: Path
    patch: Path | None
    sandbox_diff: Path
    ending: Ending


def default_instance_id(repo: str, issue: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(repo.rstrip("/")).name.removesuffix(".git")) or "repo"
    return f"{name}-{hashlib.sha256(issue.encode()).hexdigest()[:8]}"


def image_identity(image: str) -> tuple[str, str]:
    """(content id, source image) so a trajectory names exactly what its sandbox ran (empty if unknown).

    A Docker image is its own source. A root filesystem tree (bwrap) has the id and tag of the Docker
    image it was exported from, which is what a replay in Docker needs."""
    if Path(image).is_dir():
        meta = read_meta(Path(image))
        return meta.image_id, meta.image
    try:
        from images.build import docker_client

        return docker_client().images.get(image).id, ""
    except Exception:  # no daemon or no such image: the tag alone is recorded
        return "", ""


def sandbox_git_diff(sandbox: Sandbox) -> str:
    """The working tree's diff against the base commit, new files included, as the sandbox sees it."""
    repo = sandbox.config.workdir
    result = sandbox.run(
        f"cd {repo} && git add -A -N >/dev/null 2>&1; git -c core.quotepath=off diff --no-color --no-ext-diff HEAD",
        aside=True,
    )
    return result.output


def _sandbox_config(request: SolveRequest) -> SandboxConfig:
    """The sandbox's config, its run id made fresh unless the caller named one: the trajectory's run
    id is also the sandbox's label, so `docker ps` and the file name each other."""
    config = request.sandbox or SandboxConfig(image=request.image)
    run_id = config.run_id if config.run_id != "adhoc" else uuid.uuid4().hex[:12]
    return config.model_copy(update={"image": request.image, "run_id": run_id})


def _header(request: SolveRequest, instance_id: str, commit: str, config: SandboxConfig, model: Model,
            backend: str) -> Header:
    """The trajectory's header: what ran, where, with which prompts (the user prompt already truncated)."""
    loop = request.loop
    system = prompts.system_prompt(timeout=prompts.timeout_phrase(config.timeout_s), context=loop.context_size,
                                   turns=loop.max_turns)
    user = prompts.truncate_left(prompts.issue_prompt(request.issue, repo_root=config.workdir),
                                 prompts.MAX_USER_TOKENS, model.count_tokens)
    digest, source = image_identity(request.image)
    return Header(
        run_id=config.run_id, instance_id=instance_id, repo=request.repo, commit=commit, image=request.image,
        image_digest=digest, image_source=source, sandbox_backend=backend, workdir=config.workdir,
        model=model.info, runner_version=RUNNER_VERSION,
        protocol=ProtocolSettings(max_turns=loop.max_turns, context_size=loop.context_size, timeout_s=config.timeout_s,
                                  max_reply_tokens=loop.max_reply_tokens, tools=list(loop.tools)),
        system_prompt=system, user_prompt=user, issue=request.issue,
    )


def _write_files(output: Path, instance_id: str, trajectory: Path, ending: Ending) -> SolveResult:
    diff_path = output / f"{instance_id}.sandbox.diff"
    diff_path.write_text(ending.sandbox_diff or "")
    patch_path = None
    if ending.submission is not None:
        patch_path = output / f"{instance_id}.patch"
        patch_path.write_text(ending.submission)
    return SolveResult(instance_id=instance_id, trajectory=trajectory, patch=patch_path, sandbox_diff=diff_path,
                       ending=ending)


def solve(
    request: SolveRequest,
    make_model: Callable[[], Model],
    open_sandbox: Callable[[SandboxConfig], Sandbox],
    on_step: Callable[[Step], None] | None = None,
) -> SolveResult:
    """Prepare the repository, run the episode, and write trajectory, patch and sandbox diff.

    The model is made only once the repository is known to be usable, so a bad --repo is reported
    before a model server is contacted. With `trace_tests`, those tests are traced on the checkout
    before the episode and on the final tree after it (agent.worldmodel.traced_tests), invisibly to
    the model; the Ending's `test_traces` references the files.
    """
    instance_id = request.instance_id or default_instance_id(request.repo, request.issue)
    output = request.output
    prepared: PreparedRepo = prepare_repo(request.repo, request.commit, request.allow_dirty)
    try:
        model = make_model()
    except BaseException:
        prepared.cleanup()
        raise
    output.mkdir(parents=True, exist_ok=True)
    config = _sandbox_config(request)
    header = _header(request, instance_id, prepared.commit, config, model, getattr(open_sandbox, "backend", "docker"))
    trajectory = output / f"{instance_id}.traj.jsonl"
    recorder = Recorder(trajectory, header)
    traces = fresh_traces_root(output, instance_id) if request.trace_tests else None
    traced: list[TracedTest] = []

    def trace(sandbox: Sandbox, phase: Phase) -> None:
        if traces is not None:
            traced.extend(trace_phase(sandbox, request.trace_tests, phase, traces, output, request.trace_limits))

    try:
        with open_sandbox(config) as sandbox:
            place_in_sandbox(prepared, sandbox)
            trace(sandbox, "before")
            messages = initial_messages(header.system_prompt, header.user_prompt)
            try:
                ending = run_episode(model, sandbox, messages, recorder, request.loop, on_step)
            except BaseException as error:
                interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
                recorder.end(Ending(status="interrupted" if interrupted else "error",
                                    reason=f"{error.__class__.__name__}: {error}", test_traces=traced))
                raise
            ending.sandbox_diff = sandbox_git_diff(sandbox)
            trace(sandbox, "after")  # after the diff is taken: tracing cannot change it
        ending.test_traces = traced
        recorder.end(ending)
    finally:
        recorder.close()
        prepared.cleanup()
    return _write_files(output, instance_id, trajectory, ending)

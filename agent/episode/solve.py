"""`agent solve`: one issue, one repository, one episode, end to end.

instance -> sandbox (repository at /testbed) -> loop <-> model / tools -> recorder -> files.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import BaseModel, Field, field_validator

from agent.episode.loop import LoopConfig, initial_messages, run_episode
from agent.episode.repo import URL_PATTERN, PreparedRepo, place_base_in_image, place_in_sandbox, prepare_repo
from agent.episode.repo_image import RepoStart, ensure_repo_image
from agent.models.base import Model
from agent.protocol import prompts
from agent.worldmodel.run import TraceLimits
from agent.worldmodel.traced_tests import Phase, TraceBudget, check_node_id, fresh_traces_root, trace_phase
from sandbox.base import Sandbox, SandboxConfig
from sandbox.rootfs import read_meta
from sandbox.session import startup_script
from traces.recorder import Recorder
from traces.schema import Ending, Header, ProtocolSettings, Step, TracedTest

log = structlog.get_logger()

try:
    from importlib.metadata import version as _version

    RUNNER_VERSION = _version("cwm-runner")
except Exception:  # pragma: no cover - running from a source tree without installing
    RUNNER_VERSION = "0+source"


class SolveRequest(BaseModel):
    repo: str = Field(description="a local path or git URL to copy in; with `repo_in_image`, only its name "
                      "(owner/name), recorded in the trajectory")
    issue: str
    commit: str | None = None
    repo_in_image: bool = Field(False, description="the image carries the repository at the workdir: check out "
                                "`commit` there and prune later history; nothing is cloned or copied "
                                "(agent.episode.repo.place_in_image)")
    base_patch: str = Field("", description="with `repo_in_image`, when the image lacks `commit`: the patch that "
                            "makes the base from the image's HEAD, committed in the sandbox (SWE-smith's bug patch; "
                            "agent.episode.base_patch)")
    base_hidden: list[str] = Field(default_factory=list, description="with `base_patch`: the files the made base "
                                   "leaves out (SWE-smith's FAIL_TO_PASS test files, which its task branches "
                                   "delete; agent.episode.base_patch.f2p_test_files)")
    allow_dirty: bool = False
    repo_cache: bool = Field(True, description="Docker: start from the repository image of (repo, commit, image), "
                             "made on first use (agent.episode.repo_image); off: copy into every sandbox")
    image: str
    output: Path
    instance_id: str | None = None
    loop: LoopConfig = LoopConfig()
    sandbox: SandboxConfig | None = None
    trace_tests: list[str] = Field(default_factory=list, description="pytest node ids traced before and after")
    trace_limits: TraceLimits = Field(default_factory=TraceLimits)
    trace_budget: TraceBudget = Field(default_factory=TraceBudget, description="bounds on each phase's tests together")
    trace_test_patch: str = Field("", description="applied for the traces only (an instance's test patch)")

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
            backend: str, start: RepoStart | None) -> Header:
    """The trajectory's header: what ran, where, with which prompts (the user prompt already truncated),
    and how the repository got there."""
    loop = request.loop
    system = prompts.system_prompt(timeout=prompts.timeout_phrase(config.timeout_s), context=loop.context_size,
                                   turns=loop.max_turns)
    user = prompts.truncate_left(prompts.issue_prompt(request.issue, repo_root=config.workdir),
                                 prompts.MAX_USER_TOKENS, model.count_tokens)
    digest, source = image_identity(request.image)
    return Header(
        run_id=config.run_id, instance_id=instance_id, repo=request.repo, commit=commit, image=request.image,
        image_digest=digest, image_source=source, sandbox_backend=backend, workdir=config.workdir,
        start_script=startup_script(config), repo_in_image=request.repo_in_image, model=model.info,
        base_patch=request.base_patch if request.repo_in_image else "",
        base_hidden=request.base_hidden if request.repo_in_image and request.base_patch else [],
        repo_from=start.way if start else "", repo_prepare_s=round(start.seconds, 3) if start else None,
        repo_image=start.image if start else "", runner_version=RUNNER_VERSION,
        protocol=ProtocolSettings(max_turns=loop.max_turns, context_size=loop.context_size, timeout_s=config.timeout_s,
                                  max_reply_tokens=loop.max_reply_tokens, tools=list(loop.tools)),
        system_prompt=system, user_prompt=user, issue=request.issue,
    )


def _repo_image(request: SolveRequest, prepared: PreparedRepo | None, backend: str,
                workdir: str) -> tuple[str, bool] | None:
    """(tag, built now) of the repository image to start from, or None to copy (or use the image's own)."""
    if prepared is None or not request.repo_cache or backend != "docker":
        return None
    return ensure_repo_image(prepared, request.image, workdir)


def warm_config(request: SolveRequest) -> SandboxConfig:
    """The config `solve` will open its Docker sandbox with, its repository image made first if need be:
    what a warm pool can start ahead of the episode (agent.batch.warm). A URL is not cloned for this."""
    config = _sandbox_config(request)
    if request.repo_in_image or not request.repo_cache or URL_PATTERN.match(request.repo):
        return config
    prepared = prepare_repo(request.repo, request.commit, request.allow_dirty)
    try:
        cached = _repo_image(request, prepared, "docker", config.workdir)
    finally:
        prepared.cleanup()
    return config.model_copy(update={"image": cached[0]}) if cached else config


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
    on_ready: Callable[[RepoStart], None] | None = None,
) -> SolveResult:
    """Place the repository, run the episode, and write trajectory, patch and sandbox diff.

    A repository to copy in is resolved first (nothing is copied yet) and the model made only once it is
    known to be usable, so a bad --repo is reported before a model server is contacted. With the Docker
    backend the sandbox then starts from the repository's image (made now if this is the first episode
    of that repository, commit and image: agent.episode.repo_image); otherwise the repository is copied
    in, or, `repo_in_image`, the image's own is used. The header, with the commit and how the repository
    got there (`on_ready` is told too), is written once it is in place; if the sandbox or the placement
    fails, the trajectory holds the header and an error ending. With `trace_tests`, those tests are
    traced on the checkout before the episode and on the final tree after it
    (agent.worldmodel.traced_tests), invisibly to the model; the Ending's `test_traces` references them.
    """
    instance_id = request.instance_id or default_instance_id(request.repo, request.issue)
    began = time.monotonic()
    prepared = None if request.repo_in_image else prepare_repo(request.repo, request.commit, request.allow_dirty)
    host_s = time.monotonic() - began
    try:
        model = make_model()
    except BaseException:
        if prepared is not None:
            prepared.cleanup()
        raise
    request.output.mkdir(parents=True, exist_ok=True)
    config = _sandbox_config(request)
    backend = getattr(open_sandbox, "backend", "docker")
    trajectory = request.output / f"{instance_id}.traj.jsonl"
    recorder: Recorder | None = None
    try:
        began = time.monotonic()
        cached = _repo_image(request, prepared, backend, config.workdir)
        host_s += time.monotonic() - began
        with open_sandbox(config.model_copy(update={"image": cached[0]}) if cached else config) as sandbox:
            start, commit, hidden_tests = _place(request, prepared, sandbox, cached, host_s)
            if hidden_tests:  # traced with the test files the made base hides, as graded
                request = request.model_copy(update={"trace_test_patch": _joined(request.trace_test_patch,
                                                                                 hidden_tests)})
            recorder = Recorder(trajectory, _header(request, instance_id, commit, config, model, backend, start))
            if on_ready is not None:
                on_ready(start)
            ending = _run(request, instance_id, sandbox, recorder, model, on_step)
        recorder.end(ending)
    except BaseException as error:
        if recorder is None:  # the sandbox or the placement failed before the header
            commit = prepared.commit if prepared is not None else request.commit or ""
            Recorder(trajectory, _header(request, instance_id, commit, config, model, backend, None)).end(
                _failed(error, []))
        raise
    finally:
        if recorder is not None:
            recorder.close()
        if prepared is not None:
            prepared.cleanup()
    return _write_files(request.output, instance_id, trajectory, ending)


def _place(request: SolveRequest, prepared: PreparedRepo | None, sandbox: Sandbox, cached: tuple[str, bool] | None,
           host_s: float) -> tuple[RepoStart, str, str]:
    """Put the repository at the workdir the way `solve` chose; how, how long it took, the commit, and the
    patch adding back the test files a made base hides (agent.episode.base_patch; usually empty)."""
    began = time.monotonic()
    if prepared is None:
        base = place_base_in_image(sandbox, request.commit, request.base_patch, request.base_hidden)
        return RepoStart(way="image", seconds=time.monotonic() - began), base.commit, base.tests_patch
    if cached is not None:  # the image holds it, history pruned: nothing to do in the session
        way = "image-build" if cached[1] else "image-cache"
        return RepoStart(way=way, seconds=host_s, image=cached[0]), prepared.commit, ""
    place_in_sandbox(prepared, sandbox)
    return RepoStart(way="copy", seconds=host_s + time.monotonic() - began), prepared.commit, ""


def _joined(first: str, second: str) -> str:
    """Two patches as one (`git apply` takes their file sections in turn)."""
    if not first.strip():
        return second
    return (first if first.endswith("\n") else first + "\n") + second


def _failed(error: BaseException, traced: list[TracedTest]) -> Ending:
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    return Ending(status="interrupted" if interrupted else "error", reason=f"{error.__class__.__name__}: {error}",
                  test_traces=traced)


def _run(request: SolveRequest, instance_id: str, sandbox: Sandbox, recorder: Recorder, model: Model,
         on_step: Callable[[Step], None] | None) -> Ending:
    """The episode in a sandbox whose repository is in place: traces before, the loop, the diff, traces
    after (after the diff is taken: tracing cannot change it). A failing loop ends the trajectory."""
    output = request.output
    traces = fresh_traces_root(output, instance_id) if request.trace_tests else None
    traced: list[TracedTest] = []

    def trace(phase: Phase) -> None:
        if traces is not None:
            traced.extend(trace_phase(sandbox, request.trace_tests, phase, traces, output, request.trace_limits,
                                      request.trace_budget, request.trace_test_patch))

    trace("before")
    messages = initial_messages(recorder.header.system_prompt, recorder.header.user_prompt)
    try:
        ending = run_episode(model, sandbox, messages, recorder, request.loop, on_step)
    except BaseException as error:
        recorder.end(_failed(error, traced))
        raise
    ending.sandbox_diff = sandbox_git_diff(sandbox)
    trace("after")
    ending.test_traces = traced
    return ending

"""Where episodes run: a local pool of worker threads, or Ray tasks spread over a cluster.

Both executors take `EpisodeJob`s and hand back `EpisodeOutcome`s, and neither touches the run
directory: an outcome carries the trajectory, patch and diff as text, and the driver (agent.batch.run)
writes them and records the outcome. That split is what lets a Ray task run on a machine that shares
no disk with the driver, and keeps a single writer of the run's state, so crash safety is reasoned
about in one place (agent.batch.state).

Local: threads, not processes. An episode spends its time waiting on Docker and on the model server;
each worker makes its own sandbox and model client per episode, so nothing is shared between them.
The threads are daemons, so Ctrl-C or SIGTERM is not held up by episodes in flight: the sandbox
registry (sandbox.lifecycle) removes their containers at exit, and a resumed run reruns them.

Ray: one remote task per episode (`num_cpus` 1 by default, no Ray-level retries: retrying is the
driver's decision so that attempts are counted once). The task runs on whichever node Ray picks, with
that node's Docker daemon; results stream back with ray.wait as tasks finish.
"""

from __future__ import annotations

import importlib
import itertools
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, Field

from agent.batch.status_log import EpisodeSummary
from agent.batch.tracing import TraceArchive, TraceTests, error_dir, pack_traces, solve_fields, unreference
from agent.batch.warm import LookaheadPools
from agent.episode.failures import Failure, classify
from agent.episode.loop import LoopConfig
from agent.instances.images import ImageOptions
from agent.instances.records import Instance
from agent.logs import configure_logging
from agent.worldmodel.traced_tests import traces_root
from sandbox.base import DEFAULT_TIMEOUT_S
from traces.schema import Ending, Evaluation

log = structlog.get_logger()

StepCallback = Callable[[int, int], None]  # (slot, step index)
SandboxFactory = Callable[[Any], Any]  # sandbox.base.SandboxConfig -> sandbox.base.Sandbox
Grader = Callable[[Instance, str, str], Evaluation]
DEFAULT_GRADER = "agent.grading.evaluate:grade"


class EpisodeJob(BaseModel):
    """Everything a worker needs for one episode; plain data so it can cross to a Ray node."""

    instance: Instance
    sample: int
    attempt: int
    slot: int = 0
    run_id: str
    model_spec: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    image: str | None = Field(default=None, description="None: the instance's own image (`image_for`)")
    images: ImageOptions = Field(default_factory=ImageOptions, description="where official images come from")
    loop: LoopConfig = Field(default_factory=LoopConfig)
    sandbox_timeout_s: float = DEFAULT_TIMEOUT_S
    evaluate: bool = False
    grader: str = Field(default=DEFAULT_GRADER, description="module:function grading a patch")
    live_dir: str | None = Field(default=None, description="where solve writes as it goes; None: a temp dir")
    trace_tests: TraceTests | None = Field(default=None, description="agent batch --trace-tests (agent.batch.tracing)")

    @property
    def key(self) -> tuple[str, int]:
        return (self.instance.instance_id, self.sample)


class EpisodeOutcome(BaseModel):
    """What came back from one episode: files as text and a summary for the manifest."""

    instance_id: str
    sample: int
    attempt: int
    slot: int = 0
    ok: bool
    error: str | None = None
    failure: Failure | None = Field(default=None, description="whose failure an error was (agent.episode.failures): "
                                    "infra ones are retried, and never graded")
    trajectory: str | None = None
    patch: str | None = None
    sandbox_diff: str | None = None
    traces: TraceArchive | None = Field(default=None, description="the sample's test traces, for the driver to write")
    summary: EpisodeSummary = Field(default_factory=EpisodeSummary)

    @property
    def key(self) -> tuple[str, int]:
        return (self.instance_id, self.sample)

    @property
    def retryable(self) -> bool:
        """An infrastructure failure: the same episode can succeed once the infrastructure is back."""
        return not self.ok and self.failure is not None and self.failure.kind == "infra"


# -- one episode ------------------------------------------------------------------------------------


def image_for(instance: Instance, options: ImageOptions | None = None) -> str:
    """The image an instance runs in: its official image, pulled first if missing, when that image carries
    the repository (agent.instances.images); else its environment image (agent.instances.envs: per
    repository and version, built once per machine)."""
    from agent.instances.images import ensure_official_image, repo_in_image

    if repo_in_image(instance):
        return ensure_official_image(instance, options)
    from agent.instances.envs import image_for as env_image

    return env_image(instance)


def load_grader(path: str) -> Grader:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _with_evaluation(trajectory: str, evaluation: Evaluation) -> str:
    """The trajectory text with the evaluation set on its end record (the format's place for it)."""
    lines = trajectory.rstrip("\n").split("\n")
    ending = Ending.model_validate_json(lines[-1])
    ending.evaluation = evaluation
    lines[-1] = ending.model_dump_json()
    return "\n".join(lines) + "\n"


def _summarise(trajectory_path: Path, ending: Ending | None, elapsed: float, model_name: str) -> EpisodeSummary:
    from traces.recorder import TrajectoryFormatError, read_trajectory

    summary = EpisodeSummary(elapsed_s=round(elapsed, 3), node=socket.gethostname(), model_name=model_name)
    try:
        recorded = read_trajectory(trajectory_path)
    except TrajectoryFormatError:
        return summary
    summary.command_s = round(sum(s.command_duration_s or 0.0 for s in recorded.steps), 3)
    summary.model_s = round(sum(s.model_latency_s or 0.0 for s in recorded.steps), 3)
    summary.steps = len(recorded.steps)
    ending = ending or recorded.ending
    if ending is not None:
        summary.ending, summary.reason = ending.status, ending.reason
        summary.has_patch = bool(ending.submission)
        summary.prompt_tokens = ending.total_prompt_tokens
        summary.completion_tokens = ending.total_completion_tokens
    return summary


class GradingError(RuntimeError):
    """The episode ran but its patch could not be graded."""


def solve_request(job: EpisodeJob, output: Path) -> Any:
    """The episode's agent.episode.solve.SolveRequest, its image found, built or pulled first."""
    from agent.episode.base_patch import f2p_test_files
    from agent.episode.solve import SolveRequest
    from agent.instances.images import repo_in_image
    from agent.instances.sources import repo_source
    from sandbox.base import SandboxConfig

    instance = job.instance
    in_image = job.image is None and repo_in_image(instance)  # --image: one image, the repository copied in
    image = job.image or image_for(instance, job.images)
    return SolveRequest(
        repo=instance.repo if in_image else repo_source(instance), repo_in_image=in_image,
        commit=instance.base_commit or None, issue=instance.problem_statement,
        base_patch=instance.bug_patch,  # SWE-smith: the base is made from it (agent.episode.base_patch)
        base_hidden=f2p_test_files(instance.FAIL_TO_PASS) if instance.bug_patch.strip() else [],
        image=image, output=output, instance_id=instance.instance_id, loop=job.loop,
        sandbox=SandboxConfig(image=image, timeout_s=job.sandbox_timeout_s, run_id=job.run_id),
        **solve_fields(job.trace_tests, instance),
    )


def _episode(job: EpisodeJob, output: Path, on_step: StepCallback | None, started: float,
             open_sandbox: SandboxFactory | None) -> EpisodeOutcome:
    """Solve, then grade if asked; raises on any failure (run_job turns it into an error outcome)."""
    from agent.episode.solve import solve
    from agent.models.factory import make_model
    from sandbox.docker import DockerSandbox

    instance = job.instance
    request = solve_request(job, output)
    image = request.image
    names: list[str] = []

    def make() -> Any:
        # The episode's identity spreads episodes over replicas alike in every worker process.
        model = make_model(job.model_spec, affinity=f"{instance.instance_id}#{job.sample}", **job.model_options)
        names.append(model.info.name or job.model_spec)
        return model

    step = (lambda s: on_step(job.slot, s.index)) if on_step is not None else None
    result = solve(request, make, open_sandbox or DockerSandbox, on_step=step)
    trajectory = result.trajectory.read_text(encoding="utf-8")
    trajectory, traces = pack_traces(job.trace_tests, instance, job.sample, output, trajectory)
    summary = _summarise(result.trajectory, result.ending, time.monotonic() - started, names[0])
    patch = result.ending.submission
    if job.evaluate and patch:
        try:
            summary.evaluation = load_grader(job.grader)(instance, patch, image)
        except Exception as error:  # noqa: BLE001
            raise GradingError(f"grading failed: {one_line(error)}") from error
        trajectory = _with_evaluation(trajectory, summary.evaluation)
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return EpisodeOutcome(instance_id=instance.instance_id, sample=job.sample, attempt=job.attempt, slot=job.slot,
                          ok=True, trajectory=trajectory, patch=patch, traces=traces,
                          sandbox_diff=result.sandbox_diff.read_text(encoding="utf-8"), summary=summary)


def run_job(job: EpisodeJob, on_step: StepCallback | None = None,
            open_sandbox: SandboxFactory | None = None) -> EpisodeOutcome:
    """Run one episode end to end (agent.episode.solve), grading it if asked. Never raises: a failure becomes
    an error outcome carrying the one-line reason and whatever trajectory was recorded."""
    started = time.monotonic()
    temporary = job.live_dir is None
    output = Path(tempfile.mkdtemp(prefix="cwm-episode-")) if temporary else Path(job.live_dir or "")
    try:
        return _episode(job, output, on_step, started, open_sandbox)
    except Exception as error:  # noqa: BLE001 - every failure becomes this episode's error
        message = str(error) if isinstance(error, GradingError) else one_line(error)
        failure = classify(error)
        log.info("batch.episode_error", instance=job.instance.instance_id, sample=job.sample, error=message,
                 kind=failure.kind, cause=failure.cause)
        found = next(output.rglob("*.traj.jsonl"), None)
        summary = _summarise(found, None, time.monotonic() - started, "") if found is not None else EpisodeSummary(
            elapsed_s=round(time.monotonic() - started, 3), node=socket.gethostname())
        trajectory, traces = found.read_text(encoding="utf-8") if found is not None else None, None
        if trajectory is not None:
            trajectory, traces = _error_traces(job, output, trajectory)
        return EpisodeOutcome(
            instance_id=job.instance.instance_id, sample=job.sample, attempt=job.attempt, slot=job.slot, ok=False,
            error=message, failure=failure, trajectory=trajectory, traces=traces, summary=summary,
        )
    finally:
        if temporary:
            shutil.rmtree(output, ignore_errors=True)


def _error_traces(job: EpisodeJob, output: Path, trajectory: str) -> tuple[str, TraceArchive | None]:
    """An errored attempt's traces (the phases it reached ran on real code: they are data), as that
    attempt's own folder (agent.batch.tracing.error_dir); never raises, as run_job must not."""
    try:
        return pack_traces(job.trace_tests, job.instance, job.sample, output, trajectory,
                           folder=error_dir(job.sample, job.attempt))
    except (OSError, ValueError) as error:
        log.warning("batch.error_traces_not_packed", instance=job.instance.instance_id, error=str(error))
        return unreference(trajectory, traces_root(output, job.instance.instance_id).name,
                           f"the traces could not be packed: {error}"), None


# -- executors ----------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs jobs concurrently; the driver keeps at most `capacity` in flight."""

    capacity: int

    def submit(self, job: EpisodeJob) -> None: ...

    def wait(self, timeout: float) -> list[EpisodeOutcome]:
        """Outcomes of jobs that finished (possibly none if `timeout` seconds pass first)."""
        ...

    def close(self) -> None: ...


def warm_config(job: EpisodeJob) -> Any:
    """The sandbox config `job`'s episode will ask for, its images made first (agent.batch.warm)."""
    from agent.episode.solve import warm_config as config_of

    return config_of(solve_request(job, Path(tempfile.gettempdir())))


class LocalExecutor:
    """`workers` daemon threads, each running one episode at a time; with `warm`, the sandboxes of the next
    `warm` episodes started ahead (agent.batch.warm)."""

    def __init__(self, workers: int, on_step: StepCallback | None = None, warm: int = 0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.capacity = workers
        self._on_step = on_step
        self._warm = LookaheadPools(warm, warm_config) if warm > 0 else None
        self._jobs: queue.SimpleQueue[EpisodeJob | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[EpisodeOutcome] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"cwm-batch-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                outcome = run_job(job, self._on_step, self._warm.open if self._warm else None)
                if self._warm is not None:
                    self._warm.finished(job)
            except BaseException as error:  # noqa: BLE001 - a worker must always answer
                outcome = EpisodeOutcome(instance_id=job.instance.instance_id, sample=job.sample,
                                         attempt=job.attempt, slot=job.slot, ok=False, error=one_line(error),
                                         failure=classify(error))
            self._results.put(outcome)

    def submit(self, job: EpisodeJob) -> None:
        if self._warm is not None:
            self._warm.handed(job)
        self._jobs.put(job)

    def upcoming(self, jobs: Iterable[EpisodeJob]) -> None:
        """The jobs the driver will submit next, in order: the first `warm` get their sandboxes started."""
        if self._warm is not None:
            self._warm.plan(list(itertools.islice(jobs, self._warm.size)))

    def wait(self, timeout: float) -> list[EpisodeOutcome]:
        try:
            outcomes = [self._results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                outcomes.append(self._results.get_nowait())
            except queue.Empty:
                return outcomes

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if self._warm is not None:
            self._warm.close()


def _ray_episode(job: dict[str, Any], steps: Any = None) -> dict[str, Any]:
    """The Ray task: plain dicts in and out, so driver and nodes only share the package, not pickles."""
    configure_logging()  # a Ray worker is a fresh process
    episode = EpisodeJob.model_validate(job)

    def report(slot: int, index: int) -> None:
        try:
            steps.put_nowait((slot, index))
        except Exception:  # noqa: BLE001 - progress is best effort
            pass

    return run_job(episode, report if steps is not None else None).model_dump(mode="json")


class RayExecutor:
    """One Ray task per episode; connects to `address` (a cluster) or starts a local Ray instance."""

    def __init__(self, workers: int, address: str | None = None, on_step: StepCallback | None = None,
                 task_cpus: float = 1.0, task_resources: dict[str, float] | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray executor needs Ray: pip install 'cwm-runner[ray]'") from None
        self._ray = ray
        self.capacity = workers
        self._started_ray = False
        if not ray.is_initialized():
            options: dict[str, Any] = {}
            if address is None:  # a private local instance; a cluster's settings are the cluster's
                options = {"num_cpus": max(1, int(workers * task_cpus + 0.999)), "include_dashboard": False,
                           "logging_level": "warning"}
            options.update(init_options or {})
            ray.init(address=address, **options)
            self._started_ray = True
        remote = ray.remote(_ray_episode)
        self._remote = remote.options(num_cpus=task_cpus, max_retries=0, resources=task_resources or {})
        self._pending: dict[Any, EpisodeJob] = {}
        self._on_step = on_step
        self._steps = None
        if on_step is not None:
            from ray.util.queue import Queue

            self._steps = Queue(actor_options={"num_cpus": 0})

    def submit(self, job: EpisodeJob) -> None:
        payload = job.model_copy(update={"live_dir": None}).model_dump(mode="json")
        self._pending[self._remote.remote(payload, self._steps)] = job

    def _drain_steps(self) -> None:
        if self._steps is None or self._on_step is None:
            return
        try:
            for slot, index in self._steps.get_nowait_batch(self._steps.qsize()):
                self._on_step(slot, index)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass

    def wait(self, timeout: float) -> list[EpisodeOutcome]:
        self._drain_steps()
        if not self._pending:
            time.sleep(timeout)
            return []
        ready, rest = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if ready and rest:  # whatever else has finished meanwhile, without waiting for more
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        outcomes = []
        for ref in ready:
            job = self._pending.pop(ref)
            try:
                outcomes.append(EpisodeOutcome.model_validate(self._ray.get(ref)))
            except Exception as error:  # noqa: BLE001 - the task or its node died
                outcomes.append(EpisodeOutcome(instance_id=job.instance.instance_id, sample=job.sample,
                                               attempt=job.attempt, slot=job.slot, ok=False,
                                               error=f"Ray task failed: {one_line(error)}",
                                               failure=Failure(kind="infra", cause="worker")))
        self._drain_steps()
        return outcomes

    def close(self) -> None:
        for ref in list(self._pending):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self._pending.clear()
        if self._started_ray:
            self._ray.shutdown()

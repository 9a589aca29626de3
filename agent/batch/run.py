"""`agent batch`: many episodes in parallel, resumable after any crash, one prediction per instance.

The driver (this module, main thread) is the only writer of the run directory. It hands episodes to
an executor (agent.batch.executors: worker threads here, or Ray tasks on a cluster), keeps at most `workers`
in flight, and for each outcome writes the sample's files and then appends the outcome to the status
log (agent.batch.state), which is the commit point. With K samples per instance, the instance's
prediction is chosen by agent.batch.voting once all its samples have finished.

Resume semantics (`--resume`):
- done samples are never run again; their files and outcome are kept;
- samples that were running when the runner died are rerun from scratch as a new attempt; the partial
  trajectory of the dead attempt is kept aside as <k>.attempt<a>.partial.jsonl;
- errored samples are kept as errors unless `--redo-errors` is given: an error is usually
  deterministic (a repository that cannot be prepared, a model that rejects the request), and
  rerunning it silently would cost model time on every resume. Infrastructure failures (the sandbox
  or a Ray worker died) are retried within the run instead, up to `max_attempts` in all;
- containers left by the dead runner are removed at start (sandbox.reaper);
- the instances and the result-relevant settings must be those of the run (workers, executor and
  Ray address may change).

Without `--resume`, a non-empty output directory is refused, so a run is never mixed into another.
Exit status: 0 when every sample is done, 1 when some errored (or the run was interrupted), 2 for
usage errors (the command line's one-line refusals).
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.batch.executors import DEFAULT_GRADER
from agent.batch.state import BatchState, atomic_write
from agent.batch.status_log import BatchRefused, RunConfig
from agent.episode.loop import LoopConfig
from agent.instances.records import Instance
from sandbox.base import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from agent.batch.executors import EpisodeJob, EpisodeOutcome, Executor
    from agent.batch.progress import BatchProgress

log = structlog.get_logger()

ModelSpec = Union[str, Callable[[Instance, int], str]]


class BatchRequest(BaseModel):
    """One batch run: what to run, where, and how; every default of `agent batch` is written here."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    instances: list[Instance]
    output: Path = Field(description="the run directory (must be empty unless `resume`)")
    model: ModelSpec = Field(description="a spec for agent.models.factory.make_model, optionally a template "
                             "using {instance_id} and {sample} (e.g. replay:runs/old/{instance_id}.traj.jsonl), "
                             "or a callable (instance, sample) -> spec")
    workers: int = Field(default=2, ge=1, description="episodes in flight (one sandbox each)")
    samples: int = Field(default=1, ge=1, description="episodes per instance; the prediction is chosen by vote")
    resume: bool = False
    redo_errors: bool = Field(default=False, description="with resume: rerun errored episodes too")
    evaluate: bool = Field(default=False, description="grade each patch on the worker")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_options: dict[str, Any] = Field(default_factory=dict,
                                        description="RayExecutor's task_cpus, task_resources, init_options")
    image: str | None = Field(default=None, description="one image for every instance (default: per instance)")
    loop: LoopConfig = Field(default_factory=LoopConfig)
    sandbox_timeout_s: float = DEFAULT_TIMEOUT_S
    model_options: dict[str, Any] = Field(default_factory=dict, description="client options; None values dropped")
    model_name: str | None = Field(default=None, description="model_name_or_path in preds.jsonl")
    grader: str = Field(default=DEFAULT_GRADER, description="module:function grading a patch on the worker")
    max_attempts: int = Field(default=2, ge=1, description="attempts per sample for infrastructure failures")
    warm: int = Field(default=0, ge=0, description="started sandboxes kept ready per image (local executor)")


class BatchResult(BaseModel):
    run_id: str
    output: Path
    total: int
    done: int
    errored: int
    pending: int
    submitted: int
    resolved: int
    graded: int
    ran: int
    elapsed_s: float
    preds: Path
    manifest: Path

    @property
    def exit_code(self) -> int:
        return 0 if self.errored == 0 and self.pending == 0 else 1


# -- the driver --------------------------------------------------------------------------------------


def _spec_for(model_spec: ModelSpec, instance: Instance, sample: int) -> str:
    """The model spec of one episode: a callable's answer, or the template filled in."""
    if callable(model_spec):
        return model_spec(instance, sample)
    if "{" not in model_spec:
        return model_spec
    try:
        return model_spec.format(instance_id=instance.instance_id, sample=sample)
    except (KeyError, IndexError, ValueError) as error:
        raise BatchRefused(f"model spec {model_spec!r} can use only {{instance_id}} and {{sample}} ({error})") from None


def _spec_text(model_spec: ModelSpec) -> str:
    if callable(model_spec):
        return f"callable:{getattr(model_spec, '__module__', '?')}.{getattr(model_spec, '__qualname__', '?')}"
    return model_spec


def _reap_orphans() -> None:
    """Remove containers of runners that died (a killed earlier attempt of this run included)."""
    from tenacity import retry, stop_after_attempt, wait_exponential

    from sandbox.docker import connect
    from sandbox.reaper import reap_orphans

    api = connect()
    try:
        removed = retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4),
                        reraise=True)(reap_orphans)(api)
    finally:
        api.close()
    if removed:
        log.info("batch.reaped", containers=len(removed))


def _detail(outcome: EpisodeOutcome) -> str:
    if not outcome.ok:
        return outcome.error or "error"
    summary = outcome.summary
    text = f"{summary.ending} after {summary.steps} steps" + ("" if summary.has_patch else ", no patch")
    if summary.evaluation is not None:
        text += ", resolved" if summary.evaluation.resolved else ", unresolved"
    return text


def _commit(state: BatchState, outcome: EpisodeOutcome) -> None:
    """Write the sample's files, then record the outcome (the commit point), then tidy up."""
    layout, (instance_id, sample) = state.layout, outcome.key
    finals = (layout.trajectory(instance_id, sample), layout.patch(instance_id, sample),
              layout.sandbox_diff(instance_id, sample))
    if outcome.ok:
        atomic_write(finals[0], outcome.trajectory or "")
        if outcome.patch:
            atomic_write(finals[1], outcome.patch)
        else:
            finals[1].unlink(missing_ok=True)
        atomic_write(finals[2], outcome.sandbox_diff or "")
        state.done(instance_id, sample, outcome.attempt, outcome.summary)
    else:
        if outcome.trajectory:
            atomic_write(layout.aside(instance_id, sample, outcome.attempt, "error"), outcome.trajectory)
        for path in finals:  # left by an attempt that died between writing them and committing
            path.unlink(missing_ok=True)
        state.error(instance_id, sample, outcome.attempt, outcome.error or "error", outcome.summary)
    shutil.rmtree(layout.running_dir(instance_id, sample), ignore_errors=True)


def _drive(state: BatchState, pool: Executor, jobs: list[EpisodeJob], progress: BatchProgress,
           max_attempts: int) -> int:
    """Keep `pool.capacity` episodes in flight until every job has an outcome; returns episodes run.

    A job is recorded as started (new attempt) only when it is handed to a worker slot, and its
    outcome is committed as soon as it arrives, so the status log always says what is running.
    """
    todo = deque(jobs)
    free = list(range(pool.capacity))
    in_flight: dict[tuple[str, int], EpisodeJob] = {}
    ran = 0
    while todo or in_flight:
        while todo and free:
            job = todo.popleft()
            instance_id, sample = job.key
            slot = free.pop(0)
            attempt = state.start(instance_id, sample, slot)
            live = state.layout.running_dir(instance_id, sample)
            shutil.rmtree(live, ignore_errors=True)
            job = job.model_copy(update={"attempt": attempt, "slot": slot, "live_dir": str(live)})
            in_flight[job.key] = job
            progress.started(slot, instance_id, sample, attempt)
            pool.submit(job)
        for outcome in pool.wait(timeout=0.25):
            job = in_flight.pop(outcome.key)
            free.append(job.slot)
            free.sort()
            _commit(state, outcome)
            ran += 1
            resolved = outcome.summary.evaluation.resolved if outcome.summary.evaluation else None
            progress.finished(job.slot, outcome.instance_id, outcome.sample, outcome.ok, _detail(outcome), resolved)
            if not outcome.ok and outcome.retryable and outcome.attempt < max_attempts:
                todo.appendleft(job)  # infrastructure failure: retried at once, as a new attempt
    return ran


def _config(request: BatchRequest) -> RunConfig:
    """The result-relevant settings a resume must repeat."""
    return RunConfig(model=_spec_text(request.model), model_options=request.model_options, samples=request.samples,
                     image=request.image, evaluate=request.evaluate, loop=request.loop.model_dump(mode="json"),
                     sandbox_timeout_s=request.sandbox_timeout_s, model_name=request.model_name)


def _specs(request: BatchRequest) -> dict[tuple[str, int], str]:
    """Every episode's model spec, filled in before anything else so a bad template is refused early."""
    return {(i.instance_id, k): _spec_for(request.model, i, k) for i in request.instances
            for k in range(request.samples)}


def _jobs(request: BatchRequest, state: BatchState, specs: dict[tuple[str, int], str]) -> list[EpisodeJob]:
    """One job per (instance, sample) not yet done, the first image found or built before any runs."""
    from agent.batch.executors import EpisodeJob, image_for

    todo = state.todo(redo_errors=request.redo_errors)
    if request.executor == "local" or request.ray_address is None:
        _reap_orphans()  # the Docker daemon is this host's: clean up after a killed runner
    if todo and request.executor == "local" and request.image is None:
        image_for(todo[0][0])  # find or build the first image now: a broken setup fails once, early
    return [EpisodeJob(instance=instance, sample=sample, attempt=0, run_id=state.run_id,
                       model_spec=specs[(instance.instance_id, sample)], model_options=request.model_options,
                       image=request.image, loop=request.loop, sandbox_timeout_s=request.sandbox_timeout_s,
                       evaluate=request.evaluate, grader=request.grader) for instance, sample in todo]


def _executor(request: BatchRequest, progress: BatchProgress) -> Executor:
    from agent.batch.executors import LocalExecutor, RayExecutor

    if request.executor == "local":
        return LocalExecutor(request.workers, on_step=progress.step, warm=request.warm)
    return RayExecutor(request.workers, address=request.ray_address, on_step=progress.step, **request.ray_options)


def run_batch(request: BatchRequest, progress: BatchProgress | None = None) -> BatchResult:
    """Run every (instance, sample) episode not yet done in the run directory; see the module docstring.

    Raises BatchRefused for a directory or settings that cannot be used.
    """
    from agent.batch.progress import make_progress
    from sandbox import lifecycle

    request = request.model_copy(update={
        "model_options": {k: v for k, v in request.model_options.items() if v is not None}})
    specs = _specs(request)
    started = time.monotonic()
    lifecycle.install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C: containers are removed
    state = BatchState.open(request.output, request.instances, _config(request), resume=request.resume,
                            executor=request.executor, workers=request.workers)
    progress = progress or make_progress()
    pool: Executor | None = None
    ran = 0
    try:
        jobs = _jobs(request, state, specs)
        total, before = len(request.instances) * request.samples, state.totals()
        progress.begin(total, total - len(jobs), 0 if request.redo_errors else before.error, before.resolved,
                       request.workers, request.evaluate)
        if jobs:
            pool = _executor(request, progress)
            ran = _drive(state, pool, jobs, progress, request.max_attempts)
    finally:
        if pool is not None:
            pool.close()
        progress.close()
        state.close()
    totals = state.totals()
    return BatchResult(
        run_id=state.run_id, output=state.layout.root, total=len(request.instances) * request.samples,
        done=totals.done, errored=totals.error, pending=totals.pending + totals.running, submitted=totals.submitted,
        resolved=totals.resolved, graded=totals.graded, ran=ran, elapsed_s=round(time.monotonic() - started, 3),
        preds=state.layout.preds, manifest=state.layout.manifest,
    )

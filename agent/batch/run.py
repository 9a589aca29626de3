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
- errors have a kind (agent.episode.failures). Infrastructure errors (the sandbox or the Docker
  daemon died, the model server stayed away past its bound, a Ray worker was lost, the disk filled)
  are retried within the run, up to `max_attempts` per session, and every resume redoes those still
  errored; they are never graded and never enter a vote. Model and episode errors are kept unless
  `--redo-errors` is given: they are usually deterministic (a repository that cannot be prepared, a
  model that rejects the request), and rerunning them silently would cost model time on every resume;
- while the model server or the Docker daemon is down, no episode is handed out: the batch waits for
  it (agent.batch.outages) up to `outage_s`, then stops; a full disk stops it at once. A stopped run
  keeps everything finished, says what to do in one line, and `--resume` continues it;
- containers left by the dead runner are removed at start (sandbox.reaper);
- the instances and the result-relevant settings must be those of the run (workers, executor and
  Ray address may change).

Without `--resume`, a non-empty output directory is refused, so a run is never mixed into another.
Exit status: 0 when every sample is done, 1 when some errored (or the run stopped or was
interrupted), 2 for usage errors (the command line's one-line refusals).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.batch.admission import AdmissionSettings, KvAdmission, make_admission
from agent.batch.executors import DEFAULT_GRADER
from agent.batch.outages import BatchStopped, OutageGate, disk_full_stop, model_server
from agent.batch.selection import rank_by_existing_tests
from agent.batch.state import BatchState, atomic_write
from agent.batch.status_log import BatchRefused, RunConfig
from agent.batch.tracing import TraceTests, place_traces
from agent.batch.voting import Method
from agent.episode.failures import disk_full
from agent.episode.loop import LoopConfig
from agent.instances.images import ImageOptions
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
    images: ImageOptions = Field(default_factory=ImageOptions, description="where official images come from and "
                                 "how they are pulled (agent.instances.images)")
    loop: LoopConfig = Field(default_factory=LoopConfig)
    sandbox_timeout_s: float = DEFAULT_TIMEOUT_S
    model_options: dict[str, Any] = Field(default_factory=dict, description="client options; None values dropped")
    model_name: str | None = Field(default=None, description="model_name_or_path in preds.jsonl")
    grader: str = Field(default=DEFAULT_GRADER, description="module:function grading a patch on the worker")
    max_attempts: int = Field(default=2, ge=1, description="attempts per sample and session for infrastructure "
                              "failures (a later --resume redoes what is left)")
    warm: int = Field(default=0, ge=0, description="sandboxes of the next episodes started ahead, their repository "
                      "or instance images made first (local executor; agent.batch.warm)")
    outage_s: float = Field(default=600.0, gt=0, description="how long the batch (and each HTTP model client) "
                            "waits for a model server or Docker daemon that went away, before it stops")
    trace_tests: TraceTests | None = Field(default=None, description="tests traced before and after each episode, "
                                           "invisibly to the model (agent.batch.tracing)")
    select: Method = Field(default="majority", description="how one of K samples is chosen: majority, regression "
                           "(the repository's existing tests) or oracle (hidden tests; needs evaluate)")
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings, description="episodes in flight follow "
                                         "the model server's KV cache, `workers` the ceiling (agent.batch.admission)")


class BatchResult(BaseModel):
    run_id: str
    output: Path
    total: int
    done: int
    errored: int
    infra_errors: int = Field(default=0, description="of `errored`: the infrastructure's, redone by --resume")
    model_errors: int = 0
    episode_errors: int = 0
    pending: int
    submitted: int
    resolved: int
    graded: int
    ran: int
    elapsed_s: float
    preds: Path
    manifest: Path
    stopped: str | None = Field(default=None, description="why the run stopped early (one line), if it did")
    outages: dict[str, int] = Field(default_factory=dict, description="outages waited for: resource -> count")

    @property
    def exit_code(self) -> int:
        return 0 if self.errored == 0 and self.pending == 0 and self.stopped is None else 1


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
    """Write the sample's files, then record the outcome (the commit point), then tidy up.

    Traces are written first, so a trajectory never points at traces that could not be written. An
    errored attempt's traces (the phases it reached) go to its own folder beside its kept-aside
    trajectory, never to `<k>.traces/`; `tidy_traces` then drops what belongs to no outcome any more
    (agent.batch.tracing).
    """
    layout, (instance_id, sample) = state.layout, outcome.key
    finals = (layout.trajectory(instance_id, sample), layout.patch(instance_id, sample),
              layout.sandbox_diff(instance_id, sample))
    if outcome.ok:
        trajectory, phases = place_traces(layout.traces(instance_id, sample), outcome.traces, outcome.trajectory or "")
        atomic_write(finals[0], trajectory)
        if outcome.patch:
            atomic_write(finals[1], outcome.patch)
        else:
            finals[1].unlink(missing_ok=True)
        atomic_write(finals[2], outcome.sandbox_diff or "")
        state.done(instance_id, sample, outcome.attempt, outcome.summary.model_copy(update={"trace_phases": phases}))
    else:
        kept, phases = None, []
        if outcome.trajectory:
            kept, phases = place_traces(layout.error_traces(instance_id, sample, outcome.attempt), outcome.traces,
                                        outcome.trajectory)
            atomic_write(layout.aside(instance_id, sample, outcome.attempt, "error"), kept)
        for path in finals:  # left by an attempt that died between writing them and committing
            path.unlink(missing_ok=True)
        shutil.rmtree(layout.traces(instance_id, sample), ignore_errors=True)
        state.error(instance_id, sample, outcome.attempt, outcome.error or "error",
                    outcome.summary.model_copy(update={"trace_phases": phases}), outcome.failure)
    state.tidy_traces(instance_id, sample)
    shutil.rmtree(layout.running_dir(instance_id, sample), ignore_errors=True)


def _hand_out(state: BatchState, pool: Executor, todo: deque[EpisodeJob], free: list[int],
              in_flight: dict[tuple[str, int], EpisodeJob], progress: BatchProgress,
              admission: KvAdmission | None = None) -> None:
    """Start queued jobs on the free slots, each recorded as a new attempt before it is submitted;
    with admission, only while fewer are in flight than the model server's KV cache allows."""
    while todo and free and (admission is None or len(in_flight) < admission.allowed(len(in_flight))):
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
    if hasattr(pool, "upcoming"):  # the local executor's warm sandboxes (agent.batch.warm)
        pool.upcoming(todo)


def _drive(state: BatchState, pool: Executor, jobs: list[EpisodeJob], progress: BatchProgress,
           max_attempts: int, gate: OutageGate, admission: KvAdmission | None = None) -> int:
    """Keep `pool.capacity` episodes in flight (fewer while admission holds new ones back) until every
    job has an outcome; returns episodes run.

    A job is recorded as started (new attempt) only when it is handed to a worker slot, and its
    outcome is committed as soon as it arrives, so the status log always says what is running. Jobs
    are handed out only while the gate lets them; when it stops the batch, the episodes in flight are
    still waited for and committed (a full disk excepted: nothing could be written), then BatchStopped
    goes up.
    """
    todo = deque(jobs)
    free = list(range(pool.capacity))
    in_flight: dict[tuple[str, int], EpisodeJob] = {}
    ran = 0
    stopped: BatchStopped | None = None
    tries: Counter[tuple[str, int]] = Counter()  # this session's attempts: earlier sessions' do not count
    while (todo and stopped is None) or in_flight:
        try:  # asked every turn, slots free or not: the display follows an outage as it happens
            if stopped is None and not gate.holding():
                _hand_out(state, pool, todo, free, in_flight, progress, admission)
        except BatchStopped as error:
            stopped = error
        for outcome in pool.wait(timeout=0.25):
            job = in_flight.pop(outcome.key)
            free.append(job.slot)
            free.sort()
            _commit(state, outcome)
            ran += 1
            tries[job.key] += 1
            try:
                gate.note(job, outcome)  # first: an outage it reveals holds the retry below
            except BatchStopped as error:
                stopped = stopped or error
            resolved = outcome.summary.evaluation.resolved if outcome.summary.evaluation else None
            retry = outcome.retryable and tries[job.key] < max_attempts and stopped is None
            kind = outcome.failure.kind if outcome.failure else None
            progress.finished(job.slot, outcome.instance_id, outcome.sample, outcome.ok, _detail(outcome), resolved,
                              kind=kind, retry=retry)
            if retry:
                todo.appendleft(job)  # infrastructure failure: retried as a new attempt once the gate allows
        if stopped is not None and not stopped.drain:
            break
    if stopped is not None:
        raise stopped
    return ran


def _config(request: BatchRequest) -> RunConfig:
    """The result-relevant settings a resume must repeat."""
    return RunConfig(model=_spec_text(request.model), model_options=request.model_options, samples=request.samples,
                     image=request.image, evaluate=request.evaluate, loop=request.loop.model_dump(mode="json"),
                     sandbox_timeout_s=request.sandbox_timeout_s, model_name=request.model_name,
                     trace_tests=request.trace_tests.model_dump(mode="json") if request.trace_tests else None,
                     select=request.select, image_prefix=request.images.prefix, platform=request.images.pull.platform)


def _specs(request: BatchRequest) -> dict[tuple[str, int], str]:
    """Every episode's model spec, filled in before anything else so a bad template is refused early."""
    return {(i.instance_id, k): _spec_for(request.model, i, k) for i in request.instances
            for k in range(request.samples)}


def _jobs(request: BatchRequest, state: BatchState, specs: dict[tuple[str, int], str]) -> list[EpisodeJob]:
    """One job per (instance, sample) not yet done, the first image found or built before any runs."""
    from agent.batch.executors import EpisodeJob

    todo = state.todo(redo_errors=request.redo_errors)
    if request.executor == "local" or request.ray_address is None:
        _reap_orphans()  # the Docker daemon is this host's: clean up after a killed runner
    todo = _preflight(request, state, todo)
    if todo and request.executor == "local" and request.image is None:
        _first_image(todo[0][0], request.images)
    return [EpisodeJob(instance=instance, sample=sample, attempt=0, run_id=state.run_id,
                       model_spec=specs[(instance.instance_id, sample)],
                       model_options=_client_options(request, specs[(instance.instance_id, sample)]),
                       image=request.image, images=request.images, loop=request.loop,
                       sandbox_timeout_s=request.sandbox_timeout_s,
                       evaluate=request.evaluate, grader=request.grader, trace_tests=request.trace_tests)
            for instance, sample in todo]


def _client_options(request: BatchRequest, spec: str) -> dict[str, Any]:
    """The model client's options: an HTTP client waits out an outage as long as the batch does."""
    if model_server(spec) is None:
        return request.model_options
    return {"outage_s": request.outage_s, **request.model_options}


def _preflight(request: BatchRequest, state: BatchState, todo: list[tuple[Instance, int]]
               ) -> list[tuple[Instance, int]]:
    """Check every instance's environment before any episode (agent.instances.preflight): each one the
    runner cannot provide gets one warning line and an error record with the reason, and is not run."""
    if not todo or request.image is not None:
        return todo
    from agent.instances.preflight import check_environments

    unique = list({instance.instance_id: instance for instance, _ in todo}.values())
    report = check_environments(unique, options=request.images, docker=request.executor == "local")
    reasons = {problem.instance_id: problem for problem in report.problems}
    for problem in report.problems:
        log.warning("batch.environment_refused", detail=problem.line())
    for instance, sample in todo:
        if instance.instance_id in reasons:
            attempt = state.start(instance.instance_id, sample)
            state.error(instance.instance_id, sample, attempt, reasons[instance.instance_id].line())
    return [(instance, sample) for instance, sample in todo if instance.instance_id not in reasons]


def _first_image(instance: Instance, options: ImageOptions) -> None:
    """Find, build or pull the first image now, so a broken setup (no daemon, no registry, a full disk)
    fails once, early. A first image that does not exist is that instance's own error, not the batch's."""
    from agent.batch.executors import image_for
    from images.registry import PullError

    try:
        image_for(instance, options)
    except PullError as error:
        if error.kind != "not_found":
            raise
        log.info("batch.first_image_missing", instance=instance.instance_id, error=str(error))


def _executor(request: BatchRequest, progress: BatchProgress) -> Executor:
    from agent.batch.executors import LocalExecutor, RayExecutor

    if request.executor == "local":
        return LocalExecutor(request.workers, on_step=progress.step, warm=request.warm)
    return RayExecutor(request.workers, address=request.ray_address, on_step=progress.step, **request.ray_options)


def run_batch(request: BatchRequest, progress: BatchProgress | None = None) -> BatchResult:
    """Run every (instance, sample) episode not yet done in the run directory; see the module docstring.

    Raises BatchRefused for a directory or settings that cannot be used, BatchStopped for a disk too
    full to open the run; a run stopped later returns with `stopped` set.
    """
    from agent.batch.progress import make_progress
    from images.registry import pulls_watched
    from sandbox import lifecycle

    if request.select == "oracle" and not request.evaluate:
        raise BatchRefused("--oracle picks by the hidden tests, so it needs --evaluate")
    request = request.model_copy(update={
        "model_options": {k: v for k, v in request.model_options.items() if v is not None}})
    specs = _specs(request)
    started = time.monotonic()
    lifecycle.install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C: containers are removed
    try:
        state = BatchState.open(request.output, request.instances, _config(request), resume=request.resume,
                                executor=request.executor, workers=request.workers)
    except OSError as error:
        if disk_full(error):
            raise disk_full_stop(request.output) from error
        raise
    progress = progress or make_progress()
    gate = OutageGate(request.outage_s, set(specs.values()), str(state.layout.root),
                      docker=request.executor == "local" or request.ray_address is None, on_change=progress.outage)
    pool: Executor | None = None
    ran, stopped = 0, None
    with pulls_watched(progress.pull):  # instance images pulled by episodes show on the display
        try:
            jobs = _jobs(request, state, specs)
            total, before = len(request.instances) * request.samples, state.totals()
            errored = 0 if request.redo_errors else before.error - before.infra_errors  # infra errors are redone
            progress.begin(total, total - len(jobs), errored, before.resolved, request.workers, request.evaluate)
            if jobs:
                pool = _executor(request, progress)
                admission = make_admission(request.admission, request.workers, {job.model_spec for job in jobs},
                                           on_change=progress.admission)
                ran = _drive(state, pool, jobs, progress, request.max_attempts, gate, admission)
            if request.select == "regression":
                rank_by_existing_tests(state, request.workers)  # after the episodes: see agent.batch.selection
        except BatchStopped as error:
            stopped = str(error)
        except OSError as error:  # the driver's own writes: trajectory, patch, status log, manifest
            if not disk_full(error):
                raise
            stopped = str(disk_full_stop(state.layout.root))
        finally:
            if pool is not None:
                pool.close()
            progress.close()
            state.close()
    return _result(request, state, ran, started, stopped, gate.seen)


def _result(request: BatchRequest, state: BatchState, ran: int, started: float, stopped: str | None,
            outages: dict[str, int]) -> BatchResult:
    totals = state.totals()
    if stopped:
        log.warning("batch.stopped", reason=stopped)
    return BatchResult(
        run_id=state.run_id, output=state.layout.root, total=len(request.instances) * request.samples,
        done=totals.done, errored=totals.error, infra_errors=totals.infra_errors, model_errors=totals.model_errors,
        episode_errors=totals.episode_errors, pending=totals.pending + totals.running, submitted=totals.submitted,
        resolved=totals.resolved, graded=totals.graded, ran=ran, elapsed_s=round(time.monotonic() - started, 3),
        preds=state.layout.preds, manifest=state.layout.manifest, stopped=stopped, outages=dict(outages),
    )

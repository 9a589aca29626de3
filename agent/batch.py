"""`agent batch`: many episodes in parallel, resumable after any crash, one prediction per instance.

The driver (this module, main thread) is the only writer of the run directory. It hands episodes to
an executor (agent.executors: worker threads here, or Ray tasks on a cluster), keeps at most `workers`
in flight, and for each outcome writes the sample's files and then appends the outcome to the status
log (agent.batch_state), which is the commit point. With K samples per instance, the instance's
prediction is chosen by agent.voting once all its samples have finished.

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
usage errors (agent.cli.fail).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import structlog
import typer
from pydantic import BaseModel

from agent.batch_state import BatchRefused, BatchState, RunConfig, atomic_write
from agent.instances import Instance

if TYPE_CHECKING:
    from agent.loop import LoopConfig
    from agent.executors import EpisodeJob, EpisodeOutcome, Executor
    from agent.progress import BatchProgress

log = structlog.get_logger()

DEFAULT_MODEL_URL = "http://127.0.0.1:8000/v1"
ModelSpec = Union[str, Callable[[Instance, int], str]]


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


# -- instances ---------------------------------------------------------------------------------------


def load_instances(source: Path | str, slice_spec: str | None = None, pattern: str | None = None,
                   shuffle_seed: int | None = None) -> list[Instance]:
    """Instances from any source agent.instance_sources reads, then filtered, shuffled and sliced."""
    from agent.instance_sources import load_instances as load, select_instances

    return select_instances(load(source), slice_spec=slice_spec, pattern=pattern, shuffle_seed=shuffle_seed)


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


def run_batch(
    instances: Sequence[Instance],
    output_dir: Path | str,
    *,
    model_spec: ModelSpec,
    workers: int = 2,
    samples: int = 1,
    resume: bool = False,
    redo_errors: bool = False,
    evaluate: bool = False,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    image: str | None = None,
    loop: LoopConfig | None = None,
    sandbox_timeout_s: float = 120.0,
    model_options: dict[str, Any] | None = None,
    model_name: str | None = None,
    grader: str = "agent.eval:grade",
    max_attempts: int = 2,
    progress: BatchProgress | None = None,
    ray_options: dict[str, Any] | None = None,
    warm: int = 0,
) -> BatchResult:
    """Run every (instance, sample) episode not yet done in `output_dir`; see the module docstring.

    `model_spec` is a spec string for agent.models.factory.make_model, optionally a template using
    `{instance_id}` and `{sample}` (e.g. `replay:runs/old/{instance_id}.traj.jsonl`), or a callable
    (instance, sample) -> spec. `grader` names the function (module:function, called on the worker)
    that grades a patch when `evaluate` is set. `ray_options` go to RayExecutor (task_cpus,
    task_resources, init_options). `warm` keeps that many started sandboxes ready per image (local
    executor; sandbox.pool), hiding the container start. Raises BatchRefused for a directory or settings that cannot be used.
    """
    from agent.executors import EpisodeJob, LocalExecutor, RayExecutor, image_for
    from agent.loop import LoopConfig
    from agent.progress import make_progress
    from sandbox import lifecycle

    if workers < 1 or samples < 1 or max_attempts < 1:
        raise BatchRefused("workers, samples and max attempts must be at least 1")
    if executor not in ("local", "ray"):
        raise BatchRefused(f"unknown executor {executor!r}; choose local or ray")
    loop = loop or LoopConfig()
    model_options = {k: v for k, v in (model_options or {}).items() if v is not None}
    config = RunConfig(model=_spec_text(model_spec), model_options=model_options, samples=samples, image=image,
                       evaluate=evaluate, loop=loop.model_dump(mode="json"), sandbox_timeout_s=sandbox_timeout_s,
                       model_name=model_name)
    # Every spec is filled in before anything else, so a bad template is refused before the run starts.
    specs = {(i.instance_id, k): _spec_for(model_spec, i, k) for i in instances for k in range(samples)}
    started = time.monotonic()
    lifecycle.install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C: containers are removed
    state = BatchState.open(Path(output_dir), instances, config, resume=resume, executor=executor, workers=workers)
    progress = progress or make_progress()
    pool: Executor | None = None
    ran = 0
    try:
        todo = state.todo(redo_errors=redo_errors)
        if executor == "local" or ray_address is None:
            _reap_orphans()  # the Docker daemon is this host's: clean up after a killed runner
        if todo and executor == "local" and image is None:
            image_for(todo[0][0])  # find or build the first image now: a broken setup fails once, early
        jobs = [EpisodeJob(instance=instance, sample=sample, attempt=0, run_id=state.run_id,
                           model_spec=specs[(instance.instance_id, sample)], model_options=model_options,
                           image=image, loop=loop, sandbox_timeout_s=sandbox_timeout_s, evaluate=evaluate,
                           grader=grader) for instance, sample in todo]
        total, before = len(instances) * samples, state.totals()
        progress.begin(total, total - len(todo), 0 if redo_errors else before.error, before.resolved, workers,
                       evaluate)
        if jobs:
            if executor == "local":
                pool = LocalExecutor(workers, on_step=progress.step, warm=warm)
            else:
                pool = RayExecutor(workers, address=ray_address, on_step=progress.step, **(ray_options or {}))
            ran = _drive(state, pool, jobs, progress, max_attempts)
    finally:
        if pool is not None:
            pool.close()
        progress.close()
        state.close()
    totals = state.totals()
    return BatchResult(
        run_id=state.run_id, output=state.layout.root, total=len(instances) * samples, done=totals.done,
        errored=totals.error, pending=totals.pending + totals.running, submitted=totals.submitted,
        resolved=totals.resolved, graded=totals.graded, ran=ran, elapsed_s=round(time.monotonic() - started, 3),
        preds=state.layout.preds, manifest=state.layout.manifest,
    )


# -- command line ----------------------------------------------------------------------------------


def batch_command(
    instances: Path = typer.Argument(..., help="SWE-bench JSON or JSON Lines, a file of GitHub issue URLs, or a "
                                                "directory of <name>/repo + <name>/issue.md"),
    output: Path = typer.Option(..., "--output", "-o", help="run directory (must be empty unless --resume)"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="CWM server URL, chat:URL or replay:PATH; may use {instance_id} and {sample}"),
    workers: int = typer.Option(2, help="episodes in parallel (one sandbox each)"),
    samples: int = typer.Option(1, help="episodes per instance; the prediction is chosen by vote"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output (done work is kept)"),
    redo_errors: bool = typer.Option(False, "--redo-errors", help="with --resume: rerun errored episodes too"),
    evaluate: bool = typer.Option(False, "--evaluate", help="grade each patch; votes prefer patches passing tests"),
    executor: str = typer.Option("local", help="local (threads on this machine) or ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray cluster to use, e.g. ray://HEAD:10001 (default: local Ray)"),
    image: Optional[str] = typer.Option(None, help="sandbox image for every instance "
                                                   "(default: each instance's environment image, agent.envs)"),
    max_turns: int = typer.Option(128, help="turn limit (protocol default 128)"),
    timeout: float = typer.Option(120.0, help="per-command timeout in seconds"),
    wall_clock: Optional[float] = typer.Option(None, help="stop each episode after this many seconds"),
    temperature: Optional[float] = typer.Option(None, help="sampling temperature (model servers only)"),
    model_name: Optional[str] = typer.Option(None, help="model_name_or_path in preds.jsonl (default: the model's)"),
    slice_spec: Optional[str] = typer.Option(None, "--slice", help="take START:STOP[:STEP] of the (filtered) instances"),
    pattern: Optional[str] = typer.Option(None, "--filter", help="only instances whose id matches this regex"),
    shuffle: Optional[int] = typer.Option(None, "--shuffle", metavar="SEED", help="shuffle with this seed first"),
    warm: int = typer.Option(0, help="keep this many sandboxes started ahead per image (local executor)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="without a terminal: also log starts and steps"),
) -> None:
    """Run many instances in parallel sandboxes; resumable; writes trajectories, manifest and preds.jsonl."""
    from rich.console import Console

    from agent.cli import fail
    from agent.loop import LoopConfig
    from agent.models.base import ModelError
    from agent.progress import make_progress
    from sandbox.base import SandboxError

    if redo_errors and not resume:
        fail("--redo-errors applies to a resumed run: add --resume")
    if executor not in ("local", "ray"):
        fail(f"unknown --executor {executor!r}; choose local or ray")
    if ray_address and executor != "ray":
        fail("--ray-address needs --executor ray")
    try:
        loaded = load_instances(instances, slice_spec=slice_spec, pattern=pattern, shuffle_seed=shuffle)
    except ValueError as error:
        fail(str(error))
    if not loaded:
        fail(f"no instances selected from {instances}")
    try:
        result = run_batch(
            loaded, output, model_spec=model, workers=workers, samples=samples, resume=resume,
            redo_errors=redo_errors, evaluate=evaluate, executor=executor,  # type: ignore[arg-type]
            ray_address=ray_address, image=image,
            loop=LoopConfig(max_turns=max_turns, wall_clock_s=wall_clock), sandbox_timeout_s=timeout,
            model_options={"temperature": temperature}, model_name=model_name, warm=warm,
            progress=make_progress(verbose=verbose),
        )
    except KeyboardInterrupt:
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"interrupted: what finished is kept in {output}; rerun with --resume to continue",
                      highlight=False, markup=False)
        raise typer.Exit(130) from None
    except (BatchRefused, ModelError, SandboxError, ValueError) as error:
        fail(str(error))
    except RuntimeError as error:  # Ray missing, an image that cannot be built
        fail((str(error).splitlines() or [error.__class__.__name__])[0])
    out = Console(soft_wrap=True)
    graded = f", {result.resolved}/{result.graded} resolved" if result.graded else ""
    out.print(f"{result.done}/{result.total} done, {result.errored} errored, {result.pending} not run, "
              f"{result.submitted} submitted{graded} in {result.elapsed_s:.1f}s", highlight=False)
    out.print(f"predictions {result.preds}", highlight=False)
    out.print(f"manifest    {result.manifest}", highlight=False)
    raise typer.Exit(result.exit_code)


def main() -> None:
    """`python -m agent.batch ...`: the same command outside the `agent` CLI (scripts, tests)."""
    import logging
    import sys

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    level = logging.DEBUG if os.environ.get("CWM_DEBUG") else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(batch_command)
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

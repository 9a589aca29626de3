"""`agent batch`: many instances in parallel sandboxes, resumable, with preds.jsonl and a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from agent.batch.admission import AdmissionSettings
from agent.batch.run import BatchRequest, BatchResult
from agent.batch.tracing import TraceTests
from agent.cli.common import default_of, fail, first_line
from agent.cli.images import PLATFORM_HELP, PREFIX_HELP, REGISTRY_HELP, image_options
from agent.cli.instance_source import DATASET_DIR, PATH_HELP, SPLIT, SUBSET, instance_source
from agent.models.factory import DEFAULT_MODEL_URL
from agent.protocol.prompts import MAX_TURNS
from agent.worldmodel.run import TraceLimits
from agent.worldmodel.traced_tests import TraceBudget
from images.registry import PullOptions
from sandbox.base import DEFAULT_TIMEOUT_S


def check_options(resume: bool, redo_errors: bool, executor: str, ray_address: Optional[str]) -> None:
    if redo_errors and not resume:
        fail("--redo-errors applies to a resumed run: add --resume")
    if executor not in ("local", "ray"):
        fail(f"unknown --executor {executor!r}; choose local or ray")
    if ray_address and executor != "ray":
        fail("--ray-address needs --executor ray")


def trace_option(words: Optional[List[str]], max_frames: int, phase_frames: int,
                 phase_seconds: float) -> Optional[TraceTests]:
    """--trace-tests and its bounds as the request's `trace_tests`; a bad value is refused in one line."""
    if not words:
        return None
    try:
        return TraceTests.from_words(words, limits=TraceLimits(max_frames=max_frames),
                                     budget=TraceBudget(max_frames=phase_frames, max_seconds=phase_seconds))
    except ValueError as error:  # pydantic's ValidationError included
        fail(first_line(error))


def print_result(result: BatchResult) -> None:
    """The summary: infrastructure errors apart from the model's and the episodes' own, as the official
    harness keeps infra failures apart from unresolved instances; a stopped run's reason first."""
    out = Console(soft_wrap=True)
    if result.stopped:
        Console(stderr=True, soft_wrap=True).print(f"stopped: {result.stopped}", highlight=False, markup=False)
    graded = f", {result.resolved}/{result.graded} resolved" if result.graded else ""
    kinds = (f" ({result.infra_errors} infrastructure: redone by --resume, {result.model_errors} model, "
             f"{result.episode_errors} episode)" if result.errored else "")
    out.print(f"{result.done}/{result.total} done, {result.errored} errored{kinds}, {result.pending} not run, "
              f"{result.submitted} submitted{graded} in {result.elapsed_s:.1f}s", highlight=False)
    out.print(f"predictions {result.preds}", highlight=False)
    out.print(f"manifest    {result.manifest}", highlight=False)


def batch(
    instances: Optional[Path] = typer.Argument(None, help=PATH_HELP + "; or use --subset"),
    subset: Optional[str] = SUBSET,
    split: Optional[str] = SPLIT,
    dataset_dir: Optional[Path] = DATASET_DIR,
    output: Path = typer.Option(..., "--output", "-o", help="run directory (must be empty unless --resume)"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="CWM server URL, chat:URL or replay:PATH; may use {instance_id} and {sample}; "
                              "URL1,URL2,... spreads episodes over replicas of one model"),
    workers: int = typer.Option(default_of(BatchRequest, "workers"), min=1, help="episodes in parallel (one sandbox each)"),
    samples: int = typer.Option(default_of(BatchRequest, "samples"), min=1,
                                help="episodes per instance; the prediction is chosen by vote"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output (done work is kept)"),
    redo_errors: bool = typer.Option(False, "--redo-errors", help="with --resume: rerun errored episodes too"),
    evaluate: bool = typer.Option(False, "--evaluate", help="grade each patch (reported; votes never read grades)"),
    select: str = typer.Option(default_of(BatchRequest, "select"), "--select",
                               help="choose one of K samples by majority (vote) or regression (the repository's "
                                    "existing tests, then votes)"),
    oracle: bool = typer.Option(False, "--oracle", help="choose by the hidden tests instead (best-of-K with an "
                                "oracle; needs --evaluate; preds.jsonl's model name ends in +oracle)"),
    executor: str = typer.Option("local", help="local (threads on this machine) or ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray cluster to use, e.g. ray://HEAD:10001 (default: local Ray)"),
    image: Optional[str] = typer.Option(None, help="sandbox image for every instance "
                                                   "(default: each instance's environment image, agent.instances.envs)"),
    max_turns: int = typer.Option(MAX_TURNS, help=f"turn limit (protocol default {MAX_TURNS})"),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, help="per-command timeout in seconds"),
    wall_clock: Optional[float] = typer.Option(None, help="stop each episode after this many seconds"),
    temperature: Optional[float] = typer.Option(None, help="sampling temperature (model servers only)"),
    model_name: Optional[str] = typer.Option(None, help="model_name_or_path in preds.jsonl (default: the model's)"),
    slice_spec: Optional[str] = typer.Option(None, "--slice", help="take START:STOP[:STEP] of the (filtered) instances"),
    pattern: Optional[str] = typer.Option(None, "--filter", help="only instances whose id matches this regex"),
    shuffle: Optional[int] = typer.Option(None, "--shuffle", metavar="SEED", help="shuffle with this seed first"),
    outage_wait: float = typer.Option(default_of(BatchRequest, "outage_s"), "--outage-wait", min=1,
                                      help="seconds to wait for a model server or Docker daemon that went away "
                                           "before the batch stops (rerun with --resume)"),
    admission: str = typer.Option(default_of(AdmissionSettings, "mode"), "--admission", metavar="kv|off",
                                  help="kv: episodes in flight follow the model server's KV cache (its /metrics), "
                                       "--workers the ceiling; off: --workers alone"),
    warm: int = typer.Option(default_of(BatchRequest, "warm"), min=0,
                             help="start the sandboxes of the next N episodes ahead, making their repository or "
                                  "instance images first (local executor)"),
    registry: Optional[str] = typer.Option(None, help=REGISTRY_HELP),
    image_prefix: Optional[str] = typer.Option(None, help=PREFIX_HELP),
    platform: Optional[str] = typer.Option(None, help=PLATFORM_HELP),
    pulls: int = typer.Option(default_of(PullOptions, "concurrency"), min=1,
                              help="missing instance images pulled at once"),
    pull_timeout: float = typer.Option(default_of(PullOptions, "timeout_s"), help="seconds for pulling one image"),
    trace_tests: Optional[List[str]] = typer.Option(
        None, "--trace-tests", metavar="failing|all|NODE_ID",
        help="trace tests before and after each episode, invisibly to the model: failing (FAIL_TO_PASS), all "
             "(and PASS_TO_PASS) or pytest node ids (repeatable); traces go to trajectories/<id>/<k>.traces/"),
    trace_max_frames: int = typer.Option(default_of(TraceLimits, "max_frames"), min=1,
                                         help="--trace-tests: frame bound of each test's trace"),
    trace_phase_frames: int = typer.Option(default_of(TraceBudget, "max_frames"), min=1,
                                           help="--trace-tests: frames of all an instance's tests in one phase"),
    trace_phase_seconds: float = typer.Option(default_of(TraceBudget, "max_seconds"), min=1,
                                              help="--trace-tests: seconds for all an instance's tests in one phase"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="without a terminal: also log starts and steps"),
) -> None:
    """Run many instances in parallel sandboxes; resumable; writes trajectories, manifest and preds.jsonl."""
    from agent.batch.outages import BatchStopped
    from agent.batch.progress import make_progress
    from agent.batch.run import run_batch
    from agent.batch.status_log import BatchRefused
    from agent.episode.loop import LoopConfig
    from agent.instances.sources import load_instances, select_instances
    from agent.models.base import ModelError
    from sandbox.base import SandboxError

    check_options(resume, redo_errors, executor, ray_address)
    if admission not in ("kv", "off"):
        fail(f"unknown --admission {admission!r}; choose kv or off")
    if select not in ("majority", "regression"):
        fail(f"unknown --select {select!r}; choose majority or regression (the oracle is --oracle)")
    if oracle and not evaluate:
        fail("--oracle picks by the hidden tests, so it needs --evaluate")
    traced = trace_option(trace_tests, trace_max_frames, trace_phase_frames, trace_phase_seconds)
    source = instance_source(instances, subset, split, dataset_dir)
    try:
        loaded = select_instances(load_instances(source, split=split), slice_spec=slice_spec, pattern=pattern,
                                  shuffle_seed=shuffle)
    except ValueError as error:
        fail(str(error))
    if not loaded:
        fail(f"no instances selected from {source}")
    try:
        request = BatchRequest(
            instances=loaded, output=output, model=model, workers=workers, samples=samples, resume=resume,
            redo_errors=redo_errors, evaluate=evaluate, executor=executor, ray_address=ray_address, image=image,
            loop=LoopConfig(max_turns=max_turns, wall_clock_s=wall_clock), sandbox_timeout_s=timeout,
            model_options={"temperature": temperature}, model_name=model_name, warm=warm, outage_s=outage_wait,
            select="oracle" if oracle else select, trace_tests=traced,
            admission=AdmissionSettings(mode=admission),
            images=image_options(registry, image_prefix, platform, pull_timeout, pulls))
        result = run_batch(request, progress=make_progress(verbose=verbose))
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print(
            f"interrupted: what finished is kept in {output}; rerun with --resume to continue",
            highlight=False, markup=False)
        raise typer.Exit(130) from None
    except BatchStopped as error:  # a disk too full to open the run
        fail(first_line(error), code=1)
    except (BatchRefused, ModelError, SandboxError, ValueError) as error:
        fail(first_line(error))
    except RuntimeError as error:  # Ray missing, an image that cannot be built
        fail(first_line(error))
    print_result(result)
    raise typer.Exit(result.exit_code)

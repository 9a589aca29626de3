"""`agent batch`: many instances in parallel sandboxes, resumable, with preds.jsonl and a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from agent.batch.run import BatchRequest, BatchResult
from agent.cli.common import default_of, fail, first_line
from agent.models.factory import DEFAULT_MODEL_URL
from agent.protocol.prompts import MAX_TURNS
from sandbox.base import DEFAULT_TIMEOUT_S


def check_options(resume: bool, redo_errors: bool, executor: str, ray_address: Optional[str]) -> None:
    if redo_errors and not resume:
        fail("--redo-errors applies to a resumed run: add --resume")
    if executor not in ("local", "ray"):
        fail(f"unknown --executor {executor!r}; choose local or ray")
    if ray_address and executor != "ray":
        fail("--ray-address needs --executor ray")


def print_result(result: BatchResult) -> None:
    out = Console(soft_wrap=True)
    graded = f", {result.resolved}/{result.graded} resolved" if result.graded else ""
    out.print(f"{result.done}/{result.total} done, {result.errored} errored, {result.pending} not run, "
              f"{result.submitted} submitted{graded} in {result.elapsed_s:.1f}s", highlight=False)
    out.print(f"predictions {result.preds}", highlight=False)
    out.print(f"manifest    {result.manifest}", highlight=False)


def batch(
    instances: Path = typer.Argument(..., help="SWE-bench JSON or JSON Lines, a file of GitHub issue URLs, or a "
                                                "directory of <name>/repo + <name>/issue.md"),
    output: Path = typer.Option(..., "--output", "-o", help="run directory (must be empty unless --resume)"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="CWM server URL, chat:URL or replay:PATH; may use {instance_id} and {sample}"),
    workers: int = typer.Option(default_of(BatchRequest, "workers"), min=1, help="episodes in parallel (one sandbox each)"),
    samples: int = typer.Option(default_of(BatchRequest, "samples"), min=1,
                                help="episodes per instance; the prediction is chosen by vote"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output (done work is kept)"),
    redo_errors: bool = typer.Option(False, "--redo-errors", help="with --resume: rerun errored episodes too"),
    evaluate: bool = typer.Option(False, "--evaluate", help="grade each patch; votes prefer patches passing tests"),
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
    warm: int = typer.Option(default_of(BatchRequest, "warm"), min=0,
                             help="keep this many sandboxes started ahead per image (local executor)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="without a terminal: also log starts and steps"),
) -> None:
    """Run many instances in parallel sandboxes; resumable; writes trajectories, manifest and preds.jsonl."""
    from agent.batch.progress import make_progress
    from agent.batch.run import run_batch
    from agent.batch.status_log import BatchRefused
    from agent.episode.loop import LoopConfig
    from agent.instances.sources import load_instances, select_instances
    from agent.models.base import ModelError
    from sandbox.base import SandboxError

    check_options(resume, redo_errors, executor, ray_address)
    try:
        loaded = select_instances(load_instances(instances), slice_spec=slice_spec, pattern=pattern,
                                  shuffle_seed=shuffle)
    except ValueError as error:
        fail(str(error))
    if not loaded:
        fail(f"no instances selected from {instances}")
    try:
        request = BatchRequest(
            instances=loaded, output=output, model=model, workers=workers, samples=samples, resume=resume,
            redo_errors=redo_errors, evaluate=evaluate, executor=executor, ray_address=ray_address, image=image,
            loop=LoopConfig(max_turns=max_turns, wall_clock_s=wall_clock), sandbox_timeout_s=timeout,
            model_options={"temperature": temperature}, model_name=model_name, warm=warm)
        result = run_batch(request, progress=make_progress(verbose=verbose))
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print(
            f"interrupted: what finished is kept in {output}; rerun with --resume to continue",
            highlight=False, markup=False)
        raise typer.Exit(130) from None
    except (BatchRefused, ModelError, SandboxError, ValueError) as error:
        fail(first_line(error))
    except RuntimeError as error:  # Ray missing, an image that cannot be built
        fail(first_line(error))
    print_result(result)
    raise typer.Exit(result.exit_code)

"""`agent trace` and `agent debug`: real execution traces in CWM's frame format, and the neural debugger."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agent.cli.common import default_of, fail
from agent.models.factory import DEFAULT_MODEL_URL
from agent.worldmodel.run import TraceLimits


def trace(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, help="Python file holding the entry function"),
    function: Optional[str] = typer.Option(None,
        help="entry function (dotted: Class.method); with --script: trace its first call"),
    args: Optional[str] = typer.Option(None,
        help='JSON arguments: [positional...], {keyword: ...} or {"args": [...], "kwargs": {...}}'),
    args_py: Optional[str] = typer.Option(None, "--args-py",
        help='positional arguments as a Python literal tuple, e.g. "((1, 2), {3})"'),
    script: Optional[Path] = typer.Option(None, help="run this file as __main__ (arguments after --)"),
    repo: Optional[Path] = typer.Option(None,
        help="repository to copy into the sandbox; with `-- pytest NODE` trace that one test"),
    include: List[str] = typer.Option([], "--include",
        help="also trace these files/directories (relative to --repo); repeatable"),
    output: Path = typer.Option(Path("runs/trace"), "--output", "-o", help="directory for trace.jsonl and prompt.txt"),
    max_frames: int = typer.Option(default_of(TraceLimits, "max_frames"), help="stop after this many frames"),
    max_seconds: float = typer.Option(default_of(TraceLimits, "max_seconds"),
        help="stop after this many seconds (wall clock, in the sandbox)"),
    max_bytes: int = typer.Option(default_of(TraceLimits, "max_bytes"),
        help="stop when the frames' JSON reaches this size"),
    max_repr_chars: int = typer.Option(default_of(TraceLimits, "max_repr_chars"),
        help="truncate each value's repr at this many characters"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
    show_prompt: bool = typer.Option(False, "--print-prompt", help="also print the CWM prompt text"),
) -> None:
    """Trace a function call, a script, or one pytest test in a sandbox, in CWM's frame format."""
    from agent.worldmodel.run import TraceError, trace_command

    try:
        limits = TraceLimits(max_frames=max_frames, max_seconds=max_seconds, max_bytes=max_bytes,
                             max_repr_chars=max_repr_chars)
        code = trace_command(file=file, function=function, args=args, args_py=args_py, script=script, repo=repo,
                             extra=list(ctx.args), include=include, output=output, limits=limits, image=image,
                             show_prompt=show_prompt)
    except TraceError as error:
        fail(str(error))
    raise typer.Exit(code)


def debug(
    file: Path = typer.Option(..., help="Python file to debug (its source is the model's context)"),
    function: Optional[str] = typer.Option(None, help="entry function"),
    args: Optional[str] = typer.Option(None, help="JSON arguments (as for `agent trace`)"),
    args_py: Optional[str] = typer.Option(None, "--args-py", help="positional arguments as a Python literal tuple"),
    calls: Optional[Path] = typer.Option(None, help="JSON/JSONL file of {function, args, kwargs, args_literal}"),
    all_functions: bool = typer.Option(False, "--all",
        help="every public top-level function callable without arguments"),
    repo: Optional[Path] = typer.Option(None, help="repository holding --file (copied into the sandbox, traced)"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="http(s)://HOST:PORT/v1 (CWM raw completions), replay:FILE, oracle or perturbed:K"),
    record: Optional[Path] = typer.Option(None, help="append every model answer to this replay file"),
    report: bool = typer.Option(False, "--report", help="score every call and print agreement figures"),
    report_json: Optional[Path] = typer.Option(None, help="also save the report and every comparison as JSON"),
    temperature: float = typer.Option(0.0, help="sampling temperature (0: greedy)"),
    max_tokens: int = typer.Option(2048, help="token cap for one predicted frame"),
    served_model: Optional[str] = typer.Option(None, help="served model name (default: discovered)"),
    max_frames: int = typer.Option(default_of(TraceLimits, "max_frames"), help="trace bound: frames"),
    max_seconds: float = typer.Option(default_of(TraceLimits, "max_seconds"), help="trace bound: seconds"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
) -> None:
    """Neural debugger: CWM predicts each next frame, the real trace says what happened."""
    from agent.models.base import ModelError
    from agent.worldmodel.debug import debug_command
    from agent.worldmodel.run import TraceError

    try:
        code = debug_command(file=file, function=function, args=args, args_py=args_py, calls_file=calls,
                             all_functions=all_functions, repo=repo, model=model, record=record, report=report,
                             report_json=report_json, temperature=temperature, max_tokens=max_tokens,
                             served_model=served_model, image=image,
                             limits=TraceLimits(max_frames=max_frames, max_seconds=max_seconds))
    except (TraceError, ModelError) as error:
        fail(str(error))
    raise typer.Exit(code)

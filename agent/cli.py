"""The `agent` command line: thin wrappers that parse options and call library functions."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import structlog
import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="agent",
    help="cwm-runner: run Code World Model (or any OpenAI-compatible model) as a software-engineering "
    "agent in Docker sandboxes, and record every step as a replayable trajectory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
images_app = typer.Typer(help="Build the sandbox images (offline: bootstrapped from Debian packages).",
                         no_args_is_help=True)
sandbox_app = typer.Typer(help="Manage sandboxes left by earlier runs.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(sandbox_app, name="sandbox")

console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line and exit: the user's next step is in the message."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@app.command()
def doctor(
    model: Optional[str] = typer.Option(None, help="model server URL to check", envvar="CWM_MODEL_URL"),
) -> None:
    """Check Docker, the base image, free disk and the model server, and say what to fix."""
    from agent.doctor import run_checks

    checks = run_checks(model, Path.cwd())
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
        fix = f"  -> {check.fix}" if check.fix and not check.ok else ""
        console.print(f"{mark:>18}  {check.name:<13} {check.detail}{fix}", highlight=False)
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(1)


@images_app.command("build")
def images_build(
    from_image: Optional[str] = typer.Option(
        None, "--from", help="build FROM this registry image (e.g. debian:bookworm-slim) instead of bootstrapping"
    ),
    rebuild: bool = typer.Option(False, help="rebuild even if this machine has the image"),
) -> None:
    """Build the base sandbox image once per machine (debootstrap + docker import, cached by content hash)."""
    from images.build import ImageBuildError, ensure_base_image

    try:
        tag = ensure_base_image(from_image=from_image, rebuild=rebuild)
    except ImageBuildError as error:
        fail(str(error))
    print(tag)


EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "traces" / "examples"
DEFAULT_MODEL_URL = "http://127.0.0.1:8000/v1"


def _read_issue(issue: Optional[str], issue_file: Optional[Path], github_issue: Optional[str]) -> str:
    given = [x for x in (issue, issue_file, github_issue) if x is not None]
    if len(given) != 1:
        fail("give exactly one of --issue TEXT, --issue-file FILE or --github-issue URL")
    if issue is not None:
        return issue
    if issue_file is not None:
        try:
            return issue_file.read_text(encoding="utf-8")
        except OSError as error:
            fail(f"cannot read --issue-file {issue_file}: {error.strerror}")
    from agent.github import GitHubError, fetch_issue

    try:
        return fetch_issue(github_issue or "").text()
    except GitHubError as error:
        fail(str(error))
    raise AssertionError("unreachable")


def _step_line(step) -> str:  # noqa: ANN001 - traces.schema.Step
    tool = step.tool_call.name if step.tool_call else ("format error" if step.parse_error else "answer")
    code = "" if step.exit_code is None else f"exit {step.exit_code}"
    flags = " ".join(f for f, on in (("TIMEOUT", step.timed_out), ("OVERFLOW", step.overflowed),
                                      ("DIED", step.session_died)) if on)
    took = (step.model_latency_s or 0) + (step.command_duration_s or 0)
    tokens = (step.prompt_tokens or 0) + (step.completion_tokens or 0)
    first = (step.tool_call.body.splitlines() or [""])[0][:60] if step.tool_call else ""
    return f"{step.index:>3} {tool:<12} {code:<7}{flags:<8} {tokens:>6} tok {took:6.2f}s  {first[:40]}"


def _sandbox_backend(name: str):  # noqa: ANN202 - a Sandbox class
    """The Sandbox class a --sandbox name selects."""
    if name == "docker":
        from sandbox.docker import DockerSandbox

        return DockerSandbox
    if name == "bwrap":
        from sandbox.bwrap import BwrapSandbox

        return BwrapSandbox
    fail(f"unknown --sandbox {name!r}; choose docker or bwrap")


def _constraint(mode: str) -> Optional[str]:
    """The reply regex a --constrained mode selects (None: unconstrained)."""
    from agent.constrained import bounded_reply_regex, reply_regex

    choices = {"off": None, "exact": reply_regex(), "bounded": bounded_reply_regex()}
    if mode not in choices:
        fail(f"unknown --constrained {mode!r}; choose off, exact or bounded")
    return choices[mode]


@app.command()
def solve(
    repo: Optional[str] = typer.Option(None, help="repository: a local path or a git URL"),
    commit: Optional[str] = typer.Option(None, help="commit to check out (default: HEAD)"),
    issue: Optional[str] = typer.Option(None, help="the issue text"),
    issue_file: Optional[Path] = typer.Option(None, help="file holding the issue text"),
    github_issue: Optional[str] = typer.Option(None, help="https://github.com/OWNER/REPO/issues/N"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="CWM server URL (raw /v1/completions), chat:URL, or replay:TRAJECTORY"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
    output: Path = typer.Option(Path("runs/solve"), help="directory for trajectory, patch and diff"),
    example: Optional[str] = typer.Option(None, help="run a bundled example offline, e.g. `intervals`"),
    allow_dirty: bool = typer.Option(False, help="include uncommitted changes of a local repository"),
    max_turns: int = typer.Option(128, help="turn limit (protocol default 128)"),
    timeout: float = typer.Option(120.0, help="per-command timeout in seconds"),
    wall_clock: Optional[float] = typer.Option(None, help="stop the episode after this many seconds"),
    instance_id: Optional[str] = typer.Option(None, help="name for the output files"),
    sandbox: str = typer.Option("docker", help="sandbox backend: docker, or bwrap (no daemon; --image is then "
                                              "a root filesystem directory)"),
    constrained: str = typer.Option("off", help="force well-formed replies with vLLM structured outputs: off, "
                                                "exact (CWM's reply grammar), or bounded (length-capped, for "
                                                "random-weight test models)"),
    trace_tests: Optional[List[str]] = typer.Option(
        None, "--trace-tests", metavar="NODE_ID",
        help="trace this pytest test (e.g. tests/test_x.py::test_y, relative to the repository) before and after "
             "the episode; the traces go to <output>/<id>.traces/ and the viewer steps through them (repeatable)"),
    trace_max_frames: int = typer.Option(10_000, help="--trace-tests: frame bound of each trace"),
) -> None:
    """Solve one issue in one repository: sandbox, CWM loop, trajectory, patch."""
    from agent.loop import LoopConfig
    from agent.models.base import ModelError
    from agent.models.factory import make_model
    from agent.repo import RepoError
    from agent.solve import SolveRequest, solve as run_solve
    from agent.trace_tests import check_node_id
    from agent.tracing.run import TraceLimits
    from images.build import ImageBuildError, ensure_base_image
    from sandbox.base import SandboxConfig, SandboxError

    open_sandbox = _sandbox_backend(sandbox)
    constraint = _constraint(constrained)
    for node_id in trace_tests or []:
        try:
            check_node_id(node_id)
        except ValueError as error:
            fail(str(error))
    if trace_max_frames < 1:
        fail("--trace-max-frames must be at least 1")

    if example is not None:
        folder = EXAMPLES_DIR / example
        if not (folder / "issue.md").is_file():  # an example to solve has a repository and an issue
            known = ", ".join(sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "issue.md").is_file()))
            fail(f"no bundled example {example!r}; known: {known}")
        repo = repo or str(folder / "repo")
        issue_file = issue_file or folder / "issue.md"
        if model == DEFAULT_MODEL_URL:
            model = f"replay:{folder / 'trajectory.jsonl'}"
        instance_id = instance_id or example
    if repo is None:
        fail("pass --repo PATH_OR_GIT_URL (or --example intervals)")
    issue_text = _read_issue(issue, issue_file, github_issue)
    if sandbox == "bwrap" and image is None:
        fail("--sandbox bwrap needs --image ROOTFS_DIR (see `sandbox/rootfs.py` for exporting one)")
    try:
        image = image or ensure_base_image()
    except ImageBuildError as error:
        fail(str(error))
    request = SolveRequest(
        repo=repo, commit=commit, issue=issue_text, image=image, output=output, allow_dirty=allow_dirty,
        instance_id=instance_id, loop=LoopConfig(max_turns=max_turns, wall_clock_s=wall_clock),
        sandbox=SandboxConfig(image=image, timeout_s=timeout),
        trace_tests=trace_tests or [], trace_limits=TraceLimits(max_frames=trace_max_frames),
    )
    out = Console(soft_wrap=True)

    def open_model():  # noqa: ANN202 - agent.models.base.Model
        client = make_model(model, constraint=constraint) if constraint else make_model(model)
        out.print(f"[bold]solving[/] {repo} with {client.info.kind} model {client.info.name or model}",
                  highlight=False)
        return client

    try:
        result = run_solve(request, open_model, open_sandbox,
                           on_step=lambda s: out.print(_step_line(s), highlight=False))
    except (RepoError, ModelError, SandboxError, ValueError) as error:
        fail(str(error))
    ending = result.ending
    out.print(f"[bold]{ending.status}[/] after {ending.steps} steps: {ending.reason}", highlight=False)
    out.print(f"trajectory  {result.trajectory}")
    out.print(f"patch       {result.patch or '(none submitted)'}")
    out.print(f"sandbox git diff {result.sandbox_diff}")
    for traced in ending.test_traces:
        where = traced.path or f"no trace: {traced.error}"
        out.print(f"trace {traced.phase:<6} {traced.outcome:<7} {traced.frames:>5} frames  {traced.node_id}  {where}",
                  highlight=False, markup=False)
    if ending.status != "submitted":
        raise typer.Exit(1)


@app.command()
def view(
    path: Path = typer.Argument(..., help="a trajectory file or a run directory"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback requires a token"),
    port: int = typer.Option(8765, help="port to listen on (0: any free port)"),
    token: Optional[str] = typer.Option(None, help="access token (generated when binding beyond loopback)"),
    open_browser: bool = typer.Option(False, "--open", help="open the viewer in a browser"),
) -> None:
    """Browse trajectories: a run table and a step-by-step player that follows live runs."""
    from agent.viewer.server import run_viewer

    if not path.exists():
        fail(f"{path} does not exist; pass a .traj.jsonl file or a run directory")
    run_viewer(path, host=host, port=port, token=token, open_browser=open_browser)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str = typer.Option(..., help="model folder or Hugging Face name (e.g. facebook/cwm)"),
    tp: int = typer.Option(1, help="tensor-parallel size: GPUs to spread the model over"),
    port: int = typer.Option(8000, help="port of the OpenAI-compatible server"),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    max_model_len: int = typer.Option(131072, help="context length (CWM: 131072)"),
    gpu_memory_utilization: float = typer.Option(0.9, help="share of each GPU's memory vLLM may take"),
    served_model_name: str = typer.Option("cwm", help="model name clients ask for"),
    load_format: str = typer.Option("auto", help="'dummy' serves random weights (speed tests)"),
    quantization: Optional[str] = typer.Option(None, help="fp8: FP8 linear layers, quantized while loading "
                                                          "(half the bytes per token; Hopper GPUs)"),
) -> None:
    """Serve CWM with vLLM (prefix caching, CWM's stop tokens) until Ctrl-C; extra args go to vLLM."""
    from agent.serve import ServeError, ServeOptions, run_server

    if quantization not in (None, "fp8"):
        fail(f"unknown --quantization {quantization!r}; choose fp8 (or leave it out for bf16)")
    try:
        options = ServeOptions(
            model=model, tp=tp, port=port, host=host, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, served_model_name=served_model_name,
            load_format=load_format, quantization=quantization, extra_args=list(ctx.args),
        )
        code = run_server(options)
    except ServeError as error:
        fail(str(error).splitlines()[0])
    except ValueError as error:
        fail(str(error))
    raise typer.Exit(code)


@app.command()
def replay(
    trajectory: Path = typer.Argument(..., help="trajectory file (<instance>.traj.jsonl)"),
    verify_run: bool = typer.Option(False, "--verify",
                                    help="re-run the episode in a fresh sandbox and compare it with the recording"),
    repo: Optional[str] = typer.Option(None, help="repository to replay on (default: the header's; a relative "
                                                  "path is looked up from here, then next to the trajectory)"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the header's)"),
    strict: bool = typer.Option(False, help="compare observations byte for byte (no default normalisers)"),
    normalize: list[str] = typer.Option([], "--normalize", metavar="REGEX",
                                        help="also ignore what REGEX matches in observations (repeatable)"),
    keep: Optional[Path] = typer.Option(None, help="keep the replayed run's files in this directory"),
    all_diffs: bool = typer.Option(False, "--all-diffs", help="show every divergence's diff, not only the first"),
) -> None:
    """Show a recorded trajectory; with --verify, prove it (exit 0 identical, 1 divergence, 2 cannot replay)."""
    from traces.normalize import NormalizerError, select
    from traces.recorder import TrajectoryFormatError, read_trajectory
    from traces.replay import CannotReplay, verify

    out = Console(soft_wrap=True)
    if not verify_run:
        try:
            recorded = read_trajectory(trajectory)
        except TrajectoryFormatError as error:
            fail(str(error))
        for step in recorded.steps:
            out.print(_step_line(step), highlight=False, markup=False)
        ending = recorded.ending
        out.print(f"{ending.status}: {ending.reason}" if ending else "(no ending: the run was killed)",
                  highlight=False, markup=False)
        return
    try:
        normalizers = select(strict=strict, patterns=normalize)
    except NormalizerError as error:
        fail(str(error))
    try:
        report = verify(trajectory, repo=repo, image=image, normalizers=normalizers, output=keep,
                        on_step=lambda s: out.print(_step_line(s), highlight=False, markup=False))
    except CannotReplay as error:
        fail(str(error), code=2)
    out.print(report.render(all_diffs=all_diffs), highlight=False, markup=False)
    raise typer.Exit(report.exit_code)


@app.command("export")
def export(
    trajectories: list[Path] = typer.Argument(..., help="trajectory files (<instance>.traj.jsonl)"),
    to: str = typer.Option(..., "--to", help="swebench (predictions JSONL), swe-agent (.traj files) or cwm "
                                             "(CWM's rollout dump)"),
    output: Path = typer.Option(..., "--output", "-o",
                                help="file to write (swebench, cwm) or directory (swe-agent: OUTPUT/<id>/<id>.traj)"),
    model_name: Optional[str] = typer.Option(None, help="swebench: model_name_or_path (default: the header's model)"),
    layout: str = typer.Option("rollouts", help="cwm: 'rollouts' (CWM's dump lines) or 'transitions' (one per line)"),
) -> None:
    """Export trajectories to SWE-bench predictions, SWE-agent's .traj or CWM's trajectory format."""
    from traces.convert import ConvertError, export_files

    if layout not in ("rollouts", "transitions"):
        fail(f"unknown --layout {layout!r}; choose rollouts or transitions")
    try:
        written = export_files(trajectories, to, output, model_name=model_name, layout=layout)  # type: ignore[arg-type]
    except ConvertError as error:
        fail(str(error))
    for path in written:
        print(path)


@app.command("import-cwm")
def import_cwm(
    source: Path = typer.Argument(..., help="a file in CWM's format (rollout dump lines, a rollout, a trajectory, "
                                            "or one transition per line)"),
    output: Path = typer.Option(Path("runs/imported"), help="directory for the converted trajectories"),
) -> None:
    """Convert CWM-format trajectories into ours, to view them (agent view) or replay them (agent replay)."""
    from traces.convert import ConvertError, import_cwm_file

    try:
        written = import_cwm_file(source, output)
    except ConvertError as error:
        fail(str(error))
    for path in written:
        print(path)


@app.command("eval")
def eval_(
    predictions: Optional[Path] = typer.Argument(None, help="SWE-bench predictions (JSONL/JSON); omit with --gold"),
    instances: Path = typer.Option(..., "--instances", help="SWE-bench JSON/JSONL, issue-URL list or task folder"),
    workers: int = typer.Option(1, help="sandboxes graded at once"),
    gold: bool = typer.Option(False, "--gold", help="grade the instances' reference patches (harness self-check)"),
    report: Optional[Path] = typer.Option(None, help="JSON report (full logs in REPORT.logs/)"),
) -> None:
    """Grade patches in fresh sandboxes (FAIL_TO_PASS and PASS_TO_PASS decide) and report resolved N/M."""
    from agent.envs import EnvError
    from agent.eval import EvalError, run_eval
    from agent.instance_sources import InstanceSourceError

    if predictions is None and not gold:
        fail("give a predictions file, or --gold to grade the instances' reference patches")
    try:
        result = run_eval(predictions, instances, workers=workers, gold=gold, report_path=report)
    except (InstanceSourceError, EvalError, EnvError) as error:
        fail(str(error))
    print(result.summary())
    if result.errors or (gold and result.resolved < len(result.results)):
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def trace(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, help="Python file holding the entry function"),
    function: Optional[str] = typer.Option(None, help="entry function (dotted: Class.method); with --script: trace its first call"),
    args: Optional[str] = typer.Option(None, help='JSON arguments: [positional...], {keyword: ...} or {"args": [...], "kwargs": {...}}'),
    args_py: Optional[str] = typer.Option(None, "--args-py", help='positional arguments as a Python literal tuple, e.g. "((1, 2), {3})"'),
    script: Optional[Path] = typer.Option(None, help="run this file as __main__ (arguments after --)"),
    repo: Optional[Path] = typer.Option(None, help="repository to copy into the sandbox; with `-- pytest NODE` trace that one test"),
    include: List[str] = typer.Option([], "--include", help="also trace these files/directories (relative to --repo); repeatable"),
    output: Path = typer.Option(Path("runs/trace"), "--output", "-o", help="directory for trace.jsonl and prompt.txt"),
    max_frames: int = typer.Option(10_000, help="stop after this many frames"),
    max_seconds: float = typer.Option(30.0, help="stop after this many seconds (wall clock, in the sandbox)"),
    max_bytes: int = typer.Option(16_000_000, help="stop when the frames' JSON reaches this size"),
    max_repr_chars: int = typer.Option(500, help="truncate each value's repr at this many characters"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
    show_prompt: bool = typer.Option(False, "--print-prompt", help="also print the CWM prompt text"),
) -> None:
    """Trace a function call, a script, or one pytest test in a sandbox, in CWM's frame format."""
    from agent.tracing.run import TraceError, TraceLimits, trace_command

    try:
        limits = TraceLimits(max_frames=max_frames, max_seconds=max_seconds, max_bytes=max_bytes,
                             max_repr_chars=max_repr_chars)
        code = trace_command(file=file, function=function, args=args, args_py=args_py, script=script, repo=repo,
                             extra=list(ctx.args), include=include, output=output, limits=limits, image=image,
                             show_prompt=show_prompt)
    except TraceError as error:
        fail(str(error))
    raise typer.Exit(code)


@app.command()
def debug(
    file: Path = typer.Option(..., help="Python file to debug (its source is the model's context)"),
    function: Optional[str] = typer.Option(None, help="entry function"),
    args: Optional[str] = typer.Option(None, help="JSON arguments (as for `agent trace`)"),
    args_py: Optional[str] = typer.Option(None, "--args-py", help="positional arguments as a Python literal tuple"),
    calls: Optional[Path] = typer.Option(None, help="JSON/JSONL file of {function, args, kwargs, args_literal}"),
    all_functions: bool = typer.Option(False, "--all", help="every public top-level function callable without arguments"),
    repo: Optional[Path] = typer.Option(None, help="repository holding --file (copied into the sandbox, traced)"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL",
                              help="http(s)://HOST:PORT/v1 (CWM raw completions), replay:FILE, oracle or perturbed:K"),
    record: Optional[Path] = typer.Option(None, help="append every model answer to this replay file"),
    report: bool = typer.Option(False, "--report", help="score every call and print agreement figures"),
    report_json: Optional[Path] = typer.Option(None, help="also save the report and every comparison as JSON"),
    temperature: float = typer.Option(0.0, help="sampling temperature (0: greedy)"),
    max_tokens: int = typer.Option(2048, help="token cap for one predicted frame"),
    served_model: Optional[str] = typer.Option(None, help="served model name (default: discovered)"),
    max_frames: int = typer.Option(10_000, help="trace bound: frames"),
    max_seconds: float = typer.Option(30.0, help="trace bound: seconds"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
) -> None:
    """Neural debugger: CWM predicts each next frame, the real trace says what happened."""
    from agent.models.base import ModelError
    from agent.tracing.debug import debug_command
    from agent.tracing.run import TraceError, TraceLimits

    try:
        code = debug_command(file=file, function=function, args=args, args_py=args_py, calls_file=calls,
                             all_functions=all_functions, repo=repo, model=model, record=record, report=report,
                             report_json=report_json, temperature=temperature, max_tokens=max_tokens,
                             served_model=served_model, image=image,
                             limits=TraceLimits(max_frames=max_frames, max_seconds=max_seconds))
    except (TraceError, ModelError) as error:
        fail(str(error))
    raise typer.Exit(code)


@sandbox_app.command("prune")
def sandbox_prune(
    all_: bool = typer.Option(False, "--all", help="also remove containers whose owner cannot be checked "
                                                   "(another host, missing labels); never a live owner's"),
    run_id: Optional[str] = typer.Option(None, help="only this run's containers"),
) -> None:
    """Remove sandbox containers and host checkouts whose owning process is gone (a killed run's leftovers)."""
    from agent.repo import reap_workspaces
    from sandbox.base import SandboxError
    from sandbox.docker import connect
    from sandbox.reaper import prune

    checkouts = reap_workspaces()
    try:
        removed = prune(connect(), all=all_, run_id=run_id)
    except SandboxError as error:
        fail(str(error))
    print(f"removed {len(removed)} container(s) and {len(checkouts)} orphaned checkout(s)")

from agent.batch import batch_command  # noqa: E402 - registered after the app exists

app.command("batch")(batch_command)

def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    level = logging.DEBUG if os.environ.get("CWM_DEBUG") else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Run the tracer inside a sandbox: a function call, a script, or one pytest test of a repository.

The tracer is one stdlib-only file (`tracer.py`); it is written into the sandbox next to a JSON
request (this module's `TraceRequest`) and run with the sandbox's python3, so the traced code has
exactly the isolation and limits of any other sandboxed command. The program's own output goes to a
file in the sandbox (never into the session, whose output limit restarts it), and the trace comes
back as JSON Lines through `read_file`.

Bounds are enforced twice: by the tracer itself (frames, bytes, seconds; it writes what it has and
stops the program) and by `timeout` around the process plus the sandbox command timeout, so that
even a program that kills the tracer cannot hold the session.
"""

from __future__ import annotations

import json
import posixpath
import secrets
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.worldmodel.frames import Trace, TraceFormatError, dump_trace, parse_trace, render_prompt
from sandbox.base import Sandbox, SandboxConfig, SandboxError

TRACER_PATH = Path(__file__).with_name("tracer.py")
WORK_DIR = "/tmp/cwm-trace"
STDOUT_LIMIT = 64 * 1024  # bytes of the program's output kept in the result
STDOUT_CAP = 1024 * 1024  # bytes of output written in the sandbox; more breaks the program's pipe
KILL_GRACE_S = 15.0  # the process timeout beyond max_seconds (the tracer stops itself first)


class TraceLimits(BaseModel):
    """The tracer's bounds (docs/trace-format.md, "Bounds")."""

    max_frames: int = Field(10_000, ge=1)
    max_seconds: float = Field(30.0, gt=0)
    max_bytes: int = Field(16_000_000, ge=1024)
    max_repr_chars: int = Field(500, ge=8)


class TraceRequest(BaseModel):
    """The tracer's input, written as JSON into the sandbox; every path is a sandbox path."""

    mode: Literal["function", "script", "pytest"]
    file: str = Field(description="the entry file: its source is the prompt's context")
    function: str | None = Field(None, description="qualified name of the entry function")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    args_literal: str | None = Field(None, description="positional arguments as a Python literal tuple")
    argv: list[str] = Field(default_factory=list)
    pytest_args: list[str] = Field(default_factory=list)
    root: str = Field(description="frames' file names are relative to it; pytest runs in it")
    include: list[str] = Field(default_factory=list, description="traced files and directories")
    output: str
    limits: TraceLimits = Field(default_factory=TraceLimits)
    trace: bool = Field(True, description="False: run the same thing untraced (for overhead figures)")


class TraceResult(BaseModel):
    """A trace and the run that produced it."""

    trace: Trace
    stdout: str = Field("", description="the program's output (first 64 KiB)")
    exit_code: int | None = None
    wall_s: float = 0.0

    def prompt(self) -> str:
        return render_prompt(self.trace)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """`trace.jsonl` and `prompt.txt` (the exact CWM text) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        frames, prompt = directory / "trace.jsonl", directory / "prompt.txt"
        frames.write_text(dump_trace(self.trace), encoding="utf-8")
        prompt.write_text(self.prompt(), encoding="utf-8")
        return frames, prompt


class TraceError(RuntimeError):
    """The trace could not be made; the message says why and what to do."""


# --- staging ----------------------------------------------------------------------------------------


def install_tracer(sandbox: Sandbox) -> str:
    """Write tracer.py into the sandbox (idempotent); returns its sandbox path."""
    sandbox.run(f"mkdir -p {WORK_DIR}")
    target = f"{WORK_DIR}/tracer.py"
    sandbox.write_file(target, TRACER_PATH.read_bytes())
    return target


def stage(sandbox: Sandbox, host_path: Path, into: str = f"{WORK_DIR}/src") -> str:
    """Copy a host file or directory into the sandbox; returns the sandbox path of the copy."""
    host_path = Path(host_path).resolve()
    sandbox.copy_in(host_path, into)
    return posixpath.join(into, host_path.name)


# --- running ---------------------------------------------------------------------------------------


def run_request(sandbox: Sandbox, request: TraceRequest) -> TraceResult:
    """Run one request in `sandbox` and read its trace back."""
    tracer = install_tracer(sandbox)
    tag = secrets.token_hex(4)
    request_path, stdout_path = f"{WORK_DIR}/request-{tag}.json", f"{WORK_DIR}/stdout-{tag}.txt"
    sandbox.write_file(request_path, request.model_dump_json().encode("utf-8"))
    limit = request.limits.max_seconds + KILL_GRACE_S
    command = (
        f"cd {shlex.quote(request.root)} && PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1 "
        f"timeout -k 2 {limit:g} python3 {tracer} {request_path} 2>&1 | head -c {STDOUT_CAP} > {stdout_path}; "
        f"echo \"rc=${{PIPESTATUS[0]}}\"; rm -f {request_path}"
    )
    result = sandbox.run(command, timeout_s=limit + 30)
    if result.failed_session:
        raise TraceError(f"the sandbox session failed while tracing ({result.output[-300:]!r})")
    exit_code = _exit_code(result.output)
    stdout = _read_text(sandbox, stdout_path, STDOUT_LIMIT)
    sandbox.run(f"rm -f {stdout_path}")
    try:
        text = sandbox.read_file(request.output).decode("utf-8")
        sandbox.run(f"rm -f {shlex.quote(request.output)}")
    except FileNotFoundError:
        raise TraceError(f"the tracer wrote no trace (exit {exit_code}); its output: {stdout[-500:]}") from None
    try:
        trace = parse_trace(text, request.output)
    except TraceFormatError as error:
        raise TraceError(str(error)) from None
    return TraceResult(trace=trace, stdout=stdout, exit_code=exit_code, wall_s=result.duration_s)


def _exit_code(output: str) -> int | None:
    for line in reversed(output.splitlines()):
        if line.startswith("rc="):
            return int(line[3:])
    return None


def _read_text(sandbox: Sandbox, path: str, limit: int) -> str:
    try:
        data = sandbox.read_file(path)
    except FileNotFoundError:
        return ""
    return data[:limit].decode("utf-8", errors="replace")


def _output_path() -> str:
    return f"{WORK_DIR}/trace-{secrets.token_hex(4)}.jsonl"


def trace_function(sandbox: Sandbox, file: str, function: str, args: list[Any] | None = None,
                   kwargs: dict[str, Any] | None = None, *, args_literal: str | None = None,
                   include: list[str] | None = None, root: str | None = None,
                   limits: TraceLimits | None = None, trace: bool = True) -> TraceResult:
    """Trace `function(*args, **kwargs)` of the sandbox file `file` (module code runs untraced)."""
    request = TraceRequest(mode="function", file=file, function=function, args=list(args or []),
                           kwargs=dict(kwargs or {}), args_literal=args_literal,
                           root=root or posixpath.dirname(file), include=include or [file],
                           output=_output_path(), limits=limits or TraceLimits(), trace=trace)
    return run_request(sandbox, request)


def trace_script(sandbox: Sandbox, file: str, argv: list[str] | None = None, *, function: str | None = None,
                 include: list[str] | None = None, root: str | None = None,
                 limits: TraceLimits | None = None, trace: bool = True) -> TraceResult:
    """Run `file` as __main__; trace its module code, or the first call of `function` in it."""
    request = TraceRequest(mode="script", file=file, function=function, argv=list(argv or []),
                           root=root or posixpath.dirname(file), include=include or [file],
                           output=_output_path(), limits=limits or TraceLimits(), trace=trace)
    return run_request(sandbox, request)


def trace_test(sandbox: Sandbox, repo_dir: str, node_id: str, pytest_args: list[str] | None = None, *,
               include: list[str] | None = None, limits: TraceLimits | None = None,
               trace: bool = True) -> TraceResult:
    """Run one pytest test in-process under the tracer, tracing the repository's files only.

    `node_id` is `path/test_x.py::test_y` or `path/test_x.py::TestCls::test_y[param]`, relative to
    `repo_dir`; the entry is that test function (its fixtures' setup and teardown are not traced).
    """
    file, qualname = split_node_id(node_id)
    request = TraceRequest(mode="pytest", file=posixpath.join(repo_dir, file), function=qualname,
                           pytest_args=[node_id, "-q", *(pytest_args or [])], root=repo_dir,
                           include=include or [repo_dir], output=_output_path(),
                           limits=limits or TraceLimits(), trace=trace)
    return run_request(sandbox, request)


def split_node_id(node_id: str) -> tuple[str, str]:
    """`tests/t.py::TestA::test_b[1]` -> (`tests/t.py`, `TestA.test_b`)."""
    file, sep, rest = node_id.partition("::")
    if not sep or not rest:
        raise TraceError(f"'{node_id}' is not one test: use path/test_file.py::test_name")
    return file, rest.split("[", 1)[0].replace("::", ".")


def pytest_node_from_argv(argv: list[str]) -> tuple[str, list[str]]:
    """From `pytest tests/t.py::test_x -k ...` (or `python -m pytest ...`): the node id and the rest."""
    words = list(argv)
    if words[:3] in (["python", "-m", "pytest"], ["python3", "-m", "pytest"]):
        words = words[3:]
    elif words[:1] in (["pytest"], ["py.test"]):
        words = words[1:]
    nodes = [w for w in words if "::" in w and not w.startswith("-")]
    if len(nodes) != 1:
        raise TraceError("give exactly one test to trace, e.g. `-- pytest tests/test_x.py::test_y`")
    return nodes[0], [w for w in words if w != nodes[0]]


# --- host conveniences (used by `agent trace` and `agent debug`) ------------------------------------


def open_sandbox(image: str | None = None, run_id: str = "trace") -> Sandbox:
    """A fresh Docker sandbox of the project's base image (or `image`), network off."""
    from images.build import ensure_base_image
    from sandbox.docker import DockerSandbox

    try:
        return DockerSandbox(SandboxConfig(image=image or ensure_base_image(), run_id=run_id))
    except SandboxError as error:
        raise TraceError(str(error)) from None


def parse_call_args(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """`--args` JSON: an array (positional), an object (keywords) or {"args": [...], "kwargs": {...}}."""
    if not text:
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise TraceError(f"--args is not JSON ({error}); use e.g. '[1, \"a\"]' or '{{\"n\": 3}}'") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict) and set(value) <= {"args", "kwargs"} and value:
        return list(value.get("args", [])), dict(value.get("kwargs", {}))
    if isinstance(value, dict):
        return [], value
    return [value], {}


# --- `agent trace` ----------------------------------------------------------------------------------


def stage_inputs(sandbox: Sandbox, file: Path | None, repo: Path | None) -> tuple[str | None, str]:
    """Copy what is traced into the sandbox: the repository (then `file` is inside it) or the file alone.

    Returns (sandbox path of the file or None, sandbox root). A file alone is copied without its
    neighbours: give --repo to trace code that imports sibling modules.
    """
    if repo is not None:
        repo = Path(repo).resolve()
        if not repo.is_dir():
            raise TraceError(f"--repo {repo} is not a directory")
        root = stage(sandbox, repo, f"{WORK_DIR}/repo")
        if file is None:
            return None, root
        path = Path(file)
        if path.resolve().is_relative_to(repo) and path.resolve().is_file():
            relative = path.resolve().relative_to(repo)  # a path from here into the repository
        elif not path.is_absolute() and (repo / path).is_file():
            relative = path  # a path relative to the repository
        else:
            raise TraceError(f"{file} is not a file of the repository {repo}")
        return posixpath.join(root, relative.as_posix()), root
    if file is None:
        raise TraceError("give --file FILE (with --function), --script FILE, or --repo PATH -- pytest NODE")
    path = Path(file).resolve()
    if not path.is_file():
        raise TraceError(f"{file} is not a file")
    copied = stage(sandbox, path)
    return copied, posixpath.dirname(copied)


def trace_command(*, file: Path | None = None, function: str | None = None, args: str | None = None,
                  args_py: str | None = None, script: Path | None = None, repo: Path | None = None,
                  extra: list[str] | None = None, include: list[str] | None = None,
                  output: Path = Path("runs/trace"), limits: TraceLimits | None = None,
                  image: str | None = None, show_prompt: bool = False,
                  write: Any = print) -> int:
    """What `agent trace` does; returns the exit code (0: a complete trace, 1: cut short, 2: error)."""
    extra = list(extra or [])
    modes = [name for name, given in (("--file", file and not script), ("--script", script),
                                      ("pytest", repo and not file and not script)) if given]
    if len(modes) != 1:
        raise TraceError("give one of: --file F --function NAME [--args JSON], --script F [-- ARGV], "
                         "or --repo PATH -- pytest tests/test_x.py::test_y")
    if modes[0] == "--file" and extra:
        raise TraceError(f"arguments after -- ({' '.join(extra)}) are for --script or `--repo PATH -- pytest NODE`")
    positional, keywords = parse_call_args(args)
    sandbox = open_sandbox(image, run_id="agent-trace")
    try:
        if modes[0] == "pytest":
            node, rest = pytest_node_from_argv(extra)
            _, root = stage_inputs(sandbox, None, repo)
            result = trace_test(sandbox, root, node, rest, include=_sandbox_includes(include, root),
                                limits=limits)
        else:
            entry, root = stage_inputs(sandbox, script or file, repo)
            assert entry is not None
            includes = _sandbox_includes(include, root) or ([root] if repo else None)
            if modes[0] == "--script":
                result = trace_script(sandbox, entry, extra, function=function, include=includes, root=root,
                                      limits=limits)
            else:
                if not function:
                    raise TraceError("--file needs --function NAME (or use --script to run the file)")
                result = trace_function(sandbox, entry, function, positional, keywords, args_literal=args_py,
                                        include=includes, root=root, limits=limits)
    finally:
        sandbox.close()
    frames_path, prompt_path = result.write(output)
    end = result.trace.end
    write(f"{end.status}: {end.frames} frames, {end.bytes} bytes, {end.elapsed_s:.3f} s in the sandbox"
          + (f"; {end.error}" if end.error else ""))
    write(f"frames: {frames_path}\nprompt: {prompt_path}")
    if show_prompt:
        write(result.prompt())
    if end.status == "not_called":
        write(f"the entry was never called; program output:\n{result.stdout[-2000:]}")
        return 2
    return 0 if result.trace.finished else 1


def _sandbox_includes(include: list[str] | None, root: str) -> list[str] | None:
    """--include paths (relative to the repository, or absolute sandbox paths) as sandbox paths."""
    if not include:
        return None
    return [p if p.startswith("/") else posixpath.join(root, p) for p in include]

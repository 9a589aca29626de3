"""Execution tracer in CWM's frame format. Runs INSIDE the sandbox: one file, standard library only.

It is copied into the sandbox and run there as `python3 tracer.py REQUEST.json` (the request is the
JSON form of `agent.worldmodel.run.TraceRequest`), so that the traced program gets the sandbox's
isolation, limits and interpreter, and nothing of the host. It writes JSON Lines: one header record,
one record per frame, one ending record; docs/trace-format.md is the reference for every rule below.

Why `sys.settrace` and not `sys.monitoring`: CWM was trained on traces made of Python's four trace
events (call, line, return, exception), and the sandbox interpreter is 3.11, which has no monitoring
API. The host imports this module too (for the value-rendering rules, so that the debugger
normalises predicted values exactly as the tracer normalises real ones); importing it has no side
effects.
"""

from __future__ import annotations

import ast
import dis
import json
import linecache
import os
import re
import sys
import threading
import time
import tokenize

FORMAT_VERSION = 1
START_MARKER = "  # << START_OF_TRACE"
UNCHANGED = ".."
TRUNCATION_MARKER = "...<truncated>"
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
ADDRESS_NORMALISED = " at 0x..."
# Code objects of comprehensions and generator expressions: attributed to the line that holds them
# (Python 3.12 inlines list/set/dict comprehensions anyway; see docs/trace-format.md).
SKIPPED_CODE_NAMES = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
EXCLUDED_PATH_PARTS = ("/site-packages/", "/dist-packages/")
CO_OPTIMIZED = 0x0001  # set for function scopes; unset for module and class bodies
CO_SUSPENDABLE = 0x0020 | 0x0100 | 0x0200  # generator, coroutine, async generator
YIELD_VALUE = dis.opmap["YIELD_VALUE"]
# The instructions a return event stops at when the frame returns or yields (RETURN_CONST is 3.12's);
# at any other, an exception is leaving the frame.
LEAVING_NORMALLY = frozenset(dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST", "YIELD_VALUE")
                             if name in dis.opmap)
DEFAULT_LIMITS = {"max_frames": 10_000, "max_seconds": 30.0, "max_bytes": 16_000_000, "max_repr_chars": 500}
EXIT_OK, EXIT_SETUP_ERROR, EXIT_BOUND = 0, 2, 3
FINISHED = ("returned", "raised")
_SMALL_CONTAINER = 16  # below this many items the builtin repr is used as is (it is C and fast)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_RECURSIVE = {list: "[...]", tuple: "(...)", dict: "{...}", set: "set(...)", frozenset: "frozenset(...)"}


# --- values --------------------------------------------------------------------------------------


def normalize_text(text: str, max_chars: int, complete: bool = True) -> str:
    """The rules every value string obeys: addresses normalised, then cut at `max_chars` + marker."""
    text = ADDRESS.sub(ADDRESS_NORMALISED, text)
    if len(text) > max_chars or not complete:
        return text[:max_chars] + TRUNCATION_MARKER
    return text


def render_value(value: object, max_chars: int) -> str:
    """`repr(value)` under the format's rules; never raises (a failing repr becomes a placeholder)."""
    try:
        text, complete = bounded_repr(value, 2 * max_chars + 64)
    except Exception as error:  # noqa: BLE001 - any repr may raise anything
        return f"<repr of {type(value).__qualname__} raised {type(error).__name__}>"
    return normalize_text(text, max_chars, complete)


def bounded_repr(value: object, budget: int) -> tuple[str, bool]:
    """(text, complete): `repr(value)` itself, or exactly its first `budget` characters and False.

    Why: a local holding a million-element list is rendered at every line of its scope; repr of
    the whole list each time would make tracing quadratic. Large strings, bytes and built-in
    containers of exact type are rendered only as far as needed; everything else uses repr().
    """
    kind = type(value)
    if kind is str or kind is bytes:
        if len(value) <= budget:  # type: ignore[arg-type]
            return repr(value), True
        return _long_text_repr(value, budget), False  # type: ignore[arg-type]
    if kind in _CONTAINERS and len(value) > _SMALL_CONTAINER:  # type: ignore[arg-type]
        out = _Pieces(budget)
        try:
            _emit(value, out, set())
        except _Full:
            return "".join(out.parts)[:budget], False
        return "".join(out.parts), True
    return repr(value), True


def _long_text_repr(text: str | bytes, budget: int) -> str:
    """The first `budget` characters of repr(text) without rendering all of it.

    repr picks double quotes only when the text holds a single quote and no double quote; the head
    is given one extra character (beyond the cut) when needed so that it picks the same quotes.
    """
    head = text[:budget]
    single, double = ("'", '"') if isinstance(text, str) else (b"'", b'"')
    full_double = single in text and double not in text  # type: ignore[operator]
    head_double = single in head and double not in head  # type: ignore[operator]
    if full_double and not head_double:
        head = head + single  # type: ignore[operator]
    elif head_double and not full_double:
        head = head + double  # type: ignore[operator]
    return repr(head)[:budget]


class _Full(Exception):
    """The bounded rendering has its budget of characters."""


class _Pieces:
    def __init__(self, budget: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.budget = budget

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= self.budget:
            raise _Full


def _emit(value: object, out: _Pieces, active: set[int]) -> None:
    """Append repr(value) to `out` piece by piece, exactly as the builtin repr would write it."""
    kind = type(value)
    if kind in _CONTAINERS:
        if id(value) in active:
            out.add(_RECURSIVE[kind])
            return
        active.add(id(value))
        try:
            _emit_container(value, kind, out, active)
        finally:
            active.discard(id(value))
    elif kind is str or kind is bytes:
        left = out.budget - out.size + 1
        out.add(repr(value) if len(value) <= left else _long_text_repr(value, left))  # type: ignore[arg-type]
    else:
        out.add(repr(value))


def _emit_container(value, kind, out: _Pieces, active: set[int]) -> None:  # noqa: ANN001
    if kind is dict:
        out.add("{")
        for number, (key, item) in enumerate(value.items()):
            if number:
                out.add(", ")
            _emit(key, out, active)
            out.add(": ")
            _emit(item, out, active)
        out.add("}")
        return
    if kind in (set, frozenset) and not value:
        out.add(f"{kind.__name__}()")
        return
    opening, closing = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"),
                        frozenset: ("frozenset({", "})")}[kind]
    out.add(opening)
    for number, item in enumerate(value):
        if number:
            out.add(", ")
        _emit(item, out, active)
    if kind is tuple and len(value) == 1:
        out.add(",")
    out.add(closing)


# --- source ---------------------------------------------------------------------------------------

# A START_OF_TRACE comment as people write it (CWM's demos put `  # << START_OF_TRACE` at the end of
# the entry's def line); matched at the end of a comment token, with the blanks before it.
MARKER_TAIL = re.compile(r"[ \t\f]*#[ \t]*<<[ \t]*START_OF_TRACE[ \t\f]*$")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def read_source(path: str) -> str:
    """A source file as Python reads it (PEP 263 encoding declaration honoured)."""
    with tokenize.open(path) as handle:
        return handle.read()


def decode_source(data: bytes) -> str:
    """Source bytes as `read_source` gives them: PEP 263 encoding (BOM dropped), universal newlines.

    Why: a file read back from the sandbox (the viewer's sources) must show the same text as the
    frames, which Python decoded; decoding every file as UTF-8 would garble a latin-1 module.
    """
    import io

    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        text = data.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def physical_lines(source: str) -> list[str]:
    """The lines of `source` as Python numbers them, each with its ending.

    Why not `str.splitlines`: it also breaks at form feeds, `\\x1c`-`\\x1e`, `\\x85`, U+2028 and
    U+2029, which Python does not count as line ends (a form feed between functions is common in
    older code), so line numbers from the interpreter would point at the wrong text.
    """
    return _LINE.findall(source)


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    """The source's tokens; those before an error only (the source may not be valid Python)."""
    lines = iter(physical_lines(source))
    found: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(lambda: next(lines, "")):
            found.append(token)
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def marker_columns(source: str) -> dict[int, int]:
    """line -> column where a START_OF_TRACE comment (and the blanks before it) starts.

    Found among comment tokens only, so a string holding the marker's text is not one.
    """
    if "START_OF_TRACE" not in source:
        return {}
    found: dict[int, int] = {}
    lines = physical_lines(source)
    for token in _tokens(source):
        if token.type != tokenize.COMMENT:
            continue
        match = MARKER_TAIL.search(token.string)
        if match is None:
            continue
        line, column = token.start
        if match.start() == 0 or not token.string[: match.start()].strip():
            text = lines[line - 1]
            found[line] = len(text[:column].rstrip(" \t\f"))  # the whole comment is the marker
        else:
            found[line] = column + match.start()
    return found


def strip_marker(line: str, column: int | None) -> str:
    """`line` without the marker comment that starts at `column` (its ending kept)."""
    if column is None:
        return line
    body = line.rstrip("\r\n")
    return line[:column] + line[len(body):]


def strip_markers(source: str) -> str:
    """`source` with every START_OF_TRACE comment removed (line count and endings unchanged)."""
    columns = marker_columns(source)
    if not columns:
        return source
    lines = physical_lines(source)
    return "".join(strip_marker(text, columns.get(number)) for number, text in enumerate(lines, start=1))


def marker_line(source: str, line: int) -> int:
    """The line of the entry's marker: `line` (the `def`), or the first line after it that can end
    in a comment.

    A `def` line continued by a backslash, or ending inside a string (a multi-line default), cannot
    carry a comment; the marker then goes to the first later line of the signature that ends a
    physical line of code (where tokenize sees NL or NEWLINE).
    """
    ends = {token.start[0] for token in _tokens(source) if token.type in (tokenize.NL, tokenize.NEWLINE)}
    following = [number for number in ends if number >= line]
    return min(following) if following else line


def mark_source(source: str, line: int) -> str:
    """The prompt's context: markers already in `source` removed, then `  # << START_OF_TRACE`
    appended to line `line` (1-based), after its code (trailing blanks dropped on that line only).

    Programs written for CWM often carry the marker already (its demos do): it must appear once,
    on the entry, and nowhere else.
    """
    lines = physical_lines(strip_markers(source))
    if not 1 <= line <= len(lines):
        raise ValueError(f"entry line {line} is outside the source ({len(lines)} lines)")
    text = lines[line - 1]
    body = text.rstrip("\r\n")
    lines[line - 1] = body.rstrip(" \t\f") + START_MARKER + text[len(body):]
    return "".join(lines)


def definition_line(source: str, qualname: str) -> int | None:
    """1-based line of the `def` of `qualname` (e.g. `f`, `Cls.meth`, `outer.<locals>.inner`)."""
    parts = [p for p in qualname.split(".") if p != "<locals>"]
    scopes: list[ast.AST] = [ast.parse(source)]
    found: ast.AST | None = None
    for part in parts:
        found = None
        for scope in scopes:
            for node in ast.walk(scope):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                    found = node
                    break
            if found is not None:
                break
        if found is None:
            return None
        scopes = [found]
    return getattr(found, "lineno", None)


def def_lines(source: str) -> dict[int, int]:
    """first decorator line -> `def` line, for every decorated function and class of `source`.

    Why: CPython 3.11 reports a decorated function's call at its first decorator; the frame shows
    the `def` line, which a scan of the text cannot find reliably (decorator arguments can span
    blank lines, comments and strings).
    """
    found: dict[int, int] = {}
    for node in ast.walk(ast.parse(source)):
        decorators = getattr(node, "decorator_list", None)
        if decorators and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[min(d.lineno for d in decorators)] = node.lineno
    return found


def module_entry_line(source: str) -> int:
    """Where a module-level trace starts: the last line of the first logical line of code.

    A module has no `def` line and Python reports its call event at line 0; the end of the first
    logical line is the first place where a trailing comment (the START_OF_TRACE marker) cannot
    fall inside a multi-line string.
    """
    for token in _tokens(source):
        if token.type == tokenize.NEWLINE:
            return token.start[0]
    return 1


# --- the tracer -----------------------------------------------------------------------------------


class _Scope:
    """One activation of a traced code object: a call event up to its return event."""

    __slots__ = ("ident", "depth", "memory", "last_event", "hide_dunder", "function", "file")

    def __init__(self, ident: int, depth: int, hide_dunder: bool, function: str, file: str) -> None:
        self.ident = ident
        self.depth = depth
        self.memory: dict[str, str] = {}
        self.last_event = "call"
        self.hide_dunder = hide_dunder
        self.function = function
        self.file = file


class Tracer:
    """Turns trace events of the main thread into frame records, within the request's bounds.

    `is_entry(code)` says which code object starts the trace; `wanted(filename)` which files are
    traced once it has started. `terminate(code)` ends the process after a bound was hit (tests
    on the host may pass something else than os._exit).
    """

    def __init__(self, request: dict, is_entry, wanted, terminate=os._exit) -> None:  # noqa: ANN001
        limits = dict(DEFAULT_LIMITS, **(request.get("limits") or {}))
        self.max_frames = int(limits["max_frames"])
        self.max_bytes = int(limits["max_bytes"])
        self.max_seconds = float(limits["max_seconds"])
        self.max_chars = int(limits["max_repr_chars"])
        self.root = request["root"]
        self.output = request["output"]
        self.header: dict = {}
        self.is_entry = is_entry
        self.wanted = wanted
        self.terminate = terminate
        self.started = time.monotonic()
        self.deadline = self.started + self.max_seconds
        self.lines: list[str] = []
        self.bytes = 0
        self.active = False
        self.stopped = False
        self.entry_frame = None
        self.entry_started: float | None = None
        self.entry_elapsed: float | None = None
        self.status = "not_called"
        self.scopes: dict[object, _Scope] = {}
        self.next_scope = 0
        self._def_lines: dict[object, int] = {}
        self._decorated: dict[str, dict[int, int]] = {}  # per file: first decorator line -> def line
        self._markers: dict[str, dict[int, int]] = {}  # per file: line -> START_OF_TRACE column
        self._names: dict[str, str] = {}
        self._finish_lock = threading.Lock()
        self._finished = False
        self._done = threading.Event()

    # -- the trace functions (hot path) --

    def global_trace(self, frame, event, arg):  # noqa: ANN001, ANN201
        """sys.settrace's function: sees only `call` events; returns the local trace or None."""
        if self.stopped:
            return None
        code = frame.f_code
        if not self.active:
            if not self.is_entry(code):
                return None
            self.active = True
            self.entry_frame = frame
            self.entry_started = time.perf_counter()
        elif code.co_name in SKIPPED_CODE_NAMES or not self.wanted(code.co_filename):
            return None
        scope = _Scope(self.next_scope, len(self.scopes), not code.co_flags & CO_OPTIMIZED,
                       getattr(code, "co_qualname", code.co_name), self._relative(code.co_filename))
        self.next_scope += 1
        self.scopes[frame] = scope
        self._frame("call", frame, scope, self._call_line(frame), None)
        return self.local_trace

    def local_trace(self, frame, event, arg):  # noqa: ANN001, ANN201
        if self.stopped:
            return None
        scope = self.scopes.get(frame)
        if scope is None:  # a frame we stopped following
            return None
        if event == "line":
            self._frame("line", frame, scope, frame.f_lineno, None)
        elif event == "exception":
            self._frame("exception", frame, scope, frame.f_lineno, render_value(arg[1], self.max_chars))
        elif event == "return":
            unwinding = _unwinding(frame)
            self._frame("return", frame, scope, frame.f_lineno, render_value(arg, self.max_chars), unwinding)
            del self.scopes[frame]
            if frame is self.entry_frame and (unwinding or not _suspended(frame)):
                self.entry_elapsed = time.perf_counter() - (self.entry_started or 0.0)
                self.status = "raised" if unwinding else "returned"
                self.stopped = True
                sys.settrace(None)
                return None
        scope.last_event = event
        return self.local_trace

    # -- frames --

    def _frame(self, event: str, frame, scope: _Scope, lineno: int, arg: str | None,  # noqa: ANN001
               unwinding: bool = False) -> None:
        record = {
            "type": "frame",
            "index": len(self.lines),
            "event": event,
            "scope": scope.ident,
            "depth": scope.depth,
            "function": scope.function,
            "file": scope.file,
            "lineno": lineno,
            "source": self._line(frame.f_code.co_filename, lineno),
            "locals": self._locals(frame, scope, event) if event in ("call", "line") else None,
            "arg": arg,
        }
        if event == "return":
            record["unwinding"] = unwinding
        text = json.dumps(record, ensure_ascii=False)
        size = len(text.encode("utf-8")) + 1
        if len(self.lines) >= self.max_frames:
            self.stop("max_frames")
        if self.bytes + size > self.max_bytes:
            self.stop("max_bytes")
        if time.monotonic() > self.deadline:
            self.stop("max_seconds")
        self.lines.append(text)
        self.bytes += size

    def _locals(self, frame, scope: _Scope, event: str) -> dict[str, str]:  # noqa: ANN001
        current: dict[str, str] = {}
        for name, value in frame.f_locals.items():
            if not name.isidentifier():  # `.0` of comprehensions, `@py_assert1` of pytest
                continue
            if scope.hide_dunder and name.startswith("__") and name.endswith("__"):
                continue
            current[name] = render_value(value, self.max_chars)
        if event == "call":
            shown = dict(current)
        else:
            memory = scope.memory
            shown = {name: UNCHANGED if memory.get(name) == text else text for name, text in current.items()}
        scope.memory = current
        return shown

    def _call_line(self, frame) -> int:  # noqa: ANN001
        """The line of a call event: the `def` line for a fresh call, the `yield` line on resume."""
        code = frame.f_code
        if code.co_name == "<module>":
            return self._cached_line(code, lambda: module_entry_line(read_source(code.co_filename)))
        if frame.f_lineno != code.co_firstlineno:
            return frame.f_lineno
        return self._cached_line(code, lambda: self._def_line(code.co_filename, code.co_firstlineno))

    def _cached_line(self, code, compute) -> int:  # noqa: ANN001
        line = self._def_lines.get(code)
        if line is None:
            try:
                line = compute()
            except (OSError, SyntaxError, ValueError):
                line = code.co_firstlineno
            self._def_lines[code] = line
        return line

    def _def_line(self, filename: str, first: int) -> int:
        """The `def` line of a function whose code starts at `first` (its first decorator, if any)."""
        if not linecache.getline(filename, first).lstrip().startswith("@"):
            return first
        decorated = self._decorated.get(filename)
        if decorated is None:  # parsed once per file, and only for files with a decorated call
            try:
                decorated = def_lines("".join(linecache.getlines(filename)))
            except (SyntaxError, ValueError):
                decorated = {}
            self._decorated[filename] = decorated
        return decorated.get(first, first)

    def _line(self, filename: str, lineno: int) -> str:
        """The frame's source line: as in the file, newline included, without a START_OF_TRACE comment."""
        markers = self._markers.get(filename)
        if markers is None:
            markers = self._markers[filename] = marker_columns("".join(linecache.getlines(filename)))
        text = strip_marker(linecache.getline(filename, lineno), markers.get(lineno))
        return text if text.endswith("\n") else text + "\n"

    def _relative(self, filename: str) -> str:
        """Paths under the root are shown relative to it (traces do not depend on where it is)."""
        name = self._names.get(filename)
        if name is None:
            inside = filename.startswith(self.root.rstrip("/") + "/")
            name = self._names[filename] = os.path.relpath(filename, self.root) if inside else filename
        return name

    # -- ending --

    def stop(self, status: str) -> None:
        """A bound was hit: write what was recorded and end the process (see the format's rules)."""
        self.stopped = True
        sys.settrace(None)
        self.finish(status)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self.terminate(EXIT_BOUND)

    def watch(self) -> None:
        """Start the wall-clock watchdog: it ends a program stuck where no trace event fires."""

        def watchdog() -> None:
            if not self._done.wait(max(0.0, self.deadline - time.monotonic())):
                self.stop("max_seconds")

        threading.Thread(target=watchdog, name="cwm-trace-watchdog", daemon=True).start()

    def finish(self, status: str | None = None, **ending: object) -> None:
        """Write header, frames and ending once (atomically: a temporary file renamed into place)."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
            self._done.set()
            lines = list(self.lines)
            end = {
                "type": "end",
                "status": status or self.status,
                "frames": len(lines),
                "bytes": sum(len(line.encode("utf-8")) + 1 for line in lines),
                "elapsed_s": round(time.monotonic() - self.started, 6),
                "entry_elapsed_s": None if self.entry_elapsed is None else round(self.entry_elapsed, 6),
            }
            end.update(ending)
            temporary = self.output + ".part"
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(self.header, ensure_ascii=False) + "\n")
                for line in lines:
                    handle.write(line + "\n")
                handle.write(json.dumps(end, ensure_ascii=False) + "\n")
            os.replace(temporary, self.output)


def _unwinding(frame) -> bool:  # noqa: ANN001
    """True when a return event is an exception leaving the frame, not a return or a yield.

    Why the instruction and not the previous event: a bare `raise` in a handler and an exception
    passing through a `finally` fire no exception event in the frame they leave, and a `for` loop over
    an iterator written in Python ends with an exception event (its StopIteration) and then returns
    normally.
    """
    raw, offset = frame.f_code.co_code, frame.f_lasti
    return not (0 <= offset < len(raw) and raw[offset] in LEAVING_NORMALLY)


def _suspended(frame) -> bool:  # noqa: ANN001
    """True when a return event of a generator or coroutine frame is a `yield` (it will resume)."""
    code = frame.f_code
    if not code.co_flags & CO_SUSPENDABLE:
        return False
    raw, offset = code.co_code, frame.f_lasti
    return 0 <= offset < len(raw) and raw[offset] == YIELD_VALUE


# --- running a request ----------------------------------------------------------------------------


class SetupError(Exception):
    """The request cannot run (missing file or function, bad arguments): exit code 2."""


def _file_filter(request: dict):  # noqa: ANN201
    """`wanted(filename)`: the request's files and directories, never installed packages or us."""
    files, directories = set(), []
    for path in request.get("include") or []:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            directories.append(path.rstrip("/") + "/")
        else:
            files.add(path)
    me = os.path.abspath(__file__)
    cache: dict[str, bool] = {}

    def wanted(filename: str) -> bool:
        verdict = cache.get(filename)
        if verdict is None:
            verdict = (
                (filename in files or filename.startswith(tuple(directories)))
                and not any(part in filename for part in EXCLUDED_PATH_PARTS)
                and filename != me
            )
            cache[filename] = verdict
        return verdict

    return wanted


def _load_module(path: str):  # noqa: ANN202
    """Import a file by path as a module named after it (its directory first on sys.path)."""
    import importlib.util

    name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SetupError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _resolve(module, qualname: str):  # noqa: ANN001, ANN202
    target = module
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SetupError(f"{module.__file__} has no {qualname!r}") from None
    return target


def _entry_code(function) -> object:  # noqa: ANN001
    import inspect

    function = inspect.unwrap(getattr(function, "__func__", function))
    code = getattr(function, "__code__", None)
    if code is None:
        raise SetupError(f"{function!r} is not a Python function: nothing to trace")
    return code


def _arguments(request: dict) -> tuple[list, dict]:
    args, kwargs = list(request.get("args") or []), dict(request.get("kwargs") or {})
    literal = request.get("args_literal")
    if literal:
        value = ast.literal_eval(literal)
        args = list(value) if isinstance(value, (tuple, list)) else [value]
    return args, kwargs


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run(request: dict) -> int:
    """Run one request: trace it (or, with "trace": false, only time it) and write the output."""
    mode = request["mode"]
    path = os.path.abspath(request["file"])
    qualname = request.get("function")
    request.setdefault("include", [path])
    wanted = _file_filter(request)
    trace = request.get("trace", True)

    entry: dict = {"code": None}  # function mode: the code object, known once the module is imported
    wanted_name = qualname or "<module>"

    def is_entry(code) -> bool:  # noqa: ANN001
        if mode == "function":
            return code is entry["code"]
        return code.co_filename == path and getattr(code, "co_qualname", code.co_name) == wanted_name

    tracer = Tracer(request, is_entry, wanted)
    try:
        source = read_source(path)
    except OSError as error:
        raise SetupError(f"cannot read {path}: {error.strerror}") from None
    line = definition_line(source, qualname) if qualname else module_entry_line(source)
    if line is None:
        raise SetupError(f"no definition of {qualname!r} in {path}")
    line = marker_line(source, line)
    tracer.header = {
        "type": "header",
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "file": tracer._relative(path),
        "function": qualname,
        "entry_line": line,
        "args": request.get("args") or [],
        "kwargs": request.get("kwargs") or {},
        "args_literal": request.get("args_literal"),
        "argv": request.get("argv") or [],
        "pytest_args": request.get("pytest_args") or [],
        "root": tracer.root,
        "include": [tracer._relative(os.path.abspath(p)) for p in request["include"]],
        "python": sys.version.split()[0],
        "hash_seed": os.environ.get("PYTHONHASHSEED"),
        "limits": dict(DEFAULT_LIMITS, **(request.get("limits") or {})),
        "traced": bool(trace),
        "source": source,
    }
    tracer.watch()
    ending: dict = {}
    if mode == "function":
        ending = _run_function(request, path, qualname, tracer, entry, trace)
    elif mode == "script":
        ending = _run_script(request, path, tracer, trace)
    elif mode == "pytest":
        ending = _run_pytest(request, tracer, trace)
    else:
        raise SetupError(f"unknown mode {mode!r}")
    sys.settrace(None)
    tracer.finish(None if trace else "untraced", **ending)
    return EXIT_OK


def _run_function(request: dict, path: str, qualname: str | None, tracer: Tracer, entry: dict, trace: bool) -> dict:
    import inspect

    if not qualname:
        raise SetupError("function mode needs a function name")
    try:
        module = _load_module(path)
    except SetupError:
        raise
    except BaseException as error:  # noqa: BLE001 - the module's own code failed at import
        raise SetupError(f"importing {path} failed: {_describe(error)}") from None
    function = _resolve(module, qualname)
    entry["code"] = _entry_code(function)
    try:
        args, kwargs = _arguments(request)
    except (ValueError, SyntaxError) as error:
        raise SetupError(f"bad arguments: {_describe(error)}") from None
    ending: dict = {"result": None, "error": None}
    started = time.perf_counter()
    if trace:
        sys.settrace(tracer.global_trace)
    try:
        result = function(*args, **kwargs)
        if inspect.isgenerator(result):  # a generator entry is driven to its end
            result = list(result)
        sys.settrace(None)
        ending["result"] = render_value(result, tracer.max_chars)
    except BaseException as error:  # noqa: BLE001 - the traced program raised out of the entry
        sys.settrace(None)
        ending["error"] = _describe(error)
    ending["run_elapsed_s"] = round(time.perf_counter() - started, 6)
    if not trace:
        tracer.entry_elapsed = ending["run_elapsed_s"]
    return ending


def _run_script(request: dict, path: str, tracer: Tracer, trace: bool) -> dict:
    import runpy

    sys.argv = [path, *(request.get("argv") or [])]
    sys.path.insert(0, os.path.dirname(path))
    ending: dict = {"exit_code": 0, "error": None}
    started = time.perf_counter()
    if trace:
        sys.settrace(tracer.global_trace)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as error:
        ending["exit_code"] = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    except BaseException as error:  # noqa: BLE001 - the script raised
        ending["exit_code"] = 1
        ending["error"] = _describe(error)
    sys.settrace(None)
    ending["run_elapsed_s"] = round(time.perf_counter() - started, 6)
    return ending


def _run_pytest(request: dict, tracer: Tracer, trace: bool) -> dict:
    os.chdir(tracer.root)
    sys.path.insert(0, tracer.root)  # as `python -m pytest` does
    try:
        import pytest
    except ImportError:
        raise SetupError("pytest is not installed in the sandbox's python3") from None
    args = list(request.get("pytest_args") or []) + ["-p", "no:cacheprovider"]
    started = time.perf_counter()
    if trace:
        sys.settrace(tracer.global_trace)
    try:
        code = int(pytest.main(args))
    finally:
        sys.settrace(None)
    return {"exit_code": code, "error": None, "run_elapsed_s": round(time.perf_counter() - started, 6)}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 tracer.py REQUEST.json", file=sys.stderr)
        return EXIT_SETUP_ERROR
    with open(argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    if os.environ.get("PYTHONHASHSEED") != "0":  # determinism: str hashes order sets and dicts' keys
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    try:
        return run(request)
    except SetupError as error:
        print(f"cwm-tracer: {error}", file=sys.stderr)
        with open(request["output"], "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"type": "end", "status": "error", "frames": 0, "bytes": 0,
                                     "elapsed_s": 0.0, "entry_elapsed_s": None, "error": str(error)}) + "\n")
        return EXIT_SETUP_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))

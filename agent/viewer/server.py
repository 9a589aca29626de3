"""The viewer's HTTP server: static pages plus a small JSON API over the trajectory files under PATH.

Why the standard library's ThreadingHTTPServer: the viewer is a local, read-only tool for one person
(or a few, with a token); it needs no framework, and one dependency less is one thing less to break on
a fresh machine. Why incremental reading: a live run appends a line per step, and the page polls every
second, so each poll re-reads only the bytes appended since the last one, and a half-written last line
is left for the next poll instead of being an error.

Security model: by default the server binds 127.0.0.1 and checks the Host header (so a web page in the
user's browser cannot reach it through DNS rebinding); bound to any other address it requires a token,
given by the user or generated, sent as `?token=` once (then kept in an HttpOnly cookie) or as the
`X-Viewer-Token` header. Every response carries a strict Content-Security-Policy; the pages render
trajectory text with `textContent` only. Requested files must resolve inside PATH; a test trace
(`/api/trace`) is named by its position in the trajectory's `test_traces`, never by a path from the
request, and the path the trajectory records must resolve inside PATH and the trajectory's folder.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
import webbrowser
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from pydantic import ValidationError

from agent.viewer.traces import TRACE_FILE, trace_document
from traces.schema import RECORD_ADAPTER, Ending, Header, Step, TracedTest

TRAJECTORY_SUFFIX = ".traj.jsonl"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# A file with no Ending that changed this recently is shown as "running", older ones as "unfinished":
# one step can take a long model reply plus a 120 s command, so a few minutes of silence is normal.
LIVE_WINDOW_S = 15 * 60
LOADED_CACHE_SIZE = 16
MAX_PROBLEMS = 20
# Fields left out of the bulk trajectory payload: the step's prompt delta repeats the previous
# observation, and `output` is the observation before wrapping. `/api/step` serves them on demand.
BULK_EXCLUDE = {"prompt_delta", "output"}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
PAGES = {"/": "index.html", "/index.html": "index.html", "/view": "view.html"}

Record = Header | Step | Ending


# --------------------------------------------------------------------------------------------------
# Reading trajectory files a complete line at a time.


@dataclass
class TailRead:
    """What one `TrajectoryTail.read_new` call found: records with their byte spans, and whether the
    file was replaced since the previous read (the caller then forgets what it had)."""

    records: list[tuple[Record, int, int]] = field(default_factory=list)
    reset: bool = False


class TrajectoryTail:
    """Reads a growing trajectory file, remembering the offset after the last complete line.

    An unterminated last line is consumed only if it is a whole record (a prefix of a JSON object never
    parses); otherwise it is left for the next read and flagged as `torn_tail`. A line that does not
    validate is skipped and noted in `problems` rather than hiding every other step from the viewer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0
        self.first_line = b""
        self.torn_tail = False
        self.problems: list[str] = []
        self._unterminated = False  # the last line was taken whole before its newline arrived

    def _restart(self) -> None:
        self.offset, self.lines, self.first_line, self.torn_tail = 0, 0, b"", False
        self.problems, self._unterminated = [], False

    def _replaced(self, handle: Any, size: int) -> bool:
        """A shorter file, or a different first line, means the file was rewritten (a new run)."""
        if size < self.offset:
            return True
        return bool(self.first_line) and handle.read(len(self.first_line)) != self.first_line

    def read_new(self) -> TailRead:
        result = TailRead()
        with self.path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if self._replaced(handle, size):
                self._restart()
                result.reset = True
            if size == self.offset:
                return result
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        start = 1 if self._unterminated and data[:1] == b"\n" else 0
        self._unterminated = False
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._take_line(data[start:end], self.offset + start, result, terminated=True)
            start = end + 1
        tail = data[start:]
        consumed = start
        self.torn_tail = False
        if tail.strip():
            if self._take_line(tail, self.offset + start, result, terminated=False):
                consumed, self._unterminated = len(data), True
            else:
                self.torn_tail = True
        self.offset += consumed
        return result

    def _take_line(self, line: bytes, at: int, result: TailRead, terminated: bool) -> bool:
        """Parse one line into `result`; an unterminated line that does not parse is left unread."""
        if not line.strip():
            self.lines += 1
            return True
        try:
            record = RECORD_ADAPTER.validate_json(line)
        except ValidationError as error:
            if not terminated:
                return False
            self.lines += 1
            if len(self.problems) < MAX_PROBLEMS:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                self.problems.append(f"line {self.lines}: {where}: {first['msg']}")
            return True
        self.lines += 1
        if self.lines == 1:
            self.first_line = line + (b"\n" if terminated else b"")
        result.records.append((record, at, len(line)))
        return True


# --------------------------------------------------------------------------------------------------
# What the pages are sent: run-table rows and trajectories.


class RunSummary:
    """Counters folded over one file's records, enough for a run-table row without keeping the steps."""

    def __init__(self, path: Path, relative: str) -> None:
        self.relative = relative
        self.tail = TrajectoryTail(path)
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.header: Header | None = None
        self.ending: Ending | None = None
        self.steps = 0
        self.tokens = 0
        self.last_time: datetime | None = None

    def refresh(self) -> None:
        with self.lock:
            read = self.tail.read_new()
            if read.reset:
                self._clear()
            for record, _, _ in read.records:
                if isinstance(record, Header):
                    # Rows of a large run directory stay in memory: drop the prompts and patches.
                    self.header = record.model_copy(update={"system_prompt": "", "user_prompt": "", "issue": ""})
                elif isinstance(record, Step):
                    self.steps += 1
                    self.tokens += (record.prompt_tokens or 0) + (record.completion_tokens or 0)
                    self.last_time = record.ended_at or record.started_at
                else:
                    slim = record.evaluation.model_copy(update={"log": "", "fail_to_pass": {}, "pass_to_pass": {}}) \
                        if record.evaluation else None
                    self.ending = record.model_copy(update={"submission": None, "sandbox_diff": None,
                                                            "final_response": None, "evaluation": slim})

    def row(self, mtime: float, now: float) -> dict[str, Any]:
        header, ending = self.header, self.ending
        if ending is not None:
            status = ending.status
        else:
            status = "running" if now - mtime < LIVE_WINDOW_S else "unfinished"
        tokens = self.tokens
        if ending is not None and (ending.total_prompt_tokens or ending.total_completion_tokens):
            tokens = ending.total_prompt_tokens + ending.total_completion_tokens
        end_time = ending.ended_at if ending is not None else self.last_time
        wall = (end_time - header.started_at).total_seconds() if header and end_time else None
        model = ""
        if header is not None:
            model = header.model.name or header.model.kind
        return {
            "file": self.relative,
            "instance": header.instance_id if header else Path(self.relative).name.removesuffix(TRAJECTORY_SUFFIX),
            "run_id": header.run_id if header else "",
            "status": status,
            "resolved": ending.evaluation.resolved if ending and ending.evaluation else None,
            "steps": self.steps,
            "total_tokens": tokens,
            "wall_s": round(wall, 3) if wall is not None else None,
            "model": model,
            "started_at": header.started_at.isoformat() if header else None,
            "torn_tail": self.tail.torn_tail,
            "problems": len(self.tail.problems),
        }


class LoadedTrajectory:
    """One trajectory held for the trajectory page: header, ending and each step as compact JSON.

    Steps are kept serialized (and their byte spans, to serve one whole step on demand) so a poll or a
    page load costs a string join, not a re-validation. `generation` changes when the file is replaced,
    telling a polling page to reload rather than append.
    """

    def __init__(self, path: Path, relative: str) -> None:
        self.path = path
        self.relative = relative
        self.tail = TrajectoryTail(path)
        self.lock = threading.Lock()
        self.generation = 1
        self._clear()

    def _clear(self) -> None:
        self.header: Header | None = None
        self.ending: Ending | None = None
        self.steps: list[str] = []
        self.spans: list[tuple[int, int]] = []

    def refresh(self) -> None:
        read = self.tail.read_new()
        if read.reset:
            self._clear()
            self.generation += 1
        for record, at, length in read.records:
            if isinstance(record, Header):
                self.header = record
            elif isinstance(record, Step):
                self.steps.append(record.model_dump_json(exclude=BULK_EXCLUDE, exclude_none=True))
                self.spans.append((at, length))
            else:
                self.ending = record

    def payload(self, since: int = 0, with_header: bool = True) -> bytes:
        """The JSON document for `/api/trajectory` (since=0) or `/api/steps?since=N`."""
        with self.lock:
            self.refresh()
            since = max(0, min(since, len(self.steps)))
            meta: dict[str, Any] = {
                "file": self.relative,
                "generation": self.generation,
                "since": since,
                "next": len(self.steps),
                "ending": self.ending.model_dump(mode="json") if self.ending else None,
                "torn_tail": self.tail.torn_tail,
                "problems": list(self.tail.problems),
                "age_s": round(max(0.0, time.time() - self.path.stat().st_mtime), 1),
            }
            if with_header:
                meta["header"] = self.header.model_dump(mode="json") if self.header else None
            steps = ",".join(self.steps[since:])
        head = json.dumps(meta, separators=(",", ":"))
        return (head[:-1] + ',"steps":[' + steps + "]}").encode("utf-8")

    def full_step(self, position: int) -> bytes:
        """One step with every field (prompt delta and raw output included), read from its line."""
        with self.lock:
            self.refresh()
            if not 0 <= position < len(self.spans):
                raise LookupError(f"no step at position {position}")
            at, length = self.spans[position]
        with self.path.open("rb") as handle:
            handle.seek(at)
            line = handle.read(length)
        try:
            step = RECORD_ADAPTER.validate_json(line)
        except ValidationError:
            raise LookupError("the file changed since it was read; reload the page") from None
        return step.model_dump_json(exclude_none=True).encode("utf-8")

    def traced_test(self, position: int) -> tuple[TracedTest, str]:
        """The `position`-th test trace record of the ending, and its recorded folder; LookupError if none."""
        with self.lock:
            self.refresh()
            ending = self.ending
        traced = ending.test_traces if ending is not None else []
        if not 0 <= position < len(traced):
            raise LookupError(f"no test trace at position {position}")
        record = traced[position]
        if record.path is None:
            raise LookupError(f"{record.node_id} ({record.phase}) has no trace: {record.error or 'not recorded'}")
        return record, record.path


class Catalog:
    """The trajectory files PATH serves, resolved safely, with cached summaries and loaded files.

    PATH is one trajectory file (only that file is served) or a directory scanned recursively. Every
    requested name is resolved (symbolic links included) and must stay inside PATH.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        self.path = path
        self.single = path.is_file()
        self.base = path.parent if self.single else path
        self._summaries: dict[Path, RunSummary] = {}
        self._loaded: OrderedDict[Path, LoadedTrajectory] = OrderedDict()
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        if self.single:
            return [self.path]
        found: list[Path] = []
        for folder, dirs, names in os.walk(self.base, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(TRAJECTORY_SUFFIX):
                    candidate = Path(folder, name)
                    if self._inside(candidate.resolve()) and candidate.is_file():
                        found.append(candidate)
        return found

    def _inside(self, resolved: Path) -> bool:
        if self.single:
            return resolved == self.path
        return resolved.is_relative_to(self.base)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()

    def resolve(self, relative: str | None) -> Path:
        """The file a request names, or LookupError: missing, outside PATH, or not a trajectory."""
        if not relative or "\x00" in relative:
            raise LookupError("no file named")
        candidate = (self.base / relative).resolve()
        # A file named on the command line is served whatever its name; in a directory only *.traj.jsonl.
        named = self.single or candidate.name.endswith(TRAJECTORY_SUFFIX)
        if not self._inside(candidate) or not named:
            raise LookupError("not a trajectory under the served path")
        if not candidate.is_file():
            raise LookupError("no such trajectory")
        return candidate

    def trace_dir(self, trajectory: Path, relative: str) -> Path:
        """The folder of a test trace a trajectory references, or LookupError if it leaves PATH.

        The path comes from a trajectory file, which anyone could have written: it must be relative,
        and resolve (symbolic links included) inside PATH and inside the trajectory's own folder, and
        so must the trace file in it.
        """
        if not relative or "\x00" in relative or "\\" in relative or PurePosixPath(relative).is_absolute():
            raise LookupError("not a trace under the served path")
        folder = trajectory.parent.resolve()
        candidate = (folder / relative).resolve()
        frames = (candidate / TRACE_FILE).resolve()
        for path in (candidate, frames):
            if not (path.is_relative_to(self.base) and path.is_relative_to(folder)):
                raise LookupError("not a trace under the served path")
        if not frames.is_file():
            raise LookupError("the trace file is missing")
        return candidate

    def rows(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for path in self.files():
            with self._lock:
                summary = self._summaries.get(path)
                if summary is None:
                    summary = self._summaries[path] = RunSummary(path, self.relative(path))
            try:
                mtime = path.stat().st_mtime
                summary.refresh()
            except OSError:
                continue
            rows.append(summary.row(mtime, now))
        return rows

    def loaded(self, relative: str | None) -> LoadedTrajectory:
        path = self.resolve(relative)
        with self._lock:
            item = self._loaded.get(path)
            if item is None:
                item = self._loaded[path] = LoadedTrajectory(path, self.relative(path))
                while len(self._loaded) > LOADED_CACHE_SIZE:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(path)
        return item


# --------------------------------------------------------------------------------------------------
# HTTP.


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ViewerServer(ThreadingHTTPServer):
    """A running viewer: `.url` to open (with the token when one is needed), `.shutdown()` to stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, catalog: Catalog, token: str | None, quiet: bool = True) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.catalog = catalog
        self.token = token
        self.quiet = quiet
        self.host = host
        super().__init__((host, port), ViewerHandler)
        self.port = self.server_address[1]
        self.cookie_name = f"cwm_viewer_{self.port}"
        self._thread: threading.Thread | None = None

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (slow on machines without DNS)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.host, self.server_address[1]

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        query = f"?{urlencode({'token': self.token})}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def start(self) -> "ViewerServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="cwm-viewer", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser or client that drops its keep-alive connection is normal, not worth a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def wait(self) -> None:
        """Block until the serving thread stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __exit__(self, *args: object) -> None:
        self.shutdown()


class ViewerHandler(BaseHTTPRequestHandler):
    """Routes GET requests: the two pages, their static files and the JSON API."""

    server: ViewerServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive requests wait ~40 ms for an ACK.
    disable_nagle_algorithm = True
    server_version = "cwm-viewer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _refuse_method(self) -> None:
        self._head, self._route = False, ""
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only viewer\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def _json(self, status: int, document: Any, extra: dict[str, str] | None = None) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document, separators=(",", ":")).encode()
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _error(self, status: int, message: str) -> None:
        if self._route.startswith("/api/"):
            self._json(status, {"error": message})
        else:
            self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def _given_token(self, query: dict[str, list[str]]) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query string (to set the cookie)."""
        if query.get("token"):
            return query["token"][0], True
        header = self.headers.get("X-Viewer-Token")
        if header:
            return header, False
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None, False
        morsel = cookie.get(self.server.cookie_name)
        return (morsel.value if morsel else None), False

    def _host_allowed(self) -> bool:
        """Without a token, only requests addressed to a loopback name are served (no DNS rebinding)."""
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name.strip("[]"))

    # -- routing ---------------------------------------------------------------------------------

    def _handle(self, head: bool) -> None:
        self._head = head
        parts = urlsplit(self.path)
        self._route = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        extra: dict[str, str] = {}
        if self.server.token:
            given, from_query = self._given_token(query)
            if given is None or not hmac.compare_digest(given.encode(), self.server.token.encode()):
                self._error(HTTPStatus.FORBIDDEN, "forbidden: open the URL with the token that `agent view` printed")
                return
            if from_query:
                extra["Set-Cookie"] = (f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; "
                                       "SameSite=Strict")
                if parts.path in PAGES:
                    # Keep the token out of the address bar and history once the cookie holds it.
                    rest = urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
                    extra["Location"] = parts.path + (f"?{rest}" if rest else "")
                    self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", extra)
                    return
        elif not self._host_allowed():
            self._error(HTTPStatus.FORBIDDEN, "forbidden: unexpected Host header")
            return
        try:
            self._dispatch(parts.path, query, extra)
        except LookupError as error:
            self._error(HTTPStatus.NOT_FOUND, str(error).strip("'\""))
        except ValueError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except OSError as error:
            self._error(HTTPStatus.NOT_FOUND, f"cannot read: {error.strerror or error}")

    def _dispatch(self, route: str, query: dict[str, list[str]], extra: dict[str, str]) -> None:
        catalog = self.server.catalog

        def arg(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        if route == "/" and catalog.single:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain",
                       extra={**extra, "Location": "/view?file=" + quote(catalog.relative(catalog.path))})
        elif route in PAGES:
            self._static(PAGES[route], extra)
        elif route.startswith("/static/"):
            self._static(route.removeprefix("/static/"), extra)
        elif route == "/api/runs":
            body = {"root": _display_path(catalog.path), "single": catalog.single, "rows": catalog.rows()}
            self._json(HTTPStatus.OK, body, extra)
        elif route == "/api/trajectory":
            self._json(HTTPStatus.OK, catalog.loaded(arg("file")).payload(0), extra)
        elif route == "/api/steps":
            since = _non_negative(arg("since"), "since")
            self._json(HTTPStatus.OK, catalog.loaded(arg("file")).payload(since, with_header=False), extra)
        elif route == "/api/step":
            position = _non_negative(arg("index"), "index")
            self._json(HTTPStatus.OK, catalog.loaded(arg("file")).full_step(position), extra)
        elif route == "/api/trace":
            position = _non_negative(arg("index"), "index")
            loaded = catalog.loaded(arg("file"))
            record, relative = loaded.traced_test(position)
            folder = catalog.trace_dir(loaded.path, relative)
            self._json(HTTPStatus.OK, trace_document(folder, record), extra)
        else:
            raise LookupError("not found")

    def _static(self, name: str, extra: dict[str, str]) -> None:
        """A file from the static folder, looked up by exact name in its listing (never joined blindly)."""
        if "/" in name or "\\" in name or name not in os.listdir(STATIC_DIR):
            raise LookupError("not found")
        path = STATIC_DIR / name
        content_type = STATIC_TYPES.get(path.suffix)
        if content_type is None:
            raise LookupError("not found")
        self._send(HTTPStatus.OK, path.read_bytes(), content_type, extra, cache="no-cache")


def _display_path(path: Path) -> str:
    """PATH as the user most likely typed it: relative to the working directory when inside it."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return str(path)


def _non_negative(value: str | None, name: str) -> int:
    try:
        number = int(value or "0")
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative")
    return number


# --------------------------------------------------------------------------------------------------
# Entry points.


def serve(path: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          open_browser: bool = False, quiet: bool = True) -> ViewerServer:
    """Start the viewer in a background thread and return it; `.url` says where, `.shutdown()` stops it.

    Bound to a non-loopback address the viewer always needs a token: one is generated when none is
    given, and `.url` carries it. `port=0` picks a free port.
    """
    catalog = Catalog(path)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    server = ViewerServer(host, port, catalog, token or None, quiet=quiet).start()
    if open_browser:
        webbrowser.open(server.url)
    return server


def run_viewer(path: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
               open_browser: bool = False, announce: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C: what `agent view PATH` runs. Prints the URL (with the token, if any)."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    server = serve(path, host=host, port=port, token=token, open_browser=open_browser, quiet=True)
    count = len(server.catalog.files())
    noun = "trajectory" if count == 1 else "trajectories"
    say(f"cwm-runner viewer: {count} {noun} under {server.catalog.path}")
    say(f"open {server.url}   (Ctrl-C to stop)")
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()

"""The viewer's HTTP side: the server socket and thread, and the handler that routes and guards requests.

Why the standard library's ThreadingHTTPServer: the viewer is a local, read-only tool for one person
(or a few, with a token); it needs no framework, and one dependency less is one thing less to break on
a fresh machine.

Security model: by default the server binds 127.0.0.1 and checks the Host header (so a web page in the
user's browser cannot reach it through DNS rebinding); bound to any other address it requires a token,
given by the user or generated, sent as `?token=` once (then kept in an HttpOnly cookie) or as the
`X-Viewer-Token` header. Every response carries a strict Content-Security-Policy; the pages render
trajectory text with `textContent` only. Requested files must resolve inside PATH (`agent.viewer.catalog`
checks that); a test trace (`/api/trace`) is named by its position in the trajectory's `test_traces`,
never by a path from the request. Static files are looked up by exact name in the static folder.

Kept apart from the catalog (what is served) and from `agent.viewer.server` (starting and stopping
the viewer): every check a request passes through, and every header a response carries, is here.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from agent.viewer.catalog import Catalog
from agent.viewer.traces import trace_document

STATIC_DIR = Path(__file__).resolve().parent / "static"

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

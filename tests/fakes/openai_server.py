"""A small, real OpenAI-compatible HTTP server for tests: scripted replies, recorded requests, faults.

It listens on 127.0.0.1 (a free port) in a background thread and speaks the parts of vLLM's API the
runner uses: GET /v1/models, POST /v1/completions, POST /v1/chat/completions and POST /tokenize. Every
request is recorded (method, path, headers, JSON body) before anything else happens, so a test can
assert the exact prompt string sent and count the tries of a retried request. Faults are scripted per
path and consumed one request at a time: answer with an HTTP error, hang (never answer until the
server stops), or drop the connection without a response.

Replies may also be computed from the request instead of queued: `respond(body)` answers every
completion request that finds nothing queued (tests/faults serves recorded CWM episodes this way, the
reply picked by the turn the prompt is at, so parallel episodes each get their own next reply).

Token counts are those of a toy tokenizer, `toy_count`: one token per special token `<|...|>` and
one per other character. It is deliberately different from the runner's heuristic (bytes / 4), so a
test can tell a count that came from /tokenize from a fallback estimate.

For load tests (bench/agent_load.py) it also behaves as vLLM does under load, in toy tokens: a
completion request with `ignore_eos` and nothing scripted generates exactly `max_tokens` tokens (one
letter each); `stream: true` answers in server-sent events with a final usage chunk; with
`prefix_cache=True` every answer reports `cached_tokens`, the longest prefix shared with an earlier
prompt in whole 16-token blocks (prompts only, oldest dropped beyond `cache_capacity` tokens); and
GET /metrics serves Prometheus counters and gauges under vLLM's names (`preemptions_per_request`,
`kv_cache_usage`, `running` and `waiting` script what the server cannot simulate; with `kv_capacity`
the KV gauges follow the episodes it serves instead, tests/fakes/load.py; `metrics=False`: no
/metrics at all, as a server that is not vLLM).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.load import LoadState, letters, sse_events

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
TOKENIZE = "/tokenize"
METRICS = "/metrics"
DEFAULT_TEXT = "default scripted reply\n</think>\nnothing scripted"
SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")
TOY_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|.", re.DOTALL)


def toy_count(text: str) -> int:
    """One token per special token, one per other character (additive, like a real tokenizer)."""
    specials = SPECIAL.findall(text)
    return len(specials) + len(SPECIAL.sub("", text))


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    kind: str  # "status", "hang" or "drop"
    status: int = 500
    message: str = "scripted failure"
    body: Any = None  # a raw JSON error body instead of the vLLM-style one


@dataclass
class Reply:
    """One scripted answer: for /v1/completions `text`; for chat `content` (+ reasoning fields)."""

    text: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    raw: Any = None  # send this JSON as the whole answer instead
    last: bool = False  # the episode's last turn: its context leaves the KV (with kv_capacity)


@dataclass
class _State:
    models: list[str]
    max_model_len: int | None
    has_tokenize: bool
    has_models: bool
    count: Callable[[str], int]
    has_metrics: bool = True
    requests: list[Recorded] = field(default_factory=list)
    replies: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    connections: set[Any] = field(default_factory=set)  # open client sockets, cut when the server stops
    load: LoadState = field(default_factory=LoadState)
    respond: Callable[[dict[str, Any]], Reply] | None = None  # computes a completion when none is queued


class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer() as server:`; `server.url` is the /v1 base."""

    def __init__(
        self,
        models: Iterable[str] = ("cwm",),
        *,
        max_model_len: int | None = None,
        tokenize: bool = True,
        list_models: bool = True,
        count: Callable[[str], int] = toy_count,
        prefix_cache: bool = False,
        cache_capacity: int | None = None,
        kv_capacity: int | None = None,
        metrics: bool = True,
        respond: Callable[[dict[str, Any]], Reply] | None = None,
    ) -> None:
        self._state = _State(list(models), max_model_len, tokenize, list_models, count, metrics)
        self._state.load.kv_capacity = kv_capacity
        self._state.respond = respond
        self._state.load.prefix_cache = prefix_cache
        self._state.load.cache_capacity = cache_capacity
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self, port: int = 0) -> FakeOpenAIServer:
        """Listen on `port` (0: a free one); a stopped server starts again on its old port like a
        restarted vLLM, keeping its script and recorded requests."""
        self._state.stopping.clear()
        handler = type("Handler", (_Handler,), {"state": self._state})
        self._httpd = _Server(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop like a killed server: no new connections, and the open (keep-alive) ones cut."""
        self._state.stopping.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._state.lock:
            connections, self._state.connections = list(self._state.connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    # scripting

    def reply(self, text: str, **fields: Any) -> None:
        """Queue an answer for /v1/completions."""
        self._queue(COMPLETIONS, Reply(text=text, **fields))

    def chat_reply(self, content: str | None, **fields: Any) -> None:
        """Queue an answer for /v1/chat/completions (`content` may be None, as vLLM sends it)."""
        self._queue(CHAT, Reply(text=content, **fields))

    def fail(self, times: int = 1, *, status: int = 500, message: str = "scripted failure",
             body: Any = None, path: str = COMPLETIONS) -> None:
        self._fault(path, times, Fault("status", status, message, body))

    def hang(self, times: int = 1, *, path: str = COMPLETIONS) -> None:
        self._fault(path, times, Fault("hang"))

    def drop(self, times: int = 1, *, path: str = COMPLETIONS) -> None:
        self._fault(path, times, Fault("drop"))

    def set_load(self, *, preemptions_per_request: int | None = None, kv_cache_usage: float | None = None,
                 running: float | None = None, waiting: float | None = None, kv_capacity: int | None = None) -> None:
        """Script the metrics a fake cannot simulate (or set the KV capacity that makes it simulate them)."""
        with self._state.lock:
            load = self._state.load
            if preemptions_per_request is not None:
                load.preemptions_per_request = preemptions_per_request
            if kv_cache_usage is not None:
                load.kv_cache_usage = kv_cache_usage
            if running is not None:
                load.running = running
            if waiting is not None:
                load.waiting = waiting
            if kv_capacity is not None:
                load.kv_capacity = kv_capacity

    @property
    def peak_sessions(self) -> int:
        """The most episodes whose contexts the server held at once (with kv_capacity)."""
        with self._state.lock:
            return self._state.load.peak_sessions

    def sessions(self) -> int:
        """Episodes whose contexts the server holds now."""
        with self._state.lock:
            return len(self._state.load.sessions)

    def counter(self, name: str) -> float:
        """A /metrics counter's value now (preemptions, generation, prompt, cached)."""
        with self._state.lock:
            return self._state.load.counters[name]

    def _queue(self, path: str, reply: Reply) -> None:
        with self._state.lock:
            self._state.replies[path].append(reply)

    def _fault(self, path: str, times: int, fault: Fault) -> None:
        with self._state.lock:
            self._state.faults[path].extend([fault] * times)

    # inspection

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def bodies(self, path: str = COMPLETIONS) -> list[Any]:
        return [r.body for r in self.requests_to(path)]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer (cut by stop(), or timed out) is what a real server shrugs off too."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One buffered write per response and no Nagle: otherwise every request waits ~40 ms on
    # delayed ACKs, and the suite slows down tenfold.
    wbufsize = -1
    disable_nagle_algorithm = True
    state: _State

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:  # the connection was cut mid-request (the server stopping): never received
            self.close_connection = True
            return
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        state = self.state
        with state.lock:
            state.requests.append(Recorded(method, self.path, dict(self.headers.items()), body))
            faults = state.faults.get(self.path)
            fault = faults.popleft() if faults else None
        if fault is not None:
            self._apply(fault)
            return
        route = (method, self.path)
        if route == ("GET", MODELS) and state.has_models:
            self._send(200, self._model_list())
        elif route == ("POST", TOKENIZE) and state.has_tokenize:
            prompt = body.get("prompt", "") if isinstance(body, dict) else ""
            self._send(200, {"count": state.count(prompt), "max_model_len": state.max_model_len or 131072,
                             "tokens": []})
        elif route == ("GET", METRICS) and state.has_metrics:
            with state.lock:
                text = state.load.metrics_text()
            self._send(200, text.encode(), content_type="text/plain; version=0.0.4")
        elif route == ("POST", COMPLETIONS) and self._model_ok(body):
            payload = self._completion(body)
            if body.get("stream") and isinstance(payload, dict) and "choices" in payload:
                self._stream(payload, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                self._send(200, payload)
        elif route == ("POST", CHAT) and self._model_ok(body):
            self._send(200, self._chat(body))
        elif self.path in (COMPLETIONS, CHAT) and method == "POST":
            return  # _model_ok already answered
        else:
            self._send(404, {"detail": "Not Found"})

    def _apply(self, fault: Fault) -> None:
        if fault.kind == "hang":
            self.state.stopping.wait(30)
            self.close_connection = True
        elif fault.kind == "drop":
            self.close_connection = True  # return without a response: the client sees a disconnect
        else:
            body = fault.body if fault.body is not None else _error(fault.status, fault.message)
            self._send(fault.status, body)

    def _model_ok(self, body: Any) -> bool:
        name = body.get("model") if isinstance(body, dict) else None
        if name in self.state.models:
            return True
        self._send(404, _error(404, f"The model `{name}` does not exist.", "NotFoundError"))
        return False

    def _model_list(self) -> dict[str, Any]:
        data = []
        for name in self.state.models:
            entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": "vllm"}
            if self.state.max_model_len is not None:
                entry["max_model_len"] = self.state.max_model_len
            data.append(entry)
        return {"object": "list", "data": data}

    def _next(self, path: str) -> Reply:
        with self.state.lock:
            queue = self.state.replies.get(path)
            return queue.popleft() if queue else Reply(text=DEFAULT_TEXT)

    def _usage(self, reply: Reply, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None else prompt_tokens,
            "completion_tokens": reply.completion_tokens if reply.completion_tokens is not None else completion_tokens,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if reply.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return usage

    def _completion(self, body: dict[str, Any]) -> Any:
        generate = bool(body.get("ignore_eos")) and not self.state.replies.get(COMPLETIONS)
        scripted = self.state.respond is not None and not self.state.replies.get(COMPLETIONS)
        if generate:
            reply = Reply(text=letters(int(body.get("max_tokens") or 16)), finish_reason="length")
        else:
            reply = self.state.respond(body) if scripted and self.state.respond else self._next(COMPLETIONS)
        if reply.raw is not None:
            return reply.raw
        text = reply.text or ""
        count = self.state.count
        prompt = str(body.get("prompt", ""))
        load = self.state.load
        with self.state.lock:
            if load.prefix_cache and reply.cached_tokens is None:
                reply.cached_tokens = load.cached_tokens(prompt, count)
            usage = self._usage(reply, count(prompt), count(text))
            load.account(usage["prompt_tokens"], usage["completion_tokens"], reply.cached_tokens or 0)
            if load.kv_capacity is not None:
                load.hold(prompt, usage["total_tokens"], reply.last)
        return {
            "id": "cmpl-fake", "object": "text_completion", "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": reply.finish_reason, "logprobs": None}],
            "usage": usage,
        }

    def _stream(self, payload: dict[str, Any], include_usage: bool) -> None:
        """The answer as vLLM streams it (server-sent events); the connection closes after it."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(sse_events(payload, include_usage, TOY_TOKEN.findall))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (a load test cancels its requests at the end): as vLLM, move on

    def _chat(self, body: dict[str, Any]) -> Any:
        reply = self._next(CHAT)
        if reply.raw is not None:
            return reply.raw
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.reasoning_content is not None:
            message["reasoning_content"] = reply.reasoning_content
        if reply.reasoning is not None:
            message["reasoning"] = reply.reasoning
        count = self.state.count
        prompt = "".join(str(m.get("content", "")) for m in body.get("messages", []))
        produced = (reply.text or "") + (reply.reasoning_content or reply.reasoning or "")
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": self._usage(reply, count(prompt), count(produced)),
        }

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _error(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    """vLLM's current error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}

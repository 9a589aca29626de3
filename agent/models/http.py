"""HTTP plumbing shared by the model clients: URLs, bounded retries, one-line errors, server schemas.

Why a module of its own: both HTTP clients (raw completions for CWM, OpenAI-compatible chat) talk
to the same kind of server (usually vLLM) and must fail the same way. A failed request ends as a
`ModelError` whose message is ONE line saying what went wrong and what to do, because it ends the
episode and is what the user reads in the run's summary and in the trajectory's ending.

Retry policy (tenacity): connection errors, timeouts, dropped connections, HTTP 5xx and 429 are
retried with exponential backoff (`backoff_s`, doubling, at most `max_backoff_s` between tries) up to
`attempts` tries and no longer than `max_total_s` since the first; any other 4xx is the request's
fault and is reported at once with the server's own message. 429 is retried although it is a 4xx:
it means "try again later", which is what a rate-limited hosted endpoint needs.

Outages: once a server has answered, a request that finds it GONE (connection refused or dropped,
HTTP 502/503/504: killed, restarting — `agent serve` takes about two minutes to come back — or
behind a proxy whose backend is down) is retried, the same request each time, for up to
`outage_s`, whatever `attempts` says. The episode simply waits and goes on where it was, and the
same prompt refills the server's prefix cache. Past the bound the request fails with
`ServerUnavailable`, which callers treat as an infrastructure failure (redone on resume), never as
the model's. A server that never answered this process fails fast, so a wrong URL is reported in
seconds; one that answered another client here (an earlier episode of the batch) is waited for too.
Outages are reported to agent.models.health for the batch display.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from agent.models import health
from agent.models.base import ContextExceededError, Model, ModelError
from agent.models.tokens import CachedTokenCounter
from agent.protocol.prompts import CONTEXT_SIZE, MAX_REPLY_TOKENS
from agent.protocol.render import BEGIN_OF_TEXT, Message, assistant_prefix, render_message
from traces.schema import ModelInfo

log = structlog.get_logger("agent.models.http")

LABEL = "model server"
START_HINT = "start it with `agent serve` or pass --model URL"
TOKENIZE_MISSING = (404, 405, 501)  # statuses meaning "this server has no /tokenize"


# --- errors -------------------------------------------------------------------------------------


class ServerError(ModelError):
    """A request to the model server failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ServerUnavailable(ServerError):
    """A server that had answered stayed unreachable for longer than the outage bound: an
    infrastructure failure, to be redone once the server is back (not the model's failure).
    `down_since` (epoch seconds) is when this client first found it gone: a batch whose episodes run
    in other processes learns the outage's age from it."""

    down_since: float | None = None


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace so an error message stays on one line; cut long server bodies."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def server_message(response: httpx.Response) -> str:
    """The server's own error text: OpenAI/vLLM `{"error": {"message"}}`, old vLLM, FastAPI, or raw."""
    message: Any = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or data.get("message") or data.get("detail")
    if message is not None and not isinstance(message, str):
        message = str(message)
    return one_line(message or response.text or response.reason_phrase or "no message")


def _reason(error: BaseException) -> str:
    """`[Errno 111] Connection refused` -> `connection refused`."""
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(error)) or type(error).__name__
    return one_line(text[:1].lower() + text[1:], 160)


# --- URLs ---------------------------------------------------------------------------------------


def normalize_base_url(url: str) -> tuple[str, str]:
    """Return (OpenAI API base ending in /v1, server root) for what a user may type.

    Accepted: `http://host:8000`, `http://host:8000/`, `http://host:8000/v1`, and the same with an
    endpoint path (`/v1/completions`, `/v1/chat/completions`) pasted from curl. vLLM serves the API
    under /v1 but `/tokenize` at the root, hence both.
    """
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelError(f"'{url}' is not a model server URL; use http(s)://HOST:PORT/v1")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    path = urlsplit(text).path
    if path in ("", "/"):
        return text + "/v1", text
    if path.endswith("/v1"):
        return text, text[: -len("/v1")]
    return text, text


# --- settings and wire schemas ------------------------------------------------------------------


class ServerOptions(BaseModel):
    """Options common to the HTTP clients (validated, so a typo in a config is one clear error)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="served model name; discovered via /v1/models if unset")
    api_key: str | None = Field(None, description="bearer token; defaults to $OPENAI_API_KEY")
    timeout_s: float = Field(600.0, gt=0, description="per request: a 64k-token reply takes minutes")
    connect_timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(4, ge=1, le=50, description="tries per request, the first included")
    backoff_s: float = Field(1.0, ge=0, description="first wait between tries; doubles each time")
    max_backoff_s: float = Field(30.0, ge=0)
    max_total_s: float = Field(1800.0, gt=0, description="no new try after this long since the first")
    outage_s: float = Field(600.0, ge=0, description="how long to wait for a server that answered before and "
                            "went away (killed, restarting): longer than `agent serve` takes to come back")
    temperature: float | None = Field(1.0, description="None: leave to the server")
    top_p: float | None = Field(0.95, description="None: leave to the server")
    max_tokens: int | None = Field(None, ge=1, description="reply cap; default 65536, always <= context left")
    context_size: int = Field(CONTEXT_SIZE, ge=1, description="prompt + reply limit (also capped by the server)")
    constraint: str | None = Field(None, description="regex the reply must match (vLLM structured outputs)")
    constraint_format: Literal["structured_outputs", "guided_regex"] = Field(
        "structured_outputs", description="vLLM >= 0.10 field, or the older guided_regex"
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body")


OptionsT = TypeVar("OptionsT", bound=ServerOptions)


def build_options(schema: type[OptionsT], overrides: dict[str, Any], what: str) -> OptionsT:
    """Validate keyword options; a typo or bad value becomes one line naming the option."""
    try:
        return schema(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "options"
        if first["type"] == "extra_forbidden":
            known = ", ".join(schema.model_fields)
            raise ModelError(f"unknown option '{name}' for the {what} model (known: {known})") from None
        raise ModelError(f"bad option '{name}' for the {what} model: {first['msg']}") from None


class ServedModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[ServedModel] = Field(default_factory=list)


class PromptTokensDetails(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cached_tokens: int | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int | None:
        return self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else None


class TokenizeResponse(BaseModel):
    """vLLM answers `count`; llama.cpp-style servers only `tokens`."""

    model_config = ConfigDict(extra="ignore")
    count: int | None = None
    tokens: list[Any] | None = None

    def total(self) -> int | None:
        if self.count is not None:
            return self.count
        return len(self.tokens) if self.tokens is not None else None


# --- the client ---------------------------------------------------------------------------------


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


GONE_STATUSES = (502, 503, 504)  # a proxy or server saying its backend is not there (restarting)


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (_RetryableStatus, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def _is_gone(error: BaseException | None) -> bool:
    """The server is not there at all (as opposed to slow or failing a request it received)."""
    if isinstance(error, _RetryableStatus):
        return error.response.status_code in GONE_STATUSES
    return isinstance(error, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))


class ServerClient:
    """JSON over HTTP to one server, with the retry policy and error messages of this module."""

    def __init__(self, api_base: str, root: str, options: ServerOptions, label: str = LABEL) -> None:
        self.api_base = api_base
        self.root = root
        self.options = options
        self.label = label
        headers = {"User-Agent": "cwm-runner"}
        api_key = options.api_key if options.api_key is not None else os.environ.get("OPENAI_API_KEY")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(options.timeout_s, connect=min(options.connect_timeout_s, options.timeout_s))
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self._answered = False  # has this server ever answered? (only then is an outage waited out)
        # One replica of several (agent.models.replicas): a server found gone fails the request at once,
        # so the episode moves to a live replica instead of waiting for this one.
        self.fails_over = False

    def get(self, path: str, *, root: bool = False) -> Any:
        return self.request("GET", path, None, root=root)

    def post(self, path: str, body: dict[str, Any], *, root: bool = False) -> Any:
        return self.request("POST", path, body, root=root)

    def request(self, method: str, path: str, body: dict[str, Any] | None, *, root: bool = False) -> Any:
        """Send with retries; return the decoded JSON or raise ServerError (one line)."""
        url = (self.root if root else self.api_base) + path
        retrying = Retrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        response: httpx.Response | None = None
        try:
            for attempt in retrying:
                with attempt:
                    response = self._http.request(method, url, json=body)
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _RetryableStatus(response)
        except _RetryableStatus as error:
            self._give_up(error, retrying)
            self._status_failure(error.response, retrying.statistics.get("attempt_number", 1))
        except httpx.TransportError as error:
            self._give_up(error, retrying)
            self._transport_failure(error, retrying.statistics.get("attempt_number", 1))
        assert response is not None
        self._answered = True
        health.mark_up(self.api_base)
        if response.status_code >= 400:
            self._status_failure(response, 1)
        try:
            return response.json()
        except ValueError:
            snippet = one_line(response.text, 80) or "an empty body"
            raise ServerError(
                f"{self.label} at {self.api_base} answered {path} with something that is not JSON "
                f"({snippet}); is it an OpenAI-compatible server?",
                status=response.status_code,
            ) from None

    def _waits_out(self, error: BaseException | None) -> bool:
        """Is this failure an outage of a server that answered before, to be waited out?"""
        answered = self._answered or health.has_answered(self.api_base)  # to this client or another one here
        return self.options.outage_s > 0 and answered and _is_gone(error)

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff; while waiting out an outage, never past its bound, so the last try comes
        at the bound and ServerUnavailable is raised then, not up to one backoff later."""
        delay = wait_exponential(multiplier=self.options.backoff_s, max=self.options.max_backoff_s)(state)
        error = state.outcome.exception() if state.outcome else None
        if self._waits_out(error):
            return max(0.0, min(delay, self.options.outage_s - state.seconds_since_start))
        return delay

    def _stop(self, state: RetryCallState) -> bool:
        """Stop after `attempts` tries or `max_total_s`, except while a server that answered before is
        gone: then only after `outage_s`."""
        error = state.outcome.exception() if state.outcome else None
        if self.fails_over and _is_gone(error):
            return True
        if self._waits_out(error):
            return state.seconds_since_start >= self.options.outage_s
        return (stop_after_attempt(self.options.attempts) | stop_after_delay(self.options.max_total_s))(state)

    def _give_up(self, error: BaseException, retrying: Retrying) -> None:
        """After the last try: an outage that outlasted its bound becomes ServerUnavailable."""
        if not self._waits_out(error):
            return
        waited = retrying.statistics.get("delay_since_first_attempt", 0.0)
        unavailable = ServerUnavailable(
            f"{self.label} at {self.api_base} went away and did not come back within {waited:.0f} s "
            f"(outage bound {self.options.outage_s:g} s); restart it, then rerun with --resume"
        )
        unavailable.down_since = time.time() - waited
        raise unavailable from None

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if _is_gone(error):
            health.mark_down(self.api_base)
        log.warning(
            "model.retry",
            server=self.api_base,
            attempt=state.attempt_number,
            of=self.options.attempts,
            error=one_line(str(error) or type(error).__name__, 200),
            wait_s=round(state.next_action.sleep, 3) if state.next_action else None,
        )

    def _status_failure(self, response: httpx.Response, attempts: int) -> NoReturn:
        status = response.status_code
        detail = server_message(response)
        where = f"{self.label} at {self.api_base}"
        tries = f", {attempts} attempts" if attempts > 1 else ""
        if status >= 500:
            message = f"{where} failed with HTTP {status}{tries}: {detail}; check the server's log"
        elif status == 429:
            message = f"{where} is rate-limiting requests (HTTP 429{tries}): {detail}; wait, or run fewer at once"
        elif status in (401, 403):
            message = f"{where} refused the credentials (HTTP {status}): {detail}; set OPENAI_API_KEY to its key"
        else:
            message = f"{where} rejected the request (HTTP {status}): {detail}"
        raise ServerError(message, status=status, detail=detail)

    def _transport_failure(self, error: httpx.TransportError, attempts: int) -> NoReturn:
        where = f"{self.label} at {self.api_base}"
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            reason = "connection timed out" if isinstance(error, httpx.ConnectTimeout) else _reason(error)
            message = f"{where} is not reachable ({reason}); {START_HINT}"
        elif isinstance(error, httpx.TimeoutException):
            message = (
                f"{where} did not answer within {self.options.timeout_s:g} s ({tries}); check that it is "
                "not overloaded or stuck, or raise the request timeout"
            )
        elif isinstance(error, (httpx.RemoteProtocolError, httpx.NetworkError)):
            message = (
                f"{where} closed the connection without answering ({tries}); check the server's log "
                "(it may have crashed or run out of memory)"
            )
        else:
            message = f"{where} could not be asked ({_reason(error)}); check the URL"
        raise ServerError(message) from None

    def close(self) -> None:
        self._http.close()


def parse_response(schema: type[BaseModel], data: Any, what: str, where: str) -> Any:
    """Validate a server answer; a malformed one is a ModelError naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ModelError(
            f"{LABEL} at {where} sent a malformed {what} ({field}: {first['msg']}); "
            "is it an OpenAI-compatible server?"
        ) from None


# --- the shared base of the HTTP models ---------------------------------------------------------


class ServerModel(Model):
    """What the completions and chat clients share: URL, client, model discovery, token counting.

    Nothing touches the network in the constructor (so building a model is cheap and testable);
    the first use of `info`, `complete` or `count_tokens` calls `connect()`, which asks /v1/models
    once: to discover the model name when none was given, to fail early and clearly when the given
    name is not served, and to learn the server's `max_model_len` (replies are capped to fit it).
    """

    kind = "server"

    def __init__(self, url: str, options: ServerOptions) -> None:
        self.options = options
        self.api_base, self.root = normalize_base_url(url)
        self._client = ServerClient(self.api_base, self.root, options)
        self._served: ServedModel | None = None
        self._counter = CachedTokenCounter(self._tokenize)
        self._info = ModelInfo(
            kind=self.kind,
            name=options.model or "",
            url=self.api_base,
            temperature=options.temperature,
            top_p=options.top_p,
            max_tokens=options.max_tokens or MAX_REPLY_TOKENS,
            constrained=options.constraint is not None,
        )

    @property
    def info(self) -> ModelInfo:  # type: ignore[override]
        """Model description for the trajectory header; resolves the served name on first use."""
        self.connect()
        return self._info

    @property
    def model_name(self) -> str:
        return self.connect().id

    @property
    def approximate_counts(self) -> bool:
        """True when the server has no /tokenize and counts come from the heuristic."""
        return self._counter.approximate

    def connect(self) -> ServedModel:
        """Resolve (once) which model to ask for; raises ModelError with what to do."""
        if self._served is None:
            self._served = self._resolve_model()
            self._info.name = self._served.id
            log.debug("model.connected", server=self.api_base, model=self._served.id,
                     max_model_len=self._served.max_model_len)
        return self._served

    def _resolve_model(self) -> ServedModel:
        requested = self.options.model
        try:
            listing = parse_response(ModelList, self._client.get("/models"), "model list", self.api_base)
        except ServerError as error:
            if error.status is None or error.status in (401, 403):  # unreachable, or bad key: say so
                raise
            if requested:  # a server without /v1/models (or no right to list): trust the name
                log.debug("model.list_unavailable", server=self.api_base, status=error.status)
                return ServedModel(id=requested)
            raise ModelError(
                f"cannot find out which model {self.api_base} serves (GET /models: HTTP {error.status}: "
                f"{error.detail}); name it with the `model` option"
            ) from None
        names = [served.id for served in listing.data]
        shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
        if requested:
            for served in listing.data:
                if served.id == requested:
                    return served
            if not names:  # some proxies list nothing: trust the name
                return ServedModel(id=requested)
            raise ModelError(f"model '{requested}' is not served at {self.api_base} (served: {shown})")
        if len(names) == 1:
            return listing.data[0]
        if not names:
            raise ModelError(f"{LABEL} at {self.api_base} serves no model yet; wait until it has loaded one")
        raise ModelError(
            f"{LABEL} at {self.api_base} serves several models ({shown}); name one with the `model` option"
        )

    # token counting

    def count_tokens(self, text: str) -> int:
        return self._counter.count(text)

    def _tokenize(self, text: str) -> int | None:
        body = {"model": self.model_name, "prompt": text, "add_special_tokens": False}
        try:
            data = self._client.post("/tokenize", body, root=True)
        except ServerError as error:
            if error.status in TOKENIZE_MISSING:
                return None
            raise
        total = parse_response(TokenizeResponse, data, "tokenize answer", self.root).total()
        if total is None:
            raise ModelError(f"{LABEL} at {self.root}/tokenize answered without a count; is it vLLM?")
        return total

    def prompt_tokens(self, messages: list[Message]) -> int:
        """Tokens of `render_prompt(messages)`, counted message by message.

        Exact, not an estimate: every rendered message begins and ends with a special token, and a
        tokenizer never merges text across a special token, so the sum equals the count of the whole
        prompt. Counting per message lets the cache answer for the history, so each turn only the
        two new messages (reply, observation) go to /tokenize, instead of the entire prompt.
        """
        parts = [BEGIN_OF_TEXT, *(render_message(m) for m in messages), assistant_prefix()]
        return sum(self.count_tokens(part) for part in parts)

    def reply_cap(self, prompt_tokens: int | None) -> int:
        """max_tokens to send: the configured cap (default 65536), never more than the context left."""
        cap = self.options.max_tokens or MAX_REPLY_TOKENS
        if prompt_tokens is None:
            return cap
        limit = self.options.context_size
        served = self.connect()
        if served.max_model_len:
            limit = min(limit, served.max_model_len)
        left = limit - prompt_tokens
        if left < 1:
            raise ContextExceededError(
                f"the prompt takes {prompt_tokens} tokens of the {limit}-token context; "
                "no room is left for a reply"
            )
        return min(cap, left)

    def sampling_fields(self) -> dict[str, Any]:
        """Sampling and constraint fields common to both endpoints (None means: server default)."""
        body: dict[str, Any] = {}
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.top_p is not None:
            body["top_p"] = self.options.top_p
        if self.options.constraint is not None:
            if self.options.constraint_format == "guided_regex":
                body["guided_regex"] = self.options.constraint
            else:
                body["structured_outputs"] = {"regex": self.options.constraint}
        return body

    def fail_over(self) -> None:
        """Fail a request at once when the server is gone (see ServerClient.fails_over)."""
        self._client.fails_over = True

    def close(self) -> None:
        self._client.close()

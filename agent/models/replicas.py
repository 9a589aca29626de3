"""Several servers of one model (`--model URL1,URL2,…`): each episode on one replica, moved only when it dies.

Why pin: a server's prefix cache holds the episode's history, so every turn of an episode goes to the
replica that served its first one; spreading turns would re-prefill the whole history each time. An
episode is pinned when its client is built, to the live replica with the fewest episodes pinned in this
process (`affinity`, the episode's identity, breaks ties alike in every process of a Ray batch).

Why move: a replica that dies must not take its episodes down. When the pinned replica is gone
(connection refused or dropped, HTTP 502/503/504) or keeps failing (5xx, no answer), it is marked down
in agent.models.health, so no new episode pins to it (until an ask, with backoff, finds it back), and
the same request goes to the next replica, which re-prefills the prompt; the episode stays there. Only when every replica fails is the outage
waited out as for one server (tenacity, `outage_s`), each round asking every replica again, then
ServerUnavailable; replicas none of which ever answered fail at once, as a wrong URL does.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from agent.models import health
from agent.models.base import Model, ModelError, ModelReply
from agent.models.chat import ChatModel, ChatOptions
from agent.models.completions import CompletionsModel, CompletionsOptions
from agent.models.http import ServerError, ServerModel, ServerUnavailable, build_options
from agent.protocol.render import Message
from traces.schema import ModelInfo

log = structlog.get_logger("agent.models.replicas")

T = TypeVar("T")
_lock = threading.RLock()
_pinned: Counter[str] = Counter()  # API base -> episodes pinned to it in this process
_rechecks: dict[str, tuple[int, float]] = {}  # down API base -> (probes that failed, time.monotonic() of the next)
RECHECK = wait_exponential(multiplier=0.5, max=30)  # seconds between asks of a replica that is down


def pinned_counts() -> dict[str, int]:
    """Episodes pinned to each replica in this process now (for a display)."""
    with _lock:
        return {server: count for server, count in _pinned.items() if count}


def _back(server: str) -> bool:
    """Ask a replica that is down whether it is back, when its next ask is due (with backoff): nothing
    else would, once every episode has moved off it, and a restarted replica must take episodes again."""
    now = time.monotonic()
    with _lock:
        failed, due = _rechecks.get(server, (0, 0.0))
        if now < due:
            return False
        _rechecks[server] = (failed + 1, now + RECHECK(_Attempt(failed + 1)))
    if not health.probe(server):  # an answer marks it up in health
        return False
    with _lock:
        _rechecks.pop(server, None)
    log.info("model.replica_back", server=server)
    return True


class _Attempt:
    """What tenacity's wait strategies read of a retry state."""

    def __init__(self, number: int) -> None:
        self.attempt_number = number


def _fails_over(error: ServerError) -> bool:
    """The replica is the problem (gone, crashing, not answering), not the request: another may serve it."""
    return error.status is None or error.status >= 500


class _AllDown(Exception):
    """Every replica failed one round; `error` is the last one's."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(str(error))
        self.error = error


class ReplicaSet(Model):
    """One episode's client of several replicas; see the module docstring."""

    def __init__(self, kind: str, urls: list[str], *, affinity: str | None = None, **overrides: Any) -> None:
        if kind not in ("completions", "chat"):
            raise ModelError(f"only HTTP models have replicas, not {kind}")
        schema, client = (ChatOptions, ChatModel) if kind == "chat" else (CompletionsOptions, CompletionsModel)
        self.options = build_options(schema, overrides, kind)
        # Each replica fails at once when gone: this set decides where the request goes next, and waits.
        mine = self.options.model_copy(update={"outage_s": 0.0})
        self.replicas: list[ServerModel] = [client(url, mine) for url in urls]
        bases = [replica.api_base for replica in self.replicas]
        if len(set(bases)) < len(bases):
            raise ModelError(f"the replicas {', '.join(urls)} name a server twice; list each once")
        for replica in self.replicas:
            replica.fail_over()
        self.servers = bases
        self.served: list[str] = []  # the replicas this episode was pinned to, in order
        self._index: int | None = None
        self._pin_least(self._live(affinity), fallback=0)  # every replica down: the first, until one answers

    # pinning

    def _live(self, affinity: str | None, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """The replicas not down (a down one due for an ask is asked first) nor in `avoid`, in the order
        that breaks ties: from the one `affinity` hashes to, so each process spreads alike."""
        asked = {self.servers[i] for i in range(len(self.servers)) if i not in avoid}
        down = {server for server in health.down_servers() if server in asked}
        down = {server for server in down if not _back(server)}  # asks over HTTP: outside the lock
        start = zlib.crc32(affinity.encode()) % len(self.servers) if affinity else 0
        order = [(start + step) % len(self.servers) for step in range(len(self.servers))]
        return [i for i in order if i not in avoid and self.servers[i] not in down]

    def _pin_least(self, live: list[int], fallback: int | None) -> int | None:
        """Pin to the replica of `live` with the fewest episodes (else to `fallback`), counted at once so
        that concurrent episodes spread."""
        with _lock:
            index = min(live, key=lambda i: _pinned[self.servers[i]]) if live else fallback
            if index is not None:
                self._pin(index)
            return index

    def _pin(self, index: int) -> None:
        """Pin to `index`, moving this episode's count there."""
        with _lock:
            if self._index is not None:
                _pinned[self.servers[self._index]] -= 1
            _pinned[self.servers[index]] += 1
        self._index = index
        if not self.served or self.served[-1] != self.servers[index]:
            self.served.append(self.servers[index])

    @property
    def replica(self) -> ServerModel:
        """The replica this episode is pinned to now."""
        assert self._index is not None
        return self.replicas[self._index]

    # the Model interface

    @property
    def info(self) -> ModelInfo:  # type: ignore[override]
        """The pinned replica's description (its URL is the header's `url`)."""
        return self._call(lambda replica: replica.info)

    @property
    def api_base(self) -> str:
        return self.replica.api_base

    def complete(self, messages: list[Message]) -> ModelReply:
        return self._call(lambda replica: replica.complete(messages))

    def count_tokens(self, text: str) -> int:
        return self._call(lambda replica: replica.count_tokens(text))

    def close(self) -> None:
        with _lock:
            if self._index is not None:
                _pinned[self.servers[self._index]] -= 1
        self._index = None
        for replica in self.replicas:
            replica.close()

    # failing over

    def _call(self, action: Callable[[ServerModel], T]) -> T:
        """Run `action` on the pinned replica, moving to the others while it fails; wait while all do."""
        retrying = Retrying(stop=self._stop, wait=self._wait, retry=retry_if_exception_type(_AllDown), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._round(action)
        except _AllDown as all_down:
            if not self._waits_out():
                raise all_down.error from None
            waited = retrying.statistics.get("delay_since_first_attempt", 0.0)
            unavailable = ServerUnavailable(
                f"every replica of the model ({', '.join(self.servers)}) went away and none came back within "
                f"{waited:.0f} s (outage bound {self.options.outage_s:g} s); restart one, then rerun with --resume"
            )
            unavailable.down_since = time.time() - waited
            raise unavailable from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _round(self, action: Callable[[ServerModel], T]) -> T:
        """Ask the pinned replica, then every other one (live ones first), once each."""
        tried: set[int] = set()
        while True:
            replica = self.replica
            try:
                return action(replica)
            except ServerError as error:
                if not _fails_over(error):
                    raise
                assert self._index is not None
                tried.add(self._index)
                health.mark_down(replica.api_base)
                rest = [i for i in range(len(self.servers)) if i not in tried]  # none live: a down one may be back
                following = self._pin_least(self._live(None, tried), fallback=rest[0] if rest else None)
                if following is None:
                    raise _AllDown(error) from None
                log.warning("model.replica_failover", server=replica.api_base, to=self.servers[following],
                            error=str(error))

    def _waits_out(self) -> bool:
        """Wait for replicas only when one of them answered in this process (else: a wrong URL list)."""
        return self.options.outage_s > 0 and any(health.has_answered(server) for server in self.servers)

    def _stop(self, state: RetryCallState) -> bool:
        return not self._waits_out() or state.seconds_since_start >= self.options.outage_s

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff between rounds, never past the outage bound."""
        delay = wait_exponential(multiplier=self.options.backoff_s, max=self.options.max_backoff_s)(state)
        return max(0.0, min(delay, self.options.outage_s - state.seconds_since_start))

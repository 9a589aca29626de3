"""Which model servers are down right now, and since when: what the batch display shows.

The HTTP clients mark a server down when a request finds it unreachable and up again when one
succeeds; the registry is process-wide (every episode of a local batch shares it) and thread-safe.
It also remembers which servers have answered in this process: a new episode's client of such a
server waits out its outage as the running episodes' clients do, instead of failing fast as for a
server that never answered (a wrong URL). The waiting itself is the clients' retry policy
(agent.models.http); `probe` lets the batch ask a server that no request is asking any more.
"""

from __future__ import annotations

import threading
import time

import httpx

_lock = threading.Lock()
_down_since: dict[str, float] = {}
_answered: set[str] = set()
PROBE_TIMEOUT_S = 5.0


def mark_down(server: str) -> None:
    """`server` failed to answer; the first failure of an outage sets its start."""
    with _lock:
        _down_since.setdefault(server, time.time())


def mark_up(server: str) -> None:
    """`server` answered: its outage (if any) is over."""
    with _lock:
        _down_since.pop(server, None)
        _answered.add(server)


def has_answered(server: str) -> bool:
    """Has `server` answered any request of this process?"""
    with _lock:
        return server in _answered


def probe(server: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Ask `server` (an API base ending in /v1) for its model list; an answer ends its outage.

    Any HTTP answer below 500 counts (a server behind a key answers 401): the question is whether the
    server is there, not whether this request is welcome.
    """
    try:
        response = httpx.get(f"{server}/models", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    if response.status_code >= 500:
        return False
    mark_up(server)
    return True


def down_servers() -> dict[str, float]:
    """Servers down now, each with the wall-clock time (epoch seconds) its outage began."""
    with _lock:
        return dict(_down_since)

"""Which model servers are down right now, and since when: what the batch display shows.

The HTTP clients mark a server down when a request finds it unreachable and up again when one
succeeds; the registry is process-wide (every episode of a local batch shares it) and thread-safe.
It never decides anything: the waiting itself is the clients' retry policy (agent.models.http).
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_down_since: dict[str, float] = {}


def mark_down(server: str) -> None:
    """`server` failed to answer; the first failure of an outage sets its start."""
    with _lock:
        _down_since.setdefault(server, time.time())


def mark_up(server: str) -> None:
    with _lock:
        _down_since.pop(server, None)


def down_servers() -> dict[str, float]:
    """Servers down now, each with the wall-clock time (epoch seconds) its outage began."""
    with _lock:
        return dict(_down_since)

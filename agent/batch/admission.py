"""KV-aware admission: how many episodes the batch keeps in flight follows the model server's KV cache.

Why: an agent episode's prompt is its whole history, and the server's prefix cache is what makes
each turn cheap. Past what the KV cache holds, vLLM runs some requests and queues the rest, and the
queued episodes' prefixes are evicted while they wait: on one H100 (docs/benchmarks.md, "Serving
the agent workload") 64 episodes in flight ran 35, queued 28, kept 6.6% of the ideal prefix cache
share and finished 12% fewer episodes per hour than 32. `--workers` cannot know that number (it
depends on the GPU, the KV dtype and how long the contexts have grown), so the driver asks the
server instead.

The controller reads each model server's Prometheus /metrics (agent.models.metrics) at most every
`poll_s`, from the driver thread, when the driver is about to hand out an episode, and keeps a
window of episodes allowed in flight (AIMD, as TCP's congestion window):

- it starts at min(workers, `start` x servers);
- congestion: KV usage at or over `high_water` with requests waiting, or preemptions since the last
  reading. The window shrinks to `decrease` x min(window, in flight), at least 1 (the new episodes
  are held back; running episodes are never stopped). While more episodes run than the window
  allows, a further decrease waits: the last one has not taken effect yet;
- room: KV usage under `high_water`, nothing waiting, no preemptions, and the window has been in use
  (as many in flight as it allows) for `increase_every_s`. The window grows by `increase`, never past
  `--workers`. Why the wait: an episode just handed out has not reached the server yet (its sandbox
  is starting), and its context grows turn by turn, so a reading taken right after an increase (or
  at the start) shows room that is already spoken for;
- anything else (full but nothing waiting: the sweet spot) keeps it.

With several servers (replicas) there is one window for the run, and congestion on any of them
shrinks it. A server without /metrics (HTTP 404, or no KV gauge: not vLLM) turns admission off for
the run with one warning, and `--workers` rules as before; so does a run that never got a reading in
`unread_polls` tries (the driver cannot reach /metrics: a Ray cluster's server may answer only its
workers). A server that stops answering later (down, slow) changes nothing: outages are
agent.batch.outages' business. Every change of the window is
a structlog event (`batch.admission`), and the display shows it while it limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Literal

import structlog
from pydantic import BaseModel, Field

from agent.batch.outages import model_server
from agent.models.base import ModelError
from agent.models.metrics import NoMetrics, ServerLoad, metrics_url, read_load

log = structlog.get_logger()

Admission = Literal["kv", "off"]


class AdmissionSettings(BaseModel):
    """`agent batch --admission` and the controller's knobs; see the module docstring for how each acts."""

    mode: Admission = Field(default="kv", description="kv: follow the KV cache of HTTP model servers; off: "
                            "--workers alone (replay models never have a server to follow)")
    start: int = Field(default=8, ge=1, description="episodes allowed in flight per server before any reading")
    high_water: float = Field(default=0.85, gt=0, le=1, description="KV usage share counted as full")
    increase: int = Field(default=1, ge=1, description="episodes added to the window when there is room")
    increase_every_s: float = Field(default=10.0, ge=0, description="seconds the window must have been in use, "
                                    "with room, before it grows")
    decrease: float = Field(default=0.75, gt=0, lt=1, description="factor the window shrinks by on congestion")
    poll_s: float = Field(default=1.0, gt=0, description="least seconds between two readings of /metrics")
    timeout_s: float = Field(default=1.0, gt=0, description="how long one reading may take (the driver waits)")
    unread_polls: int = Field(default=30, ge=1, description="tries without any reading before admission turns off")


class Reading(BaseModel):
    """What the controller concluded from its last round of readings."""

    kv_usage: float
    waiting: float
    preempted: bool
    in_flight: int
    allowed: int


def metrics_urls(specs: Iterable[str]) -> list[str]:
    """The /metrics URL of every HTTP model server among `specs` (replay models have none).

    A spec naming replicas (`URL1,URL2`: agent.batch.outages names them as one resource, their API
    bases joined by commas) counts each of them.
    """
    urls: set[str] = set()
    for spec in specs:
        try:
            resource = model_server(spec)
        except ModelError:  # refused elsewhere, with its own message
            continue
        urls.update(metrics_url(server) for server in (resource or "").split(",") if server)
    return sorted(urls)


class KvAdmission:
    """The window of episodes allowed in flight; see the module docstring."""

    def __init__(self, workers: int, urls: Iterable[str], settings: AdmissionSettings | None = None, *,
                 on_change: Callable[[int, int, float | None], None] | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.workers = workers
        self.urls = sorted(set(urls))
        self.active = bool(self.urls)
        self.window = min(workers, self.settings.start * len(self.urls)) if self.active else workers
        self.peak = self.window  # the most ever allowed (for reports and tests)
        self.kv_usage: float | None = None
        self.last: Reading | None = None
        self._on_change = on_change or (lambda allowed, workers, kv: None)
        self._preemptions: dict[str, float] = {}
        self._next_poll = 0.0
        self._unread = 0  # tries in a row without a reading, before the first reading
        self._full_since: float | None = None  # when the window was last seen in use (reset when it moves)
        if self.active:
            log.info("batch.admission", allowed=self.window, was=None, workers=workers, reason="start",
                     kv_usage=None, servers=self.urls)
        if self.active and self.window < workers:  # the display says so from the start
            self._on_change(self.window, workers, None)

    def allowed(self, in_flight: int) -> int:
        """Episodes that may be in flight now (a reading first, when one is due)."""
        if self.active and time.monotonic() >= self._next_poll:
            self.poll(in_flight)
        return self.window

    def poll(self, in_flight: int) -> Reading | None:
        """Read every server now and move the window; None when no server gave a reading."""
        self._next_poll = time.monotonic() + self.settings.poll_s
        loads: list[ServerLoad] = []
        preempted = False
        for url in self.urls:
            try:
                load = read_load(url, self.settings.timeout_s)
            except NoMetrics as error:
                self._turn_off(str(error))
                return None
            if load is None:
                continue
            before = self._preemptions.get(url)
            preempted = preempted or (before is not None and load.preemptions > before)
            self._preemptions[url] = load.preemptions
            loads.append(load)
        if not loads:
            self._unread += 1
            if self.kv_usage is None and self._unread >= self.settings.unread_polls:
                self._turn_off(f"no reading from {', '.join(self.urls)} in {self._unread} tries")
            return None
        self._unread = 0
        full = [load for load in loads if load.kv_usage >= self.settings.high_water]
        congested = preempted or any(load.waiting > 0 for load in full)
        room = not preempted and not full and all(load.waiting == 0 for load in loads)
        self.kv_usage = max(load.kv_usage for load in loads)
        now = time.monotonic()
        if in_flight < self.window:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        if congested and in_flight <= self.window:
            self._set(max(1, math.floor(min(self.window, max(in_flight, 1)) * self.settings.decrease)),
                      "preemptions" if preempted else "kv_full_and_waiting")
        elif room and self._full_since is not None and now - self._full_since >= self.settings.increase_every_s:
            self._set(min(self.workers, self.window + self.settings.increase), "kv_room")
        self.last = Reading(kv_usage=self.kv_usage, waiting=sum(load.waiting for load in loads), preempted=preempted,
                            in_flight=in_flight, allowed=self.window)
        return self.last

    def _set(self, window: int, reason: str) -> None:
        if window == self.window:
            return
        log.info("batch.admission", allowed=window, was=self.window, workers=self.workers, reason=reason,
                 kv_usage=self.kv_usage)
        self.window = window
        self._full_since = None
        self.peak = max(self.peak, window)
        self._on_change(window, self.workers, self.kv_usage)

    def _turn_off(self, why: str) -> None:
        log.warning("batch.admission_off", reason=why, detail="no KV cache metrics: --workers alone decides")
        self.active = False
        self._set(self.workers, "no_metrics")


def make_admission(settings: AdmissionSettings, workers: int, specs: Iterable[str],
                   on_change: Callable[[int, int, float | None], None] | None = None) -> KvAdmission | None:
    """The run's controller, or None when admission is off or no model is an HTTP server (replay)."""
    if settings.mode == "off":
        return None
    urls = metrics_urls(specs)
    return KvAdmission(workers, urls, settings, on_change=on_change) if urls else None

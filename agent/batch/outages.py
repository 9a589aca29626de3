"""The batch waits for what its episodes need: the model server, the Docker daemon, disk space.

Without this, an outage burns through the queue: every episode handed out while the Docker daemon
restarts fails at once, and each failure is an attempt used up. The driver (agent.batch.run) asks the
gate before handing out an episode, and tells it every outcome:

- An infrastructure failure (agent.episode.failures) makes the gate look at its cause: for `docker` it
  pings the daemon, for `model_server` it asks each model server of the run for its model list. What
  does not answer is DOWN from then on. A model server is also down as soon as a local episode's
  client finds it gone (agent.models.health), before any episode has failed. Replicas of one model
  (`--model URL1,URL2`) are one resource, down only while every replica is: episodes move off a dead
  replica by themselves (agent.models.replicas).
- While anything is down, no episode is handed out (failed ones wait in the queue as new attempts)
  and the progress display says what is down and since when. Down resources are asked again with
  exponential backoff; the first answer ends the outage and episodes flow again.
- Past `bound_s`, or for a model server that never answered this run (a wrong URL, a server not
  started yet), or for a full disk (space does not come back by itself), the gate raises BatchStopped
  with one line saying what to do; the run keeps everything finished and `--resume` continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog
from pydantic import BaseModel
from tenacity import wait_exponential

from agent.batch.executors import EpisodeJob, EpisodeOutcome
from agent.models import health

log = structlog.get_logger()

DOCKER = "Docker daemon"
PROBE_BACKOFF = wait_exponential(multiplier=0.5, max=15)  # seconds between asks of a resource that is down


class BatchStopped(RuntimeError):
    """The batch cannot go on until something outside it is fixed; the message says what (one line).
    `drain`: the episodes in flight can still finish and be recorded (not so on a full disk)."""

    def __init__(self, message: str, drain: bool = True) -> None:
        super().__init__(message)
        self.drain = drain


def disk_full_stop(root: object) -> BatchStopped:
    return BatchStopped(f"no space left on the device of {root}: free some (`df -h {root}`), then rerun with "
                        "--resume; what finished is kept", drain=False)


class _Outage(BaseModel):
    since: float  # epoch seconds (what the display shows)
    asks: int = 0
    next_ask: float = 0.0  # time.monotonic()


def model_server(spec: str) -> str | None:
    """The API base of an HTTP model spec (as agent.models.health names servers), the bases of its
    replicas joined by commas (one resource); None for others."""
    from agent.models.factory import parse_replicas
    from agent.models.http import normalize_base_url

    kind, targets = parse_replicas(spec)
    return ",".join(normalize_base_url(t)[0] for t in targets) if kind in ("completions", "chat") else None


def _members(resource: str) -> list[str]:
    """The servers of a model-server resource (one, or its replicas)."""
    return resource.split(",")


def _all_down_since(resource: str, down: dict[str, float]) -> float | None:
    """When the last of a resource's servers went down, if all are down now (health's view)."""
    members = _members(resource)
    return max(down[m] for m in members) if all(m in down for m in members) else None


def _docker_answers() -> bool:
    from sandbox.docker import daemon_answers

    return daemon_answers()


class OutageGate:
    """Decides whether episodes may be handed out now; see the module docstring."""

    def __init__(self, bound_s: float, specs: Iterable[str], root: str, *, docker: bool,
                 on_change: Callable[[str, float | None], None],
                 ask_docker: Callable[[], bool] = _docker_answers,
                 ask_server: Callable[[str], bool] = health.probe) -> None:
        self.bound_s = bound_s
        self.root = root
        self._servers = sorted({s for s in map(model_server, set(specs)) if s})
        self._docker = docker  # the daemon is this host's (local executor or a local Ray instance)
        self._on_change = on_change
        self._ask_docker, self._ask_server = ask_docker, ask_server
        self._down: dict[str, _Outage] = {}
        self._answered: set[str] = set()  # servers that answered this run (seen by the driver)
        self.seen: dict[str, int] = {}  # resource -> outages seen this session (for reports)

    def note(self, job: EpisodeJob, outcome: EpisodeOutcome) -> None:
        """Look at what failed under an episode; raises BatchStopped when waiting cannot help."""
        if outcome.ok:
            server = model_server(job.model_spec)
            if server:
                self._answered.add(server)
            return
        cause = outcome.failure.cause if outcome.retryable and outcome.failure else None
        if cause == "disk":
            raise disk_full_stop(self.root)
        if cause == "docker" and self._docker and DOCKER not in self._down and not self._ask_docker():
            self._open(DOCKER, time.time())
        if cause == "model_server":
            seen = outcome.failure.since if outcome.failure else None  # by the episode's client, maybe elsewhere
            for server in self._servers:
                if server not in self._down and not self._ask_server(server):
                    self._open(server, _all_down_since(server, health.down_servers()) or seen or time.time())

    def holding(self) -> bool:
        """True while something is down (episodes must not be handed out). Asks what is due, ends
        outages that answer, and raises BatchStopped for one that cannot be waited out."""
        down = health.down_servers()  # seen by a local episode's client
        for server in self._servers:
            since = _all_down_since(server, down)
            if since is not None and server not in self._down and self._waitable(server):
                self._open(server, since)
        now = time.monotonic()
        for resource, outage in list(self._down.items()):
            if now < outage.next_ask:
                continue
            if self._ask(resource):
                del self._down[resource]
                log.info("batch.outage_over", resource=resource, after_s=round(time.time() - outage.since, 1))
                self._on_change(self._label(resource), None)
                continue
            self._check(resource, outage)
            outage.asks += 1
            outage.next_ask = time.monotonic() + PROBE_BACKOFF(_Attempt(outage.asks))
        return bool(self._down)

    def _open(self, resource: str, since: float) -> None:
        self._down[resource] = outage = _Outage(since=since)
        self.seen[resource] = self.seen.get(resource, 0) + 1
        log.warning("batch.outage", resource=resource)
        self._on_change(self._label(resource), since)
        self._check(resource, outage)

    def _check(self, resource: str, outage: _Outage) -> None:
        if resource != DOCKER and not self._waitable(resource):
            raise BatchStopped(f"{self._label(resource)} is not reachable: start it (`agent serve`) or fix --model, "
                               "then rerun with --resume")
        waited = time.time() - outage.since
        if waited >= self.bound_s:
            raise BatchStopped(f"{self._label(resource)} has been down for {waited:.0f} s (bound {self.bound_s:g} s): "
                               "the batch stopped; bring it back, then rerun with --resume")

    def _waitable(self, server: str) -> bool:
        """Only a server that answered this run is waited for; one that never did is a setup error."""
        return server in self._answered or any(health.has_answered(m) for m in _members(server))

    def _ask(self, resource: str) -> bool:
        """Does it answer? For replicas: does any (one is enough for episodes to flow again)?"""
        if resource == DOCKER:
            return self._ask_docker()
        return any(self._ask_server(member) for member in _members(resource))

    @staticmethod
    def _label(resource: str) -> str:
        if resource == DOCKER:
            return resource
        members = _members(resource)
        return f"model server at {resource}" if len(members) == 1 else f"every model server of {', '.join(members)}"


class _Attempt:
    """What tenacity's wait strategies read of a retry state."""

    def __init__(self, number: int) -> None:
        self.attempt_number = number

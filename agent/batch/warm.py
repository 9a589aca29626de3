"""Warm sandboxes for a batch: the sandboxes of the next episodes, started before their turn.

sandbox.pool.WarmPool keeps ready sandboxes of one config. A batch needs many: one per image, and with
repository images (agent.episode.repo_image) one per repository and commit, an image that exists only
once its first episode has made it. `LookaheadPools` is told which episodes come next (`plan`, by the
driver after it hands episodes out), works out the config each one's sandbox will have (`configure`:
agent.episode.solve.warm_config, which makes a missing repository image now, the copy the episode
would otherwise wait for, and pulls or builds a missing environment image) and keeps started sandboxes
for the first `size` of them, K of one config for K samples of one instance. An episode asks for its
sandbox by its config (`open`) and gets a started one when there is one, a new one otherwise: a warm
sandbox is only ever a head start, never a different sandbox.

Ready sandboxes beyond what the planned and handed-out episodes still want are closed. One background
thread does the work, so a slow image build never holds up the driver.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import structlog

from sandbox import lifecycle
from sandbox.base import Sandbox, SandboxConfig
from sandbox.pool import close_each

log = structlog.get_logger()

JobKey = tuple[str, int]


def _docker(config: SandboxConfig) -> Sandbox:
    from sandbox.docker import DockerSandbox

    return DockerSandbox(config)


class LookaheadPools:
    """Started sandboxes for the next `size` episodes (see the module docstring); thread-safe."""

    def __init__(self, size: int, configure: Callable[[Any], SandboxConfig],
                 factory: Callable[[SandboxConfig], Sandbox] | None = None) -> None:
        self.size = size
        self._configure, self._factory = configure, factory or _docker
        self._configs: dict[JobKey, tuple[str, SandboxConfig] | None] = {}
        self._planned: list[Any] = []
        self._handed: dict[JobKey, Any] = {}  # handed to a worker, sandbox not asked for yet
        self._ready: dict[str, deque[Sandbox]] = {}
        self._starting: Counter[str] = Counter()
        self._failed: set[str] = set()
        self._closed = False
        self.hits = self.misses = 0
        self._cond = threading.Condition()
        lifecycle.register(self)
        self._thread = threading.Thread(target=self._work, name="cwm-warm-lookahead", daemon=True)
        self._thread.start()

    # -- what the driver and the workers say -----------------------------------------------------

    def plan(self, upcoming: list[Any]) -> None:
        """The episodes that come next, in order (only the first `size` are warmed)."""
        with self._cond:
            self._planned = list(upcoming[: self.size])
            self._cond.notify_all()

    def handed(self, job: Any) -> None:
        """`job` went to a worker: its sandbox will be asked for soon."""
        with self._cond:
            self._handed[job.key] = job
            self._cond.notify_all()

    def finished(self, job: Any) -> None:
        """`job`'s worker is done (whether or not it asked for a sandbox)."""
        with self._cond:
            self._handed.pop(job.key, None)
            self._configs.pop(job.key, None)
            self._cond.notify_all()

    def open(self, config: SandboxConfig) -> Sandbox:
        """A started sandbox of `config`: a warm one if ready, else one started now."""
        key = config.model_dump_json()
        with self._cond:
            if self._closed:
                raise RuntimeError("the warm pools are closed")
            for job_key, job in list(self._handed.items()):
                if (self._configs.get(job_key) or ("",))[0] == key:
                    del self._handed[job_key]  # served (or about to be): no longer wanted
                    break
            ready = self._ready.get(key)
            sandbox = ready.popleft() if ready else None
            if sandbox is not None:
                self.hits += 1
            else:
                self.misses += 1
            self._cond.notify_all()
        log.info("batch.warm_sandbox", hit=sandbox is not None, image=config.image)
        return sandbox if sandbox is not None else self._factory(config)

    def wait_ready(self, count: int, timeout: float | None = None) -> bool:
        """Block until `count` sandboxes are ready (for benchmarks and tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or sum(len(r) for r in self._ready.values()) >= count, timeout)

    # -- the background thread -----------------------------------------------------------------------

    def _wanted(self) -> Counter[str]:
        """How many sandboxes of each config the planned and handed-out episodes still want."""
        jobs = {**{job.key: job for job in self._planned}, **self._handed}
        entries = (self._configs.get(key) for key in jobs)
        return Counter(entry[0] for entry in entries if entry is not None and entry[0] not in self._failed)

    def _next(self) -> tuple[str, Any] | None:
        """What to do next, without doing it: ("configure", job), ("evict", config key), ("start", (config
        key, config)), or None. Called with the lock held."""
        for job in [*self._handed.values(), *self._planned]:
            if job.key not in self._configs:
                return "configure", job
        wanted = self._wanted()
        for key, ready in self._ready.items():
            if len(ready) > wanted[key]:
                return "evict", key
        total = sum(len(r) for r in self._ready.values()) + sum(self._starting.values())
        for key, count in wanted.items():
            if total < self.size and len(self._ready.get(key, ())) + self._starting[key] < count:
                config = next(entry[1] for entry in self._configs.values() if entry is not None and entry[0] == key)
                return "start", (key, config)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                found = self._next()
                while not self._closed and found is None:
                    self._cond.wait()
                    found = self._next()
                if self._closed or found is None:
                    return
                action, subject = found
                if action == "start":
                    self._starting[subject[0]] += 1
                elif action == "evict":
                    subject = self._ready[subject].pop()
            if action == "configure":
                self._configure_job(subject)
            elif action == "start":
                self._start(*subject)
            else:
                subject.close()

    def _configure_job(self, job: Any) -> None:
        try:
            config: SandboxConfig | None = self._configure(job)
        except Exception as error:  # noqa: BLE001 - the episode meets the same problem and reports it
            log.info("batch.warm_configure_failed", instance=job.key[0], error=str(error).splitlines()[:1])
            config = None
        with self._cond:
            self._configs[job.key] = (config.model_dump_json(), config) if config is not None else None
            self._cond.notify_all()

    def _start(self, key: str, config: SandboxConfig) -> None:
        sandbox: Sandbox | None = None
        try:
            sandbox = self._factory(config)
        except Exception as error:  # noqa: BLE001 - the episode starts its own and reports the failure
            log.info("batch.warm_start_failed", image=config.image, error=str(error).splitlines()[:1])
        with self._cond:
            self._starting[key] -= 1
            if sandbox is None:
                self._failed.add(key)  # not again: the episodes of this config start their own
            if sandbox is not None and not self._closed:
                self._ready.setdefault(key, deque()).append(sandbox)
                sandbox = None
            self._cond.notify_all()
        if sandbox is not None:
            sandbox.close()

    def close(self) -> None:
        """Stop, and close every ready sandbox (those handed out are their episodes')."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            ready = [s for r in self._ready.values() for s in r]
            self._ready.clear()
            self._cond.notify_all()
        close_each(ready, "batch.warm_close_failed")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
        lifecycle.unregister(self)

"""Warm pool: sandboxes started ahead of time so that an episode gets one in milliseconds.

A cold start (create + start the container, open the session, run the start-up script) costs a few
hundred milliseconds; batch runs start one sandbox per instance, and grading a fresh one per patch.
One background thread keeps `size` started sandboxes ready; `acquire()` hands one over and the
thread starts a replacement. If none is ready, `acquire()` starts one itself rather than wait.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

import structlog

from sandbox import lifecycle
from sandbox.base import Sandbox, SandboxConfig

log = structlog.get_logger()

SandboxFactory = Callable[[SandboxConfig], Sandbox]


def _docker_factory(config: SandboxConfig) -> Sandbox:
    from sandbox.docker import DockerSandbox

    return DockerSandbox(config)


class WarmPool:
    """Keeps `size` ready sandboxes of one config; every acquired sandbox is the caller's to close."""

    def __init__(self, config: SandboxConfig, size: int = 2, factory: SandboxFactory | None = None) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.config = config
        self.size = size
        self._factory = factory or _docker_factory
        self._idle: deque[Sandbox] = deque()
        self._starting = 0
        self._closed = False
        self._failures = 0
        self._cond = threading.Condition()
        lifecycle.register(self)  # closed at exit like a sandbox (also installs signal handlers)
        self._thread = threading.Thread(target=self._refill, name="cwm-warm-pool", daemon=True)
        self._thread.start()

    def acquire(self) -> Sandbox:
        """A started sandbox: a warm one if ready, else one started now (synchronously)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            if self._idle:
                sandbox = self._idle.popleft()
                self._cond.notify_all()
                return sandbox
        return self._factory(self.config)

    @property
    def ready(self) -> int:
        with self._cond:
            return len(self._idle)

    def wait_ready(self, count: int | None = None, timeout: float | None = None) -> bool:
        """Block until `count` (default: size) sandboxes are ready; for benchmarks and tests."""
        want = self.size if count is None else count
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or len(self._idle) >= want, timeout)

    def _refill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._idle) + self._starting < self.size)
                if self._closed:
                    return
                self._starting += 1
            sandbox: Sandbox | None = None
            try:
                sandbox = self._factory(self.config)
                self._failures = 0
            except Exception as exc:  # noqa: BLE001 - keep the thread alive, back off, retry
                self._failures += 1
                log.warning("sandbox.pool_start_failed", error=str(exc), failures=self._failures)
            with self._cond:
                self._starting -= 1
                if sandbox is not None and not self._closed:
                    self._idle.append(sandbox)
                    sandbox = None
                self._cond.notify_all()
                if self._failures:
                    # Back off (up to a minute) so a missing image does not spin; close() wakes us.
                    self._cond.wait_for(lambda: self._closed, timeout=min(60.0, 0.5 * 2**self._failures))
            if sandbox is not None:  # the pool was closed while it was starting
                sandbox.close()

    def close(self) -> None:
        """Stop refilling and remove every idle sandbox (acquired ones stay with their owners)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._cond.notify_all()
        close_each(idle, "sandbox.pool_close_failed")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
        lifecycle.unregister(self)

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_each(sandboxes: Iterable[Sandbox], failure_event: str) -> None:
    """Close every sandbox; one that fails to close is logged as `failure_event`, the others still close."""
    for sandbox in sandboxes:
        try:
            sandbox.close()
        except Exception as exc:  # noqa: BLE001 - close the others all the same
            log.warning(failure_event, error=str(exc))

"""Process-wide registry of live sandboxes (and pools), closed however the process ends.

Normal exit runs `atexit`; Ctrl-C raises KeyboardInterrupt, which unwinds `with` blocks and then
reaches `atexit`; SIGTERM (and SIGHUP) would kill the process without either, so they are turned
into SystemExit. Handlers are installed only from the main thread (Python allows nothing else) and
only where the application has not installed its own. SIGKILL cannot be caught: the reaper cleans up
after it on the next start. A forked child forgets the registry, so its exit never closes the
parent's sandboxes.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Protocol

import structlog

log = structlog.get_logger()


class Closeable(Protocol):
    def close(self) -> None: ...


_lock = threading.Lock()
_live: dict[int, Closeable] = {}
_atexit_installed = False
_signals_installed = False


def _forget_all() -> None:
    """In a forked child: the sandboxes belong to the parent, which will close them itself."""
    global _lock
    _lock = threading.Lock()  # the parent may have held it while forking
    _live.clear()


os.register_at_fork(after_in_child=_forget_all)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> bool:
    """Turn SIGTERM/SIGHUP into SystemExit; a no-op off the main thread. Returns True if installed."""
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return _signals_installed
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)
    _signals_installed = True
    return True


def register(obj: Closeable) -> None:
    """Track `obj` until `unregister`; it will be closed at exit if still registered."""
    global _atexit_installed
    with _lock:
        _live[id(obj)] = obj
        if not _atexit_installed:
            atexit.register(close_all)
            _atexit_installed = True
    install_signal_handlers()


def unregister(obj: Closeable) -> None:
    with _lock:
        _live.pop(id(obj), None)


def live() -> list[Closeable]:
    with _lock:
        return list(_live.values())


def _close_quietly(obj: Closeable) -> None:
    try:
        obj.close()
    except Exception as exc:  # noqa: BLE001 - at exit, report and go on with the others
        log.warning("sandbox.close_failed", error=str(exc))


def _close_in_parallel(objs: list[Closeable]) -> None:
    """Plain threads, not an executor: at exit concurrent.futures refuses new work, and some
    Python versions refuse new threads too, in which case the rest is closed one by one."""
    threads = []
    for obj in objs[1:]:
        thread = threading.Thread(target=_close_quietly, args=(obj,), name="cwm-sandbox-close")
        try:
            thread.start()
        except RuntimeError:
            _close_quietly(obj)
            continue
        threads.append(thread)
    if objs:
        _close_quietly(objs[0])
    for thread in threads:
        thread.join()


def close_all() -> None:
    """Close everything registered, in parallel (each removal is a daemon round trip)."""
    objs = live()
    if not objs:
        return
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if on_main else None
    try:
        # Pools first, so they stop starting new sandboxes while the rest is torn down.
        pools = [o for o in objs if hasattr(o, "acquire")]
        for pool in pools:
            _close_quietly(pool)
        _close_in_parallel([o for o in objs if not hasattr(o, "acquire")])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

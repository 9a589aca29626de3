"""`bench/agent_load.py --admission`: new episodes wait as `agent batch --admission kv` would hold them.

Why here: the question the GPU run must answer is whether KV-aware admission keeps the prefix cache
warm where plain concurrency does not, at the same server, in the same session. A real `agent batch`
needs Docker sandboxes the GPU machines do not have; this benchmark's episodes need none. So the
benchmark asks the batch's own controller (agent.batch.admission.KvAdmission, the same settings and
the same /metrics readings) before each episode starts, and an episode that is held waits, as a queued
instance of a batch waits for a worker. Episodes already running are never held, as in the batch.

The level's players stand for `--workers`: they are the ceiling, the controller's window is what may
run of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.batch.admission import AdmissionSettings, KvAdmission

HOLD_POLL_S = 0.2  # how often a held episode asks again (the controller reads /metrics at most every poll_s)


class AdmissionGate:
    """Counts the episodes that run and holds new ones while the controller's window is full."""

    def __init__(self, metrics_url: str, ceiling: int, settings: AdmissionSettings | None = None) -> None:
        self.controller = KvAdmission(ceiling, [metrics_url], settings)
        self.active = 0
        self.held = 0
        self._level: dict[str, int] = {}
        self.new_level()

    def new_level(self) -> None:
        """Start the per-level figures afresh (the controller's window carries over, as in a long batch)."""
        self._level = {"peak_active": self.active, "peak_held": self.held, "min_window": self.controller.window,
                       "max_window": self.controller.window}

    async def enter(self) -> None:
        """Wait until this episode may start (a reading of /metrics first, when one is due)."""
        self.held += 1
        self._level["peak_held"] = max(self._level["peak_held"], self.held)
        try:
            while True:
                allowed = await asyncio.to_thread(self.controller.allowed, self.active)
                self._note_window(allowed)
                if self.active < allowed:  # no await between the test and the count: one episode at a time
                    self.active += 1
                    self._level["peak_active"] = max(self._level["peak_active"], self.active)
                    return
                await asyncio.sleep(HOLD_POLL_S)
        finally:
            self.held -= 1

    def leave(self) -> None:
        self.active -= 1

    def _note_window(self, window: int) -> None:
        self._level["min_window"] = min(self._level["min_window"], window)
        self._level["max_window"] = max(self._level["max_window"], window)

    def level_figures(self) -> dict[str, Any]:
        """What admission did during the level, for the report."""
        self._note_window(self.controller.window)
        return {**self._level, "window": self.controller.window, "enabled": self.controller.active}

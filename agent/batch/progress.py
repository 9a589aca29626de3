"""Live progress of a batch: one line per worker and an overall bar, or plain log lines.

On a terminal, a rich Live display redraws a few times a second: for each worker slot the instance,
sample, step and elapsed time of its episode, and below them a bar with done/total, errored, resolved
so far (when grading) and an ETA. When stderr is not a terminal (CI, `| tee`, nohup), redrawing would
only fill the log with control codes, so each finished episode becomes one plain line instead, with
the same counts and ETA.

Errors are counted by kind (agent.episode.failures): an infrastructure error that the driver retries at
once is shown but not counted as finished. While the model server or the Docker daemon is down
(agent.batch.outages), both displays say which, since when, and that new episodes wait for it. While
KV-aware admission (agent.batch.admission) allows fewer episodes than there are workers, the live
display's header says "admitting N of W (KV x%)"; plain lines say so at each change with --verbose.
Images pulled while the batch runs (an episode's instance image, images.registry.pulls_watched) show as
a line each with their bytes so far on the live display, and as a line when they start and end in plain
output: without it a slot would sit at step 0 for the minutes a 5 GB image takes.

Worker threads call `step`; the driver thread calls everything else. Both implementations lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from images.registry import PullProgress

ENDED_PULL = ("done", "failed")


class BatchProgress(Protocol):
    def begin(self, total: int, finished: int, errored: int, resolved: int, workers: int, evaluating: bool) -> None: ...

    def started(self, slot: int, instance_id: str, sample: int, attempt: int) -> None: ...

    def step(self, slot: int, index: int) -> None: ...

    def finished(self, slot: int, instance_id: str, sample: int, ok: bool, detail: str,
                 resolved: bool | None, kind: str | None = None, retry: bool = False) -> None: ...

    def outage(self, resource: str, since: float | None) -> None:
        """`resource` is down since `since` (epoch seconds), or back (None)."""
        ...

    def admission(self, allowed: int, workers: int, kv_usage: float | None) -> None:
        """Admission now allows `allowed` episodes in flight of `workers` (the server's KV share)."""
        ...

    def pull(self, progress: PullProgress) -> None:
        """An image pull of this process moved (any thread); its status is `done` or `failed` at the end."""
        ...

    def close(self) -> None: ...


@dataclass
class _Slot:
    instance_id: str
    sample: int
    attempt: int
    started: float
    step: int = 0


class _Counts:
    """Shared bookkeeping: totals, this session's pace and the ETA it implies."""

    def __init__(self) -> None:
        self.total = self.finished = self.errored = self.resolved = self.infra = 0
        self.workers = 1
        self.evaluating = False
        self.session_finished = 0
        self.session_started = time.monotonic()

    def begin(self, total: int, finished: int, errored: int, resolved: int, workers: int, evaluating: bool) -> None:
        self.total, self.finished, self.errored, self.resolved = total, finished, errored, resolved
        self.workers, self.evaluating = workers, evaluating
        self.session_started = time.monotonic()

    def record(self, ok: bool, resolved: bool | None, kind: str | None = None) -> None:
        self.finished += 1
        self.session_finished += 1
        self.errored += 0 if ok else 1
        self.infra += 1 if not ok and kind == "infra" else 0
        self.resolved += 1 if resolved else 0

    def eta_s(self) -> float | None:
        if not self.session_finished:
            return None
        pace = (time.monotonic() - self.session_started) / self.session_finished
        return pace * (self.total - self.finished)

    def stats(self) -> str:
        text = f"done {self.finished - self.errored}  errored {self.errored}"
        if self.infra:
            text += f" ({self.infra} infrastructure)"
        if self.evaluating:
            text += f"  resolved {self.resolved}"
        return text


class LogProgress:
    """One line per finished episode (and, verbose, per start and step) on a plain stream."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self._console = console
        self._verbose = verbose
        self._counts = _Counts()
        self._slots: dict[int, _Slot] = {}
        self._pulling: set[str] = set()
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin(self, total: int, finished: int, errored: int, resolved: int, workers: int, evaluating: bool) -> None:
        with self._lock:
            self._counts.begin(total, finished, errored, resolved, workers, evaluating)
            self._print(f"batch: {total} episodes, {finished} already finished, {workers} workers")

    def started(self, slot: int, instance_id: str, sample: int, attempt: int) -> None:
        with self._lock:
            self._slots[slot] = _Slot(instance_id, sample, attempt, time.monotonic())
            if self._verbose:
                again = f" (attempt {attempt})" if attempt > 1 else ""
                self._print(f"start  {instance_id} #{sample}{again} on worker {slot}")

    def step(self, slot: int, index: int) -> None:
        with self._lock:
            current = self._slots.get(slot)
            if current is None:
                return
            current.step = index
            if self._verbose:
                self._print(f"  {current.instance_id} #{current.sample} step {index}")

    def finished(self, slot: int, instance_id: str, sample: int, ok: bool, detail: str,
                 resolved: bool | None, kind: str | None = None, retry: bool = False) -> None:
        with self._lock:
            current = self._slots.pop(slot, None)
            took = time.monotonic() - current.started if current else 0.0
            counts = self._counts
            width = len(str(counts.total))
            label = "done " if ok else ("INFRA" if kind == "infra" else "ERROR")
            if retry:
                self._print(f"[{'':>{width}} {'':>{width}}] {label} {instance_id} #{sample}  {detail}  {took:.1f}s  "
                            "(retried)")
                return
            counts.record(ok, resolved, kind)
            eta = counts.eta_s()
            eta_text = f"  eta {_clock(eta)}" if eta is not None and counts.finished < counts.total else ""
            self._print(f"[{counts.finished:>{width}}/{counts.total}] {label} {instance_id} "
                        f"#{sample}  {detail}  {took:.1f}s  ({counts.stats()}{eta_text})")

    def outage(self, resource: str, since: float | None) -> None:
        with self._lock:
            self._print(outage_line(resource, since))

    def admission(self, allowed: int, workers: int, kv_usage: float | None) -> None:
        if self._verbose:  # every change is also a structlog event (batch.admission)
            with self._lock:
                self._print(admission_line(allowed, workers, kv_usage))

    def pull(self, progress: PullProgress) -> None:
        with self._lock:  # a line when a pull starts and when it ends, not one per event
            ended = progress.status in ENDED_PULL
            if progress.image in self._pulling and not ended:
                return
            if ended:
                self._pulling.discard(progress.image)
            else:
                self._pulling.add(progress.image)
            self._print(pull_line(progress))

    def close(self) -> None:
        pass


class LiveProgress:
    """rich Live display: worker lines plus an overall bar; redrawn by rich's own refresh thread."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self._console = console
        self._counts = _Counts()
        self._slots: dict[int, _Slot | None] = {}
        self._lock = threading.Lock()
        self._bar = Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self._task = self._bar.add_task("batch", total=1, stats="")
        self._outages: dict[str, float] = {}
        self._admitting: str | None = None
        self._pulls: dict[str, PullProgress] = {}
        self._pulls_announced: set[str] = set()
        self._live = Live(self, console=console, refresh_per_second=4, transient=False)
        self._live_started = False

    def __rich__(self) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        with self._lock:
            for slot in sorted(self._slots):
                current = self._slots[slot]
                if current is None:
                    table.add_row(f"[dim]w{slot}", "[dim]idle", "", "")
                    continue
                again = f" (attempt {current.attempt})" if current.attempt > 1 else ""
                table.add_row(f"w{slot}", f"{current.instance_id} #{current.sample}{again}",
                              f"step {current.step}", _clock(now - current.started))
            self._bar.update(self._task, stats=self._counts.stats())
            down = [Text(f"{outage_line(r, since)} ({_clock(time.time() - since)})", style="bold red")
                    for r, since in sorted(self._outages.items())]
            header = [Text(self._admitting, style="yellow")] if self._admitting else []
            pulls = [Text(pull_line(p), style="cyan") for _, p in sorted(self._pulls.items())]
        return Group(*header, table, *pulls, self._bar, *down)

    def begin(self, total: int, finished: int, errored: int, resolved: int, workers: int, evaluating: bool) -> None:
        with self._lock:
            self._counts.begin(total, finished, errored, resolved, workers, evaluating)
            self._slots = {slot: None for slot in range(workers)}
            self._bar.reset(self._task, total=max(total, 1), completed=finished, stats=self._counts.stats())
        if not self._live_started:  # started here, not in __init__: a refused run never draws anything
            self._live.start()
            self._live_started = True

    def started(self, slot: int, instance_id: str, sample: int, attempt: int) -> None:
        with self._lock:
            self._slots[slot] = _Slot(instance_id, sample, attempt, time.monotonic())

    def step(self, slot: int, index: int) -> None:
        with self._lock:
            current = self._slots.get(slot)
            if current is not None:
                current.step = index

    def finished(self, slot: int, instance_id: str, sample: int, ok: bool, detail: str,
                 resolved: bool | None, kind: str | None = None, retry: bool = False) -> None:
        with self._lock:
            self._slots[slot] = None
            if not retry:
                self._counts.record(ok, resolved, kind)
                self._bar.advance(self._task)
        if not ok:
            what = "infrastructure error" if kind == "infra" else "error"
            self._live.console.print(f"[red]{what}[/] {escape(instance_id)} #{sample}: {escape(detail)}"
                                     + (" (retried)" if retry else ""), highlight=False, soft_wrap=True)

    def outage(self, resource: str, since: float | None) -> None:
        with self._lock:
            if since is None:
                self._outages.pop(resource, None)
            else:
                self._outages[resource] = since
        if since is None:
            self._live.console.print(outage_line(resource, None), highlight=False, soft_wrap=True, markup=False)

    def admission(self, allowed: int, workers: int, kv_usage: float | None) -> None:
        with self._lock:
            self._admitting = admission_line(allowed, workers, kv_usage) if allowed < workers else None

    def pull(self, progress: PullProgress) -> None:
        ended = progress.status in ENDED_PULL
        with self._lock:
            if ended:
                self._pulls.pop(progress.image, None)
            else:
                self._pulls[progress.image] = progress.model_copy(deep=True)
        if ended or not self._live_started:  # before the display starts (the first image), plain lines
            if ended or progress.image not in self._pulls_announced:
                self._pulls_announced.add(progress.image)
                self._console.print(pull_line(progress), highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self._live_started:
            self._live.stop()
            self._live_started = False


def outage_line(resource: str, since: float | None) -> str:
    """What both displays say about an outage: its start (UTC, as the status log's times), or its end."""
    if since is None:
        return f"{resource} is back: episodes continue"
    at = time.strftime("%H:%M:%S", time.gmtime(since))
    return f"{resource} down since {at} UTC: new episodes wait for it"


def admission_line(allowed: int, workers: int, kv_usage: float | None) -> str:
    """What both displays say while admission holds episodes back (agent.batch.admission)."""
    kv = f" (KV {kv_usage:.0%})" if kv_usage is not None else ""
    return f"admitting {allowed} of {workers}{kv}"


def pull_line(progress: PullProgress) -> str:
    """What both displays say about an image pull: under way (bytes so far, when the registry told the
    sizes), or its end."""
    if progress.status == "done":
        return f"pulled {progress.image}" + (f" ({_size(progress.total)})" if progress.total else "")
    if progress.status == "failed":
        return f"pull of {progress.image} failed"
    sizes = f": {_size(progress.done)} of {_size(progress.total)}" if progress.total else ""
    return f"pulling {progress.image}{sizes}"


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def make_progress(console: Console | None = None, verbose: bool = False) -> BatchProgress:
    """Live display on a terminal, plain lines otherwise."""
    console = console or Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(console)
    return LogProgress(console, verbose=verbose)

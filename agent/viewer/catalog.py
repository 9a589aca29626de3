"""What the viewer serves from PATH: the trajectory files, resolved safely, and the JSON made of them.

`Catalog` finds the trajectory files under PATH (one file, or a directory scanned recursively) and
resolves every name a request gives: symbolic links included, it must stay inside PATH. A test trace
is reached only through the path its trajectory records, which must resolve inside PATH and the
trajectory's folder. `RunSummary` folds a file into a run-table row; `LoadedTrajectory` holds one
file for the trajectory page and builds the documents of `/api/trajectory`, `/api/steps` and
`/api/step`. Kept apart from HTTP (`agent.viewer.handler`): this module knows files and documents,
not requests, so its path checks and payloads can be read and tested without a socket.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from agent.viewer.tail import TrajectoryTail
from agent.viewer.traces import TRACE_FILE
from traces.schema import RECORD_ADAPTER, Ending, Header, Step, TracedTest

TRAJECTORY_SUFFIX = ".traj.jsonl"
# A file with no Ending that changed this recently is shown as "running", older ones as "unfinished":
# one step can take a long model reply plus a 120 s command, so a few minutes of silence is normal.
LIVE_WINDOW_S = 15 * 60
LOADED_CACHE_SIZE = 16
# Fields left out of the bulk trajectory payload: the step's prompt delta repeats the previous
# observation, and `output` is the observation before wrapping. `/api/step` serves them on demand.
BULK_EXCLUDE = {"prompt_delta", "output"}


class RunSummary:
    """Counters folded over one file's records, enough for a run-table row without keeping the steps."""

    def __init__(self, path: Path, relative: str) -> None:
        self.relative = relative
        self.tail = TrajectoryTail(path)
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.header: Header | None = None
        self.ending: Ending | None = None
        self.steps = 0
        self.tokens = 0
        self.last_time: datetime | None = None

    def refresh(self) -> None:
        with self.lock:
            read = self.tail.read_new()
            if read.reset:
                self._clear()
            for record, _, _ in read.records:
                if isinstance(record, Header):
                    # Rows of a large run directory stay in memory: drop the prompts and patches.
                    self.header = record.model_copy(update={"system_prompt": "", "user_prompt": "", "issue": ""})
                elif isinstance(record, Step):
                    self.steps += 1
                    self.tokens += (record.prompt_tokens or 0) + (record.completion_tokens or 0)
                    self.last_time = record.ended_at or record.started_at
                else:
                    slim = record.evaluation.model_copy(update={"log": "", "fail_to_pass": {}, "pass_to_pass": {}}) \
                        if record.evaluation else None
                    self.ending = record.model_copy(update={"submission": None, "sandbox_diff": None,
                                                            "final_response": None, "evaluation": slim})

    def row(self, mtime: float, now: float) -> dict[str, Any]:
        header, ending = self.header, self.ending
        if ending is not None:
            status = ending.status
        else:
            status = "running" if now - mtime < LIVE_WINDOW_S else "unfinished"
        tokens = self.tokens
        if ending is not None and (ending.total_prompt_tokens or ending.total_completion_tokens):
            tokens = ending.total_prompt_tokens + ending.total_completion_tokens
        end_time = ending.ended_at if ending is not None else self.last_time
        wall = (end_time - header.started_at).total_seconds() if header and end_time else None
        model = ""
        if header is not None:
            model = header.model.name or header.model.kind
        return {
            "file": self.relative,
            "instance": header.instance_id if header else Path(self.relative).name.removesuffix(TRAJECTORY_SUFFIX),
            "run_id": header.run_id if header else "",
            "status": status,
            "resolved": ending.evaluation.resolved if ending and ending.evaluation else None,
            "steps": self.steps,
            "total_tokens": tokens,
            "wall_s": round(wall, 3) if wall is not None else None,
            "model": model,
            "started_at": header.started_at.isoformat() if header else None,
            "torn_tail": self.tail.torn_tail,
            "problems": len(self.tail.problems),
            **trace_counts(ending),
        }


def trace_counts(ending: Ending | None) -> dict[str, Any]:
    """A row's test traces (`--trace-tests`, solve or batch): how many have a trace, and a one-line tally.

    Why in the run table: in a batch run each row is one instance's episode; the count says which
    rows have a Traces tab, and the tally (`before: 2 failed · after: 2 passed`) which episodes turned
    failing tests into passing ones, without opening them.
    """
    records = ending.test_traces if ending is not None else []
    tally: dict[str, dict[str, int]] = {}
    for record in records:
        outcomes = tally.setdefault(record.phase, {})
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    summary = " · ".join(f"{phase}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally[phase].items()))
                         for phase in ("before", "after") if phase in tally)
    return {"traces": sum(record.path is not None for record in records) or None, "traces_listed": len(records),
            "trace_summary": summary}


class LoadedTrajectory:
    """One trajectory held for the trajectory page: header, ending and each step as compact JSON.

    Steps are kept serialized (and their byte spans, to serve one whole step on demand) so a poll or a
    page load costs a string join, not a re-validation. `generation` changes when the file is replaced,
    telling a polling page to reload rather than append.
    """

    def __init__(self, path: Path, relative: str) -> None:
        self.path = path
        self.relative = relative
        self.tail = TrajectoryTail(path)
        self.lock = threading.Lock()
        self.generation = 1
        self._clear()

    def _clear(self) -> None:
        self.header: Header | None = None
        self.ending: Ending | None = None
        self.steps: list[str] = []
        self.spans: list[tuple[int, int]] = []

    def refresh(self) -> None:
        read = self.tail.read_new()
        if read.reset:
            self._clear()
            self.generation += 1
        for record, at, length in read.records:
            if isinstance(record, Header):
                self.header = record
            elif isinstance(record, Step):
                self.steps.append(record.model_dump_json(exclude=BULK_EXCLUDE, exclude_none=True))
                self.spans.append((at, length))
            else:
                self.ending = record

    def payload(self, since: int = 0, with_header: bool = True) -> bytes:
        """The JSON document for `/api/trajectory` (since=0) or `/api/steps?since=N`."""
        with self.lock:
            self.refresh()
            since = max(0, min(since, len(self.steps)))
            meta: dict[str, Any] = {
                "file": self.relative,
                "generation": self.generation,
                "since": since,
                "next": len(self.steps),
                "ending": self.ending.model_dump(mode="json") if self.ending else None,
                "torn_tail": self.tail.torn_tail,
                "problems": list(self.tail.problems),
                "age_s": round(max(0.0, time.time() - self.path.stat().st_mtime), 1),
            }
            if with_header:
                meta["header"] = self.header.model_dump(mode="json") if self.header else None
            steps = ",".join(self.steps[since:])
        head = json.dumps(meta, separators=(",", ":"))
        return (head[:-1] + ',"steps":[' + steps + "]}").encode("utf-8")

    def full_step(self, position: int) -> bytes:
        """One step with every field (prompt delta and raw output included), read from its line."""
        with self.lock:
            self.refresh()
            if not 0 <= position < len(self.spans):
                raise LookupError(f"no step at position {position}")
            at, length = self.spans[position]
        with self.path.open("rb") as handle:
            handle.seek(at)
            line = handle.read(length)
        try:
            step = RECORD_ADAPTER.validate_json(line)
        except ValidationError:
            raise LookupError("the file changed since it was read; reload the page") from None
        return step.model_dump_json(exclude_none=True).encode("utf-8")

    def traced_test(self, position: int) -> tuple[TracedTest, str]:
        """The `position`-th test trace record of the ending, and its recorded folder; LookupError if none."""
        with self.lock:
            self.refresh()
            ending = self.ending
        traced = ending.test_traces if ending is not None else []
        if not 0 <= position < len(traced):
            raise LookupError(f"no test trace at position {position}")
        record = traced[position]
        if record.path is None:
            raise LookupError(f"{record.node_id} ({record.phase}) has no trace: {record.error or 'not recorded'}")
        return record, record.path


class Catalog:
    """The trajectory files PATH serves, resolved safely, with cached summaries and loaded files.

    PATH is one trajectory file (only that file is served) or a directory scanned recursively. Every
    requested name is resolved (symbolic links included) and must stay inside PATH.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        self.path = path
        self.single = path.is_file()
        self.base = path.parent if self.single else path
        self._summaries: dict[Path, RunSummary] = {}
        self._loaded: OrderedDict[Path, LoadedTrajectory] = OrderedDict()
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        if self.single:
            return [self.path]
        found: list[Path] = []
        for folder, dirs, names in os.walk(self.base, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(TRAJECTORY_SUFFIX):
                    candidate = Path(folder, name)
                    if self._inside(candidate.resolve()) and candidate.is_file():
                        found.append(candidate)
        return found

    def _inside(self, resolved: Path) -> bool:
        if self.single:
            return resolved == self.path
        return resolved.is_relative_to(self.base)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()

    def resolve(self, relative: str | None) -> Path:
        """The file a request names, or LookupError: missing, outside PATH, or not a trajectory."""
        if not relative or "\x00" in relative:
            raise LookupError("no file named")
        candidate = (self.base / relative).resolve()
        # A file named on the command line is served whatever its name; in a directory only *.traj.jsonl.
        named = self.single or candidate.name.endswith(TRAJECTORY_SUFFIX)
        if not self._inside(candidate) or not named:
            raise LookupError("not a trajectory under the served path")
        if not candidate.is_file():
            raise LookupError("no such trajectory")
        return candidate

    def trace_dir(self, trajectory: Path, relative: str) -> Path:
        """The folder of a test trace a trajectory references, or LookupError if it leaves PATH.

        The path comes from a trajectory file, which anyone could have written: it must be relative,
        and resolve (symbolic links included) inside PATH and inside the trajectory's own folder, and
        so must the trace file in it.
        """
        if not relative or "\x00" in relative or "\\" in relative or PurePosixPath(relative).is_absolute():
            raise LookupError("not a trace under the served path")
        folder = trajectory.parent.resolve()
        candidate = (folder / relative).resolve()
        frames = (candidate / TRACE_FILE).resolve()
        for path in (candidate, frames):
            if not (path.is_relative_to(self.base) and path.is_relative_to(folder)):
                raise LookupError("not a trace under the served path")
        if not frames.is_file():
            raise LookupError("the trace file is missing")
        return candidate

    def rows(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for path in self.files():
            with self._lock:
                summary = self._summaries.get(path)
                if summary is None:
                    summary = self._summaries[path] = RunSummary(path, self.relative(path))
            try:
                mtime = path.stat().st_mtime
                summary.refresh()
            except OSError:
                continue
            rows.append(summary.row(mtime, now))
        return rows

    def loaded(self, relative: str | None) -> LoadedTrajectory:
        path = self.resolve(relative)
        with self._lock:
            item = self._loaded.get(path)
            if item is None:
                item = self._loaded[path] = LoadedTrajectory(path, self.relative(path))
                while len(self._loaded) > LOADED_CACHE_SIZE:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(path)
        return item

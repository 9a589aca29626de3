"""Reading a growing trajectory file a complete line at a time, for the viewer.

Why incremental reading: a live run appends a line per step, and the page polls every second, so
each poll re-reads only the bytes appended since the last one, and a half-written last line is left
for the next poll instead of being an error. Kept apart from the catalog (`agent.viewer.catalog`,
which decides what the pages are sent) and from HTTP (`agent.viewer.handler`): this is byte-level
bookkeeping on one file (offsets, torn lines, a file rewritten by a new run), testable on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from traces.schema import RECORD_ADAPTER, Ending, Header, Step

MAX_PROBLEMS = 20

Record = Header | Step | Ending


@dataclass
class TailRead:
    """What one `TrajectoryTail.read_new` call found: records with their byte spans, and whether the
    file was replaced since the previous read (the caller then forgets what it had)."""

    records: list[tuple[Record, int, int]] = field(default_factory=list)
    reset: bool = False


class TrajectoryTail:
    """Reads a growing trajectory file, remembering the offset after the last complete line.

    An unterminated last line is consumed only if it is a whole record (a prefix of a JSON object never
    parses); otherwise it is left for the next read and flagged as `torn_tail`. A line that does not
    validate is skipped and noted in `problems` rather than hiding every other step from the viewer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0
        self.first_line = b""
        self.torn_tail = False
        self.problems: list[str] = []
        self._unterminated = False  # the last line was taken whole before its newline arrived

    def _restart(self) -> None:
        self.offset, self.lines, self.first_line, self.torn_tail = 0, 0, b"", False
        self.problems, self._unterminated = [], False

    def _replaced(self, handle: Any, size: int) -> bool:
        """A shorter file, or a different first line, means the file was rewritten (a new run)."""
        if size < self.offset:
            return True
        return bool(self.first_line) and handle.read(len(self.first_line)) != self.first_line

    def read_new(self) -> TailRead:
        result = TailRead()
        with self.path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if self._replaced(handle, size):
                self._restart()
                result.reset = True
            if size == self.offset:
                return result
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        start = 1 if self._unterminated and data[:1] == b"\n" else 0
        self._unterminated = False
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._take_line(data[start:end], self.offset + start, result, terminated=True)
            start = end + 1
        tail = data[start:]
        consumed = start
        self.torn_tail = False
        if tail.strip():
            if self._take_line(tail, self.offset + start, result, terminated=False):
                consumed, self._unterminated = len(data), True
            else:
                self.torn_tail = True
        self.offset += consumed
        return result

    def _take_line(self, line: bytes, at: int, result: TailRead, terminated: bool) -> bool:
        """Parse one line into `result`; an unterminated line that does not parse is left unread."""
        if not line.strip():
            self.lines += 1
            return True
        try:
            record = RECORD_ADAPTER.validate_json(line)
        except ValidationError as error:
            if not terminated:
                return False
            self.lines += 1
            if len(self.problems) < MAX_PROBLEMS:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                self.problems.append(f"line {self.lines}: {where}: {first['msg']}")
            return True
        self.lines += 1
        if self.lines == 1:
            self.first_line = line + (b"\n" if terminated else b"")
        result.records.append((record, at, len(line)))
        return True

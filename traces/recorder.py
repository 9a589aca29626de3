"""Writing and reading trajectory files (JSON Lines, see traces.schema).

The recorder appends one line per record and flushes it to the operating system at once, so a
process killed with SIGKILL loses nothing it had finished; `fsync` is optional because the kernel
keeps flushed data across a process death, and only a machine crash needs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from traces.schema import RECORD_ADAPTER, Ending, Header, Step, Trajectory


class TrajectoryFormatError(ValueError):
    """A trajectory file is not readable; the message names the file and line."""


class Recorder:
    """Appends records to one trajectory file; one Recorder per episode."""

    def __init__(self, path: Path, header: Header, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._file: IO[str] = self.path.open("w", encoding="utf-8")
        self.header = header
        self._write(header)

    def _write(self, record: Header | Step | Ending) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def step(self, step: Step) -> None:
        self._write(step)

    def end(self, ending: Ending) -> None:
        self._write(ending)
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_trajectory(path: Path) -> Trajectory:
    """Load a trajectory file; a torn (partial) last line is dropped and flagged, anything else raises."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrajectoryFormatError(f"{path}: no such trajectory file") from None
    lines = text.split("\n")
    torn = False
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        # The last line has no newline: the writer was killed mid-line unless it parses whole.
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
            torn = True
    header: Header | None = None
    steps: list[Step] = []
    ending: Ending | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = RECORD_ADAPTER.validate_json(line)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise TrajectoryFormatError(f"{path}:{number}: {where}: {first['msg']}") from None
        if isinstance(record, Header):
            header = record
        elif isinstance(record, Step):
            steps.append(record)
        else:
            ending = record
    if header is None:
        raise TrajectoryFormatError(f"{path}: no header line; is this a cwm-runner trajectory?")
    return Trajectory(header=header, steps=steps, ending=ending, torn_tail=torn)


def write_trajectory(trajectory: Trajectory, path: Path) -> Path:
    """Write a Trajectory in our own format (through the recorder, so the file is what a run writes)."""
    recorder = Recorder(Path(path), trajectory.header)
    for step in trajectory.steps:
        recorder.step(step)
    if trajectory.ending is not None:
        recorder.end(trajectory.ending)
    recorder.close()
    return Path(path)

"""`agent export --to cwm-traces`: a run's test traces as CWM trace-prediction examples, for training.

Input: a batch run directory (`trajectories/<instance>/<k>.traj.jsonl` with `<k>.traces/`), an
`agent solve` output directory (`<id>.traj.jsonl` with `<id>.traces/`), or trajectory files. The
trajectories' end records list the traced tests (`test_traces`); each trace folder they point to
(inside the trajectory's own folder, links resolved) gives one example.

Output: one JSON Lines file of examples (`TraceExample`: the rendered CWM prompt text and the
structured frames) and, beside it, `<name>.manifest.json` (`ExportManifest`): one entry per traced
test, exported or not, with instance, sample, test, phase, frame count and truncation, and for a test
that gave no example the reason. The prompt is rendered from `trace.jsonl` by this version of the
renderer (agent.worldmodel.frames.render_prompt), not copied from `prompt.txt`, so every example is in
the current format whatever version wrote the run. The layout is docs/trace-format.md, section 9.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.exports.common import ConvertError
from agent.worldmodel.frames import Trace, TraceFormatError, read_trace, render_prompt
from agent.worldmodel.traced_tests import BOUNDS, TRACE_FILE
from agent.worldmodel.tracer import TRUNCATION_MARKER
from traces.recorder import TrajectoryFormatError, read_trajectory
from traces.schema import TracedTest, Trajectory

FORMAT = "cwm-traces"
FORMAT_VERSION = 1
TRAJECTORY_SUFFIX = ".traj.jsonl"
LIVE_SUFFIX = ".running"  # a batch episode in progress: its files are not committed yet


class TraceExample(BaseModel):
    """One line of the examples file: a traced test, as prompt text and as structured frames."""

    id: str = Field(description="<instance>/<sample>/<phase>/<node id> (sample `-` for a solve output)")
    instance_id: str
    sample: int | None = Field(None, description="the batch sample k; None for an `agent solve` output")
    run_id: str
    node_id: str
    phase: Literal["before", "after"]
    outcome: str = Field(description="the test's result: passed, failed, error, unknown")
    status: str = Field(description="the trace's end status: returned, raised, max_frames, ...")
    finished: bool = Field(description="the entry was left: the prompt ends with <|end_of_text|>")
    frames: int
    prompt: str = Field(description="the exact CWM text: context, frames, end marker when finished")
    trace: dict[str, Any] = Field(description='{"header", "frames", "end"}: the JSONL records, parsed')


class ManifestEntry(BaseModel):
    """One traced test of the run: where its example is, or why there is none."""

    line: int | None = Field(None, description="1-based line of its example; None when not exported")
    instance_id: str
    sample: int | None = None
    run_id: str
    node_id: str
    phase: Literal["before", "after"]
    outcome: str
    frames: int = 0
    status: str | None = None
    finished: bool = False
    truncated: bool = Field(False, description="cut short by a tracer bound (no end of text)")
    cut_by: str | None = Field(None, description="the bound that cut it: max_frames, max_seconds, max_bytes")
    values_truncated: int = Field(0, description=f"values cut at max_repr_chars (ending {TRUNCATION_MARKER})")
    prompt_sha256: str | None = None
    trajectory: str = Field(description="the trajectory file, relative to the exported path")
    trace_dir: str | None = None
    error: str | None = Field(None, description="why this test gave no example")


class ExportManifest(BaseModel):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    source: str
    examples: str = Field(description="the examples file's name (beside this manifest)")
    exported: int
    skipped: int
    entries: list[ManifestEntry]


def manifest_path(output: Path) -> Path:
    """`traces.jsonl` -> `traces.manifest.json` (beside it)."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.manifest.json")


def trajectory_files(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(trajectory file, the path it was found under) for files given and files under folders given."""
    found: list[tuple[Path, Path]] = []
    for given in paths:
        given = Path(given)
        if given.is_dir():
            files = sorted(p for p in given.rglob(f"*{TRAJECTORY_SUFFIX}")
                           if not any(part.endswith(LIVE_SUFFIX) for part in p.relative_to(given).parts[:-1]))
            found += [(file, given) for file in files]
        elif given.is_file():
            found.append((given, given.parent))
        else:
            raise ConvertError(f"{given}: no such file or directory")
    return found


def export_cwm_traces(paths: Iterable[Path], output: Path) -> list[Path]:
    """Write the examples file `output` and its manifest; returns both paths."""
    given = list(paths)
    files = trajectory_files(given)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")  # examples stream out: a run's traces can be large
    entries: list[ManifestEntry] = []
    exported = 0
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for file, base in files:
                try:
                    trajectory = read_trajectory(file)
                except TrajectoryFormatError as error:
                    raise ConvertError(str(error)) from None
                for record in trajectory.ending.test_traces if trajectory.ending else []:
                    entry, example = _one(trajectory, record, file, base)
                    if example is not None:
                        handle.write(example.model_dump_json() + "\n")
                        exported += 1
                        entry.line = exported
                    entries.append(entry)
        if not entries:
            names = ", ".join(str(p) for p in given)
            raise ConvertError(f"no test traces in {names}: run `agent batch` or `agent solve` with --trace-tests")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    manifest = ExportManifest(source=", ".join(str(p) for p in given), examples=output.name, exported=exported,
                              skipped=len(entries) - exported, entries=entries)
    target = manifest_path(output)
    target.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return [output, target]


def _sample(file: Path) -> int | None:
    """Batch trajectories are `<k>.traj.jsonl`; anything else is one `agent solve` episode."""
    stem = file.name[: -len(TRAJECTORY_SUFFIX)]
    return int(stem) if stem.isdigit() else None


def _one(trajectory: Trajectory, record: TracedTest, file: Path, base: Path) -> tuple[ManifestEntry, TraceExample | None]:
    """The manifest entry of one traced test and its example (None, with the reason, when there is none)."""
    header, sample = trajectory.header, _sample(file)
    entry = ManifestEntry(instance_id=header.instance_id, sample=sample, run_id=header.run_id,
                          node_id=record.node_id, phase=record.phase, outcome=record.outcome,
                          trajectory=file.relative_to(base).as_posix(), error=record.error)
    if record.path is None:
        entry.error = record.error or "no trace was recorded"
        return entry, None
    folder = _trace_folder(file, record.path)
    if folder is None:
        entry.error = f"the trace folder {record.path!r} is not inside the trajectory's folder"
        return entry, None
    entry.trace_dir = folder.relative_to(base.resolve()).as_posix() if folder.is_relative_to(base.resolve()) \
        else record.path
    try:
        trace = read_trace(folder / TRACE_FILE)
    except (OSError, TraceFormatError) as error:
        entry.error = f"the trace cannot be read: {error}"
        return entry, None
    prompt = render_prompt(trace)
    _describe(entry, trace, prompt)
    example = TraceExample(
        id=f"{header.instance_id}/{'-' if sample is None else sample}/{record.phase}/{record.node_id}",
        instance_id=header.instance_id, sample=sample, run_id=header.run_id, node_id=record.node_id,
        phase=record.phase, outcome=record.outcome, status=trace.end.status, finished=trace.finished,
        frames=len(trace.frames), prompt=prompt,
        trace={"header": trace.header.model_dump(mode="json"),
               "frames": [frame.model_dump(mode="json") for frame in trace.frames],
               "end": trace.end.model_dump(mode="json")})
    return entry, example


def _trace_folder(trajectory: Path, relative: str) -> Path | None:
    """The folder a record names, if it resolves (links followed) inside the trajectory's folder."""
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        return None
    folder = trajectory.parent.resolve()
    candidate = (folder / relative).resolve()
    return candidate if candidate.is_relative_to(folder) and candidate != folder else None


def _describe(entry: ManifestEntry, trace: Trace, prompt: str) -> None:
    """Frame count and truncation facts of an exported trace."""
    status = trace.end.status
    values = [v for f in trace.frames for v in [*(f.locals or {}).values(), f.arg] if v is not None]
    entry.frames, entry.status, entry.finished = len(trace.frames), status, trace.finished
    entry.truncated, entry.cut_by = status in BOUNDS, status if status in BOUNDS else None
    entry.values_truncated = sum(value.endswith(TRUNCATION_MARKER) for value in values)
    entry.prompt_sha256 = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    entry.error = None

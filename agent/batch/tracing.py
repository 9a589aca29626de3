"""`agent batch --trace-tests`: which tests each episode traces, and how its traces reach the run directory.

The tracing itself is `agent solve --trace-tests` (agent.worldmodel.traced_tests), run in the
episode's own sandbox before and after the episode, invisibly to the model. This module adds what a
batch needs on top of it:

- **which tests**: `failing` (the instance's FAIL_TO_PASS), `all` (FAIL_TO_PASS then PASS_TO_PASS)
  or given node ids, with the instance's test patch applied for the traces (SWE-bench keeps the
  failing tests there); ids that are not pytest node ids (Django's `test_x (app.tests.T)`) are
  recorded as not traced, with the reason, and never reach the sandbox;
- **bounds per instance**: each test's `TraceLimits`, each phase's `TraceBudget`, and a bound on the
  bytes an episode's traces may carry back (`max_archive_bytes`);
- **transport**: the worker (a thread here, a Ray task on a node that shares no disk) returns the
  sample's trace folder as data in its `EpisodeOutcome` (a zip, base64), and the driver, the run
  directory's only writer, unpacks it to `trajectories/<instance>/<k>.traces/` before committing the
  outcome. The trajectory's `test_traces` paths are rewritten to that folder, relative to the
  trajectory file as the format wants (docs/trajectory-format.md);
- **errored attempts**: an episode that fails after its "before" phase still ran those tests on the
  base commit, which is valid data. Its traces go to a folder of that attempt,
  `<k>.attempt<a>.error.traces/`, beside its trajectory kept aside (`<k>.attempt<a>.error.jsonl`),
  never to `<k>.traces/`: a later attempt writes there, and one attempt's traces must never mix with
  another's. They are kept only while that error is the sample's outcome (agent.batch.state
  `tidy_traces`): a retry traces again, so once it commits (or is abandoned) the earlier attempt's
  folder goes and its kept-aside trajectory says why its records lost their paths.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field

from agent.instances.records import Instance
from agent.worldmodel.run import TraceLimits
from agent.worldmodel.traced_tests import (
    OUTPUT_FILE,
    PROMPT_FILE,
    SOURCES_FILE,
    TRACE_FILE,
    TRACES_SUFFIX,
    TraceBudget,
    check_node_id,
    traces_root,
)
from traces.schema import Ending, TracedTest

log = structlog.get_logger()

SELECTIONS = ("failing", "all")
DROPPED_FILE = "dropped.json"  # written beside the traces when the archive bound left files out
# What is kept first when the archive bound bites: the frames, then what can be made again from them
# or is only for reading.
_PRIORITY = {TRACE_FILE: 0, PROMPT_FILE: 1, OUTPUT_FILE: 2, SOURCES_FILE: 3}
PHASES = ("before", "after")
_ERROR_DIR = re.compile(rf"(\d+)\.attempt(\d+)\.error{re.escape(TRACES_SUFFIX)}")


class TraceTests(BaseModel):
    """What `--trace-tests` asked for, and the bounds of every episode's traces."""

    select: Literal["failing", "all", "nodes"] = "failing"
    node_ids: list[str] = Field(default_factory=list, description="select=nodes: these, for every instance")
    limits: TraceLimits = Field(default_factory=TraceLimits, description="each test's tracer bounds")
    budget: TraceBudget = Field(default_factory=TraceBudget, description="each phase's tests together")
    max_archive_bytes: int = Field(64_000_000, ge=1024, description="uncompressed bytes an episode's traces "
                                   "may carry back; beyond it the least needed files are left out")

    @classmethod
    def from_words(cls, words: list[str], **bounds: Any) -> TraceTests:
        """`failing`, `all`, or pytest node ids (ValueError with one line for anything else)."""
        if not words:
            raise ValueError("--trace-tests needs failing, all, or pytest node ids")
        chosen = [w for w in words if w in SELECTIONS]
        if chosen and len(words) > 1:
            raise ValueError(f"--trace-tests {chosen[0]} stands alone: give failing, all, or node ids, not a mix")
        if chosen:
            return cls(select=chosen[0], **bounds)
        return cls(select="nodes", node_ids=[check_node_id(w) for w in words], **bounds)

    def node_ids_for(self, instance: Instance) -> list[str]:
        """The instance's tests to trace, in order, each once."""
        if self.select == "nodes":
            wanted = self.node_ids
        else:
            wanted = instance.FAIL_TO_PASS + (instance.PASS_TO_PASS if self.select == "all" else [])
        return list(dict.fromkeys(wanted))


def split_traceable(node_ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """(pytest node ids, {other id: why it cannot be traced})."""
    good: list[str] = []
    bad: dict[str, str] = {}
    for node_id in node_ids:
        try:
            good.append(check_node_id(node_id))
        except ValueError as error:
            bad[node_id] = f"not traced: {error}"
    return good, bad


def solve_fields(option: TraceTests | None, instance: Instance) -> dict[str, Any]:
    """The `SolveRequest` fields of an episode's tracing ({} without --trace-tests)."""
    if option is None:
        return {}
    good, _ = split_traceable(option.node_ids_for(instance))
    return {"trace_tests": good, "trace_limits": option.limits, "trace_budget": option.budget,
            "trace_test_patch": instance.test_patch}


# -- from the worker -----------------------------------------------------------------------------------


class TraceArchive(BaseModel):
    """A sample's trace folder as data: a zip (deflated), base64, and what it holds."""

    data: str
    files: int
    bytes: int = Field(description="uncompressed")
    dropped: list[str] = Field(default_factory=list, description="files left out by the archive bound")


def sample_dir(sample: int) -> str:
    """The folder of sample k's traces beside its trajectory `<k>.traj.jsonl`."""
    return f"{sample}{TRACES_SUFFIX}"


def error_dir(sample: int, attempt: int) -> str:
    """The folder of an errored attempt's traces, beside its kept-aside `<k>.attempt<a>.error.jsonl`."""
    return f"{sample}.attempt{attempt}.error{TRACES_SUFFIX}"


def pack_traces(option: TraceTests | None, instance: Instance, sample: int, output: Path,
                trajectory: str, folder: str | None = None) -> tuple[str, TraceArchive | None]:
    """(the trajectory text with its test traces pointing at `folder/`, by default `<k>.traces/`; the
    folder as data).

    `output` is where solve wrote (its traces under `<instance_id>.traces/`). Untraceable ids are
    added to the records of each phase the episode reached (both, unless it ended in an error: then
    those it has records of); a trace whose frames the archive bound left out loses its path, and says so.
    """
    if option is None:
        return trajectory, None
    root = traces_root(output, instance.instance_id)
    archive = _archive(root, option.max_archive_bytes) if root.is_dir() else None
    _, bad = split_traceable(option.node_ids_for(instance))
    old, new = f"{root.name}/", f"{folder or sample_dir(sample)}/"
    lost = {name.rsplit("/", 1)[0] for name in (archive.dropped if archive else []) if name.endswith(TRACE_FILE)}

    def rebased(record: TracedTest) -> TracedTest:
        if record.path is None or not record.path.startswith(old):
            return record
        inner = record.path[len(old):]
        if inner in lost:
            return record.model_copy(update={"path": None, "error": "the trace was left out: the episode's traces "
                                                                    f"exceed {option.max_archive_bytes} bytes"})
        return record.model_copy(update={"path": new + inner})

    def rewrite(ending: Ending) -> None:
        records = [rebased(r) for r in ending.test_traces]
        failed = ending.status in ("error", "interrupted")
        reached = [p for p in PHASES if not failed or any(r.phase == p for r in records)]
        ending.test_traces = [r for phase in reached for r in
                              [*(x for x in records if x.phase == phase),
                               *(TracedTest(node_id=n, phase=phase, error=why) for n, why in bad.items())]]

    return _with_ending(trajectory, rewrite), archive


def _with_ending(trajectory: str, change: Any) -> str:
    """The trajectory text with `change(ending)` applied to its end record (unchanged if it has none)."""
    lines = trajectory.rstrip("\n").split("\n")
    try:
        ending = Ending.model_validate_json(lines[-1])
    except ValueError:
        return trajectory
    change(ending)
    lines[-1] = ending.model_dump_json()
    return "\n".join(lines) + "\n"


def _archive(root: Path, limit: int) -> TraceArchive:
    """Zip `root`'s files, most needed first, leaving out whatever would pass `limit` bytes."""
    files = sorted((p for p in root.rglob("*") if p.is_file() and not p.is_symlink()),
                   key=lambda p: (_PRIORITY.get(p.name, 9), p.relative_to(root).as_posix()))
    buffer = io.BytesIO()
    total, kept, dropped = 0, 0, []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            name = path.relative_to(root).as_posix()
            size = path.stat().st_size
            if total + size > limit:
                dropped.append(name)
                continue
            archive.write(path, name)
            total, kept = total + size, kept + 1
    if dropped:
        log.warning("batch.traces_dropped", folder=str(root), dropped=len(dropped), limit=limit)
    return TraceArchive(data=base64.b64encode(buffer.getvalue()).decode("ascii"), files=kept, bytes=total,
                        dropped=dropped)


# -- on the driver -------------------------------------------------------------------------------------


def write_traces(target: Path, archive: TraceArchive | None) -> str | None:
    """Put a sample's traces at `target` (replacing what an earlier attempt left), whole or not at all;
    returns why they could not be written, or None.

    The archive came over the network from a worker: every member must be a plain relative path
    inside `target`, and the total must match what the worker said it sent. A bad archive is logged
    and skipped, never fatal: the driver must go on committing outcomes.
    """
    shutil.rmtree(target, ignore_errors=True)
    if archive is None:
        return None
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _unpack(archive, staging)
        staging.replace(target)
        return None
    except (ValueError, zipfile.BadZipFile, OSError) as error:
        log.error("batch.traces_not_written", target=str(target), error=str(error))
        return str(error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def place_traces(target: Path, archive: TraceArchive | None, trajectory: str) -> tuple[str, list[str]]:
    """Write an attempt's traces at `target`; returns (the trajectory text, the phases that have traces).

    Traces that could not be written lose their paths in the trajectory, with the reason, so a
    committed trajectory never points at a folder that is not there.
    """
    why = write_traces(target, archive)
    if why is not None:
        return unreference(trajectory, target.name, f"the traces could not be written: {why}"), []
    return trajectory, trace_phases(target)


def trace_phases(folder: Path) -> list[str]:
    """The phases of which `folder` holds at least one trace."""
    return [phase for phase in PHASES if any((folder / phase).glob(f"*/{TRACE_FILE}"))]


def unreference(trajectory: str, folder: str, why: str) -> str:
    """The trajectory text with its test traces under `folder/` losing their path, `why` in their error."""
    def change(ending: Ending) -> None:
        ending.test_traces = [
            r.model_copy(update={"path": None, "error": why + (f" ({r.error})" if r.error else "")})
            if r.path is not None and r.path.startswith(f"{folder}/") else r for r in ending.test_traces]

    return _with_ending(trajectory, change)


def error_dirs(instance_dir: Path, sample: int) -> dict[int, Path]:
    """attempt -> folder of the errored attempts' traces of sample k (`<k>.attempt<a>.error.traces`)."""
    if not instance_dir.is_dir():
        return {}
    found = {}
    for path in instance_dir.glob(f"{sample}.attempt*.error{TRACES_SUFFIX}"):
        match = _ERROR_DIR.fullmatch(path.name)
        if match is not None and int(match[1]) == sample:
            found[int(match[2])] = path
    return found


def staging_dirs(instance_dir: Path, sample: int) -> list[Path]:
    """`write_traces`'s staging folders of sample k (`.<k>.traces.partial`,
    `.<k>.attempt<a>.error.traces.partial`), left by a runner killed while it unpacked traces."""
    if not instance_dir.is_dir():
        return []
    attempts = [p for p in instance_dir.glob(f".{sample}.attempt*.error{TRACES_SUFFIX}.partial")
                if (m := _ERROR_DIR.fullmatch(p.name[1:-len(".partial")])) is not None and int(m[1]) == sample]
    return [p for p in [staging_dir(instance_dir / sample_dir(sample)), *attempts] if p.is_dir()]


def staging_dir(target: Path) -> Path:
    """Where `write_traces` unpacks before renaming into place: `.<target>.partial`. A fixed name, not a
    random one: the driver is the only writer, so nothing can collide, and what a killed writer left
    is found by name (`staging_dirs`)."""
    return target.with_name(f".{target.name}.partial")


def _unpack(archive: TraceArchive, staging: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(archive.data, validate=True))) as opened:
        written = 0
        for member in opened.infolist():
            name = PurePosixPath(member.filename)
            if member.is_dir() or name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise ValueError(f"unexpected member {member.filename!r} in a trace archive")
            written += member.file_size
            if written > archive.bytes:
                raise ValueError("a trace archive holds more than it says")
            destination = staging.joinpath(*name.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(opened.read(member))
    if archive.dropped:
        (staging / DROPPED_FILE).write_text(json.dumps({"dropped": archive.dropped}, indent=1) + "\n",
                                            encoding="utf-8")

"""`agent batch --trace-tests` when an episode errors and when the runner is killed: real Docker, git,
tracer, subprocesses and the scripted gold-patch model of tests/agent/traced_batch.py.

What must hold: an errored attempt's "before" traces are kept as that attempt's own data, beside its
kept-aside trajectory, and go once a later attempt is committed (never mixed with its traces); a
runner SIGKILLed while it unpacks an episode's traces leaves nothing that `--resume` keeps: every
committed sample has exactly the traces its trajectory lists, nothing else is left, and the export
equals that of the uninterrupted run of the same batch (the session's `traced_batch`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, BatchResult, run_batch
from agent.batch.tracing import TraceTests
from agent.exports.cwm_traces import export_cwm_traces, manifest_path
from agent.instances.records import Instance
from agent.worldmodel.frames import read_trace
from agent.worldmodel.traced_tests import OUTPUT_FILE, PROMPT_FILE, SOURCES_FILE, TRACE_FILE, entry_dirname
from tests.agent.batch.test_run import read_manifest, status_events
from tests.agent.traced_batch import LOOK, TracedBatch, gold_replies
from tests.helpers import REPO_ROOT, bash, write_replies
from traces.recorder import read_trajectory
from traces.schema import Trajectory

pytestmark = pytest.mark.docker
DETERMINISTIC = ("six-1.14.0", "idna-3.4")  # traced_batch's instances whose traces repeat exactly
TRACE_FILES = {TRACE_FILE, PROMPT_FILE, OUTPUT_FILE, SOURCES_FILE}
PHASES = {"before", "after"}


def image_of(batch: TracedBatch) -> str:
    return read_trajectory(batch.output / "trajectories" / DETERMINISTIC[0] / "0.traj.jsonl").header.image


def trace_folders(instance_dir: Path) -> set[str]:
    """Every folder holding a trace.jsonl, relative to the instance's folder."""
    return {p.parent.relative_to(instance_dir).as_posix() for p in instance_dir.rglob(TRACE_FILE)}


def leftovers(run: Path) -> list[str]:
    """Temporary, staging, live or errored-attempt files anywhere in the run directory."""
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*")
                  if p.name.startswith(".") or p.name.endswith((".tmp", ".part", ".running", ".error.traces")))


def batch(instances: list[Instance], root: Path, image: str, **options: Any) -> BatchResult:
    request = BatchRequest(instances=instances, output=root / "run", image=image, workers=1,
                           model=f"replay:{root / 'replies'}/{{instance_id}}.jsonl",
                           trace_tests=TraceTests.from_words(["failing"]), **options)
    return run_batch(request, progress=LogProgress(Console(file=io.StringIO(), width=200)))


def test_an_errored_episode_keeps_its_before_traces_until_a_redo_replaces_them(
        traced_batch: TracedBatch, tmp_path: Path) -> None:
    instance = traced_batch.instances[DETERMINISTIC[0]]
    replies = tmp_path / "replies" / f"{instance.instance_id}.jsonl"
    replies.parent.mkdir()
    write_replies(replies, [bash(LOOK)])  # the replay runs out at the second step: a model error, not retried
    first = batch([instance], tmp_path, image_of(traced_batch))
    assert (first.done, first.errored, first.model_errors) == (0, 1, 1)

    folder = tmp_path / "run" / "trajectories" / instance.instance_id
    aside = folder / "0.attempt1.error.jsonl"
    errored = read_trajectory(aside)
    assert errored.ending is not None and errored.ending.status == "error"
    expected = {f"0.attempt1.error.traces/before/{entry_dirname(n)}" for n in instance.FAIL_TO_PASS}
    assert [(t.phase, t.outcome) for t in errored.ending.test_traces] == [("before", "failed")] * len(expected)
    assert {t.path for t in errored.ending.test_traces} == expected == trace_folders(folder)
    reference = traced_batch.output / "trajectories" / instance.instance_id / "0.traces"
    for path in expected:  # the very traces of the uninterrupted run: the base commit's tests, real data
        assert {p.name for p in (folder / path).iterdir()} == TRACE_FILES
        same = reference / path.split("/", 1)[1]
        assert read_trace(folder / path / TRACE_FILE).frames == read_trace(same / TRACE_FILE).frames
    record = read_manifest(tmp_path / "run").instances[0].samples[0]
    assert record.summary is not None and record.summary.trace_phases == ["before"]
    assert record.traces == f"trajectories/{instance.instance_id}/0.attempt1.error.traces"
    assert not (folder / "0.traj.jsonl").exists() and not (folder / "0.traces").exists()

    write_replies(replies, gold_replies(instance))
    redone = batch([instance], tmp_path, image_of(traced_batch), resume=True, redo_errors=True)
    assert (redone.done, redone.errored) == (1, 0)
    done = read_trajectory(folder / "0.traj.jsonl")
    assert done.ending is not None and {t.path for t in done.ending.test_traces} == trace_folders(folder) == {
        f"0.traces/{phase}/{entry_dirname(n)}" for n in instance.FAIL_TO_PASS for phase in ("before", "after")}
    kept = read_trajectory(aside)  # attempt 1's trajectory stays aside; its traces went with the redo
    assert kept.ending is not None and all(t.path is None and t.error is not None and
                                           t.error.startswith("not kept: attempt 1") for t in kept.ending.test_traces)
    record = read_manifest(tmp_path / "run").instances[0].samples[0]
    assert record.summary is not None and record.summary.trace_phases == ["before", "after"]
    assert record.traces == f"trajectories/{instance.instance_id}/0.traces"
    assert leftovers(tmp_path / "run") == []


def normalised_export(examples: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The examples by id and the manifest's entries, without what differs between two runs of one batch:
    the run id, timings, line numbers and the source's path."""
    by_id = {}
    for line in examples.read_text().splitlines():
        example = json.loads(line)
        if example["instance_id"] in DETERMINISTIC:
            example.pop("run_id")
            end = example["trace"]["end"]
            for key in [k for k in end if k.endswith("elapsed_s")]:
                end.pop(key)
            by_id[example["id"]] = example
    entries = [{k: v for k, v in entry.items() if k not in ("run_id", "line")}
               for entry in json.loads(manifest_path(examples).read_text())["entries"]
               if entry["instance_id"] in DETERMINISTIC]
    return by_id, entries


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_sigkill_while_traces_are_unpacked_then_resume(traced_batch: TracedBatch, tmp_path: Path) -> None:
    """strace kills the runner (SIGKILL, no cleanup) as it renames the first finished episode's unpacked
    traces into place: they are whole in their staging folder, the outcome is not committed, and the
    other episode may be in flight with its live traces in its `.running/` folder."""
    instances = [traced_batch.instances[i] for i in DETERMINISTIC]
    listing = tmp_path / "instances.jsonl"
    listing.write_text("".join(i.model_dump_json() + "\n" for i in instances))
    for instance in instances:
        write_replies(tmp_path / "replies" / f"{instance.instance_id}.jsonl", gold_replies(instance))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "agent.cli", "batch", str(listing), "--output", str(run), "--workers", "2",
               "--model", f"replay:{tmp_path / 'replies'}/{{instance_id}}.jsonl", "--image", image_of(traced_batch),
               "--trace-tests", "failing"]
    # strace matches a rename by its first path: the staging folder's (agent.batch.tracing.staging_dir).
    targets = [arg for i in instances for arg in ("-P", str(run / "trajectories" / i.instance_id / ".0.traces.partial"))]
    kill = ["strace", "-f", "-qq", "-o", "/dev/null", *targets, "-e", "trace=rename,renameat,renameat2",
            "-e", "inject=rename,renameat,renameat2:signal=KILL:when=1"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    killed = subprocess.run([*kill, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    staged = [p for p in run.glob("trajectories/*/.0.traces.partial") if {q.name for q in p.iterdir()} == PHASES]
    assert len(staged) == 1 and not (staged[0].parent / "0.traces").exists()  # it died at that rename
    assert not [e for e in status_events(run) if e["event"] == "done"]

    resumed = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2/2 done, 0 errored" in resumed.stdout
    events = status_events(run)
    dones = [(e["instance_id"], e["sample"]) for e in events if e["event"] == "done"]
    assert sorted(dones) == sorted((i, 0) for i in DETERMINISTIC)  # every instance committed exactly once
    assert leftovers(run) == []
    manifest = read_manifest(run)
    for record in manifest.instances:
        instance = traced_batch.instances[record.instance_id]
        folder = run / "trajectories" / record.instance_id
        trajectory: Trajectory = read_trajectory(folder / "0.traj.jsonl")
        assert trajectory.ending is not None
        listed = {(t.phase, t.path) for t in trajectory.ending.test_traces}
        assert listed == {(p, f"0.traces/{p}/{entry_dirname(n)}") for n in instance.FAIL_TO_PASS
                          for p in ("before", "after")}
        assert trace_folders(folder) == {path for _, path in listed}  # complete, and nothing else
        for record_of_test in trajectory.ending.test_traces:
            path = folder / str(record_of_test.path)
            assert {p.name for p in path.iterdir()} == TRACE_FILES
            assert len(read_trace(path / TRACE_FILE).frames) == record_of_test.frames > 0
        sample = record.samples[0]
        assert (sample.status, sample.traces) == ("done", f"trajectories/{record.instance_id}/0.traces")
        assert sample.summary is not None and sample.summary.trace_phases == ["before", "after"]

    exported = subprocess.run([sys.executable, "-m", "agent.cli", "export", "--to", "cwm-traces", str(run), "-o",
                               str(tmp_path / "resumed.jsonl")], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300)
    assert exported.returncode == 0, exported.stderr
    export_cwm_traces([traced_batch.output], tmp_path / "uninterrupted.jsonl")
    resumed_export = normalised_export(tmp_path / "resumed.jsonl")
    assert len(resumed_export[0]) == 2 * sum(len(i.FAIL_TO_PASS) for i in instances)
    assert resumed_export == normalised_export(tmp_path / "uninterrupted.jsonl")

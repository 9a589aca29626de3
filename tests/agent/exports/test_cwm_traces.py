"""`agent export --to cwm-traces`: a batch run's and a solve output's test traces as CWM trace examples, read
back and checked against the trace files they came from; and what it does with bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.exports.common import ConvertError
from agent.exports.cwm_traces import ExportManifest, TraceExample, export_cwm_traces, manifest_path
from agent.protocol.render import BEGIN_OF_TEXT, END_OF_TEXT
from agent.worldmodel.frames import TRACE_CONTEXT_START, read_trace, render_prompt
from agent.worldmodel.traced_tests import PROMPT_FILE, TRACE_FILE
from agent.worldmodel.tracer import marker_columns
from tests.agent.traced_batch import TracedBatch
from tests.helpers import REPO_ROOT
from traces.recorder import Recorder, read_trajectory
from traces.schema import Ending, Header, ModelInfo, TracedTest

FAILING = "tests/test_core.py::test_touching_intervals_merge"


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


def read_back(output: Path) -> tuple[list[TraceExample], ExportManifest]:
    examples = [TraceExample.model_validate_json(line) for line in output.read_text().splitlines()]
    return examples, ExportManifest.model_validate_json(manifest_path(output).read_text())


@pytest.mark.docker
def test_a_batch_run_exports_every_trace(traced_batch: TracedBatch, tmp_path: Path) -> None:
    output = tmp_path / "traces.jsonl"
    done = agent("export", "--to", "cwm-traces", str(traced_batch.output), "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(output), str(tmp_path / "traces.manifest.json")]
    examples, manifest = read_back(output)
    # Every traced test of every trajectory has an entry, in trajectory order; all have an example here.
    expected = []
    for trajectory_file in sorted(traced_batch.output.glob("trajectories/*/0.traj.jsonl")):
        ending = read_trajectory(trajectory_file).ending
        assert ending is not None
        expected += [(trajectory_file, record) for record in ending.test_traces]
    assert (manifest.exported, manifest.skipped, len(examples)) == (len(expected), 0, len(expected)) == (8, 0, 8)
    assert len({example.id for example in examples}) == len(examples)
    for (trajectory_file, record), entry, example in zip(expected, manifest.entries, examples):
        folder = trajectory_file.parent / str(record.path)
        trace = read_trace(folder / TRACE_FILE)
        assert entry.trace_dir == folder.relative_to(traced_batch.output).as_posix()
        assert entry.line == examples.index(example) + 1 and entry.trajectory.endswith("/0.traj.jsonl")
        assert (example.instance_id, example.sample, example.node_id, example.phase) == \
            (entry.instance_id, 0, record.node_id, record.phase) == (trajectory_file.parent.name, 0, entry.node_id,
                                                                     entry.phase)
        # The structured frames are the trace file's; the prompt is its CWM text, as the run wrote it.
        assert example.trace["frames"] == [f.model_dump(mode="json") for f in trace.frames]
        assert example.trace["end"] == trace.end.model_dump(mode="json")
        assert example.prompt == render_prompt(trace) == (folder / PROMPT_FILE).read_text()
        assert example.prompt.startswith(BEGIN_OF_TEXT + TRACE_CONTEXT_START)
        context = example.prompt[len(BEGIN_OF_TEXT + TRACE_CONTEXT_START):].split("<|frame_sep|>", 1)[0]
        assert list(marker_columns(context)) == [trace.header.entry_line]
        assert example.prompt.endswith(END_OF_TEXT) is trace.finished is example.finished is (not entry.truncated)
        assert entry.frames == example.frames == len(trace.frames) == record.frames
        assert entry.status == example.status == trace.end.status
    cut = [e for e in manifest.entries if e.truncated]
    assert {e.instance_id for e in cut} == {"more-itertools-11.0.1"} and {e.cut_by for e in cut} == {"max_frames"}
    assert all(e.frames == 10_000 for e in cut)


@pytest.mark.docker
def test_a_solve_output_exports_too(tmp_path: Path, base_image: str) -> None:
    missing = "tests/test_core.py::test_that_does_not_exist"
    solved = agent("solve", "--example", "intervals", "--output", str(tmp_path / "solve"), "--trace-tests", FAILING,
                   "--trace-tests", missing)
    assert solved.returncode == 0, solved.stdout + solved.stderr
    output = tmp_path / "out" / "intervals.jsonl"
    assert export_cwm_traces([tmp_path / "solve"], output) == [output, tmp_path / "out" / "intervals.manifest.json"]
    examples, manifest = read_back(output)
    assert [(e.id, e.sample, e.outcome, e.status) for e in examples] == [
        (f"intervals/-/before/{FAILING}", None, "failed", "raised"),
        (f"intervals/-/after/{FAILING}", None, "passed", "returned")]
    skipped = [e for e in manifest.entries if e.line is None]
    assert [(e.node_id, e.phase) for e in skipped] == [(missing, "before"), (missing, "after")]
    assert all("no definition of 'test_that_does_not_exist'" in (e.error or "") for e in skipped)
    assert (manifest.exported, manifest.skipped) == (2, 2)


def write_trajectory(path: Path, records: list[TracedTest]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(path, Header(run_id="r", instance_id="hand", model=ModelInfo(kind="replay")))
    recorder.end(Ending(status="submitted", test_traces=records))
    recorder.close()
    return path


def test_bad_traces_are_listed_with_the_reason_and_nothing_else_is_lost(tmp_path: Path) -> None:
    run = tmp_path / "run"
    broken = run / "hand.traces" / "before" / "broken"
    broken.mkdir(parents=True)
    (broken / TRACE_FILE).write_text("not json\n")
    (tmp_path / "elsewhere").mkdir()
    write_trajectory(run / "hand.traj.jsonl", [
        TracedTest(node_id="t.py::a", phase="before", path="hand.traces/before/broken"),
        TracedTest(node_id="t.py::b", phase="before", path="../elsewhere"),
        TracedTest(node_id="t.py::c", phase="after", error="not traced: the phase's trace budget is spent"),
    ])
    output = tmp_path / "x.jsonl"
    export_cwm_traces([run], output)
    examples, manifest = read_back(output)
    assert examples == [] and (manifest.exported, manifest.skipped) == (0, 3)
    reasons = [e.error or "" for e in manifest.entries]
    assert "cannot be read" in reasons[0] and "not inside the trajectory's folder" in reasons[1]
    assert reasons[2] == "not traced: the phase's trace budget is spent"
    assert not list(tmp_path.glob("*.part"))


def test_refusals_are_one_line(tmp_path: Path) -> None:
    write_trajectory(tmp_path / "plain" / "p.traj.jsonl", [])
    for target, message in ((tmp_path / "nowhere", "no such file or directory"),
                            (tmp_path / "plain", "no test traces in")):
        done = agent("export", "--to", "cwm-traces", str(target), "-o", str(tmp_path / "o.jsonl"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
        with pytest.raises(ConvertError, match=message):
            export_cwm_traces([target], tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.part").exists()
    assert json.loads((tmp_path / "plain" / "p.traj.jsonl").read_text().splitlines()[0])["type"] == "header"

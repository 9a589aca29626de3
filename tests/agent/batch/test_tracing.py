"""agent.batch.tracing on real files: which tests an instance traces, the trace folder carried as data
from a worker to the driver (its bound, its paths), and what `--trace-tests` refuses."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.batch.tracing import (
    DROPPED_FILE,
    TraceArchive,
    TraceTests,
    error_dir,
    error_dirs,
    pack_traces,
    place_traces,
    staging_dir,
    staging_dirs,
    unreference,
    write_traces,
)
from agent.instances.records import Instance
from tests.helpers import REPO_ROOT
from traces.recorder import Recorder
from traces.schema import Ending, Header, ModelInfo, TracedTest

INSTANCE = Instance(instance_id="demo__demo-1", repo="demo/demo", problem_statement="x", test_patch="diff --git ...",
                    FAIL_TO_PASS=["tests/t.py::test_a", "test_b (app.tests.T)", "tests/t.py::test_a"],
                    PASS_TO_PASS=["tests/t.py::test_c"])


def test_which_tests_an_instance_traces() -> None:
    assert TraceTests.from_words(["failing"]).node_ids_for(INSTANCE) == ["tests/t.py::test_a", "test_b (app.tests.T)"]
    assert TraceTests.from_words(["all"]).node_ids_for(INSTANCE) == [
        "tests/t.py::test_a", "test_b (app.tests.T)", "tests/t.py::test_c"]
    given = TraceTests.from_words(["x/t.py::test_1", "x/t.py::test_2"])
    assert (given.select, given.node_ids_for(INSTANCE)) == ("nodes", ["x/t.py::test_1", "x/t.py::test_2"])
    for words, message in ((["failing", "x/t.py::a"], "stands alone"), (["x/t.py"], "is not one test"),
                           ([], "needs failing, all")):
        with pytest.raises(ValueError, match=message):
            TraceTests.from_words(words)


@pytest.mark.parametrize(("words", "message"), [
    (["--trace-tests", "failing", "--trace-tests", "all"], "stands alone"),
    (["--trace-tests", "../up.py::t"], "must be a path inside the repository"),
])
def test_the_command_refuses_in_one_line(tmp_path: Path, words: list[str], message: str) -> None:
    listing = tmp_path / "instances.jsonl"
    listing.write_text(INSTANCE.model_dump_json() + "\n")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "batch", str(listing), "-o", str(tmp_path / "run"),
                           "--model", "replay:/nonexistent", *words], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "run").exists()


def solve_output(tmp_path: Path) -> tuple[Path, str]:
    """What solve leaves for a worker: `<id>.traces/` with two traced tests, and the trajectory text."""
    output = tmp_path / "live"
    for phase, size in (("before", 3000), ("after", 100)):
        folder = output / "demo__demo-1.traces" / phase / "test_a"
        folder.mkdir(parents=True)
        (folder / "trace.jsonl").write_text("t" * size)
        (folder / "prompt.txt").write_text("p" * 50)
        (folder / "sources.json").write_text("{}")
    records = [TracedTest(node_id="tests/t.py::test_a", phase=p, path=f"demo__demo-1.traces/{p}/test_a",
                          frames=3) for p in ("before", "after")]
    recorder = Recorder(output / "t.traj.jsonl", Header(run_id="r", instance_id="demo__demo-1",
                                                        model=ModelInfo(kind="replay")))
    recorder.end(Ending(status="submitted", test_traces=records))
    recorder.close()
    return output, (output / "t.traj.jsonl").read_text()


def test_traces_travel_as_data_within_their_bound(tmp_path: Path) -> None:
    output, trajectory = solve_output(tmp_path)
    option = TraceTests.from_words(["failing"]).model_copy(update={"max_archive_bytes": 2000})
    text, archive = pack_traces(option, INSTANCE, 2, output, trajectory)
    assert archive is not None and archive.dropped == ["before/test_a/trace.jsonl"]  # the one that does not fit
    ending = Ending.model_validate_json(text.splitlines()[-1])
    shape = [(t.phase, t.node_id, t.path, (t.error or "").split(":")[0]) for t in ending.test_traces]
    assert shape == [
        ("before", "tests/t.py::test_a", None, "the trace was left out"),
        ("before", "test_b (app.tests.T)", None, "not traced"),
        ("after", "tests/t.py::test_a", "2.traces/after/test_a", ""),
        ("after", "test_b (app.tests.T)", None, "not traced")]
    assert "exceed 2000 bytes" in (ending.test_traces[0].error or "")
    assert "is not one test" in (ending.test_traces[1].error or "")
    assert text.splitlines()[:-1] == trajectory.splitlines()[:-1]  # only the end record changed
    target = tmp_path / "run" / "2.traces"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("from an earlier attempt")
    assert write_traces(target, archive) is None
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert written == ["after/test_a/prompt.txt", "after/test_a/sources.json", "after/test_a/trace.jsonl",
                       "before/test_a/prompt.txt", "before/test_a/sources.json", DROPPED_FILE]
    assert (target / "after" / "test_a" / "trace.jsonl").read_text() == "t" * 100
    assert archive.bytes == sum((target / name).stat().st_size for name in written if name != DROPPED_FILE)


def hostile(name: str, size: int = 10) -> TraceArchive:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "x" * size)
    return TraceArchive(data=base64.b64encode(buffer.getvalue()).decode(), files=1, bytes=10)


@pytest.mark.parametrize(("archive", "message"), [
    (hostile("../outside.txt"), "unexpected member"),
    (hostile("/etc/evil"), "unexpected member"),
    (hostile("big.txt", size=11), "holds more than it says"),
    (TraceArchive(data="not base64!", files=1, bytes=1), "base64"),
])
def test_a_bad_archive_writes_nothing_and_the_driver_goes_on(tmp_path: Path, archive: TraceArchive,
                                                           message: str) -> None:
    target = tmp_path / "run" / "0.traces"
    error = write_traces(target, archive)
    assert error is not None and message in error
    assert not target.exists() and not (tmp_path / "outside.txt").exists()
    assert list((tmp_path / "run").iterdir()) == []  # no staging folder left behind


def test_without_trace_tests_nothing_changes(tmp_path: Path) -> None:
    output, trajectory = solve_output(tmp_path)
    assert pack_traces(None, INSTANCE, 0, output, trajectory) == (trajectory, None)


def test_an_errored_attempt_keeps_the_phases_it_reached_in_its_own_folder(tmp_path: Path) -> None:
    """Only the "before" phase ran: its records point at the attempt's folder, and untraceable ids are
    recorded for that phase only (the episode never reached "after")."""
    output = tmp_path / "live"
    folder = output / "demo__demo-1.traces" / "before" / "test_a"
    folder.mkdir(parents=True)
    (folder / "trace.jsonl").write_text("t")
    recorder = Recorder(output / "t.traj.jsonl", Header(run_id="r", instance_id="demo__demo-1",
                                                        model=ModelInfo(kind="replay")))
    recorder.end(Ending(status="error", reason="ModelError: gone", test_traces=[TracedTest(
        node_id="tests/t.py::test_a", phase="before", path="demo__demo-1.traces/before/test_a", frames=1)]))
    recorder.close()
    text, archive = pack_traces(TraceTests.from_words(["failing"]), INSTANCE, 1, output,
                                (output / "t.traj.jsonl").read_text(), folder=error_dir(1, 3))
    ending = Ending.model_validate_json(text.splitlines()[-1])
    assert [(t.phase, t.path) for t in ending.test_traces] == [
        ("before", "1.attempt3.error.traces/before/test_a"), ("before", None)]
    run = tmp_path / "run"
    assert place_traces(run / error_dir(1, 3), archive, text) == (text, ["before"])
    assert place_traces(run / "1.traces", TraceArchive(data="!", files=1, bytes=1), text)[1] == []
    gone = Ending.model_validate_json(unreference(text, error_dir(1, 3), "not kept").splitlines()[-1])
    assert [(t.path, t.error) for t in gone.test_traces][0] == (None, "not kept")


def test_attempt_and_staging_folders_are_found_by_their_sample(tmp_path: Path) -> None:
    """Sample 1's folders are not sample 11's: a tidy-up of one must never touch the other's."""
    for name in ("1.attempt2.error.traces", "11.attempt2.error.traces", "1.attempt2.error.jsonl", "1.traces",
                 ".1.traces.partial", ".11.traces.partial", ".1.attempt4.error.traces.partial",
                 ".11.attempt4.error.traces.partial"):
        (tmp_path / name).mkdir()
    assert error_dirs(tmp_path, 1) == {2: tmp_path / "1.attempt2.error.traces"}
    assert sorted(p.name for p in staging_dirs(tmp_path, 1)) == [".1.attempt4.error.traces.partial",
                                                                 ".1.traces.partial"]
    assert staging_dir(tmp_path / "1.traces") == tmp_path / ".1.traces.partial"

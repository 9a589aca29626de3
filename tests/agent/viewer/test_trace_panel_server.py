"""The viewer's `/api/trace` route over a real `solve --trace-tests` output: its JSON, and what it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from agent.viewer.server import ViewerServer, serve
from agent.viewer.traces import source_files
from agent.worldmodel.frames import read_trace, resolved_locals
from agent.worldmodel.tracer import UNCHANGED
from tests.agent.viewer.conftest import EXAMPLE, FAILING, MARKUP, MISSING, SCRIPT_TAG, TracedRun
from tests.agent.viewer.fixtures import make_header
from traces.recorder import Recorder
from traces.schema import Ending, TracedTest

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def server(traced_run: TracedRun) -> Iterator[ViewerServer]:
    running = serve(traced_run.output)
    yield running
    running.shutdown()


def get(server: ViewerServer, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=10)


def trace_url(file: str, index: object) -> str:
    return f"/api/trace?file={file}&index={index}"


def test_trajectory_lists_its_test_traces(server: ViewerServer, traced_run: TracedRun) -> None:
    ending = get(server, f"/api/trajectory?file={traced_run.trajectory}").json()["ending"]
    listed = [(t["node_id"], t["phase"], t["outcome"]) for t in ending["test_traces"]]
    assert listed == [(FAILING, "before", "failed"), (MARKUP, "before", "failed"), (MISSING, "before", "unknown"),
                      (FAILING, "after", "passed"), (MARKUP, "after", "passed"), (MISSING, "after", "unknown")]


def test_trace_document(server: ViewerServer, traced_run: TracedRun) -> None:
    index = traced_run.position(FAILING, "before")
    response = get(server, trace_url(traced_run.trajectory, index))
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"record", "header", "end", "files", "values", "frames", "output"}
    record = traced_run.ending.test_traces[index]
    assert doc["record"] == record.model_dump(mode="json")
    assert (doc["header"]["file"], doc["header"]["function"]) == ("tests/test_core.py", "test_touching_intervals_merge")
    assert doc["end"]["status"] == "raised" and doc["end"]["exit_code"] == 1
    assert "1 failed" in doc["output"]

    # Sources: the test file whole (from the trace's header), the module whole as the sandbox held it.
    test_file = doc["files"]["tests/test_core.py"]
    expected = (EXAMPLE / "repo" / "tests" / "test_core.py").read_text().splitlines()
    assert test_file["complete"] and test_file["lines"] == [[n, line] for n, line in enumerate(expected, start=1)]
    core = doc["files"]["intervals/core.py"]
    core_lines = (EXAMPLE / "repo" / "intervals" / "core.py").read_text().splitlines()
    assert core["complete"] and core["lines"] == [[n, line] for n, line in enumerate(core_lines, start=1)]
    # A trace without sources.json (made before it existed) falls back to the lines its frames ran.
    folder = traced_run.output / record.path  # type: ignore[operator]
    partial = source_files(read_trace(folder / "trace.jsonl"))["intervals/core.py"]
    assert not partial["complete"] and all(core_lines[n - 1] == text for n, text in partial["lines"])
    assert [8, "def merge(intervals: list[Interval]) -> list[Interval]:"] in partial["lines"]

    # Frames: `..` resolved by the tracing package's own helper, each value sent once.
    trace = read_trace(traced_run.output / record.path / "trace.jsonl")  # type: ignore[operator]
    assert len(doc["frames"]) == record.frames == len(trace.frames)
    assert len(doc["values"]) == len(set(doc["values"]))
    for frame, real, full in zip(doc["frames"], trace.frames, resolved_locals(trace.frames)):
        assert (frame["index"], frame["event"], frame["file"], frame["lineno"], frame["function"], frame["arg"]) == \
            (real.index, real.event, real.file, real.lineno, real.function, real.arg)
        if full is None:
            assert frame["locals"] is None
            continue
        assert [name for name, _, _ in frame["locals"]] == list(full)
        for name, value, changed in frame["locals"]:
            assert doc["values"][value] == full[name] != UNCHANGED
            assert changed == (real.locals[name] != UNCHANGED)  # type: ignore[index]
    assert any(not changed for f in doc["frames"] if f["locals"] for _, _, changed in f["locals"])


def test_after_trace_shows_the_patched_line(server: ViewerServer, traced_run: TracedRun) -> None:
    doc = get(server, trace_url(traced_run.trajectory, traced_run.position(FAILING, "after"))).json()
    lines = dict((n, text) for n, text in doc["files"]["intervals/core.py"]["lines"])
    assert lines[17] == "        if merged and start <= merged[-1][1]:"
    assert doc["end"]["status"] == "returned" and doc["record"]["outcome"] == "passed"


def test_markup_in_values_is_sent_as_json_text(server: ViewerServer, traced_run: TracedRun) -> None:
    response = get(server, trace_url(traced_run.trajectory, traced_run.position(MARKUP, "before")))
    assert f"'{SCRIPT_TAG}'" in response.json()["values"]
    assert b"<script>" in response.content  # JSON text, served as application/json with nosniff
    assert response.headers["x-content-type-options"] == "nosniff"


def test_missing_traces_and_bad_positions(server: ViewerServer, traced_run: TracedRun) -> None:
    missing = get(server, trace_url(traced_run.trajectory, traced_run.position(MISSING, "before")))
    assert missing.status_code == 404
    assert missing.json()["error"] == (f"{MISSING} (before) has no trace: the tracer could not run: no definition "
                                       "of 'test_missing' in /testbed/tests/test_core.py")
    assert get(server, trace_url(traced_run.trajectory, 6)).status_code == 404
    assert get(server, trace_url(traced_run.trajectory, -1)).status_code == 400
    assert get(server, trace_url(traced_run.trajectory, "x")).status_code == 400
    assert get(server, trace_url("../intervals.traj.jsonl", 0)).status_code == 404
    assert get(server, trace_url("intervals.traces/before", 0)).status_code == 404


# --- paths a trajectory file may claim --------------------------------------------------------------


def write_referencing(path: Path, relative: str) -> None:
    """A trajectory whose ending references a trace at `relative` (anyone can write such a file)."""
    recorder = Recorder(path, make_header(path.name.removesuffix(".traj.jsonl")))
    recorder.end(Ending(status="submitted", test_traces=[
        TracedTest(node_id=FAILING, phase="before", path=relative, outcome="failed", frames=17)]))


@pytest.fixture
def crafted(tmp_path: Path, traced_run: TracedRun) -> Iterator[tuple[ViewerServer, Path]]:
    """A served folder `served/` beside a folder it must not leak, `secret/`, both holding a real trace."""
    real = traced_run.output / traced_run.ending.test_traces[0].path  # type: ignore[operator]
    served, secret = tmp_path / "served", tmp_path / "secret"
    shutil.copytree(real, served / "good.traces" / "t")
    shutil.copytree(real, secret / "t")
    # A trace folder inside PATH whose side files are links to files outside it.
    shutil.copytree(real, served / "leaky.traces" / "t")
    for name in ("output.txt", "sources.json"):
        (served / "leaky.traces" / "t" / name).unlink()
        (served / "leaky.traces" / "t" / name).symlink_to(secret / "t" / name)
    (secret / "t" / "output.txt").write_text("secret output")
    (secret / "t" / "sources.json").write_text(json.dumps({"intervals/core.py": "secret source"}))
    (served / "sub").mkdir()
    shutil.copytree(real, served / "sub" / "own.traces" / "t")
    (served / "link.traces").symlink_to(secret, target_is_directory=True)
    for name, relative in (("good", "good.traces/t"), ("leaky", "leaky.traces/t"), ("up", "../secret/t"), ("absolute", str(secret / "t")),
                           ("link", "link.traces/t"), ("nul", "good.traces/t\x00"), ("backslash", "good.traces\\t")):
        write_referencing(served / f"{name}.traj.jsonl", relative)
    write_referencing(served / "sub" / "sibling.traj.jsonl", "../good.traces/t")  # inside PATH, not its folder
    write_referencing(served / "sub" / "own.traj.jsonl", "own.traces/t")
    running = serve(served)
    yield running, served
    running.shutdown()


def test_trace_paths_must_stay_inside_the_served_folder(crafted: tuple[ViewerServer, Path]) -> None:
    server, _ = crafted
    assert get(server, trace_url("good.traj.jsonl", 0)).status_code == 200
    assert get(server, trace_url("sub/own.traj.jsonl", 0)).status_code == 200
    for name in ("up", "absolute", "link", "nul", "backslash", "sub/sibling"):
        response = get(server, trace_url(f"{name}.traj.jsonl", 0))
        assert response.status_code == 404, name
        assert response.json()["error"] == "not a trace under the served path", name
    assert "secret" not in json.dumps([get(server, trace_url(f"{n}.traj.jsonl", 0)).json()
                                       for n in ("up", "absolute", "link")])
    # Linked side files are not followed out of the trace's folder: no output, the frames' lines only.
    leaky = get(server, trace_url("leaky.traj.jsonl", 0))
    assert leaky.status_code == 200 and "secret" not in leaky.text
    assert leaky.json()["output"] == "" and not leaky.json()["files"]["intervals/core.py"]["complete"]


def test_single_trajectory_serves_its_own_traces_only(crafted: tuple[ViewerServer, Path]) -> None:
    _, served = crafted
    running = serve(served / "good.traj.jsonl")
    try:
        assert get(running, trace_url("good.traj.jsonl", 0)).status_code == 200
        assert get(running, trace_url("up.traj.jsonl", 0)).status_code == 404  # not the file named
    finally:
        running.shutdown()
    running = serve(served / "up.traj.jsonl")
    try:
        assert get(running, trace_url("up.traj.jsonl", 0)).status_code == 404
    finally:
        running.shutdown()

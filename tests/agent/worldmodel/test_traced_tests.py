"""`agent solve --trace-tests` end to end: the real CLI, Docker, git, the tracer and the replay model.

What must hold: the failing test's trace before the episode ends in its assertion error and the one
after the patch returns; the files are where the trajectory says; and tracing changes nothing the
model sees or submits (the same episode without tracing gives byte-identical diffs and observations).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.worldmodel.frames import END_OF_TEXT, read_trace
from agent.worldmodel.traced_tests import (
    OUTPUT_FILE,
    PROMPT_FILE,
    SOURCES_FILE,
    TRACE_FILE,
    check_node_id,
    entry_dirname,
)
from tests.helpers import REPO_ROOT, bash, write_replies
from traces.recorder import read_trajectory
from traces.schema import TracedTest, Trajectory

pytestmark = pytest.mark.docker
ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"
FAILING = "tests/test_core.py::test_touching_intervals_merge"
PASSING = "tests/test_core.py::test_disjoint_intervals_stay_apart"


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def solve_example(output: Path, *extra: str) -> Trajectory:
    done = agent("solve", "--example", "intervals", "--output", str(output), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted after 7 steps" in done.stdout
    return read_trajectory(output / "intervals.traj.jsonl")


def by_phase(trajectory: Trajectory, node_id: str) -> dict[str, TracedTest]:
    assert trajectory.ending is not None
    return {t.phase: t for t in trajectory.ending.test_traces if t.node_id == node_id}


def without_timings(text: str | None) -> str:
    """pytest prints its run time (`1 failed, 4 passed in 0.03s`): the only part allowed to differ."""
    return re.sub(r" in \d+\.\d+s", " in Ns", text or "")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Path:
    """The example solved without tracing: what every traced run is compared with."""
    output = tmp_path_factory.mktemp("plain")
    solve_example(output)
    return output


def test_failing_test_is_traced_before_and_after_the_patch(tmp_path: Path, plain: Path) -> None:
    trajectory = solve_example(tmp_path, "--trace-tests", FAILING)
    traced = by_phase(trajectory, FAILING)
    assert [t.phase for t in trajectory.ending.test_traces] == ["before", "after"]  # type: ignore[union-attr]
    before, after = traced["before"], traced["after"]
    assert (before.outcome, before.status, before.exit_code, before.error) == ("failed", "raised", 1, None)
    assert (after.outcome, after.status, after.exit_code, after.error) == ("passed", "returned", 0, None)
    for record in (before, after):
        assert record.path == f"intervals.traces/{record.phase}/{entry_dirname(FAILING)}"
        folder = tmp_path / record.path
        assert {p.name for p in folder.iterdir()} == {TRACE_FILE, PROMPT_FILE, OUTPUT_FILE, SOURCES_FILE}
        trace = read_trace(folder / TRACE_FILE)
        assert record.frames == len(trace.frames) > 0
        assert trace.header.mode == "pytest" and trace.header.file == "tests/test_core.py"
        assert trace.header.function == "test_touching_intervals_merge"
        assert (folder / PROMPT_FILE).read_text().endswith(END_OF_TEXT)
        assert trace.frames[0].event == "call" and trace.frames[0].function == "test_touching_intervals_merge"

    before_trace = read_trace(tmp_path / before.path / TRACE_FILE)  # type: ignore[operator]
    after_trace = read_trace(tmp_path / after.path / TRACE_FILE)  # type: ignore[operator]
    # Before: the assertion error leaves the test function, which unwinds.
    raised = [f for f in before_trace.frames
              if f.event == "exception" and f.function == "test_touching_intervals_merge"]
    assert raised and raised[-1].arg is not None and raised[-1].arg.startswith("AssertionError(")
    assert before_trace.frames[-1].event == "return" and before_trace.frames[-1].unwinding
    assert "1 failed" in (tmp_path / before.path / OUTPUT_FILE).read_text()  # type: ignore[operator]
    # After: the patched comparison ran, merge returned [(1, 5)] and the test returned normally.
    assert any("start <= merged[-1][1]" in f.source for f in after_trace.frames)
    assert not any("start < merged[-1][1]" in f.source for f in after_trace.frames)
    assert any(f.event == "return" and f.function == "merge" and f.arg == "[(1, 5)]" for f in after_trace.frames)
    assert after_trace.frames[-1].event == "return" and not after_trace.frames[-1].unwinding
    # The traced module as it ran: the original before the episode, the patched file after it.
    sources = {r.phase: json.loads((tmp_path / r.path / SOURCES_FILE).read_text()) for r in (before, after)}  # type: ignore[operator]
    assert set(sources["before"]) == set(sources["after"]) == {"intervals/core.py"}
    assert sources["before"]["intervals/core.py"] == (EXAMPLE / "repo" / "intervals" / "core.py").read_text()
    assert "start <= merged[-1][1]" in sources["after"]["intervals/core.py"]
    assert not any(f.event == "exception" for f in after_trace.frames)

    # Tracing is invisible: the same diff, patch and observations as the run without it.
    for name in ("intervals.sandbox.diff", "intervals.patch"):
        assert (tmp_path / name).read_bytes() == (plain / name).read_bytes()
    untraced = read_trajectory(plain / "intervals.traj.jsonl")
    assert trajectory.ending.submission == untraced.ending.submission  # type: ignore[union-attr]
    assert [without_timings(s.observation) for s in trajectory.steps] == \
        [without_timings(s.observation) for s in untraced.steps]
    assert [(s.exit_code, s.cwd, s.diff_stat) for s in trajectory.steps] == \
        [(s.exit_code, s.cwd, s.diff_stat) for s in untraced.steps]
    assert untraced.ending.test_traces == []  # type: ignore[union-attr]


def test_untraceable_tests_are_recorded_and_the_episode_completes(tmp_path: Path, plain: Path) -> None:
    missing = "tests/test_core.py::test_that_does_not_exist"
    no_file = "tests/test_nowhere.py::test_x"
    # A frame bound of 5 cuts the failing test's trace short (it has 17 frames).
    done = agent("solve", "--example", "intervals", "--output", str(tmp_path), "--trace-tests", missing,
                 "--trace-tests", no_file, "--trace-tests", FAILING, "--trace-max-frames", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted after 7 steps" in done.stdout
    trajectory = read_trajectory(tmp_path / "intervals.traj.jsonl")
    assert trajectory.ending is not None and len(trajectory.ending.test_traces) == 6
    for phase, record in by_phase(trajectory, missing).items():
        assert (record.path, record.outcome, record.frames) == (None, "unknown", 0)
        assert record.error == "the tracer could not run: no definition of 'test_that_does_not_exist' in " \
                               "/testbed/tests/test_core.py"
    for record in by_phase(trajectory, no_file).values():
        assert record.path is None and "cannot read /testbed/tests/test_nowhere.py" in (record.error or "")
    for record in by_phase(trajectory, FAILING).values():
        assert (record.status, record.outcome, record.frames) == ("max_frames", "unknown", 5)
        assert record.error is not None and "max_frames bound after 5 frames" in record.error
        trace = read_trace(tmp_path / record.path / TRACE_FILE)  # type: ignore[operator]
        assert len(trace.frames) == 5 and not trace.finished
        assert not (tmp_path / record.path / PROMPT_FILE).read_text().endswith(END_OF_TEXT)  # type: ignore[operator]
    assert "no trace: the tracer could not run: no definition of 'test_that_does_not_exist'" in done.stdout
    for name in ("intervals.sandbox.diff", "intervals.patch"):
        assert (tmp_path / name).read_bytes() == (plain / name).read_bytes()


@pytest.mark.parametrize("node_id, message", [
    ("tests/test_core.py", "is not one test"),
    ("/etc/passwd::test_x", "must be a path inside the repository"),
    ("../outside.py::test_x", "must be a path inside the repository"),
])
def test_malformed_node_ids_are_refused_before_the_episode(tmp_path: Path, node_id: str, message: str) -> None:
    done = agent("solve", "--example", "intervals", "--output", str(tmp_path), "--trace-tests", node_id)
    assert done.returncode == 2 and message in done.stderr
    assert not list(tmp_path.iterdir())  # refused before anything ran
    with pytest.raises(ValueError, match=message):
        check_node_id(node_id)


SIDE_EFFECTS = '''\
import os
import pathlib
import tempfile


def test_leaves_things_behind(tmp_path):
    pathlib.Path("made_by_test.txt").write_text("x")
    os.makedirs("build_out", exist_ok=True)
    pathlib.Path("build_out", "a.txt").write_text("y")
    pathlib.Path(tempfile.gettempdir(), "made_in_tmp.txt").write_text("z")
    (tmp_path / "f.txt").write_text("w")
    pathlib.Path("README.md").write_text("changed by the test\\n")
    import intervals.core  # bytecode would be written here without PYTHONDONTWRITEBYTECODE
'''
LOOK_AROUND = ('echo "status=$? pwd=$(pwd)"; ls -a . tests intervals; ls -a /tmp; '
               'git status --porcelain --ignored; cat README.md')


def test_tracing_leaves_nothing_the_model_could_see(tmp_path: Path, base_image: str) -> None:
    """A test that writes files, a temporary file and changes a tracked file: the model sees none of it."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "repo", repo)
    (repo / "tests" / "test_side_effects.py").write_text(SIDE_EFFECTS)
    replies = write_replies(tmp_path / "replies.jsonl", [bash(LOOK_AROUND), "Done looking.\n</think>\nno tool"])
    node = "tests/test_side_effects.py::test_leaves_things_behind"
    runs = {}
    for name, extra in (("plain", []), ("traced", ["--trace-tests", node])):
        done = agent("solve", "--repo", str(repo), "--issue", "look around", "--model", f"replay:{replies}",
                     "--max-turns", "2", "--instance-id", "look", "--output", str(tmp_path / name), *extra)
        assert done.returncode == 1, done.stdout + done.stderr  # ended by the turn limit, as scripted
        runs[name] = read_trajectory(tmp_path / name / "look.traj.jsonl")
    seen = runs["traced"].steps[0].observation or ""
    assert seen == runs["plain"].steps[0].observation
    assert "status=0 pwd=/testbed" in seen
    for leftover in ("made_by_test", "build_out", "made_in_tmp", "cwm-trace", "__pycache__", ".pytest_cache",
                     "changed by the test"):
        assert leftover not in seen
    assert runs["traced"].ending.sandbox_diff == runs["plain"].ending.sandbox_diff == ""  # type: ignore[union-attr]
    traced = by_phase(runs["traced"], node)
    assert {p: (t.outcome, t.status) for p, t in traced.items()} == {"before": ("passed", "returned"),
                                                                      "after": ("passed", "returned")}

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


# --- an instance's test patch, and the phase budget (what `agent batch --trace-tests` relies on) -------

BUDGET_FRAMES = 40
ADDED = "tests/test_added.py::test_three_touching_intervals"
CHANGED = "tests/test_core.py::test_touching_pairs"


def make_test_patch(tmp_path: Path) -> str:
    """A SWE-bench-style test patch for the example: a new test file and a test added to test_core.py."""
    work = tmp_path / "patch-work"
    shutil.copytree(EXAMPLE / "repo", work)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(git + args, check=True, capture_output=True)
    (work / "tests" / "test_added.py").write_text(
        "from intervals import merge\n\n\ndef test_three_touching_intervals():\n"
        "    assert merge([(1, 2), (2, 3), (3, 4)]) == [(1, 4)]\n")
    with (work / "tests" / "test_core.py").open("a") as handle:
        handle.write("\n\ndef test_touching_pairs():\n    assert merge([(0, 1), (1, 2)]) == [(0, 2)]\n")
    subprocess.run(git + ["add", "-N", "tests/test_added.py"], check=True)
    return subprocess.run(git + ["diff"], check=True, capture_output=True, text=True).stdout


def test_a_test_patch_is_traced_but_never_seen_and_the_phase_budget_holds(tmp_path: Path, plain: Path) -> None:
    """The patch's tests fail before the fix and pass after it; the model's observations, diff and patch
    are those of the untraced run; the phase's 40 frames go to the first tests (21 + 17, then the
    third is cut at what is left, and the fourth is not started)."""
    from agent.episode.solve import SolveRequest, solve
    from agent.models.factory import make_model
    from agent.worldmodel.run import TraceLimits
    from agent.worldmodel.traced_tests import TraceBudget
    from sandbox.base import SandboxConfig
    from sandbox.docker import DockerSandbox

    patch = make_test_patch(tmp_path)
    image = read_trajectory(plain / "intervals.traj.jsonl").header.image
    request = SolveRequest(
        repo=str(EXAMPLE / "repo"), issue=(EXAMPLE / "issue.md").read_text(), image=image,
        output=tmp_path / "run", instance_id="intervals", sandbox=SandboxConfig(image=image),
        trace_tests=[ADDED, CHANGED, FAILING, PASSING], trace_limits=TraceLimits(),
        trace_budget=TraceBudget(max_frames=BUDGET_FRAMES), trace_test_patch=patch)
    result = solve(request, lambda: make_model(f"replay:{EXAMPLE / 'trajectory.jsonl'}"), DockerSandbox)
    trajectory = read_trajectory(result.trajectory)
    assert trajectory.ending is not None and trajectory.ending.status == "submitted"
    shape = [(t.phase, t.node_id, t.outcome, t.status, t.frames) for t in trajectory.ending.test_traces]
    assert shape == [
        ("before", ADDED, "failed", "raised", 21), ("before", CHANGED, "failed", "raised", 17),
        ("before", FAILING, "unknown", "max_frames", 2), ("before", PASSING, "unknown", None, 0),
        ("after", ADDED, "passed", "returned", 22), ("after", CHANGED, "passed", "returned", 17),
        ("after", FAILING, "unknown", "max_frames", 1), ("after", PASSING, "unknown", None, 0)]
    spent = [t for t in trajectory.ending.test_traces if t.node_id == PASSING]
    assert all(t.path is None and "budget is spent (max_frames 40" in (t.error or "") for t in spent)
    added = read_trace(tmp_path / "run" / by_phase(trajectory, ADDED)["before"].path / TRACE_FILE)  # type: ignore[operator]
    assert added.header.source.startswith("from intervals import merge")  # the patch's file, as it ran
    # Never seen: the observations, the diff and the patch are the untraced run's.
    untraced = read_trajectory(plain / "intervals.traj.jsonl")
    assert [without_timings(s.observation) for s in trajectory.steps] == \
        [without_timings(s.observation) for s in untraced.steps]
    assert not any("test_added" in (s.observation or "") for s in trajectory.steps)
    for name in ("intervals.sandbox.diff", "intervals.patch"):
        assert (tmp_path / "run" / name).read_bytes() == (plain / name).read_bytes()


def test_after_an_episode_that_edited_the_patched_test_file_the_test_patch_still_applies(tmp_path: Path,
                                                                                         base_image: str) -> None:
    """The model appended to tests/test_core.py, where the test patch adds a test: after the episode the
    file is put back as at HEAD and the patch applied (as graders do), so the patch's test is traced."""
    from agent.episode.solve import SolveRequest, solve
    from agent.models.factory import make_model
    from sandbox.base import SandboxConfig
    from sandbox.docker import DockerSandbox

    replies = write_replies(tmp_path / "replies.jsonl", [bash("echo '# mine' >> tests/test_core.py"),
                                                         "Done.\n</think>\nno tool"])
    request = SolveRequest(repo=str(EXAMPLE / "repo"), issue="edit a test", image=base_image, output=tmp_path / "run",
                           instance_id="edited", sandbox=SandboxConfig(image=base_image), trace_tests=[CHANGED],
                           trace_test_patch=make_test_patch(tmp_path), loop={"max_turns": 2})
    result = solve(request, lambda: make_model(f"replay:{replies}"), DockerSandbox)
    assert "+# mine" in (result.ending.sandbox_diff or "")  # the model's edit, taken before the after phase
    traced = {t.phase: t for t in result.ending.test_traces}
    assert {p: (t.outcome, t.status, t.error) for p, t in traced.items()} == {
        "before": ("failed", "raised", None), "after": ("failed", "raised", None)}  # the bug is still there
    source = read_trace(tmp_path / "run" / str(traced["after"].path) / TRACE_FILE).header.source
    assert "def test_touching_pairs" in source and "# mine" not in source

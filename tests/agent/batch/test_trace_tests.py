"""`agent batch --trace-tests failing` over real SWE-bench-style fixtures (tests/fixtures/pypi): real Docker,
git, tracer and a scripted model that applies each instance's gold patch (tests/agent/traced_batch.py).

What must hold: each FAIL_TO_PASS test's trace before the episode ends in the test's failure, and after
the gold patch in its success; a test the tracer cannot finish is recorded with the reason and the
episode is still done; the traces sit in the run directory where the trajectories say; and the model
saw nothing of the tracing or of the instance's test patch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.batch.state import Manifest
from agent.worldmodel.frames import END_OF_TEXT, read_trace
from agent.worldmodel.traced_tests import OUTPUT_FILE, PROMPT_FILE, SOURCES_FILE, TRACE_FILE, entry_dirname
from tests.agent.traced_batch import TRACED, TracedBatch, run_traced_batch
from tests.helpers import REPO_ROOT
from traces.recorder import read_trajectory
from traces.schema import TracedTest, Trajectory

pytestmark = pytest.mark.docker
BOUNDED = "more-itertools-11.0.1"  # its failing test runs past the tracer's 10 000-frame bound


def patch_files(patch: str) -> set[str]:
    return set(re.findall(r"^diff --git a/(\S+) b/", patch, re.MULTILINE))


def trajectory_of(batch: TracedBatch, instance_id: str) -> Trajectory:
    return read_trajectory(batch.output / "trajectories" / instance_id / "0.traj.jsonl")


def records(trajectory: Trajectory) -> dict[tuple[str, str], TracedTest]:
    assert trajectory.ending is not None
    return {(t.node_id, t.phase): t for t in trajectory.ending.test_traces}


def test_every_episode_is_done_with_its_failing_tests_traced(traced_batch: TracedBatch) -> None:
    result = traced_batch.result
    assert (result.done, result.errored, result.submitted, result.exit_code) == (3, 0, 3, 0)
    manifest = Manifest.model_validate_json((traced_batch.output / "manifest.json").read_text())
    assert manifest.config.trace_tests is not None and manifest.config.trace_tests["select"] == "failing"
    for instance_id, instance in traced_batch.instances.items():
        trajectory = trajectory_of(traced_batch, instance_id)
        assert trajectory.ending is not None and trajectory.ending.status == "submitted"
        traced = records(trajectory)
        assert sorted(traced) == sorted((n, p) for n in instance.FAIL_TO_PASS for p in ("before", "after"))
        for (node_id, phase), record in traced.items():
            assert record.path == f"0.traces/{phase}/{entry_dirname(node_id)}"
            folder = traced_batch.output / "trajectories" / instance_id / record.path
            assert {p.name for p in folder.iterdir()} == {TRACE_FILE, PROMPT_FILE, OUTPUT_FILE, SOURCES_FILE}
            assert len(read_trace(folder / TRACE_FILE).frames) == record.frames > 0
    assert not list(traced_batch.output.rglob("*.running"))  # the live folders are gone, traces kept


@pytest.mark.parametrize("instance_id", [i for i in TRACED if i != BOUNDED])
def test_before_ends_in_the_failure_and_after_in_success(traced_batch: TracedBatch, instance_id: str) -> None:
    trajectory = trajectory_of(traced_batch, instance_id)
    folder = traced_batch.output / "trajectories" / instance_id
    for node_id in traced_batch.instances[instance_id].FAIL_TO_PASS:
        before, after = records(trajectory)[(node_id, "before")], records(trajectory)[(node_id, "after")]
        assert (before.outcome, before.status, before.exit_code, before.error) == ("failed", "raised", 1, None)
        assert (after.outcome, after.status, after.exit_code, after.error) == ("passed", "returned", 0, None)
        failed = read_trace(folder / str(before.path) / TRACE_FILE)
        passed = read_trace(folder / str(after.path) / TRACE_FILE)
        test_function = failed.header.function
        # Before: the test's own scope is left by an exception (the trace's last frame), and pytest says so.
        last = failed.frames[-1]
        assert (last.event, last.function, last.depth, last.unwinding) == ("return", test_function, 0, True)
        assert any(f.event == "exception" for f in failed.frames)
        assert "1 failed" in (folder / str(before.path) / OUTPUT_FILE).read_text()
        # After: the same test returns normally.
        last = passed.frames[-1]
        assert (last.event, last.function, last.depth, last.unwinding) == ("return", test_function, 0, False)
        assert "1 passed" in (folder / str(after.path) / OUTPUT_FILE).read_text()
        for trace, path in ((failed, before.path), (passed, after.path)):
            assert trace.finished and (folder / str(path) / PROMPT_FILE).read_text().endswith(END_OF_TEXT)


def test_a_test_past_the_bounds_is_recorded_and_the_episode_still_done(traced_batch: TracedBatch) -> None:
    trajectory = trajectory_of(traced_batch, BOUNDED)
    assert trajectory.ending is not None and trajectory.ending.status == "submitted"
    for record in trajectory.ending.test_traces:
        assert (record.outcome, record.status, record.frames) == ("unknown", "max_frames", 10_000)
        assert record.error is not None and "max_frames bound after 10000 frames" in record.error
        trace = read_trace(traced_batch.output / "trajectories" / BOUNDED / str(record.path) / TRACE_FILE)
        assert not trace.finished and len(trace.frames) == 10_000


def test_the_model_saw_nothing_of_the_tracing(traced_batch: TracedBatch) -> None:
    """The first command lists git's view of the tree: no test patch, no tracer files, no stash. The
    submission is the gold patch's files only (the test patch never entered the diff)."""
    for instance_id, instance in traced_batch.instances.items():
        trajectory = trajectory_of(traced_batch, instance_id)
        seen = trajectory.steps[0].observation or ""
        listing = seen.split("<output>\n", 1)[1].split("\n</output>", 1)[0].strip().splitlines()
        assert listing and all(" " not in line for line in listing), seen  # `ls` names only: git printed nothing
        assert "cwm-trace" not in seen and "stash@" not in seen
        submitted = trajectory.ending.submission if trajectory.ending else None
        assert submitted and patch_files(submitted) == patch_files(instance.patch)
        assert not patch_files(submitted) & patch_files(instance.test_patch)
        preds = [json.loads(line) for line in (traced_batch.output / "preds.jsonl").read_text().splitlines()]
        assert {p["instance_id"] for p in preds} == set(traced_batch.instances)


def test_ray_tasks_carry_the_traces_back_as_data(traced_batch: TracedBatch, tmp_path: Path) -> None:
    """The same run with Ray tasks (each episode in a temporary folder of its worker, nothing shared but
    the outcome): the driver writes the same traces where the trajectories say."""
    ray = pytest.importorskip("ray", reason="the Ray executor needs the optional 'ray' extra")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        remote = run_traced_batch(tmp_path, image_of(traced_batch), executor="ray")
    finally:
        ray.shutdown()
    assert (remote.result.done, remote.result.errored) == (3, 0)
    for instance_id in traced_batch.instances:
        local_records, ray_records = (records(trajectory_of(b, instance_id)) for b in (traced_batch, remote))
        assert {k: r.model_copy(update={"wall_s": 0}) for k, r in local_records.items()} == \
            {k: r.model_copy(update={"wall_s": 0}) for k, r in ray_records.items()}
        here, there = (b.output / "trajectories" / instance_id / "0.traces" for b in (traced_batch, remote))
        names = sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file())
        assert names == sorted(p.relative_to(there).as_posix() for p in there.rglob("*") if p.is_file())
        if instance_id == BOUNDED:  # its test draws unseeded random data: only the shape repeats
            continue
        for name in (n for n in names if n.endswith(TRACE_FILE)):
            assert read_trace(here / name).frames == read_trace(there / name).frames
        for name in (n for n in names if n.endswith(PROMPT_FILE)):
            assert (here / name).read_bytes() == (there / name).read_bytes()


def image_of(batch: TracedBatch) -> str:
    trajectory = trajectory_of(batch, next(iter(batch.instances)))
    return trajectory.header.image


def test_the_command_traces_given_node_ids(tmp_path: Path, base_image: str) -> None:
    """`agent batch --trace-tests NODE_ID` through the command line, on the bundled example."""
    from tests.agent.batch.test_run import make_instances, make_replays, write_instances

    instances = make_instances(1, prefix="cli")
    listing = write_instances(tmp_path / "instances.jsonl", instances)
    spec = make_replays(tmp_path / "replays", instances)
    node = "tests/test_core.py::test_touching_intervals_merge"
    done = subprocess.run([sys.executable, "-m", "agent.cli", "batch", str(listing), "-o", str(tmp_path / "run"),
                           "--model", spec, "--image", base_image, "--trace-tests", node, "--trace-max-frames", "12"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = Manifest.model_validate_json((tmp_path / "run" / "manifest.json").read_text())
    assert manifest.config.trace_tests is not None
    assert (manifest.config.trace_tests["select"], manifest.config.trace_tests["node_ids"]) == ("nodes", [node])
    trajectory = read_trajectory(tmp_path / "run" / "trajectories" / "cli-00" / "0.traj.jsonl")
    assert trajectory.ending is not None
    assert [(t.phase, t.status, t.frames) for t in trajectory.ending.test_traces] == [
        ("before", "max_frames", 12), ("after", "max_frames", 12)]
    for record in trajectory.ending.test_traces:
        assert (tmp_path / "run" / "trajectories" / "cli-00" / str(record.path) / TRACE_FILE).is_file()

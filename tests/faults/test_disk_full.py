"""The disk fills mid-batch: one clear line, nothing written is damaged, and `--resume` finishes the run.

The run directory is a 2 MiB tmpfs (tests/faults/conftest.py); the runner is the real command line.
Once three episodes are committed the test fills the tmpfs to the last byte, so the next write of a
trajectory, a patch, the status log or the manifest (whichever comes first) meets ENOSPC.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.batch.state import Manifest
from agent.batch.status_log import ErrorEvent, StartEvent, StatusLog
from tests.agent.batch.test_run import make_instances, make_replays, write_instances
from tests.faults.helpers import check_run, count, events
from tests.helpers import REPO_ROOT
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker


def fill(disk: Path) -> Path:
    """Write zeros into `disk` until it is full; returns the file to delete to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return filler


def done_so_far(out: Path) -> int:
    log = out / "status.log"
    return log.read_text().count('"event":"done"') if log.exists() else 0


def test_a_full_disk_stops_the_batch_cleanly_and_resume_finishes(tmp_path: Path, base_image: str,
                                                                 small_disk: Path) -> None:
    instances = make_instances(10, prefix="disk")
    out = small_disk / "run"
    command = [sys.executable, "-m", "agent.cli", "batch", str(write_instances(tmp_path / "i.jsonl", instances)),
               "--output", str(out), "--workers", "2", "--model", make_replays(tmp_path / "replays", instances),
               "--image", base_image]
    with (tmp_path / "first.log").open("w") as log:
        runner = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while done_so_far(out) < 3 and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.poll() is None, (tmp_path / "first.log").read_text()
        filler = fill(small_disk)
        assert runner.wait(timeout=120) == 1
    shown = (tmp_path / "first.log").read_text()
    stops = [line for line in shown.splitlines() if line.startswith("stopped: ")]
    assert stops == [f"stopped: no space left on the device of {out}: free some (`df -h {out}`), then rerun "
                     "with --resume; what finished is kept"], shown
    assert "Traceback" not in shown

    # Nothing already written is damaged: the log is whole, every committed episode's files are.
    before = events(out)
    done_before = set(count(before, "done"))
    assert 3 <= len(done_before) < 10
    for instance_id, _ in done_before:
        trajectory = read_trajectory(out / "trajectories" / instance_id / "0.traj.jsonl")
        assert trajectory.ending is not None and trajectory.ending.status == "submitted"
        assert (out / "trajectories" / instance_id / "0.patch").read_text() == trajectory.ending.submission
    Manifest.model_validate_json((out / "manifest.json").read_text())  # an old or a new one, but whole
    assert not list(out.rglob("*.tmp"))

    # Still full: the resume stops in one line too, and damages nothing (its few log lines may fit).
    full = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1, full.stdout + full.stderr
    assert [line for line in (full.stdout + full.stderr).splitlines() if "no space left on the device of" in line]
    assert "Traceback" not in full.stdout + full.stderr and set(count(events(out), "done")) == done_before

    filler.unlink()
    resumed = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "10/10 done, 0 errored" in resumed.stdout
    check_run(out, instances, done_before)


def test_a_status_line_the_full_disk_refuses_leaves_no_trace(small_disk: Path) -> None:
    """The commit point itself: an append cut short by ENOSPC is undone, so no later line lands after a
    fragment, and the log replays as it was."""
    path = small_disk / "status.log"
    log = StatusLog(path)
    first = StartEvent(instance_id="a", sample=0, attempt=1)
    log.append(first)
    filler = fill(small_disk)
    before = path.read_bytes()
    too_big = ErrorEvent(instance_id="a", sample=0, attempt=1, error="x" * 20000)  # needs pages the disk lacks
    with pytest.raises(OSError) as refused:
        log.append(too_big)
    assert refused.value.errno == errno.ENOSPC and refused.value.filename == str(path)
    assert path.read_bytes() == before
    filler.unlink()
    log.append(too_big)
    log.close()
    assert StatusLog.replay(path) == [first, too_big]

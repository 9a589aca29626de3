"""The Docker daemon restarts mid-batch: the batch waits for it, and only the episodes it killed run again.

The runner is the real command line in its own process, pointed (DOCKER_HOST) at a second daemon of
the suite's own (tests/faults/dockerd.py), which the test restarts as `systemctl restart docker` does:
SIGTERM, the daemon stops every container and exits, then a fresh start. One episode is sure to be
in flight (its second step sleeps longer than the daemon takes to stop it); the other worker meets a
daemon that is not there when it asks for a sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.batch.test_run import make_instances, write_instances
from tests.faults.dockerd import SecondDaemon
from tests.faults.helpers import check_run, count, events, kept_steps, make_replays_with_waits
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.docker

SLOW = "dock-00"


def step_recorded(out: Path, instance_id: str, steps: int) -> bool:
    """Has the running episode of `instance_id` recorded `steps` steps (after its header)?"""
    live = next((out / "trajectories" / instance_id / "0.running").glob("*.traj.jsonl"), None) \
        if (out / "trajectories" / instance_id / "0.running").is_dir() else None
    return live is not None and live.read_text().count("\n") >= 1 + steps


def test_a_daemon_restart_is_waited_for_and_its_victims_run_again(tmp_path: Path, base_image: str,
                                                                   second_daemon: SecondDaemon) -> None:
    instances = make_instances(6, prefix="dock")
    spec = make_replays_with_waits(tmp_path / "replays", instances, {SLOW: 15})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "agent.cli", "batch", str(write_instances(tmp_path / "i.jsonl", instances)),
               "--output", str(out), "--workers", "2", "--model", spec, "--image", base_image]
    with (tmp_path / "first.log").open("w") as log:
        runner = subprocess.Popen(command, cwd=REPO_ROOT, env=second_daemon.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not step_recorded(out, SLOW, 1) and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.5)  # into the sleep of step 2
        second_daemon.restart(down_s=2)
        assert runner.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()
    shown = (tmp_path / "first.log").read_text()
    assert "Docker daemon down since " in shown and "Docker daemon is back" in shown
    assert "6/6 done, 0 errored" in shown

    log_ = events(out)
    errors = [e for e in log_ if e["event"] == "error"]
    assert {(e["kind"], e["cause"]) for e in errors} == {("infra", "docker")}
    slow_errors = [e for e in errors if e["instance_id"] == SLOW]
    assert len(slow_errors) == 1 and kept_steps(out, slow_errors[0]) >= 1  # killed mid-episode, steps kept
    starts = count(log_, "start")
    assert starts[(SLOW, 0)] == 2 and set(starts.values()) <= {1, 2}
    assert {k for k, n in starts.items() if n == 2} == {(e["instance_id"], e["sample"]) for e in errors}
    check_run(out, instances, slow=(SLOW,))

    # The next start removes whatever the restart left behind; nothing of the run remains.
    again = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, env=second_daemon.env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "6/6 done" in again.stdout, again.stdout + again.stderr
    assert second_daemon.containers(f"cwm-runner.run-id={log_[0]['run_id']}") == []

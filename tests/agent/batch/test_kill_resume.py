"""SIGKILL the batch runner halfway, resume it, and check that nothing was lost, doubled or left behind.

The runner is the CLI entry (`python -m agent.cli batch`) in its own process, killed with SIGKILL once
about half of the 20 episodes are committed in its status log: no handler runs, so its in-flight
sandboxes stay behind and its in-flight episodes leave partial files, exactly as after an OOM kill
or a lost machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.batch.test_run import (
    ROOT,
    containers_of,
    expected_preds,
    make_instances,
    make_replays,
    read_manifest,
    status_events,
    write_instances,
)

pytestmark = pytest.mark.docker


def done_count(output: Path) -> int:
    log = output / "status.log"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.endswith("}") and '"event":"done"' in line)


def test_sigkill_halfway_then_resume(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(20, prefix="kill")
    listing = write_instances(tmp_path / "instances.jsonl", instances)
    spec = make_replays(tmp_path / "replays", instances)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "agent.cli", "batch", str(listing), "--output", str(out), "--workers", "2",
               "--model", spec, "--image", base_image]
    with (tmp_path / "first.log").open("w") as first_log:
        runner = subprocess.Popen(command, cwd=ROOT, stdout=first_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while done_count(out) < 10 and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.poll() is None, (tmp_path / "first.log").read_text()  # it must still be running
        os.kill(runner.pid, signal.SIGKILL)
        assert runner.wait(timeout=30) == -signal.SIGKILL

    before = status_events(out)
    run_id = before[0]["run_id"]
    finished_before = {(e["instance_id"], e["sample"]) for e in before if e["event"] == "done"}
    started_before = {(e["instance_id"], e["sample"]) for e in before if e["event"] == "start"}
    in_flight = started_before - finished_before
    assert 10 <= len(finished_before) < 20 and 1 <= len(in_flight) <= 2
    left_behind = containers_of(run_id)  # the dead runner's sandboxes (0 if it died between episodes)

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "20/20 done, 0 errored" in resumed.stdout

    # Same predictions as an uninterrupted run (tests/agent/batch/test_run.py checks that one against the same text).
    assert (out / "preds.jsonl").read_text() == expected_preds(instances)
    events = status_events(out)
    starts: dict[tuple[str, int], int] = {}
    dones: dict[tuple[str, int], int] = {}
    for event in events:
        key = (event.get("instance_id"), event.get("sample"))
        if event["event"] == "start":
            starts[key] = starts.get(key, 0) + 1
        if event["event"] == "done":
            dones[key] = dones.get(key, 0) + 1
    assert len(dones) == 20 and set(dones.values()) == {1}  # every episode committed exactly once
    assert {k for k, n in starts.items() if n > 1} == in_flight  # only the killed ones ran again
    assert all(starts[k] == 1 for k in finished_before)  # nothing finished was run twice
    abandoned = [e for e in events if e["event"] == "abandoned"]
    assert {(e["instance_id"], e["sample"]) for e in abandoned} == in_flight
    for event in abandoned:  # partial trajectories of the killed attempts are kept aside, if they had begun
        if event["kept"]:
            kept = out / event["kept"]
            assert kept.name.endswith(".attempt1.partial.jsonl") and kept.exists()
            assert '"type":"end"' not in kept.read_text()
    manifest = read_manifest(out)
    assert manifest.run_id == run_id and [s["resume"] for s in manifest.sessions] == [False, True]
    attempts = {(r.instance_id, s.sample): s.attempts for r in manifest.instances for s in r.samples}
    assert {k for k, n in attempts.items() if n == 2} == in_flight and set(attempts.values()) <= {1, 2}
    assert not list(out.glob("trajectories/*/*.running"))

    # The dead runner's containers were reaped, and the resumed run removed its own.
    assert containers_of(run_id) == [], f"left behind before resume: {left_behind}"
    print(f"killed with {len(finished_before)} done, {len(in_flight)} in flight, "
          f"{len(left_behind)} containers left behind and reaped", file=sys.stderr)

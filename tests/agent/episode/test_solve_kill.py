"""SIGKILL `agent solve` mid-episode: every finished step is on disk and readable, nothing is lost.

The runner is the real CLI in its own process, talking to a real HTTP model server (the scripted
OpenAI-compatible fake) and a real Docker sandbox. The fourth reply is a command that runs for ten
minutes; the runner is killed with SIGKILL while it runs, so no handler, `finally` or atexit hook
gets a chance: what is on disk is exactly what the recorder had flushed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from agent.episode.repo import WORKSPACE_PREFIX
from tests.fakes.openai_server import COMPLETIONS, FakeOpenAIServer
from tests.helpers import REPO_ROOT, bash
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker
ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"

REPLIES = [
    bash("ls"),
    bash("grep -n 'def merge' intervals/core.py"),
    bash("echo 'touching intervals' > notes.txt && cat notes.txt"),
    bash("sleep 600", thought="Wait for it."),
]


def our_containers(run_id: str) -> list[str]:
    client = docker.from_env()
    return [c.id for c in client.containers.list(all=True, filters={"label": f"cwm-runner.run-id={run_id}"})]


def workspaces_of(pid: int) -> list[Path]:
    return list(Path("/tmp").glob(f"{WORKSPACE_PREFIX}{pid}.*"))


def test_sigkill_mid_episode_keeps_every_finished_step(tmp_path: Path, base_image: str) -> None:
    out = tmp_path / "out"
    with FakeOpenAIServer(models=["cwm"]) as server:
        for reply in REPLIES:
            server.reply(reply)
        command = [sys.executable, "-m", "agent.cli", "solve", "--repo", str(EXAMPLE / "repo"),
                   "--issue-file", str(EXAMPLE / "issue.md"), "--model", server.url, "--image", base_image,
                   "--instance-id", "killed", "--output", str(out)]
        with (tmp_path / "solve.log").open("w") as log:
            runner = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            # The fourth request is sent only after step 3 was recorded; its reply starts `sleep 600`.
            while len(server.requests_to(COMPLETIONS)) < 4 and runner.poll() is None:
                assert time.monotonic() < deadline, "the runner never asked for a fourth reply"
                time.sleep(0.02)
            assert runner.poll() is None, (tmp_path / "solve.log").read_text()
            time.sleep(1.0)  # the sleep is running in the sandbox now
            os.kill(runner.pid, signal.SIGKILL)
            assert runner.wait(timeout=30) == -signal.SIGKILL

    trajectory = read_trajectory(out / "killed.traj.jsonl")
    assert not trajectory.torn_tail
    assert trajectory.header.instance_id == "killed"
    assert [step.index for step in trajectory.steps] == [1, 2, 3]
    assert [step.raw_reply for step in trajectory.steps] == REPLIES[:3]
    assert "intervals" in (trajectory.steps[0].output or "")
    assert "def merge" in (trajectory.steps[1].output or "")
    assert trajectory.steps[2].output == "touching intervals\n" and trajectory.steps[2].exit_code == 0
    assert trajectory.ending is None  # the episode never ended: readers see an unfinished run

    # The dead runner left its sandbox and its host checkout; the next prune removes both.
    run_id = trajectory.header.run_id
    assert len(our_containers(run_id)) == 1
    assert len(workspaces_of(runner.pid)) == 1
    pruned = subprocess.run([sys.executable, "-m", "agent.cli", "sandbox", "prune"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert pruned.returncode == 0, pruned.stderr
    assert our_containers(run_id) == [] and workspaces_of(runner.pid) == []
    assert "orphaned checkout(s)" in pruned.stdout  # others of earlier killed runs may be counted too

"""A Ray worker dies mid-episode: the episode runs again in another worker, exactly once.

The batch runs on a local Ray instance (agent.batch.executors.RayExecutor) with one worker slot, so
the task running is the one of the episode in flight. When that episode reports its first step, the
test SIGKILLs the worker process executing it (Ray titles it `ray::_ray_episode`), as the kernel's
OOM killer or a lost node would. Its sandbox is left behind like a killed runner's: the next start
of the run removes it.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, run_batch
from tests.agent.batch.test_run import containers_of, make_instances
from tests.faults.helpers import check_run, count, events, kept_steps, make_replays_with_waits

pytest.importorskip("ray", reason="the Ray executor needs the optional 'ray' extra")
pytestmark = pytest.mark.docker

SLOW = "rayk-00"
TASK_TITLE = b"ray::_ray_episode"


def task_workers() -> list[int]:
    """Pids of the Ray workers executing an episode task now."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(TASK_TITLE):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


class KillOnFirstStep(LogProgress):
    """Kills the worker running `target` when its episode reports a step (once)."""

    def __init__(self, target: str) -> None:
        super().__init__(Console(file=io.StringIO(), width=300))
        self.target, self.killed, self._current = target, [], ""

    def started(self, slot: int, instance_id: str, sample: int, attempt: int) -> None:
        super().started(slot, instance_id, sample, attempt)
        self._current = instance_id

    def step(self, slot: int, index: int) -> None:
        super().step(slot, index)
        found = task_workers() if self._current == self.target and not self.killed else []
        if len(found) == 1:  # one slot: one episode task at a time (else: at its next step)
            os.kill(found[0], signal.SIGKILL)
            self.killed.append(found[0])


def test_an_episode_whose_worker_dies_runs_again_exactly_once(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(4, prefix="rayk")
    spec = make_replays_with_waits(tmp_path / "replays", instances, {SLOW: 5})
    out = tmp_path / "run"
    progress = KillOnFirstStep(SLOW)
    result = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=1, image=base_image,
                                    executor="ray"), progress=progress)
    assert len(progress.killed) == 1
    assert (result.done, result.errored, result.exit_code) == (4, 0, 0)
    log = events(out)
    (error,) = [e for e in log if e["event"] == "error"]
    assert (error["instance_id"], error["kind"], error["cause"]) == (SLOW, "infra", "worker")
    assert error["error"].startswith("Ray task failed: ") and kept_steps(out, error) == 0  # nothing came back
    starts = count(log, "start")
    assert starts[(SLOW, 0)] == 2 and sum(starts.values()) == 5  # retried once; nothing else ran twice
    check_run(out, instances, slow=(SLOW,))

    # The dead worker's sandbox is gone after the next start of the run (the first sandbox of a new worker
    # process may already have reaped it: its owner is dead).
    again = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=1, image=base_image,
                                   resume=True), progress=LogProgress(Console(file=io.StringIO())))
    assert again.done == 4 and again.ran == 0
    assert containers_of(result.run_id) == []

"""Loop overhead per step: everything except model time and command time, with the replay model.

Runs episodes of N trivial bash steps against a real Docker sandbox and reports
(wall time - model latency - command time) / steps: parsing, rendering, token counting, observation
wrapping and trajectory recording. Run: python3 bench/loop_bench.py [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.episode.loop import LoopConfig, initial_messages, run_episode  # noqa: E402
from agent.models.replay import ReplayModel  # noqa: E402
from images.build import ensure_base_image  # noqa: E402
from sandbox.base import SandboxConfig  # noqa: E402
from sandbox.docker import DockerSandbox  # noqa: E402
from tests.helpers import bash, write_replies  # noqa: E402
from traces.recorder import Recorder, read_trajectory  # noqa: E402
from traces.schema import Header, ModelInfo  # noqa: E402


def one_episode(box: DockerSandbox, steps: int, diff_stat: bool, tmp: Path) -> tuple[float, float, float]:
    replies = [bash(f"echo step {i}", "Thinking about the next step. " * 20) for i in range(steps)]
    model = ReplayModel(write_replies(tmp / "replies.jsonl", replies))
    recorder = Recorder(tmp / "out.jsonl", Header(run_id="bench", instance_id="bench", model=ModelInfo(kind="replay")))
    config = LoopConfig(max_turns=steps + 1, record_diff_stat=diff_stat)
    messages = initial_messages("system " * 200, "user " * 500)
    started = time.perf_counter()
    try:
        run_episode(model, box, messages, recorder, config)
    except Exception as error:  # the replay runs out of replies after the last step: that ends the episode
        if "only" not in str(error):
            raise
    wall = time.perf_counter() - started
    recorder.close()
    trajectory = read_trajectory(tmp / "out.jsonl")
    command = sum(s.command_duration_s or 0 for s in trajectory.steps)
    model_time = sum(s.model_latency_s or 0 for s in trajectory.steps)
    return wall, command, model_time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    image = ensure_base_image()
    with DockerSandbox(SandboxConfig(image=image, workdir="/tmp")) as box, tempfile.TemporaryDirectory() as tmp:
        box.run("cd /tmp && git init -q . 2>/dev/null; true")
        for diff_stat in (False, True):
            per_step = []
            for _ in range(args.repeats):
                wall, command, model_time = one_episode(box, args.steps, diff_stat, Path(tmp))
                per_step.append((wall - command - model_time) / args.steps * 1000)
            label = "with diff stat" if diff_stat else "loop only     "
            print(f"loop overhead per step ({label}): median {statistics.median(per_step):.2f} ms "
                  f"(runs: {', '.join(f'{x:.2f}' for x in per_step)}) over {args.steps} steps; "
                  f"target < 10 ms")


if __name__ == "__main__":
    main()

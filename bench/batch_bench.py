"""Batch throughput and the runner's overhead per episode, with replayed episodes (no model server).

For each worker count (default 1, 2, 4) it runs a batch of the bundled example (traces/examples/
intervals, 7 steps, replayed) and prints episodes per minute. "Overhead" is what an episode costs
beyond its commands (the replay model answers in microseconds): preparing the repository, starting
the sandbox, copying the repository in, the final diff, removing the container, the trajectory, and
the driver's bookkeeping (status log, manifest, preds). It is reported two ways:

- worker: episode wall time (as the worker measured it) minus command time;
- driver: batch wall time x workers / episodes minus command time, i.e. including the time a worker
  slot sits idle between episodes while the driver commits and hands out the next one.

A breakdown of one episode's fixed costs follows. Run: python3 bench/batch_bench.py [--episodes 12]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from agent.batch.progress import LogProgress  # noqa: E402
from agent.batch.run import BatchRequest, run_batch  # noqa: E402
from agent.batch.state import Manifest  # noqa: E402
from agent.instances.records import Instance  # noqa: E402
from images.build import ensure_base_image  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "traces" / "examples" / "intervals"


def instances(count: int, prefix: str) -> list[Instance]:
    issue = (EXAMPLE / "issue.md").read_text()
    return [Instance(instance_id=f"{prefix}-{n:03d}", repo=str(EXAMPLE / "repo"), repo_path=str(EXAMPLE / "repo"),
                     problem_statement=issue) for n in range(count)]


def one_batch(workers: int, episodes: int, image: str, tmp: Path, warm: int = 0) -> dict[str, float]:
    batch = instances(episodes, f"w{workers}")
    out = tmp / f"run-w{workers}-warm{warm}"
    started = time.perf_counter()
    result = run_batch(BatchRequest(instances=batch, output=out, model=f"replay:{EXAMPLE / 'trajectory.jsonl'}", workers=workers,
                       image=image, warm=warm), progress=LogProgress(Console(file=io.StringIO())))
    wall = time.perf_counter() - started
    assert result.done == episodes, f"{result.errored} episodes errored: see {out}/manifest.json"
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    summaries = [s.summary for r in manifest.instances for s in r.samples if s.summary is not None]
    command = statistics.mean(s.command_s for s in summaries)
    elapsed = statistics.mean(s.elapsed_s for s in summaries)
    return {
        "workers": workers, "wall": wall, "per_minute": episodes / wall * 60, "command": command,
        "episode": elapsed, "worker_overhead": elapsed - command,
        "driver_overhead": wall * workers / episodes - command,
    }


def breakdown(image: str, repeats: int) -> dict[str, float]:
    """Fixed costs of one episode, timed one by one with the same primitives agent.episode.solve uses."""
    from agent.episode.repo import place_in_sandbox, prepare_repo
    from agent.episode.solve import sandbox_git_diff
    from sandbox.base import SandboxConfig
    from sandbox.docker import DockerSandbox

    times: dict[str, list[float]] = {k: [] for k in ("prepare repo", "start sandbox", "copy repo in",
                                                     "final diff", "remove sandbox")}
    for _ in range(repeats):
        t = time.perf_counter()
        prepared = prepare_repo(str(EXAMPLE / "repo"))
        times["prepare repo"].append(time.perf_counter() - t)
        t = time.perf_counter()
        box = DockerSandbox(SandboxConfig(image=image, run_id="bench"))
        times["start sandbox"].append(time.perf_counter() - t)
        t = time.perf_counter()
        place_in_sandbox(prepared, box)
        times["copy repo in"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sandbox_git_diff(box)
        times["final diff"].append(time.perf_counter() - t)
        t = time.perf_counter()
        box.close()
        times["remove sandbox"].append(time.perf_counter() - t)
        prepared.cleanup()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=12, help="episodes per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fixed-cost breakdown")
    parser.add_argument("--warm", type=int, nargs="+", default=[0, 2], help="warm sandboxes kept ready (0: none)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    image = ensure_base_image()

    print(f"replayed episodes of traces/examples/intervals (7 steps), {args.episodes} per row, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7} {'warm':>4} {'wall s':>7} {'episodes/min':>13} {'episode s':>10} {'command s':>10} "
          f"{'overhead s (worker)':>20} {'overhead s (driver)':>20}")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            for warm in args.warm:
                row = one_batch(workers, args.episodes, image, Path(tmp), warm)
                print(f"{row['workers']:>7} {warm:>4} {row['wall']:>7.1f} {row['per_minute']:>13.1f} "
                      f"{row['episode']:>10.2f} {row['command']:>10.2f} {row['worker_overhead']:>20.2f} "
                      f"{row['driver_overhead']:>20.2f}")
    print("fixed costs of one episode (median):")
    for name, seconds in breakdown(image, args.repeats).items():
        print(f"  {name:<15} {seconds * 1000:7.0f} ms")


if __name__ == "__main__":
    main()

"""Sandbox latency benchmark: cold start, warm-pool start, and one command's round trip.

Run: python3 bench/sandbox_bench.py [--image IMAGE] [--starts 20] [--round-trips 200]

The round trip of a trivial command through our persistent session is compared, in the same run and
against the same container, with `docker exec` through the CLI and with docker-py's `exec_run`,
which is what a harness without a persistent session pays per command.
Targets: cold start p50 < 1 s, warm start p50 < 50 ms, session round trip p50 < 5 ms and at least
10x faster than `docker exec`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from sandbox.base import SandboxConfig  # noqa: E402
from sandbox.docker import DockerSandbox  # noqa: E402
from sandbox.pool import WarmPool  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    return statistics.median(samples) * 1000, percentile(samples, 0.95) * 1000


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def row(name: str, samples: list[float], target: str = "") -> tuple[float, float]:
    p50, p95 = summary(samples)
    print(f"  {name:<44} p50 {p50:9.2f} ms   p95 {p95:9.2f} ms   (n={len(samples)}) {target}")
    return p50, p95


def bench_cold(config: SandboxConfig, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        sandbox = DockerSandbox(config)
        result = sandbox.run("true")
        samples.append(time.perf_counter() - start)
        assert result.exit_code == 0
        sandbox.close()
    return samples


def bench_warm(config: SandboxConfig, n: int) -> tuple[list[float], list[float]]:
    acquire, first_command = [], []
    with WarmPool(config, size=2) as pool:
        for _ in range(n):
            if not pool.wait_ready(timeout=120):
                raise SystemExit("warm pool did not fill in 120 s")
            start = time.perf_counter()
            sandbox = pool.acquire()
            acquired = time.perf_counter()
            result = sandbox.run("true")
            done = time.perf_counter()
            assert result.exit_code == 0
            acquire.append(acquired - start)
            first_command.append(done - start)
            sandbox.close()
    return acquire, first_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("CWM_TEST_IMAGE"), help="sandbox image")
    parser.add_argument("--starts", type=int, default=20, help="cold and warm starts to time")
    parser.add_argument("--round-trips", type=int, default=200, help="session commands to time")
    parser.add_argument("--exec-round-trips", type=int, default=30, help="docker exec calls to time")
    args = parser.parse_args()
    if not args.image:
        from images.build import ensure_base_image

        args.image = ensure_base_image()
    config = SandboxConfig(image=args.image, run_id=f"bench-{os.getpid()}")
    print(f"image {args.image}, {os.cpu_count()} CPUs, docker-py {docker.__version__}")

    print("start-up")
    DockerSandbox(config).close()  # first sandbox of the process also reaps orphans: not timed
    cold = row("cold start to first command", bench_cold(config, args.starts), "(target p50 < 1000 ms)")
    acquire, first = bench_warm(config, args.starts)
    row("warm pool acquire()", acquire)
    warm = row("warm pool acquire() + first command", first, "(target p50 < 50 ms)")

    print("round trip of a trivial command, same container")
    sandbox = DockerSandbox(config)
    try:
        for _ in range(20):
            sandbox.run("true")  # warm up
        session = row("session: run('true')", timed(lambda: sandbox.run("true"), args.round_trips))
        row("session: run('echo hi')", timed(lambda: sandbox.run("echo hi"), args.round_trips))
        results = {}
        if shutil.which("docker"):
            cli = ["docker", "exec", sandbox.container_id, "true"]
            results["cli"] = row(
                "docker exec CLI: `docker exec ID true`",
                timed(lambda: subprocess.run(cli, check=True, capture_output=True), args.exec_round_trips),
            )
        container = docker.from_env().containers.get(sandbox.container_id)
        results["exec_run"] = row(
            "docker-py: container.exec_run('true')",
            timed(lambda: container.exec_run(["true"]), args.exec_round_trips),
        )
    finally:
        sandbox.close()

    print("summary")
    print(f"  cold start p50 {cold[0]:.0f} ms: {'OK' if cold[0] < 1000 else 'MISSED'} (< 1000 ms)")
    print(f"  warm start p50 {warm[0]:.1f} ms: {'OK' if warm[0] < 50 else 'MISSED'} (< 50 ms)")
    print(f"  session round trip p50 {session[0]:.2f} ms: {'OK' if session[0] < 5 else 'MISSED'} (< 5 ms)")
    for name, (p50, _) in results.items():
        ratio = p50 / session[0]
        print(f"  speed-up vs {name}: {ratio:.0f}x at p50: {'OK' if ratio >= 10 else 'MISSED'} (>= 10x)")


if __name__ == "__main__":
    main()

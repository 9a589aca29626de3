"""Sandbox ready time on an official-style image with a large repository: in the image vs copied in vs
mini-swe-agent's `docker run` + `docker exec`.

Run: python3 bench/official_image_bench.py [--rounds 10] [--bulk-mib 100]

One official-style SWE-bench image is built (tests/official_images.py) around a repository whose
base commit holds `--bulk-mib` MiB of incompressible files, so /testbed holds about twice that (the
working tree and the history). "Ready" is from the start until the first command's answer is back
(`git -C /testbed rev-parse HEAD`, the same command in each way), measured in rounds that take the
three ways in turn, on the same image, in one run:

- in-image: DockerSandbox (container, session, CWM's start-up script) + `place_in_image` (check out the
  base commit, prune later history with `git gc`) + the first command; nothing is copied;
- copy: a repository on the host copied in: `prepare_repo` (resolved, nothing checked out) + DockerSandbox
  + `place_in_sandbox` (empty /testbed, stream the commit's files and a `.git` pruned on the host into
  it; bench/repo_start_bench.py has the repository-image start) + the first command;
- mini-swe-agent: `docker run -d -w /testbed --rm IMAGE sleep 2h` then `docker exec -w /testbed ID bash
  -lc CMD`, as its DockerEnvironment does (src/minisweagent/environments/docker.py); no pruning, so
  its sandbox still holds the fix in its git history.

Prints p50/p95 per way and the in-image way's phases (sandbox start, placement, first command).
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.episode.repo import place_in_image, place_in_sandbox, prepare_repo  # noqa: E402
from images.build import ensure_base_image  # noqa: E402
from sandbox.base import SandboxConfig  # noqa: E402
from sandbox.docker import DockerSandbox  # noqa: E402
from tests.official_images import build_official_image, make_repository, remove_image  # noqa: E402

FIRST_COMMAND = "git -C /testbed rev-parse HEAD"
LEAK_CHECK = "git -C /testbed cat-file -e {fix} 2>/dev/null && echo readable || echo gone"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def in_image(image: str, base: str, fix: str, phases: dict[str, list[float]]) -> tuple[float, str]:
    started = time.perf_counter()
    with DockerSandbox(SandboxConfig(image=image, run_id="bench-in-image")) as sandbox:
        opened = time.perf_counter()
        place_in_image(sandbox, base)
        placed = time.perf_counter()
        assert sandbox.run(FIRST_COMMAND).output.strip() == base
        ready = time.perf_counter()
        leak = sandbox.run(LEAK_CHECK.format(fix=fix)).output.strip()
    phases["sandbox start"].append(opened - started)
    phases["check out + prune"].append(placed - opened)
    phases["first command"].append(ready - placed)
    return ready - started, leak


def copied(image: str, upstream: Path, base: str, fix: str) -> tuple[float, str]:
    started = time.perf_counter()
    prepared = prepare_repo(str(upstream), base)
    try:
        with DockerSandbox(SandboxConfig(image=image, run_id="bench-copy")) as sandbox:
            place_in_sandbox(prepared, sandbox)
            assert sandbox.run(FIRST_COMMAND).output.strip() == base
            elapsed = time.perf_counter() - started
            return elapsed, sandbox.run(LEAK_CHECK.format(fix=fix)).output.strip()
    finally:
        prepared.cleanup()


def mini_swe_agent(image: str, base: str, fix: str) -> tuple[float, str]:
    name = f"minisweagent-{secrets.token_hex(4)}"
    started = time.perf_counter()
    container = subprocess.run(["docker", "run", "-d", "--name", name, "-w", "/testbed", "--rm", image, "sleep", "2h"],
                               capture_output=True, text=True, check=True).stdout.strip()

    def execute(command: str) -> str:
        return subprocess.run(["docker", "exec", "-w", "/testbed", container, "bash", "-lc", command],
                              capture_output=True, text=True, check=True).stdout.strip()

    try:
        out = execute(FIRST_COMMAND)
        elapsed = time.perf_counter() - started
        assert out == base
        return elapsed, execute(LEAK_CHECK.format(fix=fix))
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def testbed_size(image: str) -> list[str]:
    """Apparent sizes of /testbed and of its .git, as `du -sh` prints them."""
    script = "du -sh --apparent-size /testbed; du -sh --apparent-size /testbed/.git"  # (one du counts .git once)
    out = subprocess.run(["docker", "run", "--rm", image, "bash", "-c", script],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def report(name: str, samples: list[float], leaks: set[str] | None = None) -> None:
    fix = f"   fix afterwards: {'/'.join(sorted(leaks))}" if leaks else ""
    print(f"  {name:<34} p50 {statistics.median(samples):7.2f} s   p95 {percentile(samples, 0.95):7.2f} s   "
          f"(n={len(samples)}){fix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bulk-mib", type=int, default=100)
    args = parser.parse_args()

    base_image = ensure_base_image()
    with tempfile.TemporaryDirectory(prefix="cwm-official-bench-") as scratch:
        upstream, base, fix = make_repository(Path(scratch), bulk_bytes=args.bulk_mib << 20)
        image = build_official_image(base_image, upstream, base, f"cwm-bench/official-{secrets.token_hex(4)}:latest")
        try:
            sizes = testbed_size(image)
            print(f"official-style image {image}: /testbed {sizes[0]}, of which .git {sizes[1]}; "
                  f"{platform.node()}, {date.today()}")
            runs = {"in-image (ours)": lambda: in_image(image, base, fix, phases),
                    "copy (streamed in)": lambda: copied(image, upstream, base, fix),
                    "mini-swe-agent run + exec": lambda: mini_swe_agent(image, base, fix)}
            phases: dict[str, list[float]] = {"sandbox start": [], "check out + prune": [], "first command": []}
            times: dict[str, list[float]] = {name: [] for name in runs}
            leaks: dict[str, set[str]] = {name: set() for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    elapsed, leak = run()
                    times[name].append(elapsed)
                    leaks[name].add(leak)
            print("ready time, start to the first command's answer:")
            for name, samples in times.items():
                report(name, samples, leaks[name])
            print("in-image, by phase:")
            for name, samples in phases.items():
                report(name, samples)
        finally:
            remove_image(image)


if __name__ == "__main__":
    main()

"""Time to the first model request for a local repository: cold (first episode: the repository image is
made), cached (a later episode, sample or retry), mini-swe-agent's `docker run` + `docker cp` + first
`docker exec`, and the copy path this runner had before repository images, on the same image and tree.

Run: python3 bench/repo_start_bench.py [--sizes 5,50,300] [--rounds 3]

Each size is a generated git repository (text files of random words, two commits, the history packed as
a clone leaves it) whose checkout, working tree plus `.git`, takes about that many MB: 5 MB in 1,000
files, 50 MB in 5,000, 300 MB in 20,000. Per round, the ways take turns on the same base image:

- cold: `agent.episode.solve.solve` with no repository image yet (it is removed first), until the model
  is first asked (a stub model that ends the episode at once);
- cached: the same again, the image now there;
- mini-swe-agent: `docker run -d -w /testbed IMAGE sleep 2h`, `docker cp CHECKOUT/. ID:/testbed`,
  `docker exec -w /testbed ID bash -lc 'git rev-parse HEAD'`, as its DockerEnvironment runs commands
  (src/minisweagent/environments/docker.py), from a checkout made beforehand; `docker cp` alone is also
  reported;
- before: a clone on the host, DockerSandbox, copy in, `cp -a` to /testbed, prune in the sandbox
  (tests/repo_states.legacy_copy), then one command.

Then 20 samples of one instance (the 50 MB repository, or the largest size below it) run one after the
other from no image, and the copies they made are counted from the runner's log lines.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structlog.testing import capture_logs  # noqa: E402

from agent.episode.solve import SolveRequest, solve  # noqa: E402
from agent.models.base import Model, ModelReply  # noqa: E402
from images.build import ensure_base_image  # noqa: E402
from sandbox.base import SandboxConfig  # noqa: E402
from sandbox.docker import DockerSandbox  # noqa: E402
from tests.repo_states import git, legacy_copy  # noqa: E402
from traces.schema import ModelInfo  # noqa: E402

FILES = {5: 1_000, 50: 5_000, 300: 20_000}
TREE_SHARE = 0.62  # of the checkout's bytes: these files pack to about 60% of their size


class FirstRequest(Model):
    """Notes when it is first asked, and ends the episode with its answer."""

    info = ModelInfo(kind="replay", name="first-request-clock")

    def __init__(self) -> None:
        self.asked_at = 0.0

    def complete(self, messages: list) -> ModelReply:  # noqa: ANN001 - agent.protocol.render.Message
        self.asked_at = self.asked_at or time.perf_counter()
        return ModelReply(text="Nothing to do.\n</think>\n\nDone.", finish_reason="stop")

    def count_tokens(self, text: str) -> int:
        return len(text) // 4


def make_repository(root: Path, megabytes: int) -> tuple[Path, str]:
    """A repository of about `megabytes` (checkout: files plus packed history); (path, base commit)."""
    files = FILES.get(megabytes, max(100, megabytes * 60))
    rnd = random.Random(megabytes)
    vocab = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz_", k=rnd.randint(2, 10))) for _ in range(5000)]
    vocab += ["(", ")", ":", "=", "return", "def", "self", "if", "\n    ", "\n"]
    per_file = int(megabytes * 1e6 * TREE_SHARE / files)
    repo = root / f"repo{megabytes}"
    for index in range(files):
        folder = repo / f"pkg{index // 400:02d}" / f"mod{(index // 20) % 20:02d}"  # 20 files a directory
        folder.mkdir(parents=True, exist_ok=True)
        size = max(16, int(per_file * rnd.uniform(0.5, 1.5)))
        (folder / f"f{index:05d}.py").write_bytes(" ".join(rnd.choices(vocab, k=size // 6 + 1)).encode()[:size])
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "pkg00" / "fix.py").write_text("fixed\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fix")
    git(repo, "gc", "-q")
    return repo, base


def checkout_size(repo: Path) -> str:
    out = subprocess.run(["du", "-s", "--apparent-size", "--block-size=1", str(repo)], capture_output=True,
                         text=True, check=True).stdout
    return f"{int(out.split()[0]) / 1e6:.0f} MB"


def remove_repo_images(repo: Path) -> None:
    ids = subprocess.run(["docker", "images", "-aq", "--filter", f"label=cwm-runner.repo.source={repo}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rmi", "-f", *set(ids)], capture_output=True)


def ours(repo: Path, base: str, image: str, scratch: Path) -> tuple[float, str]:
    """Seconds from the start of `solve` to the model's first request, and how the repository came."""
    model = FirstRequest()
    request = SolveRequest(repo=str(repo), commit=base, issue="Nothing.", image=image, output=scratch,
                           instance_id="bench")
    started = time.perf_counter()
    solve(request, lambda: model, DockerSandbox)
    header = (scratch / "bench.traj.jsonl").read_text().split("\n", 1)[0]
    way = "image-build" if '"repo_from":"image-build"' in header else "image-cache" if "image-cache" in header else "?"
    return model.asked_at - started, way


def mini_swe_agent(checkout: Path, base: str, image: str) -> tuple[float, float]:
    """(run + cp + first exec, cp alone) in seconds."""
    started = time.perf_counter()
    container = subprocess.run(["docker", "run", "-d", "--network", "none", "-w", "/testbed", "--rm", image,
                                "sleep", "2h"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        copy_started = time.perf_counter()
        subprocess.run(["docker", "cp", f"{checkout}/.", f"{container}:/testbed"], check=True, capture_output=True)
        copied = time.perf_counter() - copy_started
        head = subprocess.run(["docker", "exec", "-w", "/testbed", container, "bash", "-lc", "git rev-parse HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert head == base, head
        return time.perf_counter() - started, copied
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def before(repo: Path, base: str, image: str) -> float:
    started = time.perf_counter()
    with DockerSandbox(SandboxConfig(image=image, run_id="bench-before")) as sandbox:
        legacy_copy(sandbox, repo, base)
        assert sandbox.run("git rev-parse HEAD").output.strip() == base
        return time.perf_counter() - started


def one_size(megabytes: int, rounds: int, image: str, scratch: Path) -> dict[str, list[float]]:
    repo, base = make_repository(scratch, megabytes)
    checkout = scratch / f"checkout{megabytes}"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "checkout", "-q", "--detach", base], check=True)
    print(f"{megabytes} MB repository: checkout {checkout_size(checkout)}, "
          f"{sum(1 for p in checkout.rglob('*') if p.is_file() and '.git' not in p.parts)} files", flush=True)
    times: dict[str, list[float]] = {"cold": [], "cached": [], "mini-swe-agent": [], "docker cp": [], "before": []}
    for round_ in range(rounds):
        total, copied = mini_swe_agent(checkout, base, image)
        times["mini-swe-agent"].append(total)
        times["docker cp"].append(copied)
        remove_repo_images(repo)
        for name, expected in (("cold", "image-build"), ("cached", "image-cache")):
            seconds, way = ours(repo, base, image, Path(tempfile.mkdtemp(dir=scratch)))
            assert way == expected, (name, way)
            times[name].append(seconds)
        times["before"].append(before(repo, base, image))
        print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    remove_repo_images(repo)
    return times


def twenty_samples(megabytes: int, image: str, scratch: Path) -> tuple[Counter[str], Counter[str], float]:
    repo = scratch / f"repo{megabytes}"
    base = git(repo, "rev-parse", "HEAD~1")
    remove_repo_images(repo)
    started = time.perf_counter()
    with capture_logs() as logs:
        ways = Counter(ours(repo, base, image, Path(tempfile.mkdtemp(dir=scratch)))[1] for _ in range(20))
    events = Counter(e["event"] for e in logs if e["event"] in ("repo.image_built", "repo.copied"))
    remove_repo_images(repo)
    return ways, events, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,50,300", help="repository sizes in MB, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    image = ensure_base_image()
    print(f"{platform.node()}, {os.cpu_count()} cores, {date.today()}, image {image}")
    with tempfile.TemporaryDirectory(prefix="cwm-repo-bench-") as tmp:
        scratch = Path(tmp)
        results = {size: one_size(size, args.rounds, image, scratch) for size in sizes}
        print(f"\ntime to the first model request, median of {args.rounds} (seconds):")
        print("| repository | cold | cached | mini-swe-agent (run + cp + exec) | docker cp alone | before | "
              "cold / docker cp | cold / mini-swe-agent |")
        print("|---|---|---|---|---|---|---|---|")
        for size, times in results.items():
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {size} MB | {med['cold']:.2f} | {med['cached']:.2f} | {med['mini-swe-agent']:.2f} | "
                  f"{med['docker cp']:.2f} | {med['before']:.2f} | {med['cold'] / med['docker cp']:.2f} | "
                  f"{med['cold'] / med['mini-swe-agent']:.2f} |")
        sample_size = max([s for s in sizes if s <= 50] or [min(sizes)])
        ways, events, seconds = twenty_samples(sample_size, image, scratch)
        print(f"\n20 samples of one instance ({sample_size} MB), one after the other: {dict(ways)}; "
              f"log lines {dict(events)}; {seconds:.1f} s in all")


if __name__ == "__main__":
    main()

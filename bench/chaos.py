"""A long batch under every fault at once: runner kills, a model server that dies, Docker restarts, a
full disk, Ray workers killed. It must end exactly as an undisturbed run does.

The batch is the real command line (`python -m agent.cli batch`), started again with `--resume`
whenever a fault ended it, until every episode is done. Its episodes are the bundled CWM example served
over HTTP by tests/faults/helpers.py (the recorded replies, `--latency` seconds each, so episodes last
long enough to be hit in flight); its sandboxes live in a second Docker daemon (tests/faults/dockerd.py)
so that restarting it leaves the machine's alone; its run directory is a tmpfs of `--disk-mib`.

Every few seconds (`--every`, jittered) one fault from the classes below strikes, chosen at random
(`--seed`), until `--faults` have struck:

    sigkill        SIGKILL the runner (no cleanup), then `--resume`                    local sessions
    server         kill the model server, start it again on its port after 2-6 s      any session
    server_long    kill it for longer than `--outage-wait`: the batch stops itself     any session
                   (or goes on, if the server is back before it asks again); `--resume`
    docker         restart the Docker daemon (SIGTERM: it stops every container)       any session
    disk           fill the run directory's disk: the batch stops; free it, `--resume` local sessions
    ray_worker     SIGKILL the Ray worker executing an episode                         Ray sessions

Every third session runs on a local Ray instance (`--executor ray`), the others on local threads. At
the end the run is checked as the fault tests check it (tests/faults/helpers.check_run), its
containers are counted after one more start, and an undisturbed run of the same batch gives the wall
time to compare. Prints one JSON object. Needs root (tmpfs, a second dockerd).

    python3 bench/chaos.py --episodes 30 --faults 12 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from images.build import ensure_base_image  # noqa: E402
from tests.agent.batch.test_run import RECORDED, make_instances, write_instances  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402
from tests.faults.dockerd import SecondDaemon  # noqa: E402
from tests.faults.helpers import check_run, count, events, recorded_reply  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOCAL_FAULTS = ("sigkill", "server", "server_long", "docker", "disk")
RAY_FAULTS = ("server", "server_long", "docker", "ray_worker")


class Rig:
    """The batch's world: its model server, Docker daemon and disk, and the faults that strike them."""

    def __init__(self, args: argparse.Namespace, work: Path, image: str) -> None:
        self.args, self.work, self.image = args, work, image
        self.rnd = random.Random(args.seed + 1)  # durations of outages (the schedule has its own)
        self.daemon = SecondDaemon()
        self.server = FakeOpenAIServer(models=(RECORDED.header.model.name,), respond=self._reply)
        self.disk = work / "disk"
        self.filler = self.disk / "filler"
        self.instances = make_instances(args.episodes, prefix="chaos")
        self.listing = write_instances(work / "instances.jsonl", self.instances)

    def _reply(self, body: dict[str, Any]) -> Any:
        time.sleep(self.args.latency)
        return recorded_reply(body)

    def __enter__(self) -> Rig:
        self.disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.args.disk_mib}m", "tmpfs", str(self.disk)],
                       check=True)
        self.daemon.start()
        self.daemon.load(self.image)
        self.server.start()
        self.port = self.server.port
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.daemon.close()
        subprocess.run(["umount", "-l", str(self.disk)], capture_output=True)

    def command(self, out: Path, executor: str, resume: bool) -> list[str]:
        return [sys.executable, "-m", "agent.cli", "batch", str(self.listing), "--output", str(out), "--workers",
                str(self.args.workers), "--model", f"http://127.0.0.1:{self.port}/v1", "--image", self.image,
                "--executor", executor, "--outage-wait", str(self.args.outage_wait), *(["--resume"] if resume else [])]

    def start(self, out: Path, executor: str, resume: bool, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(self.command(out, executor, resume), cwd=ROOT, env=self.daemon.env, stdout=sink,
                                    stderr=subprocess.STDOUT)

    # the faults; each returns whether the runner is expected to end because of it, and whether it landed

    def strike(self, fault: str, runner: subprocess.Popen[bytes]) -> tuple[bool, bool]:
        if fault == "ray_worker":
            return False, _kill_ray_worker()
        return self._strike(fault, runner), True

    def _strike(self, fault: str, runner: subprocess.Popen[bytes]) -> bool:
        rnd = self.rnd
        if fault == "sigkill":
            runner.send_signal(signal.SIGKILL)
            return True
        if fault in ("server", "server_long"):
            self.server.stop()
            time.sleep(rnd.uniform(2, 6) if fault == "server" else self.args.outage_wait + 6)
            self.server.start(port=self.port)
            # Past the bound the batch stops at its next ask of the server, which backs off (up to 15 s):
            # when the server is back first, the batch goes on instead. Either is right; the loop sees which.
            return False
        if fault == "docker":
            self.daemon.restart(down_s=rnd.uniform(0, 3))
            return False
        _fill(self.filler)  # disk
        return True

    def recover(self) -> None:
        """After a session ended: whatever a fault took away is given back."""
        self.filler.unlink(missing_ok=True)


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass


def _kill_ray_worker(wait_s: float = 10.0) -> bool:
    """SIGKILL a Ray worker executing an episode (waiting for one to be at work); False if none was."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::_ray_episode"):
                    os.kill(int(proc.name), signal.SIGKILL)
                    return True
            except OSError:
                continue
        time.sleep(0.1)
    return False


def _stops(runner: subprocess.Popen[bytes], timeout_s: float, work: Path) -> bool:
    """Whether the runner ends by itself after a fault that should end it; if not, what its threads were
    doing (py-spy, when installed) and the end of its log go to stderr, and it is killed: a finding."""
    try:
        runner.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        pass
    dump = subprocess.run(["py-spy", "dump", "--pid", str(runner.pid)], capture_output=True, text=True) \
        if shutil.which("py-spy") else None
    log = (work / "chaos.log").read_text(errors="replace").splitlines()[-60:]
    print(f"runner {runner.pid} still running {timeout_s:.0f} s after a fault that should stop it\n"
          + (dump.stdout + dump.stderr if dump else "(no py-spy)") + "\n--- chaos.log ---\n" + "\n".join(log),
          file=sys.stderr, flush=True)
    runner.kill()
    runner.wait()
    return False


def chaos_run(rig: Rig, out: Path) -> dict[str, Any]:
    """Sessions until the run is done, faults striking them; returns what happened."""
    args = rig.args
    rnd = random.Random(args.seed)
    sessions: list[dict[str, Any]] = []
    started = time.monotonic()
    while True:
        executor = "ray" if len(sessions) % 3 == 2 else "local"
        began = time.monotonic()
        runner = rig.start(out, executor, resume=bool(sessions), log=rig.work / "chaos.log")
        struck: list[str] = []
        while runner.poll() is None:
            try:
                runner.wait(timeout=rnd.uniform(0.5, 1.5) * args.every)
                break
            except subprocess.TimeoutExpired:
                pass
            if sum(len(s["faults"]) for s in sessions) + len(struck) >= args.faults:
                continue
            fault = rnd.choice(RAY_FAULTS if executor == "ray" else LOCAL_FAULTS)
            ends, landed = rig.strike(fault, runner)
            struck.append(fault if landed else f"{fault} (missed)")
            if ends and not _stops(runner, args.outage_wait + 120, rig.work):
                struck[-1] += " (the runner did not stop: killed)"
        rig.recover()
        sessions.append({"executor": executor, "faults": struck, "exit": runner.returncode,
                         "wall_s": round(time.monotonic() - began, 1)})
        if runner.returncode == 0:
            break
        if len(sessions) > args.faults + 10:
            raise SystemExit(f"the run did not finish after {len(sessions)} sessions; see {rig.work}/chaos.log")
    faults = Counter(f for s in sessions for f in s["faults"])
    return {"wall_s": round(time.monotonic() - started, 1), "faults": dict(faults), "sessions": sessions}


def retried(out: Path) -> dict[str, Any]:
    """What the status log says was run again, and why."""
    log = events(out)
    errors = Counter(f"{e['kind']}:{e['cause']}" for e in log if e["event"] == "error")
    starts = count(log, "start")
    return {"starts": sum(starts.values()), "episodes_run_more_than_once": sum(1 for n in starts.values() if n > 1),
            "abandoned": sum(1 for e in log if e["event"] == "abandoned"),  # runner killed or stopped mid-episode
            "errors_by_kind": dict(errors), "starts_per_episode": dict(sorted(Counter(starts.values()).items()))}


def undisturbed(rig: Rig, out: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(rig.command(out, "local", resume=False), cwd=ROOT, env=rig.daemon.env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return round(time.monotonic() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", type=int, default=12, help="faults to inject in all")
    parser.add_argument("--every", type=float, default=6.0, help="mean seconds between faults")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the model server takes per reply")
    parser.add_argument("--outage-wait", type=float, default=20.0, help="the batch's --outage-wait")
    parser.add_argument("--disk-mib", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cwm-chaos-") as tmp, Rig(args, Path(tmp), ensure_base_image()) as rig:
        out = rig.disk / "run"
        report = chaos_run(rig, out)
        check_run(out, rig.instances)  # every episode done once, preds of an undisturbed run, no torn line
        report["retried"] = retried(out)
        again = subprocess.run(rig.command(out, "local", resume=True), cwd=ROOT, env=rig.daemon.env,
                               capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
        report["containers_after_next_start"] = len(rig.daemon.containers("cwm-runner"))
        report["undisturbed_wall_s"] = undisturbed(rig, rig.disk / "calm")
        report.update(episodes=args.episodes, workers=args.workers, seed=args.seed, latency_s=args.latency)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

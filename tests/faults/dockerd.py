"""A second Docker daemon of the tests' own, to restart and crash without touching the machine's.

It runs the same dockerd binary as the main daemon, on its own socket, data root and exec root
(a containerd of its own comes with it), on a bridge of its own and with no iptables rules: sandboxes
have no network anyway. Not `--bridge none`: a daemon started so deletes the host's `docker0` (it shares
the network namespace), which breaks every container with a network on the main daemon. Images are copied in from the main daemon with `docker save | docker load`. A
runner is pointed at it with DOCKER_HOST, which the sandbox backend reads as the docker CLI does.

`restart()` is what `systemctl restart docker` does (SIGTERM: the daemon stops its containers, then
exits; then a fresh start); `crash()` is a daemon killed outright (SIGKILL) and started again, which
then kills the containers it finds still running (live-restore is off, Docker's default).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
BRIDGE_PREFIX = "cwmfault"  # + a number of this process: two suites (CI and a chaos run) can share a host


class SecondDaemon:
    def __init__(self, root: Path | None = None, storage_driver: str | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="cwm-dockerd-", dir="/var/tmp"))
        self.exec_root = Path(tempfile.mkdtemp(prefix="cwm-dx-", dir="/tmp"))  # socket paths must stay short
        self.socket = self.exec_root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.storage_driver = storage_driver or _main_storage_driver()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.root / "dockerd.log"
        number = os.getpid() % 250
        self.bridge = f"{BRIDGE_PREFIX}{os.getpid()}"[:15]  # a Linux interface name has at most 15 characters
        self.bridge_address = f"10.253.{number}.1/24"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout_s: float = 60) -> None:
        _ensure_bridge(self.bridge, self.bridge_address)
        (self.root / "config.json").write_text("{}")
        command = [DOCKERD, "--config-file", str(self.root / "config.json"), "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.exec_root / "exec"), "--pidfile", str(self.exec_root / "docker.pid"),
                   "-H", self.host, "--bridge", self.bridge, "--iptables=false", "--ip-masq=false",
                   "--ip-forward=false"]
        if self.storage_driver:
            command += ["--storage-driver", self.storage_driver]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start; see {self.log}")
            time.sleep(0.2)

    def answers(self) -> bool:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=self.env,
                              capture_output=True, timeout=30)
        return done.returncode == 0

    def load(self, image: str) -> None:
        """Copy `image` from the main daemon into this one (once)."""
        if subprocess.run(["docker", "image", "inspect", image], env=self.env, capture_output=True).returncode == 0:
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=self.env, check=True, capture_output=True)
        assert save.wait() == 0

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
        """Send `sig` to the daemon and wait for it to be gone."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        self.process.wait(timeout=timeout_s)
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop(signal.SIGTERM)
        time.sleep(down_s)
        self.start()

    def crash(self, down_s: float = 0.0) -> None:
        self.stop(signal.SIGKILL)
        time.sleep(down_s)
        self.start()

    def containers(self, label: str) -> list[str]:
        done = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={label}"], env=self.env,
                              capture_output=True, text=True, check=True)
        return done.stdout.split()

    def close(self) -> None:
        """Stop the daemon, its containerd and its containers; remove every file of it."""
        if self.process is not None:
            subprocess.run(["docker", "rm", "-f", *self.containers("cwm-runner")], env=self.env, capture_output=True)
            self.stop(signal.SIGTERM)
        _kill_leftovers(self.exec_root)
        _unmount_under(self.root, self.exec_root)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


def _ensure_bridge(bridge: str, address: str) -> None:
    """The second daemon's own bridge (dockerd wants a bridge named by `--bridge` to exist already)."""
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode == 0:
        return
    for step in (["ip", "link", "add", bridge, "type", "bridge"], ["ip", "addr", "add", address, "dev", bridge],
                 ["ip", "link", "set", bridge, "up"]):
        subprocess.run(step, check=True, capture_output=True)


def _unmount_under(*roots: Path) -> None:
    """Lazily unmount what the daemon left mounted below its directories (layers, network namespaces)."""
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted(points, key=len, reverse=True):
        if any(point.startswith(f"{root}/") for root in roots):
            subprocess.run(["umount", "-l", point], capture_output=True)


def _main_storage_driver() -> str | None:
    done = subprocess.run(["docker", "info", "--format", "{{.Driver}}"], capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _kill_leftovers(exec_root: Path) -> None:
    """containerd and shims started for this daemon (their command lines name its exec root)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(exec_root) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass

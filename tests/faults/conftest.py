"""Fixtures of the fault-injection suite: a second Docker daemon to restart, a small disk to fill."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.dockerd import DOCKERD, SecondDaemon


@pytest.fixture(scope="session")
def second_daemon(base_image: str) -> Iterator[SecondDaemon]:
    """A Docker daemon of the suite's own holding the base image; the machine's is never disturbed."""
    if os.geteuid() != 0 or not Path(DOCKERD).exists() or not shutil.which("ip"):
        pytest.skip("a second Docker daemon needs root, dockerd and iproute2")
    daemon = SecondDaemon()
    try:
        daemon.start()
        daemon.load(base_image)
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a run directory on it fills up after a few episodes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0 or not shutil.which("umount"):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)

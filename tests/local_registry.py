"""A real container registry on 127.0.0.1 for tests: Debian's `docker-registry` (the reference
implementation, distribution 2.x) on a free port, with its storage in a temporary folder.

Docker trusts registries on 127.0.0.0/8 without TLS, so `push` and `pull` work against it as against
Docker Hub. Tests push an image there, delete it locally and let the runner pull it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import docker
import httpx

BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, then released: connecting to it is refused)."""
    return free_port()


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:<free port>; `host` is what goes in front of image names."""

    def __init__(self) -> None:
        self.binary = shutil.which(BINARY)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._root = Path(tempfile.mkdtemp(prefix="cwm-registry-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> "LocalRegistry":
        assert self.binary is not None
        config = self._root / "config.yml"
        config.write_text(textwrap.dedent(f"""\
            version: 0.1
            log:
              level: warn
            storage:
              filesystem:
                rootdirectory: {self._root / "data"}
              delete:
                enabled: true
            http:
              addr: {self.host}
            """))
        log = (self._root / "registry.log").open("wb")
        self._process = subprocess.Popen([self.binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(self._root / 'registry.log').read_text()}")
            time.sleep(0.1)

    def push(self, local: str, name: str) -> str:
        """Tag `local` as `<host>/<name>` and push it; returns the pushed reference."""
        reference = f"{self.host}/{name}"
        client = docker.from_env(timeout=600)
        try:
            repository, _, tag = reference.rpartition(":")
            client.images.get(local).tag(repository, tag)
            for event in client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise RuntimeError(f"push of {reference} failed: {event['error']}")
        finally:
            client.close()
        return reference

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._root, ignore_errors=True)


def remove_local(*references: str) -> None:
    """Delete images from this machine (every tag given; layers no other image uses go with the last)."""
    client = docker.from_env(timeout=120)
    try:
        for reference in references:
            try:
                client.images.remove(reference, force=True)
            except docker.errors.ImageNotFound:
                pass
    finally:
        client.close()


__all__ = ["BINARY", "LocalRegistry", "closed_port", "free_port", "remove_local"]

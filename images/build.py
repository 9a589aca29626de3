"""Build the sandbox images without a container registry.

The base image is bootstrapped from Debian's packages: debootstrap writes a minimal root filesystem,
`docker import` turns it into an image (`cwm-runner/rootfs:<hash>`), and images/base/Dockerfile
finishes it (`cwm-runner/base:<hash>`). Both tags carry a hash of the recipe, so a machine builds
each recipe once and a changed recipe gets a new tag. Repository images layer on the base image with
their dependencies installed at build time (network only during the build, trusting the host's CA
bundle), while sandboxes started from them have no network.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import structlog
from docker.errors import APIError, BuildError, DockerException, ImageNotFound
from pydantic import BaseModel

log = structlog.get_logger()

IMAGES_DIR = Path(__file__).resolve().parent
BASE_DIR = IMAGES_DIR / "base"
RECIPE_VERSION = "1"
BASE_REPOSITORY = "cwm-runner/base"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says what to do."""


class BaseRecipe(BaseModel):
    """What the base image is made of; its hash names the image."""

    suite: str = os.environ.get("CWM_DEBIAN_SUITE", "bookworm")
    mirror: str = os.environ.get("CWM_DEBIAN_MIRROR", "http://deb.debian.org/debian")

    def packages(self) -> list[str]:
        lines = (BASE_DIR / "packages.txt").read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"{RECIPE_VERSION}\n{self.suite}\n{self.mirror}\n".encode())
        for name in sorted(p.name for p in BASE_DIR.iterdir()):
            h.update(name.encode() + b"\0" + (BASE_DIR / name).read_bytes())
        return h.hexdigest()[:12]

    @property
    def rootfs_tag(self) -> str:
        return f"cwm-runner/rootfs:{self.digest()}"

    @property
    def base_tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.digest()}"


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as error:
        raise ImageBuildError(
            f"cannot reach the Docker daemon ({error.__class__.__name__}); start it (e.g. `dockerd`) "
            "or set DOCKER_HOST"
        ) from None
    return client


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


@contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds between processes (parallel test workers, two CLI calls)."""
    with open(Path(tempfile.gettempdir()) / "cwm-runner-images.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _bootstrap_rootfs(client: docker.DockerClient, recipe: BaseRecipe) -> None:
    """debootstrap a minimal Debian into a temporary directory and `docker import` it."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed; install it with `apt-get install debootstrap`")
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image needs root (debootstrap); run `sudo agent images build`")
    with tempfile.TemporaryDirectory(prefix="cwm-rootfs-") as tmp:
        root = Path(tmp) / "root"
        command = [
            "debootstrap", "--variant=minbase", "--include=" + ",".join(recipe.packages()),
            recipe.suite, str(root), recipe.mirror,
        ]
        log.info("images.debootstrap", suite=recipe.suite, mirror=recipe.mirror)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise ImageBuildError(
                f"debootstrap failed ({' | '.join(tail)}); check that {recipe.mirror} is reachable "
                "or set CWM_DEBIAN_MIRROR"
            )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        repository, tag = recipe.rootfs_tag.split(":")
        try:
            client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag)
        finally:
            tar.stdout.close()
            tar.wait()
        if tar.returncode != 0 or not image_exists(client, recipe.rootfs_tag):
            raise ImageBuildError("docker import of the bootstrapped root filesystem failed; see the daemon's log")


def build_dockerfile(
    client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str] | None = None
) -> None:
    """`docker build` with host networking (package mirrors are reachable only from the host)."""
    try:
        client.images.build(
            path=str(context), tag=tag, buildargs=buildargs or {}, network_mode="host", rm=True, forcerm=True
        )
    except BuildError as error:
        lines = [str(chunk.get("stream", chunk.get("error", ""))).strip() for chunk in error.build_log]
        tail = " | ".join(line for line in lines if line)[-400:]
        raise ImageBuildError(f"building {tag} failed: {tail}") from None
    except APIError as error:
        raise ImageBuildError(f"building {tag} failed: {error.explanation}") from None


def ensure_base_image(from_image: str | None = None, rebuild: bool = False) -> str:
    """Return the base image's tag, building it first if this machine does not have it.

    `from_image` (e.g. `debian:bookworm-slim`) builds FROM a registry image instead of bootstrapping.
    """
    client = docker_client()
    recipe = BaseRecipe()
    tag = recipe.base_tag if from_image is None else f"cwm-runner/base:{recipe.digest()}-registry"
    with _build_lock():
        if not rebuild and image_exists(client, tag):
            return tag
        if from_image is None:
            if rebuild or not image_exists(client, recipe.rootfs_tag):
                _bootstrap_rootfs(client, recipe)
            base = recipe.rootfs_tag
        else:
            base = from_image
        log.info("images.build", tag=tag, base=base)
        build_dockerfile(client, BASE_DIR, tag, {"BASE": base})
    return tag


class RepoImageSpec(BaseModel):
    """A repository environment: commands run at build time on top of the base image."""

    name: str
    install: list[str]
    base: str | None = None

    def tag(self, base: str) -> str:
        h = hashlib.sha256(("\n".join([base, *self.install])).encode()).hexdigest()[:12]
        return f"cwm-runner/env-{self.name}:{h}"


def ensure_repo_image(spec: RepoImageSpec) -> str:
    """Build (once) an image with a repository's dependencies installed; returns its tag."""
    client = docker_client()
    base = spec.base or ensure_base_image()
    tag = spec.tag(base)
    with _build_lock():
        if image_exists(client, tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="cwm-env-") as tmp:
            context = Path(tmp)
            if HOST_CA_BUNDLE.exists():
                shutil.copy(HOST_CA_BUNDLE, context / "host-ca.crt")
            else:
                (context / "host-ca.crt").write_text("")
            runs = "\n".join(f"RUN {command}" for command in spec.install)
            (context / "Dockerfile").write_text(
                f"FROM {base}\n"
                "COPY host-ca.crt /etc/cwm-runner/host-ca.crt\n"
                # HTTPS inside the build trusts the host's CA bundle (pip, curl, git all honour these).
                "ENV PIP_CERT=/etc/cwm-runner/host-ca.crt SSL_CERT_FILE=/etc/cwm-runner/host-ca.crt "
                "REQUESTS_CA_BUNDLE=/etc/cwm-runner/host-ca.crt PIP_BREAK_SYSTEM_PACKAGES=1\n"
                f"{runs}\n"
            )
            build_dockerfile(client, context, tag)
    return tag


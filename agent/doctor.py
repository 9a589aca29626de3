"""`agent doctor`: check what a run needs and say how to fix what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from pydantic import BaseModel

MIN_FREE_DISK_BYTES = 5 * 1024**3


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_docker() -> Check:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=10)
        version = client.version().get("Version", "?")
    except DockerException as error:
        return Check(name="docker", ok=False, detail=f"daemon not reachable ({error.__class__.__name__})",
                     fix="start the Docker daemon or set DOCKER_HOST")
    return Check(name="docker", ok=True, detail=f"daemon {version}")


def check_base_image() -> Check:
    from images.build import BaseRecipe, ImageBuildError, docker_client, image_exists

    tag = BaseRecipe().base_tag
    try:
        present = image_exists(docker_client(), tag)
    except ImageBuildError as error:
        return Check(name="base image", ok=False, detail=str(error), fix="fix the docker check first")
    if present:
        return Check(name="base image", ok=True, detail=tag)
    fix = "run `agent images build`"
    if shutil.which("debootstrap") is None:
        fix = "run `apt-get install debootstrap`, then `agent images build`"
    return Check(name="base image", ok=False, detail=f"{tag} not built yet", fix=fix)


def check_disk(path: Path) -> Check:
    free = shutil.disk_usage(path).free
    ok = free >= MIN_FREE_DISK_BYTES
    return Check(name="free disk", ok=ok, detail=f"{free / 1024**3:.1f} GiB free at {path}",
                 fix="" if ok else "free at least 5 GiB (e.g. `agent sandbox prune`, `docker image prune`)")


def check_bwrap() -> Check:
    found = shutil.which("bwrap")
    return Check(name="bubblewrap", ok=found is not None, required=False,
                 detail=found or "not installed (only needed with --sandbox bwrap)",
                 fix="" if found else "apt-get install bubblewrap")


def check_model(url: str) -> Check:
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    try:
        response = httpx.get(f"{base}/models", timeout=5)
        response.raise_for_status()
        names = [m.get("id", "?") for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError) as error:
        return Check(name="model server", ok=False, detail=f"{base}: {error.__class__.__name__}: {error}",
                     fix="start it with `agent serve` on the GPU host, or pass the right --model URL")
    return Check(name="model server", ok=True, detail=f"{base} serves {', '.join(names) or 'nothing'}")


def check_models(spec: str) -> list[Check]:
    """One check per server the spec names (`URL1,URL2`: every replica must answer); none for a replay."""
    from agent.models.base import ModelError
    from agent.models.factory import parse_replicas

    try:
        kind, targets = parse_replicas(spec)
    except ModelError as error:
        return [Check(name="model server", ok=False, detail=str(error), fix="fix the --model spec")]
    return [] if kind == "replay" else [check_model(target) for target in targets]


def run_checks(model_url: str | None, workdir: Path) -> list[Check]:
    checks = [check_docker(), check_base_image(), check_disk(workdir), check_bwrap()]
    if model_url:
        checks += check_models(model_url)
    return checks

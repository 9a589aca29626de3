"""The repository image cache: a repository is copied once per (repository, commit, environment image).

The first episode writes the repository's copy (agent.episode.repo_stream: the commit's files and a
`.git` already pruned) into a new image layer on top of the environment image (images.repo_images);
it, and every later episode, sample or retry of that repository and commit, starts its sandbox from
that image, as an episode starts from an official SWE-bench image, except that there is nothing left
to check out or prune: nothing runs in the session before the model's first command.

The image's tag is `cwm-runner/repo-<name>:<key>`, the key a hash of the preparation's identity
(agent.episode.checkout: source, commit, the refs a clone keeps, the umask), the environment image's
id and the workdir: a new commit, a moved tag or a rebuilt environment image is a new key, a miss.
Preparations without an identity (a snapshot of a plain directory, a dirty tree) are copied in
instead (`place_in_sandbox`).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, Field

from agent.episode.checkout import PreparedRepo
from agent.episode.repo_stream import write_repo_tar
from images import repo_images
from images.repo_images import LoadRefused, RepoImageError

log = structlog.get_logger()

# Set when the daemon refused a layer-only load: every later episode of this process copies instead of
# writing a layer the daemon will refuse again.
_refused: list[str] = []

StartWay = Literal["image-cache", "image-build", "copy", "image"]


class RepoStart(BaseModel):
    """How the repository got to the sandbox's workdir, and how long that took (the trajectory header's
    `repo_from`, `repo_prepare_s`, `repo_image`)."""

    way: StartWay = Field(description="image-cache: started from an existing repository image; image-build: "
                          "copied once into a new repository image, started from it; copy: copied into the "
                          "sandbox; image: the instance image's own repository")
    seconds: float = 0.0
    image: str = Field("", description="the repository image the sandbox started from")

    def line(self) -> str:
        """One line for the live display."""
        what = {"image-cache": f"image cache hit ({self.image})", "image-build": f"copied into {self.image}",
                "copy": "copied into the sandbox", "image": "the image's own repository"}[self.way]
        return f"repository ready in {self.seconds:.2f} s: {what}"


def _name(source: str) -> str:
    """A Docker repository name component from the source's last path part."""
    last = Path(source.rstrip("/")).name.removesuffix(".git").lower()
    return re.sub(r"[^a-z0-9]+", "-", last).strip("-")[:60] or "repo"


def repo_image_key(prepared: PreparedRepo, env_image_id: str, workdir: str) -> str:
    return hashlib.sha256(f"{prepared.identity}\n{env_image_id}\n{workdir}\n".encode()).hexdigest()[:24]


def repo_image_tag(prepared: PreparedRepo, key: str) -> str:
    return f"{repo_images.REPOSITORY_PREFIX}{_name(prepared.source)}:{key}"


def cached_repo_image(prepared: PreparedRepo, env_image: str, workdir: str) -> str | None:
    """The repository image of this preparation if it exists already (no build), else None."""
    if not prepared.identity:
        return None
    try:
        key = repo_image_key(prepared, repo_images.image_id(env_image), workdir)
        tag = repo_image_tag(prepared, key)
        return tag if repo_images.find_repo_image(tag, key) else None
    except RepoImageError:
        return None


def ensure_repo_image(prepared: PreparedRepo, env_image: str, workdir: str) -> tuple[str, bool] | None:
    """(tag, built now) of the repository image, made if missing; None when this preparation or this daemon
    cannot have one (the caller copies the repository in). Builds of one key wait for each other."""
    if not prepared.identity or _refused:
        return None
    try:
        env_id = repo_images.image_id(env_image)
        key = repo_image_key(prepared, env_id, workdir)
        tag = repo_image_tag(prepared, key)
        found = repo_images.find_repo_image(tag, key)
        if found is None:
            with repo_images.build_lock(key):
                found = repo_images.find_repo_image(tag, key)
                if found is None:
                    _build(prepared, env_image, env_id, workdir, key, tag)
                    return tag, True
        repo_images.stamp_use(found)
        return tag, False
    except RepoImageError as error:
        if isinstance(error, LoadRefused):
            _refused.append(str(error))
        log.warning("repo.image_unavailable", source=prepared.source, error=str(error))
        return None


def _build(prepared: PreparedRepo, env_image: str, env_id: str, workdir: str, key: str, tag: str) -> None:
    started = time.monotonic()
    labels = {repo_images.LABEL_SOURCE: prepared.source, repo_images.LABEL_COMMIT: prepared.commit,
              repo_images.LABEL_ENV_IMAGE: env_id, repo_images.LABEL_WORKDIR: workdir}
    prefix = workdir.strip("/") + "/"
    image_id = repo_images.load_layer_image(
        env_id, tag, key, labels,
        lambda sink: write_repo_tar(prepared, sink, prefix, repo_images.layer_lead(workdir)),
        created=_commit_date(prepared), comment=f"cwm-runner: {prepared.source} at {prepared.commit} in {workdir} "
                                                f"(environment {env_image})")
    repo_images.stamp_use(image_id)
    log.info("repo.image_built", tag=tag, source=prepared.source, commit=prepared.commit[:12],
             seconds=round(time.monotonic() - started, 3))


def _commit_date(prepared: PreparedRepo) -> str:
    """The commit's date as the image's creation time: the same copy always makes the same image id."""
    done = subprocess.run(["git", "-C", str(prepared.path), "show", "-s", "--format=%ct", prepared.commit],
                          capture_output=True, text=True)
    seconds = int(done.stdout.strip() or 0) if done.returncode == 0 else 0
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

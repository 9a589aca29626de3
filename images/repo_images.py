"""Repository images: an environment image plus one layer holding a repository at the sandbox's workdir.

The first episode of a (repository, commit, environment image) writes the repository's copy once, as an
image layer; every later episode, sample or retry starts its container from that image, and nothing is
copied again. The images are named `cwm-runner/repo-<name>:<key>`, the key a hash of everything the
copy is made of (agent.episode.repo_image), and labelled with what that was (source, commit,
environment image, workdir).

How the layer gets in: `docker load` of an image archive that holds the new layer only. The environment
image's layers are already in the daemon's store, and `docker load` takes a layer from the store by its
chain id before it looks for it in the archive (moby: image/tarexport/load.go), so the archive needs
nothing but the new layer, the config and the manifest. The files are written once, straight into the
layer store; `docker cp` into a container, or `docker commit`, write through the container's mount
(fuse-overlayfs here: slower per file; bench/repo_start_bench.py). A daemon that refuses (one that keeps
images in containerd's store wants every layer in the archive) raises RepoImageError: the caller copies
into the sandbox instead.

Crash safety: the archive names no tag, so the daemon ends up with the whole image, untagged, or with
nothing (a load cut short is discarded). The tag is added only once the loaded image's id equals the id
computed here (the sha256 of the config written here) and its labels carry the key; a lookup accepts a
tag only if its labels carry the expected key. A runner killed at any instant leaves at most an untagged
image that no lookup returns and `agent images prune` removes.

Builds of one key are serialised across threads and processes (a lock file per key), so the 20 samples
of one instance make one image. Each use is stamped (a file per image under CACHE_DIR), so
`agent images prune --keep-under SIZE` removes the least recently used first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import docker
import structlog
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

log = structlog.get_logger()

REPOSITORY_PREFIX = "cwm-runner/repo-"
LABEL_KEY = "cwm-runner.repo.key"
LABEL_SOURCE = "cwm-runner.repo.source"
LABEL_COMMIT = "cwm-runner.repo.commit"
LABEL_ENV_IMAGE = "cwm-runner.repo.env-image"
LABEL_WORKDIR = "cwm-runner.repo.workdir"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cwm-runner"
# Docker's opaque whiteout: the layer's directory hides whatever lower layers had in it.
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class RepoImageError(RuntimeError):
    """The daemon would not make the repository image; the caller copies the repository in instead."""


class LoadRefused(RepoImageError):
    """The daemon does not take an archive holding only the new layer: it never will, in this process."""


_version: list[str] = []  # the daemon's API version, asked once per process


def _api() -> docker.APIClient:
    try:
        api = docker.APIClient(version=_version[0] if _version else "auto", timeout=600)
    except DockerException as error:
        raise RepoImageError(f"cannot reach the Docker daemon ({error})") from None
    if not _version:
        _version.append(api.api_version)
    return api


def layer_lead(workdir: str) -> list[tarfile.TarInfo]:
    """The layer's first entry: the workdir's opaque whiteout, so that the image's workdir holds what the
    layer puts there and nothing the environment image had there. (The workdir's own entry is the
    caller's: a layer may name a path once only.)"""
    opaque = tarfile.TarInfo(f"{workdir.strip('/')}/{OPAQUE}")
    opaque.mode = 0o644
    return [opaque]


def image_id(name: str) -> str:
    """The id of the image `name`; RepoImageError if the daemon has none."""
    api = _api()
    try:
        return str(api.inspect_image(name)["Id"])
    except (ImageNotFound, NotFound):
        raise RepoImageError(f"no image {name} on this machine") from None
    except APIError as error:
        raise RepoImageError(f"cannot inspect {name}: {error.explanation or error}") from None
    finally:
        api.close()


# -- lookup ---------------------------------------------------------------------------------------------


def find_repo_image(tag: str, key: str) -> str | None:
    """The id of the image tagged `tag`, if it is the repository image of `key` (its label says so)."""
    api = _api()
    try:
        info = api.inspect_image(tag)
    except (ImageNotFound, NotFound):
        return None
    except APIError as error:
        raise RepoImageError(f"cannot inspect {tag}: {error.explanation or error}") from None
    finally:
        api.close()
    if ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_KEY) != key:
        log.warning("repo.image_label_mismatch", tag=tag)
        return None
    return str(info["Id"])


def stamp_use(image_id: str) -> None:
    """Record that `image_id` was just used (`last_used`), for the least-recently-used pruning."""
    stamps = CACHE_DIR / "image-use"
    try:
        stamps.mkdir(parents=True, exist_ok=True)
        (stamps / image_id.removeprefix("sha256:")).touch()
    except OSError as error:  # a read-only home: pruning falls back to creation times
        log.debug("repo.image_stamp_failed", error=str(error))


def last_used(image_id: str) -> float | None:
    try:
        return (CACHE_DIR / "image-use" / image_id.removeprefix("sha256:")).stat().st_mtime
    except OSError:
        return None


@contextmanager
def build_lock(key: str) -> Iterator[None]:
    """Held while the image of `key` is looked up and built: by one thread of one process at a time."""
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock, open(Path(tempfile.gettempdir()) / f"cwm-runner-repo-{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def layer_path(key: str) -> Path:
    """Where the layer of `key` is written before it is loaded (one writer at a time: `build_lock`)."""
    return Path(tempfile.gettempdir()) / f"cwm-runner-repo-{key}.layer.tar"


def reap_layers() -> list[Path]:
    """Remove layer files a killed build left (as large as their repository): those whose key's lock
    nobody holds. The caller's own key is locked by it, so its file is left to it."""
    removed = []
    for layer in Path(tempfile.gettempdir()).glob("cwm-runner-repo-*.layer.tar"):
        key = layer.name.removeprefix("cwm-runner-repo-").removesuffix(".layer.tar")
        with open(Path(tempfile.gettempdir()) / f"cwm-runner-repo-{key}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build of that key is running
            layer.unlink(missing_ok=True)
            removed.append(layer)
    if removed:
        log.info("repo.layers_reaped", count=len(removed))
    return removed


# -- building -------------------------------------------------------------------------------------------


class _Hashing:
    """A write-only file that hashes what goes through it."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink, self.digest, self.size = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()


def _history(api: docker.APIClient, parent: str, layers: int) -> list[dict[str, Any]]:
    """The parent's history, oldest first, each entry marked empty or not so that the non-empty ones line
    up with its layers (the API does not say; a size or a non-metadata instruction means a layer). If
    they do not line up, one anonymous entry per layer, which keeps `docker history` aligned."""
    entries = []
    for item in reversed(api.history(parent)):
        created_by = str(item.get("CreatedBy") or "")
        metadata = "#(nop)" in created_by and not any(word in created_by for word in (" COPY ", " ADD "))
        entry = {"created": _iso(int(item.get("Created") or 0)), "created_by": created_by}
        if int(item.get("Size") or 0) == 0 and metadata:
            entry["empty_layer"] = True
        entries.append(entry)
    if sum(1 for e in entries if not e.get("empty_layer")) != layers:
        return [{"created": _iso(0), "created_by": ""} for _ in range(layers)]
    return entries


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _config(api: docker.APIClient, parent: str, diff_id: str, labels: dict[str, str], created: str,
            comment: str) -> bytes:
    """The new image's config: the parent's, with our labels, one more layer and its history entry."""
    info = api.inspect_image(parent)
    config = dict(info.get("Config") or {})
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    layers = list(info["RootFS"]["Layers"])
    document = {
        "architecture": info.get("Architecture", "amd64"), "os": info.get("Os", "linux"), "config": config,
        "created": created, "rootfs": {"type": "layers", "diff_ids": [*layers, diff_id]},
        "history": [*_history(api, parent, len(layers)), {"created": created, "created_by": comment}],
    }
    if info.get("Variant"):
        document["variant"] = info["Variant"]
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _archive(layer: Path, layer_name: str, config_name: str, config: bytes, manifest: bytes) -> Iterator[bytes]:
    """The image archive `docker load` reads, as a stream: the new layer, then config and manifest."""
    for name, size, body in ((layer_name, layer.stat().st_size, None), (config_name, len(config), config),
                             ("manifest.json", len(manifest), manifest)):
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        yield info.tobuf(tarfile.PAX_FORMAT)
        if body is not None:
            yield body
        else:
            with layer.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        yield b"\0" * (-size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _load(api: docker.APIClient, archive: Iterator[bytes]) -> str:
    """Stream an archive to `docker load`; the id of the image it loaded."""
    loaded = ""
    try:
        for event in api.load_image(archive):
            if "error" in event:
                raise LoadRefused(f"docker load refused the layer: {event['error']}")
            stream = str(event.get("stream", ""))
            if "Loaded image ID:" in stream:
                loaded = stream.split("Loaded image ID:", 1)[1].strip()
    except APIError as error:
        raise LoadRefused(f"docker load refused the layer: {error.explanation or error}") from None
    if not loaded:
        raise LoadRefused("docker load reported no image")
    return loaded


def load_layer_image(parent: str, tag: str, key: str, labels: dict[str, str],
                     write_layer: Callable[[BinaryIO], None], created: str, comment: str) -> str:
    """Make `tag`: `parent` plus the layer `write_layer` writes (a tar stream), labelled with `key` and
    `labels`; returns its id (see the module docstring for the steps and what a crash leaves).
    Raises RepoImageError if the daemon refuses; whatever `write_layer` raises passes through. Called
    with `build_lock(key)` held."""
    reap_layers()
    path = layer_path(key)
    try:
        with path.open("wb") as raw:
            sink = _Hashing(raw)
            write_layer(sink)  # type: ignore[arg-type]  # a write-only file is all tarfile needs
        diff_id = "sha256:" + sink.digest.hexdigest()
        api = _api()
        try:
            config = _config(api, parent, diff_id, {**labels, LABEL_KEY: key}, created, comment)
            image_id = "sha256:" + hashlib.sha256(config).hexdigest()
            manifest = json.dumps([{"Config": f"{image_id[7:]}.json", "RepoTags": None,
                                    "Layers": [f"{d[7:]}/layer.tar" for d in json.loads(config)["rootfs"]["diff_ids"]]}])
            loaded = _load(api, _archive(path, f"{diff_id[7:]}/layer.tar", f"{image_id[7:]}.json", config,
                                         manifest.encode()))
            path.unlink()
            if loaded != image_id:
                raise RepoImageError(f"docker load made {loaded}, not the image written ({image_id})")
            repository, _, name = tag.rpartition(":")
            api.tag(image_id, repository, name)
        except APIError as error:
            raise RepoImageError(f"cannot make {tag}: {error.explanation or error}") from None
        finally:
            api.close()
    finally:
        path.unlink(missing_ok=True)
    log.info("repo.image_loaded", tag=tag, image=image_id[:19], layer_bytes=sink.size)
    return image_id


__all__ = ["CACHE_DIR", "LABEL_COMMIT", "LABEL_ENV_IMAGE", "LABEL_KEY", "LABEL_SOURCE", "LABEL_WORKDIR",
           "REPOSITORY_PREFIX", "LoadRefused", "RepoImageError", "build_lock", "find_repo_image", "image_id", "last_used", "layer_lead",
           "layer_path", "load_layer_image", "reap_layers", "stamp_use"]

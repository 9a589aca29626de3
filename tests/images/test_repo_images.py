"""Repository images against the real daemon: one `docker load` makes a labelled image on top of its
parent, and `agent images prune` keeps the most recently used ones under a size budget."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator

import docker
import pytest

from images.registry import prune_images
from images.repo_images import (
    CACHE_DIR,
    LABEL_KEY,
    find_repo_image,
    image_id,
    layer_lead,
    load_layer_image,
    stamp_use,
)
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.docker


def one_file_layer(size: int):  # noqa: ANN201 - a write_layer callable
    def write(sink: object) -> None:
        with tarfile.open(fileobj=sink, mode="w|") as tar:  # type: ignore[call-overload]
            for info in layer_lead("/testbed"):
                tar.addfile(info)
            data = os.urandom(size)
            info = tarfile.TarInfo("testbed/blob.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return write


@pytest.fixture
def token() -> Iterator[str]:
    token = secrets.token_hex(4)
    yield token
    client = docker.from_env()
    try:
        for image in client.images.list(all=True, filters={"label": LABEL_KEY}):
            if token in str(image.labels.get(LABEL_KEY)):
                (CACHE_DIR / "image-use" / image.id.removeprefix("sha256:")).unlink(missing_ok=True)
                client.images.remove(image.id, force=True)
    finally:
        client.close()


def test_a_loaded_layer_makes_a_labelled_image_on_its_parent(token: str, base_image: str) -> None:
    made = load_layer_image(base_image, f"cwm-runner/repo-t{token}:a", f"{token}-a", {"extra": "yes"},
                            one_file_layer(1000), "2001-01-01T00:00:00Z", "test layer")
    client = docker.from_env()
    try:
        image, parent = client.images.get(f"cwm-runner/repo-t{token}:a"), client.images.get(base_image)
        assert image.id == made == find_repo_image(f"cwm-runner/repo-t{token}:a", f"{token}-a")
        assert image.labels[LABEL_KEY] == f"{token}-a" and image.labels["extra"] == "yes"
        assert image.attrs["RootFS"]["Layers"][:-1] == parent.attrs["RootFS"]["Layers"]
        assert image.attrs["Config"]["Env"] == parent.attrs["Config"]["Env"]
        listing = client.containers.run(made, ["ls", "-A", "/testbed"], remove=True, network_disabled=True)
        assert listing == b"blob.bin\n"  # the opaque whiteout hid whatever the parent had there
        assert find_repo_image(f"cwm-runner/repo-t{token}:a", "another-key") is None
    finally:
        client.close()


def test_prune_keeps_the_most_recently_used_under_the_budget(token: str, base_image: str) -> None:
    tags = [f"cwm-runner/repo-t{token}:{name}" for name in ("old", "mid", "new")]
    ids = [load_layer_image(base_image, tag, f"{token}-{n}", {}, one_file_layer(2_000_000), "2001-01-01T00:00:00Z",
                            "test layer") for n, tag in enumerate(tags)]
    now = time.time()
    for age, made in zip((300, 200, 100), ids):
        stamp_use(made)
        stamp = CACHE_DIR / "image-use" / made.removeprefix("sha256:")
        os.utime(stamp, (now - age, now - age))
    # A build killed after its load and before its tag leaves such an image: untagged, labelled.
    orphan = load_layer_image(base_image, f"cwm-runner/repo-t{token}:orphan", f"{token}-orphan", {},
                              one_file_layer(1000), "2001-01-01T00:00:00Z", "test layer")
    client = docker.from_env()
    client.api.tag(ids[0], f"cwm-runner/repo-t{token}", "orphan")  # the tag moves away, the image stays
    client.api.remove_image(f"cwm-runner/repo-t{token}:orphan")  # (ids[0] keeps its own tag)
    mine = rf"^cwm-runner/repo-(t{token}:|untagged:{token}-)"
    try:
        everything = prune_images(dry_run=True, match=mine)
        own = {image.id: image.own for image in everything.images}
        assert set(own) == {*ids, orphan} and all(own[i] >= 2_000_000 for i in ids)
        budget = own[ids[1]] + own[ids[2]]
        dry = prune_images(dry_run=True, match=mine, keep_under=budget)
        assert {i.id for i in dry.images if i.chosen} == {ids[0], orphan}
        assert {i.id for i in dry.images if i.within_budget} == {ids[1], ids[2]}
        command = [sys.executable, "-m", "agent.cli", "images", "prune", "--match", mine, "--keep-under", f"{budget}B"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "within budget" in done.stdout and "untagged repository image" in done.stdout
        assert image_id(tags[1]) == ids[1] and image_id(tags[2]) == ids[2]
        remaining = {image.id for image in client.images.list(all=True, filters={"label": LABEL_KEY})}
        assert ids[0] not in remaining and orphan not in remaining
    finally:
        client.close()

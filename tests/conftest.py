"""Shared fixtures: the sandbox base image (built by the project itself, once per machine)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def base_image() -> str:
    """Tag of the project's base sandbox image, built with `agent images build` if missing."""
    override = os.environ.get("CWM_TEST_IMAGE")
    if override:
        return override
    from images.build import ensure_base_image

    return ensure_base_image()


@pytest.fixture(scope="session")
def have_bwrap() -> bool:
    return shutil.which("bwrap") is not None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium for the browser tests (one per module; they skip where it is missing)."""
    from tests.agent.viewer.fixtures import make_driver

    browser = make_driver()
    yield browser
    browser.quit()


@pytest.fixture(scope="session")
def local_registry() -> Iterator[Any]:
    """A real registry on 127.0.0.1 (Debian's docker-registry), started once per test session."""
    from tests.local_registry import BINARY, LocalRegistry

    if shutil.which(BINARY) is None:
        pytest.skip(f"{BINARY} is not installed (apt-get install docker-registry): no local registry to pull from")
    registry = LocalRegistry().start()
    yield registry
    registry.stop()


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A fresh local repository per test (tests/repo_states.py), so no earlier test made its repository
    image; every image made from it (tagged or left untagged) is removed afterwards."""
    import docker

    from tests.repo_states import make_repository

    made = make_repository(tmp_path)
    yield made
    client = docker.from_env()
    try:
        for image in client.images.list(all=True, filters={"label": f"cwm-runner.repo.source={made[0]}"}):
            client.images.remove(image.id, force=True)
    finally:
        client.close()

"""Shared fixtures: the sandbox base image (built by the project itself, once per machine)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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

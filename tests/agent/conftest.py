"""Fixtures shared by tests of several agent/ packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.traced_batch import TracedBatch, run_traced_batch


@pytest.fixture(scope="session")
def traced_batch(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> TracedBatch:
    """One real `agent batch --trace-tests failing` run (about a minute), read by the batch, export and
    viewer tests; nothing may write into it."""
    from agent.instances.envs import ensure_env_image, load_registry

    image = ensure_env_image(load_registry().envs["pypi-pure"])
    return run_traced_batch(Path(tmp_path_factory.mktemp("traced-batch")), image)

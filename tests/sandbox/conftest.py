"""Fixtures for the sandbox tests: one factory per backend, so behaviour tests run on each.

Every container made here carries the run id of this test session (label `cwm-runner.run-id`), and
only containers with that label are ever removed by the cleanup below.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from sandbox.base import Sandbox, SandboxConfig, SandboxError

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), pytest.param("bwrap", marks=pytest.mark.bwrap)]

SandboxFactory = Callable[..., Sandbox]


@pytest.fixture(scope="session")
def run_id() -> str:
    """Label value that marks this test session's containers (and nothing else)."""
    return f"pytest-sandbox-{os.getpid()}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def docker_api(run_id: str) -> Iterator[object]:
    """Low-level Docker client; skips Docker tests where there is no daemon."""
    from sandbox.docker import connect

    try:
        api = connect()
    except SandboxError as exc:
        pytest.skip(str(exc))
    yield api
    # Leftovers of this session only (e.g. containers of child processes a test killed).
    for container in api.containers(all=True, filters={"label": f"cwm-runner.run-id={run_id}"}):
        api.remove_container(container["Id"], force=True)


@pytest.fixture(scope="session")
def bwrap_rootfs(request: pytest.FixtureRequest) -> str:
    """Root filesystem for the bubblewrap backend; skips its tests where bwrap is unusable.

    `CWM_TEST_ROOTFS` (a directory or a tarball from `python -m sandbox.rootfs export`) serves hosts
    without Docker; otherwise the base image is exported once and cached by image id.
    """
    from sandbox.bwrap import bwrap_info
    from sandbox.rootfs import cached_image_rootfs, ensure_rootfs

    try:
        bwrap_info()
    except SandboxError as exc:
        pytest.skip(str(exc))
    given = os.environ.get("CWM_TEST_ROOTFS")
    if given:
        return str(ensure_rootfs(given))
    return str(cached_image_rootfs(request.getfixturevalue("base_image")))


def _factory(backend: str, image: str, run_id: str) -> tuple[SandboxFactory, list[Sandbox]]:
    created: list[Sandbox] = []

    def make(**overrides: object) -> Sandbox:
        config = SandboxConfig(image=image, run_id=run_id, **overrides)
        if backend == "docker":
            from sandbox.docker import DockerSandbox

            sandbox: Sandbox = DockerSandbox(config)
        elif backend == "bwrap":
            from sandbox.bwrap import BwrapSandbox

            sandbox = BwrapSandbox(config)
        else:
            raise AssertionError(f"unknown backend {backend}")
        created.append(sandbox)
        return sandbox

    return make, created


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox_factory(request: pytest.FixtureRequest, run_id: str) -> Iterator[SandboxFactory]:
    """`make(**config_overrides)` -> a started sandbox of this backend, closed after the module."""
    if request.param == "docker":
        request.getfixturevalue("docker_api")
        image = request.getfixturevalue("base_image")
    else:
        image = request.getfixturevalue("bwrap_rootfs")
    make, created = _factory(request.param, image, run_id)
    yield make
    for sandbox in created:
        sandbox.close()


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    """One sandbox shared by a module's tests that neither restart it nor depend on its state."""
    return sandbox_factory()


"""The official-style image fixture looks, from inside, like what the field runs (see tests/official_images.py)."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.official_images import build_official_image, make_repository, official_image_name, remove_image

pytestmark = pytest.mark.docker


def test_official_image_name_follows_swebench() -> None:
    assert official_image_name("django__django-11099") == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert official_image_name("Foo__Bar-1", namespace="x") == "x/sweb.eval.x86_64.foo_1776_bar-1:latest"


def test_fixture_image_has_the_official_layout(tmp_path: Path, base_image: str) -> None:
    repo, base, fix = make_repository(tmp_path)
    tag = build_official_image(base_image, repo, base, "cwm-test/official-fixture:latest")
    client = docker.from_env()
    try:
        def run(script: str) -> str:
            return client.containers.run(tag, ["bash", "-c", script], remove=True, network_disabled=True).decode()

        assert run("echo ${CONDA_DEFAULT_ENV:-none}").strip() == "none"  # not active without ~/.bashrc
        assert run("source ~/.bashrc; echo $CONDA_DEFAULT_ENV; python3 -c 'import sys; print(sys.prefix)'").split() \
            == ["testbed", "/opt/miniconda3/envs/testbed"]
        assert run("cd /testbed && git rev-parse HEAD && git status --porcelain --ignored").split() \
            == [base, "!!", "calc/_version.py"]
        assert fix in run("cd /testbed && git reflog --all --format=%H")  # the fix is still reachable
        assert run("cd /testbed && git remote").strip() == "origin"
        assert "2 passed" in run("source ~/.bashrc; cd /testbed && python3 -m pytest -q -p no:cacheprovider "
                                 "tests/test_calc.py::test_version && git show " + fix + ":calc/__init__.py "
                                 "> /tmp/f.py && cp /tmp/f.py calc/__init__.py && python3 -m pytest -q "
                                 "-p no:cacheprovider tests 2>&1 | tail -1")
    finally:
        client.close()
        remove_image(tag)

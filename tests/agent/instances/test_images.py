"""The image of each instance: from its row, else its family's naming rule; pulled through a mirror."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from agent.instances.images import (
    ImageError,
    ImageOptions,
    ensure_official_image,
    official_image,
    repo_in_image,
    rule_image,
)
from agent.instances.records import Instance
from images.registry import image_present
from tests.helpers import REPO_ROOT
from tests.images.test_registry import build_blob_image
from tests.local_registry import remove_local
from tests.official_images import official_image_name


def row(instance_id: str, **fields: object) -> Instance:
    return Instance(instance_id=instance_id, repo=fields.pop("repo", "owner/name"), problem_statement="x",
                    base_commit="abc", **fields)


def test_each_family_names_its_images_as_its_project_does() -> None:
    # Expected names written out by hand from each project's rule (see agent/instances/images.py).
    assert official_image(row("django__django-11099", dataset="swe-bench")) == \
        "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert official_image(row("Automattic__wp-calypso-21409", dataset="multimodal")) == \
        "swebench/sweb.eval.x86_64.automattic_1776_wp-calypso-21409:latest"
    assert official_image(row("getmoto__moto-7365", dataset="swe-gym")) == \
        "xingyaoww/sweb.eval.x86_64.getmoto_s_moto-7365:latest"
    assert official_image(row("oauthlib__oauthlib.1fd52536.combine_file__2nfzwp19", dataset="swe-smith")) == \
        "swebench/swesmith.x86_64.oauthlib_1776_oauthlib.1fd52536:latest"
    assert official_image(row("tox-dev__tox-3846", dataset="swe-rebench")) == \
        "swerebench/sweb.eval.x86_64.tox-dev_1776_tox-3846:latest"


def test_swebench_rule_agrees_with_the_fixture_images() -> None:
    for instance_id in ("astropy__astropy-12907", "Foo__Bar-1", "sympy__sympy-20590"):
        assert rule_image(instance_id, "swe-bench") == official_image_name(instance_id)


def test_the_rows_own_image_wins_and_options_apply() -> None:
    given = row("x__y-1", dataset="swe-rebench", image="swerebench/sweb.eval.x86_64.x_1776_y-1:v2")
    assert official_image(given) == "swerebench/sweb.eval.x86_64.x_1776_y-1:v2"
    mirror = ImageOptions(registry="mirror.local:5000")
    assert official_image(given, mirror) == "mirror.local:5000/swerebench/sweb.eval.x86_64.x_1776_y-1:v2"
    arm = ImageOptions(prefix="swebench/sweb.eval.arm64.")
    assert official_image(row("a__b-2", dataset="swe-bench"), arm) == "swebench/sweb.eval.arm64.a_1776_b-2:latest"
    assert official_image(given, arm) == given.image  # the prefix only changes names a rule makes


def test_rows_without_a_rule_or_image_say_what_to_give() -> None:
    with pytest.raises(ImageError, match="no image naming rule for dataset 'swe-pro'.*give the row an `image`"):
        official_image(row("a__b-1", dataset="swe-pro"))
    with pytest.raises(ImageError, match="names no image and no dataset family"):
        official_image(row("a__b-1"))


def test_which_rows_run_in_their_image(tmp_path: Path) -> None:
    assert repo_in_image(row("a__b-1", dataset="swe-bench"))
    assert repo_in_image(row("a__b-1", image="some/image:1"))
    assert not repo_in_image(row("a__b-1"))  # our own env images, the repository copied in
    assert not repo_in_image(row("a__b-1", dataset="swe-bench", repo_path=str(tmp_path)))
    assert not repo_in_image(row("a__b-1", dataset="swe-rebench", install_config={"python": "3.11"}))
    assert repo_in_image(row("a__b-1", dataset="swe-rebench", install_config={"python": "3.11"},
                             image="swerebench/x:1"))


@pytest.mark.docker
def test_agent_images_pull_fetches_a_set_through_a_mirror(base_image: str, local_registry, tmp_path: Path) -> None:
    """Push an image under its official name to the local registry, delete it here, and let `agent images
    pull` find it by the SWE-bench rule with --registry; a second instance's image does not exist."""
    present = row(f"cwmtest__calc-{secrets.randbelow(10**6)}", dataset="swe-bench")
    absent = row(f"cwmtest__absent-{secrets.randbelow(10**6)}", dataset="swe-bench")
    local = build_blob_image(base_image, f"cwm-test/mirror-{secrets.token_hex(4)}:v1", megabytes=1)
    pushed = local_registry.push(local, rule_image(present.instance_id, "swe-bench"))
    remove_local(local, pushed)
    instances = tmp_path / "instances.jsonl"
    instances.write_text("".join(i.model_dump_json() + "\n" for i in (present, absent)))
    try:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "images", "pull", str(instances), "--registry",
                               local_registry.host], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "1/2 images present" in done.stdout, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: no such image {local_registry.host}/"), done.stderr
        assert image_present(pushed) and f"pulled   {pushed}\n" in done.stdout and "failed   " in done.stdout
        options = ImageOptions(registry=local_registry.host)
        assert ensure_official_image(present, options) == pushed  # already here: found, not pulled again
    finally:
        remove_local(pushed)

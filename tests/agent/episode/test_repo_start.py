"""A local repository reaches the sandbox in one pass, or from its repository image with no copy at all.

Real Docker, real git, real images: the copy must hold what the old copy path gave (a clone on the host,
copied, `cp -a`, pruned in the sandbox); a start from the repository image must be byte for byte the
tree and git state of a fresh copy; the image's key must change with the commit, the refs and the
environment image, and a tag whose labels do not carry the key is never used.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import docker
import pytest

from agent.episode.repo import place_in_sandbox, prepare_repo
from agent.episode.repo_image import ensure_repo_image, repo_image_key, repo_image_tag
from agent.episode.solve import SolveRequest, solve
from agent.models.factory import make_model
from images.repo_images import find_repo_image, image_id
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import bash, write_replies
from tests.official_images import build_from, remove_image
from tests.repo_states import git, legacy_copy, sandbox_state, state_script, without_index
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def run_id() -> str:
    return f"pytest-repo-start-{secrets.token_hex(3)}"



def test_a_copy_holds_what_the_old_copy_path_gave(repository: tuple[Path, str, str], base_image: str,
                                                  run_id: str) -> None:
    repo, base, fix = repository
    with DockerSandbox(SandboxConfig(image=base_image, run_id=run_id)) as sandbox:
        legacy_copy(sandbox, repo, base)
        old = sandbox_state(sandbox, fix)
        prepared = prepare_repo(str(repo), base)
        try:
            place_in_sandbox(prepared, sandbox)
        finally:
            prepared.cleanup()
        new = sandbox_state(sandbox, fix)
        version = sandbox.run("cat version.txt archive_only_drops_me.txt").output
    assert without_index(new) == without_index(old)
    # The future is gone; the tag before the base stays, the branch and the later tag do not.
    assert "fix-gone" in new and "refs/tags/v0.1 " in new and "v0.2" not in new and "feature" not in new
    assert "Not currently on any branch." in new and "nothing to commit, working tree clean" in new
    # What a checkout writes, not what `git archive` alone would.
    assert version == "$Format:%H$\nkept by a checkout\n"
    assert "l 777 ./link -> pkg/__init__.py" in new and "f 755 ./run.sh" in new


def run_solve(repo: Path, commit: str, fix: str, image: str, output: Path, cache: bool) -> tuple[str, object]:
    """One episode whose first commands show the sandbox's state (before git refreshes the index) and
    bash's line count (its errors print it); (their outputs, the header)."""
    replies = write_replies(output / "replies.jsonl", [
        bash(state_script(fix, mtimes=True)),
        bash("if true; then"),
        bash("echo more >> empty && git diff > /tmp/p.patch"),
        "Submitting.\n</think>\n\n<tool: submit>\n/tmp/p.patch\n</tool>",
        "Done.\n</think>\n\nDone.",
    ])
    request = SolveRequest(repo=str(repo), commit=commit, issue="Fix add.", image=image, output=output,
                           instance_id="state", repo_cache=cache)
    result = solve(request, lambda: make_model(f"replay:{replies}"), DockerSandbox)
    trajectory = read_trajectory(result.trajectory)
    return "".join(step.output or "" for step in trajectory.steps[:2]), trajectory.header


def test_a_cached_start_is_byte_identical_to_a_fresh_copy(repository: tuple[Path, str, str], base_image: str,
                                                          tmp_path: Path) -> None:
    repo, base, fix = repository
    copied, copy_header = run_solve(repo, base, fix, base_image, tmp_path / "copy", cache=False)
    built, build_header = run_solve(repo, base, fix, base_image, tmp_path / "build", cache=True)
    cached, cache_header = run_solve(repo, base, fix, base_image, tmp_path / "cached", cache=True)
    assert [copy_header.repo_from, build_header.repo_from, cache_header.repo_from] == [
        "copy", "image-build", "image-cache"]
    assert copy_header.repo_image == "" and build_header.repo_image == cache_header.repo_image != ""
    assert all(h.repo_prepare_s is not None and h.image == base_image for h in (copy_header, build_header,
                                                                                 cache_header))
    # Files, modes, links, contents and mtimes of the tree; every byte of .git (index included); git's view.
    assert "fix-gone" in copied and f"{base}\ndetached\n" in copied and "syntax error" in copied
    assert built == copied
    assert cached == copied


def test_a_new_commit_refs_or_environment_image_miss_the_cache(repository: tuple[Path, str, str],
                                                               base_image: str) -> None:
    repo, base, fix = repository

    def ensure(commit: str, image: str = base_image) -> tuple[str, bool]:
        prepared = prepare_repo(str(repo), commit)
        try:
            made = ensure_repo_image(prepared, image, "/testbed")
        finally:
            prepared.cleanup()
        assert made is not None
        return made

    first = ensure(base)
    assert first[1] and ensure(base) == (first[0], False)
    later = ensure(fix)
    assert later[1] and later[0] != first[0]
    git(repo, "tag", "v0.1.1", base)  # a new tag the base reaches: the pruned clone keeps it
    retagged = ensure(base)
    assert retagged[1] and retagged[0] not in (first[0], later[0])
    other_env = build_from(base_image, f"cwm-test/repo-env-{secrets.token_hex(4)}:1",
                           "mkdir -p /testbed && echo stale > /testbed/stale.txt")
    try:
        elsewhere = ensure(base, other_env)
        assert elsewhere[1] and elsewhere[0] not in (first[0], later[0], retagged[0])
        client = docker.from_env()
        listing = client.containers.run(elsewhere[0], ["ls", "-A", "/testbed"], remove=True, network_disabled=True)
        client.close()
        assert b"stale.txt" not in listing and b".git\n" in listing  # the image's workdir is the copy alone
    finally:
        remove_image(elsewhere[0])
        remove_image(other_env)


def test_a_tag_without_the_key_label_is_not_used(repository: tuple[Path, str, str], base_image: str) -> None:
    repo, base, _ = repository
    prepared = prepare_repo(str(repo), base)
    try:
        key = repo_image_key(prepared, image_id(base_image), "/testbed")
        tag = repo_image_tag(prepared, key)
        client = docker.from_env()
        client.images.get(base_image).tag(*tag.rsplit(":", 1))  # someone else's image under the name
        assert find_repo_image(tag, key) is None
        made = ensure_repo_image(prepared, base_image, "/testbed")
        assert made == (tag, True) and find_repo_image(tag, key) is not None
        assert client.images.get(tag).id != client.images.get(base_image).id
        client.close()
    finally:
        prepared.cleanup()


def test_older_headers_read_and_the_format_documents_the_fields() -> None:
    header = read_trajectory(Path(__file__).resolve().parents[3] / "traces" / "examples" / "intervals" /
                             "trajectory.jsonl").header
    assert (header.repo_from, header.repo_prepare_s, header.repo_image) == ("", None, "")
    doc = (Path(__file__).resolve().parents[3] / "docs" / "trajectory-format.md").read_text()
    assert all(f"`{field}`" in doc for field in ("repo_from", "repo_prepare_s", "repo_image"))

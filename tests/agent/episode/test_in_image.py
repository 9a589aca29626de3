"""The repository of an official-style image is used where it is: checked out at the base commit, its
future pruned as CWM's harness does, its untracked build outputs and install edits kept, nothing copied."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.episode.replay import verify
from agent.episode.repo import WORKSPACE_PREFIX, RepoError, place_in_image
from agent.episode.solve import SolveRequest, solve
from agent.models.factory import make_model
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from sandbox.session import startup_script
from tests.helpers import bash, write_replies
from tests.official_images import build_official_image, make_repository, remove_image
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker

# Edits a tracked file, as some official install steps do (sed on setup.cfg, pyproject.toml).
INSTALL_EDIT = "echo '# added by the install' >> /testbed/tests/test_calc.py"


@pytest.fixture(scope="module")
def run_id() -> str:
    return f"pytest-in-image-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    return make_repository(tmp_path_factory.mktemp("in-image"))


@pytest.fixture(scope="module")
def official(repository: tuple[Path, str, str], base_image: str) -> Iterator[str]:
    repo, base, _ = repository
    tag = build_official_image(base_image, repo, base, f"cwm-test/in-image-{secrets.token_hex(4)}:latest",
                               install=INSTALL_EDIT)
    yield tag
    remove_image(tag)


def open_in(image: str, run_id: str) -> DockerSandbox:
    return DockerSandbox(SandboxConfig(image=image, run_id=run_id))


def git_state(sandbox: DockerSandbox, fix: str) -> dict[str, str]:
    def out(command: str) -> str:
        return sandbox.run(f"cd /testbed && {command}").output.rstrip("\n")

    return {
        "head": out("git rev-parse HEAD"),
        "all": out("git log --all --format=%H"),
        "reflog": out("git reflog --all --format=%H | sort -u"),
        "fix": out(f"git cat-file -e {fix} 2>/dev/null && echo reachable || echo gone"),
        "objects": out(f"git rev-list --all --objects | grep -c {fix} || true"),
        "remotes": out("git remote"),
        "status": out("git status --porcelain --ignored"),
        "version": out("cat calc/_version.py"),
    }


def test_the_image_repository_is_placed_without_its_future(official: str, repository: tuple[Path, str, str],
                                                           run_id: str) -> None:
    _, base, fix = repository
    with open_in(official, run_id) as sandbox:
        before = git_state(sandbox, fix)
        assert before["fix"] == "reachable" and fix in before["reflog"] and before["remotes"] == "origin"
        assert place_in_image(sandbox, base) == base
        after = git_state(sandbox, fix)
    assert after["head"] == base and after["all"] == base and after["reflog"] in ("", base)
    assert after["fix"] == "gone" and after["objects"] == "0" and after["remotes"] == ""
    # Untracked build output and the install's edit of a tracked file are both still there.
    assert after["version"] == "version = '1.0'"
    assert after["status"].splitlines() == [" M tests/test_calc.py", "!! calc/_version.py"]


def test_an_image_at_a_later_commit_is_checked_out_at_the_base(repository: tuple[Path, str, str],
                                                               base_image: str, run_id: str) -> None:
    repo, base, fix = repository
    later = build_official_image(base_image, repo, fix, f"cwm-test/later-{secrets.token_hex(4)}:latest")
    try:
        with open_in(later, run_id) as sandbox:
            assert place_in_image(sandbox, base[:12]) == base
            after = git_state(sandbox, fix)
            assert sandbox.run("grep -c 'a - b' /testbed/calc/__init__.py").output == "1\n"  # the bug is back
        assert after["head"] == base and after["fix"] == "gone" and after["version"] == "version = '1.0'"
    finally:
        remove_image(later)


def test_placement_failures_are_one_clear_line(official: str, repository: tuple[Path, str, str], base_image: str,
                                               run_id: str) -> None:
    _, base, fix = repository
    with open_in(official, run_id) as sandbox:
        with pytest.raises(RepoError, match=r"has no commit '0{40}': the image was built for another commit"):
            place_in_image(sandbox, "0" * 40)
        # The install edited a tracked file that the fix commit changes too: a checkout would lose it.
        sandbox.run("cd /testbed && echo '# local' >> calc/__init__.py", aside=True)
        with pytest.raises(RepoError, match=f"cannot check out {fix} in {official}: .*"):
            place_in_image(sandbox, fix)
    with open_in(base_image, run_id) as plain:
        with pytest.raises(RepoError, match="/testbed in .* is not the top of a git repository"):
            place_in_image(plain, base)


def test_an_episode_in_the_image_copies_nothing_and_records_what_ran(
        official: str, repository: tuple[Path, str, str], tmp_path: Path, run_id: str) -> None:
    _, base, fix = repository
    replies = write_replies(tmp_path / "replies.jsonl", [
        bash("git log --all --oneline | wc -l; ls calc; echo $CONDA_DEFAULT_ENV"),
        bash("sed -i 's/a - b/a + b/' calc/__init__.py && git diff > /tmp/fix.patch && python3 -m pytest -q "
             "-p no:cacheprovider tests 2>&1 | tail -1 | cut -d' ' -f1-2"),
        "Submitting.\n</think>\n\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\n\nFixed add().",
    ])
    ours = f"{WORKSPACE_PREFIX}{os.getpid()}.*"  # host checkouts this process makes (others run tests too)
    before = set(Path("/tmp").glob(ours))
    request = SolveRequest(repo="example/calc", repo_in_image=True, commit=base, issue="add() subtracts",
                           image=official, output=tmp_path / "out", instance_id="calc-1",
                           sandbox=SandboxConfig(image=official, run_id=run_id))
    checkouts: list[set[Path]] = []

    def opening(config: SandboxConfig) -> DockerSandbox:
        checkouts.append(set(Path("/tmp").glob(ours)) - before)  # a copied repository is checked out by now
        return DockerSandbox(config)

    result = solve(request, lambda: make_model(f"replay:{replies}"), opening)
    assert checkouts == [set()]  # no host checkout was made
    recorded = read_trajectory(result.trajectory)
    header = recorded.header
    assert (header.repo, header.commit, header.repo_in_image) == ("example/calc", base, True)
    assert header.start_script == startup_script(SandboxConfig(image=official, run_id=run_id))
    assert recorded.steps[0].output == "1\n__init__.py\n_version.py\ntestbed\n"
    assert recorded.steps[1].output == "2 passed\n"
    assert result.ending.status == "submitted" and "+    return a + b" in (result.ending.submission or "")
    assert fix not in (result.ending.sandbox_diff or "")

    report = verify(result.trajectory, output=tmp_path / "again")  # replays in the image, placed the same way
    assert report.replayed_commit == base and not report.divergences, report


def test_a_failed_placement_still_leaves_a_trajectory(official: str, tmp_path: Path, run_id: str) -> None:
    replies = write_replies(tmp_path / "replies.jsonl", [bash("true")])
    request = SolveRequest(repo="example/calc", repo_in_image=True, commit="f" * 40, issue="x", image=official,
                           output=tmp_path / "out", instance_id="calc-2",
                           sandbox=SandboxConfig(image=official, run_id=run_id))
    with pytest.raises(RepoError, match="has no commit"):
        solve(request, lambda: make_model(f"replay:{replies}"), DockerSandbox)
    recorded = read_trajectory(tmp_path / "out" / "calc-2.traj.jsonl")
    assert recorded.header.commit == "f" * 40 and recorded.steps == []
    assert recorded.ending is not None and recorded.ending.status == "error" and "has no commit" in recorded.ending.reason

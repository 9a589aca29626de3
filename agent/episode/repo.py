"""Placing the repository of an episode at /testbed, one of three ways.

Copied in (`prepare_repo` + `place_in_sandbox`): the repository is resolved on the host without writing
out its files (agent.episode.checkout), and its copy (the commit's files and a `.git` already pruned)
streams into the sandbox's workdir in one pass (agent.episode.repo_stream, `Sandbox.extract`).

From a repository image (agent.episode.repo_image): the same copy, written once into an image layer;
the sandbox starts from that image and nothing is copied or pruned.

Already in the image (`place_in_image`): SWE-bench-style images carry the repository at /testbed with
their environment installed into it (install-generated files such as setuptools-scm's `_version.py`,
edits of tracked files made by the install). Nothing is copied and nothing is wiped; the base commit is
checked out if HEAD is elsewhere, as CWM's harness runs the images (`cwm/rl/envs/envs/swerl_tool.py`
uses the image's /testbed as it is), and the history that is not an ancestor of it is pruned in the
sandbox. A base the image does not have (SWE-smith's bug branch, which its harness fetches from GitHub)
is made from the image's HEAD and the instance's bug patch instead (agent.episode.base_patch), without
the files of its FAIL_TO_PASS tests, as SWE-smith's branch head has them removed. Grading reaches the
state SWE-smith grades at instead, those files present (`reach_tests_base`).

Every way, the model cannot read the fix from the repository's future (protocol, section 6;
`sandbox.session.prune_git_history_script`), and the session is fresh when the model's first command
comes: bash numbers the lines it reads, and its error messages show that number.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence

import structlog

from agent.episode.base_patch import MadeBase, commit_base_patch
from agent.episode.checkout import (
    SNAPSHOT_DATE,
    URL_PATTERN,
    WORKSPACE_PREFIX,
    PreparedRepo,
    RepoError,
    prepare_repo,
    reap_workspaces,
)
from agent.episode.repo_stream import repo_stream
from sandbox.base import Sandbox, SandboxError
from sandbox.session import prune_git_history_script

# Exit statuses of the in-image check-out script, each with the line telling the user what to do.
_NOT_A_REPOSITORY, _NO_SUCH_COMMIT, _CHECKOUT_FAILED = 3, 4, 5
# The subject of the last commit of SWE-smith's task branches, which deletes the FAIL_TO_PASS test files
# (`swesmith/harness/gather.py`); its parent has them.
REMOVAL_SUBJECT = "Remove F2P Tests"

log = structlog.get_logger()

__all__ = ["PRUNE_TIMEOUT_S", "SNAPSHOT_DATE", "URL_PATTERN", "WORKSPACE_PREFIX", "PreparedRepo", "RepoError",
           "checkout_script", "place_base_in_image", "place_in_image", "place_in_sandbox", "prepare_repo", "reach_base", "reach_tests_base",
           "reap_workspaces"]


def place_in_sandbox(prepared: PreparedRepo, sandbox: Sandbox) -> None:
    """Empty the sandbox's workdir, stream the repository's copy into it (history already pruned), and
    reset the session there."""
    workdir = shlex.quote(sandbox.config.workdir)
    started = time.monotonic()
    emptied = sandbox.run(f"mkdir -p -- {workdir} && find {workdir} -mindepth 1 -delete", aside=True)
    if emptied.exit_code != 0:
        raise RepoError(f"could not empty {sandbox.config.workdir} in the sandbox: {emptied.output.strip()[-300:]}")
    try:
        with repo_stream(prepared) as archive:
            sandbox.extract(archive, sandbox.config.workdir)
    except SandboxError as error:
        raise RepoError(f"could not copy the repository into the sandbox: {error}") from None
    sandbox.restart_session()
    log.info("repo.copied", source=prepared.source, commit=prepared.commit[:12],
             seconds=round(time.monotonic() - started, 3))


def _prune_and_reset(sandbox: Sandbox) -> None:
    result = sandbox.run(prune_git_history_script(sandbox.config.workdir), aside=True,
                         timeout_s=max(PRUNE_TIMEOUT_S, sandbox.config.timeout_s))
    if result.exit_code != 0:
        raise RepoError(f"could not prepare the repository in the sandbox: {result.output.strip()[-300:]}")
    sandbox.restart_session()


# `git gc` repacks the whole object store to drop the future: minutes for the largest repositories.
PRUNE_TIMEOUT_S = 1800.0


def checkout_script(workdir: str, commit: str | None) -> str:
    """Bash that checks out `commit` in the image's repository at `workdir` (if HEAD is not already
    there) and prints HEAD's full id. No `--force`, no reset, no clean: the image's edits to tracked
    files and its untracked and ignored files stay (a checkout that would overwrite them fails)."""
    wanted = "" if commit is None else shlex.quote(commit)
    return f"""(
cd -- {shlex.quote(workdir)} 2>/dev/null && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$PWD" ] || exit {_NOT_A_REPOSITORY}
wanted={wanted}
if [ -n "$wanted" ]; then
  target=$(git rev-parse --verify -q "$wanted^{{commit}}") || exit {_NO_SUCH_COMMIT}
  if [ "$(git rev-parse -q --verify HEAD)" != "$target" ]; then
    git -c advice.detachedHead=false checkout -q "$target" 2>&1 || exit {_CHECKOUT_FAILED}
  fi
fi
git rev-parse --verify HEAD
)"""


def reach_base(sandbox: Sandbox, commit: str | None = None, base_patch: str = "", hidden: Sequence[str] = ()) -> str:
    """Put the image's repository at the base: check out `commit` (default: keep HEAD); if the image has no
    such commit and the instance has a `base_patch`, make the base from HEAD and that patch, without the
    files of `hidden` (agent.episode.base_patch). Returns the base commit. Nothing is pruned."""
    return _reach(sandbox, commit, base_patch, hidden).commit


def _reach(sandbox: Sandbox, commit: str | None, base_patch: str, hidden: Sequence[str]) -> MadeBase:
    workdir, image = sandbox.config.workdir, sandbox.config.image
    done = sandbox.run(checkout_script(workdir, commit), aside=True)
    text = done.output.strip()
    if done.exit_code == _NOT_A_REPOSITORY:
        raise RepoError(f"{workdir} in {image} is not the top of a git repository: this image does not carry the "
                        "instance's repository; give the instance a repo_path, or no image to build one")
    if done.exit_code == _NO_SUCH_COMMIT and base_patch.strip():
        return commit_base_patch(sandbox, base_patch, hidden)
    if done.exit_code == _NO_SUCH_COMMIT:
        raise RepoError(f"the repository at {workdir} in {image} has no commit {commit!r}: the image was built for "
                        "another commit; check the instance's base_commit and image")
    if done.exit_code == _CHECKOUT_FAILED:
        raise RepoError(f"cannot check out {commit} in {image}: {text.splitlines()[-1] if text else 'git failed'}")
    if done.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", text):
        raise RepoError(f"cannot read the repository at {workdir} in {image}: {text[-300:] or done.exit_code}")
    return MadeBase(text)


def reach_tests_base(sandbox: Sandbox, commit: str | None, tests_commit: str | None, base_patch: str) -> str:
    """Put the image's repository where SWE-smith grades: its bug with the FAIL_TO_PASS test files present.

    An image that has the task branch (`commit`) ending in SWE-smith's removal commit is checked out at
    `tests_commit` (`<id>~1`, the `Bug Patch` commit), as SWE-smith's harness does; a branch without that
    commit (SWE-smith adds none when no test file was removed) is the state itself. An image without the
    branch gets the base made from HEAD and `base_patch` with nothing left out: the episode's tree plus
    those files. Either way the model's patch, made against the tree without them, applies unless it
    touches them (SWE-smith's harness would refuse it too). Returns the commit reached."""
    if commit and tests_commit:
        subject = sandbox.run(f"cd -- {shlex.quote(sandbox.config.workdir)} && git log -1 --format=%s "
                              f"{shlex.quote(commit)} --", aside=True)
        if subject.exit_code == 0 and subject.output.strip() == REMOVAL_SUBJECT:
            return reach_base(sandbox, tests_commit)
    return reach_base(sandbox, commit, base_patch)


def place_in_image(sandbox: Sandbox, commit: str | None = None, base_patch: str = "",
                   hidden: Sequence[str] = ()) -> str:
    """Use the repository the image carries at the sandbox's workdir: put it at the base (`reach_base`;
    a made base leaves out the files of `hidden`), prune the history that is not an ancestor of it, reset
    the session there. Returns the base commit.

    Grading reaches the same base in its fresh sandbox (agent.grading.sandboxed.place_repository) for
    instances whose image carries the repository (`agent.instances.images.repo_in_image`), instead of
    `prepare_repo` + `place_in_sandbox`; for a SWE-smith instance, the state SWE-smith grades at instead
    (`reach_tests_base`).
    """
    return place_base_in_image(sandbox, commit, base_patch, hidden).commit


def place_base_in_image(sandbox: Sandbox, commit: str | None = None, base_patch: str = "",
                        hidden: Sequence[str] = ()) -> MadeBase:
    """`place_in_image`, returning with the commit the patch that adds back the files a made base left
    out (empty when none were, or when the image had the base): the episode's test tracing needs them."""
    base = _reach(sandbox, commit, base_patch, hidden)
    _prune_and_reset(sandbox)
    log.info("repo.in_image", image=sandbox.config.image, commit=base.commit[:12])
    return base

"""An instance's base commit made in the sandbox from the image's HEAD and a patch (SWE-smith).

SWE-smith's images hold a repository snapshot at /testbed, bug-free; each task's bug is a patch that
SWE-smith's harness reaches by checking out a branch named by the instance id, fetched from its GitHub
mirror (`swesmith/harness/gather.py` commits the patch there as `Bug Patch`). Offline, and in images
pulled as published, that branch is not there. The base is then made here, with no network: the patch
is applied to HEAD's tree (in a throwaway index, so nothing is half-applied when it fails) and to the
working tree, and committed as a new root commit with fixed, neutral metadata:

- a root commit, not a child of HEAD: with HEAD as its parent, `git show` would print the bug, and
  with HEAD's parents, the diff to the last upstream commit would still carry it. SWE-smith's own
  mirrors hold their snapshot as one commit (`Initial commit`, `swesmith/profiles/base.py`), so the
  model sees the shape a SWE-smith repository has; the old HEAD, now unreachable, goes with the
  history pruning that follows (`sandbox.session.prune_git_history_script`).
- author, committer, dates and message fixed (`BASE_IDENTITY`, `SNAPSHOT_DATE`, `BASE_MESSAGE`), so
  the commit's id depends on the buggy tree alone: the episode and its grading sandbox, each making the
  base anew, get the same commit, which the final diff and the graded patch are relative to. The
  message is SWE-smith's mirror message, not its `Bug Patch`: it says nothing about a bug.

The image's untracked and ignored files (install outputs) and its edits of tracked files stay as they
are, as `place_in_image` leaves them.
"""

from __future__ import annotations

import re
import shlex

import structlog

from agent.episode.checkout import SNAPSHOT_DATE, RepoError
from sandbox.base import Sandbox

log = structlog.get_logger()

BASE_MESSAGE = "Initial commit"
BASE_IDENTITY = ("cwm-runner", "runner@localhost")
# Outside the repository, removed by the script whatever happens: the model never sees the patch.
PATCH_PATH = "/tmp/.cwm-base.patch"
INDEX_PATH = "/tmp/.cwm-base.index"
_NOT_A_REPOSITORY, _DOES_NOT_APPLY = 3, 6


def base_commit_script(workdir: str) -> str:
    """Bash that applies the patch at PATCH_PATH to HEAD and to the working tree, commits the result as
    a root commit, moves HEAD (its branch, if any) there, and prints the commit's id."""
    name, email = BASE_IDENTITY
    identity = " ".join(f"{key}={shlex.quote(value)}" for key, value in (
        ("GIT_AUTHOR_NAME", name), ("GIT_AUTHOR_EMAIL", email), ("GIT_AUTHOR_DATE", SNAPSHOT_DATE),
        ("GIT_COMMITTER_NAME", name), ("GIT_COMMITTER_EMAIL", email), ("GIT_COMMITTER_DATE", SNAPSHOT_DATE)))
    return f"""(
patch={PATCH_PATH} index={INDEX_PATH}
trap 'rm -f -- "$patch" "$index"' EXIT
cd -- {shlex.quote(workdir)} 2>/dev/null && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$PWD" ] || exit {_NOT_A_REPOSITORY}
rm -f -- "$index"
GIT_INDEX_FILE="$index" git read-tree HEAD || exit 1
out=$(GIT_INDEX_FILE="$index" git apply --cached -- "$patch" 2>&1) || {{ printf '%s\\n' "$out"; exit {_DOES_NOT_APPLY}; }}
tree=$(GIT_INDEX_FILE="$index" git write-tree) || exit 1
out=$(git apply -- "$patch" 2>&1) || {{ printf '%s\\n' "$out"; exit {_DOES_NOT_APPLY}; }}
commit=$({identity} git commit-tree --no-gpg-sign -m {shlex.quote(BASE_MESSAGE)} "$tree") || exit 1
git update-ref HEAD "$commit" && git reset -q || exit 1
git rev-parse --verify HEAD
)"""


def commit_base_patch(sandbox: Sandbox, patch: str) -> str:
    """Make the base commit from the image's HEAD and `patch` (module docstring); returns its id.

    A patch that does not apply is the instance's error, one line naming git's complaint; the
    repository is then as it was (the throwaway index takes the first attempt)."""
    workdir, image = sandbox.config.workdir, sandbox.config.image
    if not patch.strip():
        raise RepoError(f"the instance's base patch is empty: nothing to make its base from in {image}")
    sandbox.write_file(PATCH_PATH, patch.encode())
    done = sandbox.run(base_commit_script(workdir), aside=True)
    text = done.output.strip()
    if done.exit_code == _NOT_A_REPOSITORY:
        raise RepoError(f"{workdir} in {image} is not the top of a git repository: this image does not carry the "
                        "instance's repository")
    if done.exit_code == _DOES_NOT_APPLY:
        why = text.splitlines()[-1] if text else "git apply failed"
        raise RepoError(f"the instance's bug patch does not apply to the repository at {workdir} in {image} "
                        f"(not the snapshot it was made for?): {why}")
    if done.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", text):
        raise RepoError(f"cannot make the base commit at {workdir} in {image}: {text[-300:] or done.exit_code}")
    log.info("repo.base_patch", image=image, commit=text[:12], patch_bytes=len(patch))
    return text

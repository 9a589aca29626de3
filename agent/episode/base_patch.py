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
- the files holding the instance's FAIL_TO_PASS tests left out of that commit and of the working tree
  (`hidden`), as SWE-smith's branch head (`Remove F2P Tests`) leaves them out for its agents: the node
  ids' paths (the part before `::`, as SWE-smith's Python profile derives its F2P test files), those
  that are files of the buggy tree (SWE-smith removes the ones that exist). Folded into the one root
  commit rather than committed after it as SWE-smith does: a `Bug Patch` commit below a removal commit
  would keep the tests' text in history the model can read (`git show HEAD`), while a single commit
  without them leaves nothing reachable that holds them, and the pruning that follows drops the image's
  old objects. Their compiled `__pycache__` files go too. What they held comes back to the host as a
  patch that adds them (`MadeBase.tests_patch`), never written into the repository: the episode's test
  tracing applies it for the traces only, as it applies a SWE-bench test patch
  (agent.worldmodel.traced_tests). Grading makes the base with nothing left out (the same patched tree,
  the tests in it), which a model patch made against the test-less tree applies to unless it touches
  them, as SWE-smith's harness applies it at `<id>~1`;
- author, committer, dates and message fixed (`BASE_IDENTITY`, `SNAPSHOT_DATE`, `BASE_MESSAGE`), so
  the commit's id depends on its tree alone: the episode and its replay, each making the base anew, get
  the same commit, which the final diff is relative to. The message is SWE-smith's mirror message, not
  its `Bug Patch`: it says nothing about a bug.

The image's untracked and ignored files (install outputs) and its edits of tracked files stay as they
are, as `place_in_image` leaves them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import NamedTuple

import structlog

from agent.episode.checkout import SNAPSHOT_DATE, RepoError
from sandbox.base import Sandbox

log = structlog.get_logger()

BASE_MESSAGE = "Initial commit"
BASE_IDENTITY = ("cwm-runner", "runner@localhost")
# Outside the repository, removed by the script whatever happens: the model never sees the patch.
PATCH_PATH = "/tmp/.cwm-base.patch"
INDEX_PATH = "/tmp/.cwm-base.index"
# The patch that puts the hidden files back, read to the host and removed before the model's first command.
TESTS_PATH = "/tmp/.cwm-base-tests.patch"
_NOT_A_REPOSITORY, _DOES_NOT_APPLY = 3, 6


class MadeBase(NamedTuple):
    """The base an in-image episode starts from: its commit and, when it left files out, the patch that
    adds them back (applied to that commit)."""

    commit: str
    tests_patch: str = ""


def f2p_test_files(fail_to_pass: Iterable[str]) -> list[str]:
    """The files SWE-smith's branch head removes for an instance: each FAIL_TO_PASS node id's path (before
    the first `::`), once each, sorted. Ids that name no relative path inside the repository (absolute,
    `..`) are dropped: they could name nothing in the tree, and they reach a shell that removes files."""
    paths = set()
    for node in fail_to_pass:
        path = node.split("::", 1)[0].strip()
        parts = PurePosixPath(path).parts
        if parts and not path.startswith("/") and ".." not in parts:
            paths.add(path)
    return sorted(paths)


def _hide_script(hidden: Sequence[str]) -> str:
    """Bash, run after the patched tree is in the throwaway index as `$tree`: each of `hidden` that is a
    file there leaves the index, the working tree and its parent's `__pycache__` (then-empty folders go);
    `$tree` becomes the tree without them, and the patch from it to the full tree goes to TESTS_PATH."""
    if not hidden:
        return ""
    quoted = " ".join(shlex.quote(path) for path in hidden)
    return f"""full=$tree
for path in {quoted}; do
  [ "$(git cat-file -t "$tree:$path" 2>/dev/null)" = blob ] || continue
  GIT_INDEX_FILE="$index" git update-index --force-remove -- "$path" || exit 1
  rm -f -- "$path"; dir=$(dirname -- "$path"); stem=$(basename -- "$path"); stem=${{stem%.*}}
  rm -f -- "$dir/__pycache__/$stem".*.pyc; rmdir -- "$dir/__pycache__" 2>/dev/null
  [ "$dir" = . ] || rmdir -p --ignore-fail-on-non-empty -- "$dir" 2>/dev/null
done
tree=$(GIT_INDEX_FILE="$index" git write-tree) || exit 1
git diff-tree -p --binary --no-renames "$tree" "$full" > {TESTS_PATH} || exit 1
"""


def base_commit_script(workdir: str, hidden: Sequence[str] = ()) -> str:
    """Bash that applies the patch at PATCH_PATH to HEAD and to the working tree, leaves out the files of
    `hidden` that the result has, commits it as a root commit, moves HEAD (its branch, if any) there, and
    prints the commit's id."""
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
{_hide_script(hidden)}commit=$({identity} git commit-tree --no-gpg-sign -m {shlex.quote(BASE_MESSAGE)} "$tree") || exit 1
git update-ref HEAD "$commit" && git reset -q || exit 1
git rev-parse --verify HEAD
)"""


def commit_base_patch(sandbox: Sandbox, patch: str, hidden: Sequence[str] = ()) -> MadeBase:
    """Make the base commit from the image's HEAD and `patch`, without the files of `hidden` (module
    docstring); returns its id and the patch that adds those files back.

    A patch that does not apply is the instance's error, one line naming git's complaint; the
    repository is then as it was (the throwaway index takes the first attempt)."""
    workdir, image = sandbox.config.workdir, sandbox.config.image
    if not patch.strip():
        raise RepoError(f"the instance's base patch is empty: nothing to make its base from in {image}")
    sandbox.write_file(PATCH_PATH, patch.encode())
    try:
        done = sandbox.run(base_commit_script(workdir, hidden), aside=True)
        tests_patch = sandbox.read_file(TESTS_PATH).decode("utf-8", errors="replace") \
            if hidden and done.exit_code == 0 else ""
    finally:
        if hidden:  # the hidden tests' text must not outlive this call in the sandbox
            sandbox.run(f"rm -f -- {TESTS_PATH}", aside=True)
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
    log.info("repo.base_patch", image=image, commit=text[:12], patch_bytes=len(patch), hidden=len(hidden),
             hidden_patch_bytes=len(tests_patch))
    return MadeBase(text, tests_patch)

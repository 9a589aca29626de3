"""A repository with the corners a sandbox copy can get wrong, and the sandbox state tests compare.

`make_repository` builds a local git repository whose base commit has an executable, a symlink, a
path longer than tar's 100-character field, a non-ASCII name, an empty file, files that `git archive`
alone would drop or rewrite (`export-ignore`, `export-subst`), tags before and after the base and a
branch that is not an ancestor; the fix comes in a later commit.

`state_script` prints what the model could see: every entry under the workdir (type, mode, content
hash, link target; mtimes for the tree outside `.git` when asked) and the repository's state (HEAD,
status with ignored files, refs, reflog, every commit, config, what `git status` says). `legacy_copy` is the copy path this runner had before repository images
(a clone on the host, copied in, `cp -a` to the workdir, pruned there): the reference a copy must
still match.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from sandbox.base import Sandbox
from sandbox.session import prune_git_history_script

LONG_DIR = "deep/" + "/".join(["a_rather_long_directory_name"] * 4)
ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str, date: str = "2001-01-01T00:00:00+0000") -> str:
    env = {**os.environ, **ENV, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", "-c", "gc.auto=0", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def make_repository(root: Path) -> tuple[Path, str, str]:
    """(repository, base commit, fix commit); see the module docstring."""
    repo = root / "upstream"
    (repo / "pkg").mkdir(parents=True)
    (repo / LONG_DIR).mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("pkg/__init__.py")
    (repo / LONG_DIR / "leaf_file_with_a_long_name.txt").write_text("deep\n")
    (repo / "données.txt").write_text("é\n")
    (repo / "empty").write_text("")
    (repo / "version.txt").write_text("$Format:%H$\n")
    (repo / "archive_only_drops_me.txt").write_text("kept by a checkout\n")
    (repo / ".gitattributes").write_text("version.txt export-subst\narchive_only_drops_me.txt export-ignore\n")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "tag", "-a", "v0.1", "-m", "old release")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "feature.txt").write_text("a branch the base does not reach\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "feature")
    git(repo, "checkout", "-q", "main")
    (repo / "pkg" / "util.py").write_text("X = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base", date="2002-02-02T00:00:00+0000")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "pkg" / "__init__.py").write_text("def add(a, b):\n    return a + b\n")
    git(repo, "commit", "-q", "-am", "the fix the model must not read", date="2003-03-03T00:00:00+0000")
    git(repo, "tag", "v0.2")
    return repo, base, git(repo, "rev-parse", "HEAD")


def state_script(fix: str, mtimes: bool = False) -> str:
    """Bash, run in the workdir, printing every entry under it (type, mode, link target, content hash;
    with `mtimes`, the modification times of everything outside `.git`, which is written when it is
    prepared) and what git says about the repository (the future must be gone). Read-only until its
    last command: `git status` refreshes the index."""
    times = r"-path ./.git -prune -o -printf '%p %T@\n'" if mtimes else "-false"
    return (
        r"find . -mindepth 1 -printf '%y %m %p -> %l\n' | LC_ALL=C sort; "
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; "
        f"find . -mindepth 1 {times} | LC_ALL=C sort; "
        "git rev-parse HEAD; git symbolic-ref -q HEAD || echo detached; "
        "git for-each-ref --format='%(refname) %(objectname) %(*objectname)'; git reflog --all; "
        "git log --all --format='%H %s'; git config --local --list; git stash list; git remote -v; "
        f"git cat-file -e {fix} 2>/dev/null && echo fix-readable || echo fix-gone; "
        "git status --porcelain --ignored; git status"
    )


def sandbox_state(sandbox: Sandbox, fix: str, mtimes: bool = False) -> str:
    """`state_script` run aside in the sandbox's workdir."""
    return sandbox.run(f"(cd {shlex.quote(sandbox.config.workdir)} && {{ {state_script(fix, mtimes)} ; }}) 2>&1",
                       aside=True).output


def without_index(state: str) -> str:
    """The state without the index's hash: a checkout's index holds the host's stat data, ours none (git
    refreshes either on first use in the sandbox)."""
    return "\n".join(line for line in state.splitlines() if not line.endswith("  ./.git/index"))


def legacy_copy(sandbox: Sandbox, source: Path, commit: str) -> None:
    """The copy path before repository images, step for step: clone on the host, check out, copy into the
    sandbox's /tmp, `cp -a` to the workdir, prune there, restart the session."""
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "repo"
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(source), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--detach", commit], check=True)
        workdir = sandbox.config.workdir
        sandbox.run(f"mkdir -p {workdir} && find {workdir} -mindepth 1 -delete; rm -rf /tmp/.cwm-repo", aside=True)
        sandbox.copy_in(clone, "/tmp/.cwm-repo")
    assert sandbox.run(f"cp -a /tmp/.cwm-repo/repo/. {workdir}/ && rm -rf /tmp/.cwm-repo", aside=True).exit_code == 0
    assert sandbox.run(prune_git_history_script(workdir), aside=True, timeout_s=300).exit_code == 0
    sandbox.restart_session()

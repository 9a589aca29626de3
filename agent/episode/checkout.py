"""What an episode's repository is made from, resolved on the host without writing out its files.

`prepare_repo` turns `--repo PATH_OR_URL` (and `--commit`) into a `PreparedRepo`:

- a local git repository is only read: its commit is resolved, its working tree checked for changes
  (refused unless `allow_dirty`), and nothing is cloned until the sandbox's copy is written
  (agent.episode.repo_stream, which clones it without its objects and without a working tree);
- a URL is cloned into a workspace without a working tree (the network is needed to learn its commit),
  and then treated as a local repository;
- a plain directory is snapshotted into a fresh one-commit repository in a workspace (fixed dates, so
  the commit id is a function of the files alone); its files, ignored ones included, are the tree.

`identity` names everything that decides what the sandbox will hold (files, refs, modes): the source,
the commit, the refs a clone would keep after pruning and the umask. The repository image cache
(agent.episode.repo_image) keys on it. A snapshot or a dirty tree has none (only copying its files
would tell them apart), so those are copied every time.

Workspaces are named after their owner (pid and start time), so the next runner can remove those of a
runner killed before its cleanup (`reap_workspaces`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import git
import structlog
from pydantic import BaseModel, Field

from sandbox.reaper import current_owner, process_start_time

log = structlog.get_logger()

SNAPSHOT_DATE = "2000-01-01T00:00:00+0000"
URL_PATTERN = re.compile(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:")
WORKSPACE_PREFIX = "cwm-repo-"
# cwm-repo-<owner pid>.<owner start time>-<random>: the owner is checked like a container's (reaper).
WORKSPACE_NAME = re.compile(rf"^{WORKSPACE_PREFIX}(\d+)\.(\d+)-")
# Changes whenever the sandbox's copy of the same repository would come out different.
RECIPE_VERSION = "1"


class RepoError(RuntimeError):
    """The repository cannot be prepared; the message says what to do."""


def process_umask() -> int:
    """This process's umask (the modes of a checkout follow it, so the copy's do too). Read from /proc
    where it can be: setting it to read it back would change it for every thread meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class PreparedRepo(BaseModel):
    """A repository the sandbox's copy can be written from, and what it was made from."""

    source: str = Field(description="what the trajectory records: a resolved path or a URL")
    commit: str
    path: Path = Field(description="the repository read: the user's own, a workspace clone of a URL, or a snapshot")
    snapshot: bool = Field(False, description="`path` is a snapshot: its files (ignored ones too) are the tree")
    overlay: Path | None = Field(None, description="--allow-dirty: the working tree whose changes go over the commit")
    identity: str = Field("", description="hash of what the sandbox's copy is made of; empty: not cacheable")
    workspace: Path | None = Field(None, description="temporary directory of this preparation, removed by cleanup()")

    def new_workspace(self) -> Path:
        """The preparation's workspace, created on first use."""
        if self.workspace is None:
            self.workspace = _new_workspace()
        return self.workspace

    def cleanup(self) -> None:
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None


def _new_workspace() -> Path:
    owner = current_owner()
    return Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{owner.pid}.{owner.start}-"))


def reap_workspaces(root: Path | None = None) -> list[Path]:
    """Remove workspaces left by runners that died without cleaning up (SIGKILL, OOM).

    Why here and not in a `finally`: a killed process runs no cleanup, so the next runner on this host
    removes what it can prove is orphaned — a workspace whose owner pid no longer runs with the start
    time recorded in its name. Workspaces of live runners are never touched.
    """
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{WORKSPACE_PREFIX}*"):
        match = WORKSPACE_NAME.match(path.name)
        if match is None or not path.is_dir():
            continue
        pid, start = int(match.group(1)), match.group(2)
        if process_start_time(pid) == start:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("repo.workspace_reaped", path=str(path))
    return removed


def _snapshot(directory: Path, dest: Path) -> str:
    """Copy a plain directory and commit it, so the sandbox has a repository with a base commit."""
    shutil.copytree(directory, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache"))
    repo = git.Repo.init(dest, initial_branch="main")
    repo.git.add(A=True)
    with repo.config_writer() as config:
        config.set_value("user", "name", "cwm-runner")
        config.set_value("user", "email", "agent@cwm-runner.invalid")
    # Fixed dates make the commit id a function of the files alone, so a replay of the same directory
    # checks out the very same commit.
    fixed = {"GIT_AUTHOR_DATE": SNAPSHOT_DATE, "GIT_COMMITTER_DATE": SNAPSHOT_DATE}
    repo.git.commit("-q", "-m", "Initial commit", "--no-gpg-sign", env=fixed)
    return repo.head.commit.hexsha


def _git_toplevel(directory: Path) -> Path | None:
    try:
        return Path(git.Repo(directory, search_parent_directories=True).working_tree_dir or "").resolve()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _resolve(repo: git.Repo, commit: str | None, source: str) -> str:
    ref = commit or "HEAD"
    try:
        return repo.git.rev_parse("--verify", f"{ref}^{{commit}}")
    except git.GitCommandError:
        raise RepoError(f"{source} has no commit {ref!r}; pass an existing --commit") from None


def clone_identity(repo: git.Repo, source: str, commit: str) -> str:
    """What a clone of `repo` at `commit` holds once pruned: the commit, the branch a clone makes (the one
    HEAD names) and the tags, each only if `commit` reaches it (the pruning keeps exactly those)."""
    try:
        branch = repo.git.symbolic_ref("-q", "HEAD")
    except git.GitCommandError:  # a detached HEAD: the clone has no branch of its own
        branch = ""
    kept = repo.git.for_each_ref("--merged", commit, "--format=%(refname) %(objectname)", "refs/tags",
                                 *([branch] if branch else []))
    text = f"{RECIPE_VERSION}\n{source}\n{commit}\n{branch}\n{kept}\numask {process_umask():o}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def _clone_url(source: str, commit: str | None) -> PreparedRepo:
    workspace = _new_workspace()
    try:
        try:
            repo = git.Repo.clone_from(source, workspace / "origin", no_checkout=True)
        except git.GitCommandError as error:
            raise RepoError(f"cannot clone {source}: {error.stderr.strip().splitlines()[-1:]}") from None
        sha = _resolve(repo, commit, source)
        return PreparedRepo(source=source, commit=sha, path=workspace / "origin",
                            identity=clone_identity(repo, source, sha), workspace=workspace)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise


def prepare_repo(source: str, commit: str | None = None, allow_dirty: bool = False) -> PreparedRepo:
    """Resolve `source` at `commit` (default: HEAD) without copying its files (see the module docstring).

    Orphaned workspaces of killed runners are removed first (`reap_workspaces`).
    """
    reap_workspaces()
    if URL_PATTERN.match(source):
        return _clone_url(source, commit)
    directory = Path(source).expanduser().resolve()
    if not directory.is_dir():
        raise RepoError(f"{source} is not a directory or a git URL; pass --repo PATH_OR_GIT_URL")
    top = _git_toplevel(directory)
    if top != directory:
        if commit:
            raise RepoError(f"{source} is not the top of a git repository, so --commit cannot apply")
        workspace = _new_workspace()
        try:
            sha = _snapshot(directory, workspace / "repo")
        except BaseException:
            shutil.rmtree(workspace, ignore_errors=True)
            raise
        return PreparedRepo(source=str(directory), commit=sha, path=workspace / "repo", snapshot=True,
                            workspace=workspace)
    local = git.Repo(directory)
    dirty = local.is_dirty(untracked_files=True)
    if dirty and not allow_dirty:
        raise RepoError(
            f"{source} has uncommitted changes; commit or stash them, or pass --allow-dirty to include them"
        )
    sha = _resolve(local, commit, source)
    overlay = directory if dirty and commit is None else None
    identity = "" if overlay is not None else clone_identity(local, str(directory), sha)
    return PreparedRepo(source=str(directory), commit=sha, path=directory, overlay=overlay, identity=identity)

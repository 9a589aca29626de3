"""Preparing a repository for an episode: a clean checkout on the host, then a copy at /testbed.

A local git repository is cloned at the requested commit (its working tree is never touched; a dirty
tree is refused unless the caller asks to include it). A plain directory is snapshotted into a fresh
repository with one commit. A URL is cloned. Inside the sandbox, history that is not an ancestor of
the commit is pruned so the model cannot read the fix from it (protocol, section 6).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import git
import structlog
from pydantic import BaseModel

from sandbox.base import Sandbox
from sandbox.reaper import current_owner, process_start_time
from sandbox.session import prune_git_history_script

log = structlog.get_logger()

SNAPSHOT_DATE = "2000-01-01T00:00:00+0000"
URL_PATTERN = re.compile(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:")
WORKSPACE_PREFIX = "cwm-repo-"
# cwm-repo-<owner pid>.<owner start time>-<random>: the owner is checked like a container's (reaper).
WORKSPACE_NAME = re.compile(rf"^{WORKSPACE_PREFIX}(\d+)\.(\d+)-")


class RepoError(RuntimeError):
    """The repository cannot be prepared; the message says what to do."""


class PreparedRepo(BaseModel):
    """A host directory holding a clean checkout, and what it was made from."""

    source: str
    commit: str
    path: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


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


def _new_workspace() -> Path:
    owner = current_owner()
    return Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{owner.pid}.{owner.start}-"))


def reap_workspaces(root: Path | None = None) -> list[Path]:
    """Remove checkouts left by runners that died without cleaning up (SIGKILL, OOM).

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


def prepare_repo(source: str, commit: str | None = None, allow_dirty: bool = False) -> PreparedRepo:
    """Make a clean checkout of `source` at `commit` (default: HEAD) in a temporary directory.

    Orphaned checkouts of killed runners are removed first (`reap_workspaces`).
    """
    reap_workspaces()
    workspace = _new_workspace()
    dest = workspace / "repo"
    try:
        if URL_PATTERN.match(source):
            try:
                repo = git.Repo.clone_from(source, dest)
            except git.GitCommandError as error:
                raise RepoError(f"cannot clone {source}: {error.stderr.strip().splitlines()[-1:]}") from None
            return PreparedRepo(source=source, commit=_checkout(repo, commit, source), path=dest)
        directory = Path(source).expanduser().resolve()
        if not directory.is_dir():
            raise RepoError(f"{source} is not a directory or a git URL; pass --repo PATH_OR_GIT_URL")
        top = _git_toplevel(directory)
        if top != directory:
            if commit:
                raise RepoError(f"{source} is not the top of a git repository, so --commit cannot apply")
            return PreparedRepo(source=str(directory), commit=_snapshot(directory, dest), path=dest)
        local = git.Repo(directory)
        if local.is_dirty(untracked_files=True) and not allow_dirty:
            raise RepoError(
                f"{source} has uncommitted changes; commit or stash them, or pass --allow-dirty to include them"
            )
        repo = git.Repo.clone_from(str(directory), dest, no_hardlinks=True)
        sha = _checkout(repo, commit, source)
        if allow_dirty and commit is None:
            _overlay_working_tree(local, dest)
        return PreparedRepo(source=str(directory), commit=sha, path=dest)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise


def _git_toplevel(directory: Path) -> Path | None:
    try:
        return Path(git.Repo(directory, search_parent_directories=True).working_tree_dir or "").resolve()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _checkout(repo: git.Repo, commit: str | None, source: str) -> str:
    ref = commit or "HEAD"
    try:
        sha = repo.git.rev_parse("--verify", f"{ref}^{{commit}}")
    except git.GitCommandError:
        raise RepoError(f"{source} has no commit {ref!r}; pass an existing --commit") from None
    repo.git.checkout("-q", "--detach", sha)
    return sha


def _overlay_working_tree(local: git.Repo, dest: Path) -> None:
    """Copy modified and untracked files of a dirty tree over the clean checkout (--allow-dirty)."""
    root = Path(local.working_tree_dir or ".")
    changed = local.git.ls_files("-m", "-o", "--exclude-standard", "-z").split("\0")
    for name in filter(None, changed):
        target = dest / name
        if (root / name).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target)
    for name in filter(None, local.git.ls_files("-d", "-z").split("\0")):
        (dest / name).unlink(missing_ok=True)




def place_in_sandbox(prepared: PreparedRepo, sandbox: Sandbox) -> None:
    """Copy the checkout to the sandbox's workdir, prune unrelated history, and reset the session there."""
    workdir = sandbox.config.workdir
    # Through /tmp and `cp -a` rather than into `/`: a bubblewrap sandbox's root is read-only.
    staging = "/tmp/.cwm-repo"
    sandbox.run(f"mkdir -p {workdir} && find {workdir} -mindepth 1 -delete; rm -rf {staging}", aside=True)
    sandbox.copy_in(prepared.path, staging)
    copied = sandbox.run(f"cp -a {staging}/{prepared.path.name}/. {workdir}/ && rm -rf {staging}", aside=True)
    if copied.exit_code != 0:
        raise RepoError(f"could not copy the repository into the sandbox: {copied.output.strip()[-300:]}")
    result = sandbox.run(prune_git_history_script(workdir), aside=True)
    if result.exit_code != 0:
        raise RepoError(f"could not prepare the repository in the sandbox: {result.output.strip()[-300:]}")
    sandbox.restart_session()

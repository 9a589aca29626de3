"""Official-style SWE-bench images, built here from the project's base image (no registry is reachable).

They copy the layout of the images the field runs (`swebench/sweb.eval.x86_64.<id>:latest`), as far as
an episode or a grader can tell:

- `/testbed` is a git checkout at the instance's base commit, as the official setup leaves it: the
  branch reset to the base commit, so later commits (the fix among them) are still in the object
  store and the reflog, and, unless `remote=False`, a remote named origin;
- an install step left an untracked file the package needs (`<package>/_version.py`, ignored by git,
  as setuptools-scm writes it for pytest, astropy, matplotlib...);
- a conda-style environment named `testbed` that only `~/.bashrc` activates, through
  `/opt/miniconda3/etc/profile.d/conda.sh` and `conda activate testbed` (also `source
  /opt/miniconda3/bin/activate`, as the official eval scripts do). conda itself cannot be installed
  offline: `conda` here is a shell function that activates a Python venv of that name and sets
  `CONDA_DEFAULT_ENV`, which is all a session or an eval script uses of it. The environment's `pytest`
  runs the environment's Python (`python -m pytest`), as a conda environment's own pytest would.

Like the official images (whose base installs `locales-all`), an image can carry the en_US.UTF-8 locale
that CWM's start-up script selects (`locale=True`): it is compiled on the host with `localedef` (same
Debian glibc as the base image) and copied in; `host_can_compile_locale()` says whether this host can.

Tests build the repository with `make_repository`, then the image with `build_official_image`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import docker

from tests.helpers import bash, write_replies

OFFICIAL_PREFIX = "swebench/sweb.eval.x86_64."

CONDA_SH = textwrap.dedent("""\
    # conda's shell hook, reduced to what sessions and eval scripts use: `conda activate NAME`.
    conda() {
        case "$1" in
            activate)
                local name="${2:-base}"
                if [ "$name" = base ]; then export CONDA_DEFAULT_ENV=base; return 0; fi
                . "/opt/miniconda3/envs/$name/bin/activate" && export CONDA_DEFAULT_ENV="$name" \\
                    CONDA_PREFIX="/opt/miniconda3/envs/$name" ;;
            deactivate) deactivate 2>/dev/null; unset CONDA_DEFAULT_ENV CONDA_PREFIX ;;
            *) echo "conda: only activate/deactivate in this image" >&2; return 1 ;;
        esac
    }
    """)

DOCKERFILE = textwrap.dedent("""\
    FROM {base}
    COPY testbed /testbed
    {locale}
    COPY conda.sh /opt/miniconda3/etc/profile.d/conda.sh
    RUN set -eu; \\
        mkdir -p /opt/miniconda3/bin; python3 -m venv --system-site-packages /opt/miniconda3/envs/testbed; \\
        printf '. /opt/miniconda3/etc/profile.d/conda.sh\\nconda activate base\\n' > /opt/miniconda3/bin/activate; \\
        echo 'source /opt/miniconda3/etc/profile.d/conda.sh && conda activate testbed' > /root/.bashrc; \\
        printf '#!/bin/sh\\nexec python -m pytest "$@"\\n' > /opt/miniconda3/envs/testbed/bin/pytest; \\
        chmod +x /opt/miniconda3/envs/testbed/bin/pytest; \\
        {install}
    WORKDIR /testbed
    """)


def official_image_name(instance_id: str, namespace: str = "swebench") -> str:
    """SWE-bench's naming rule: `<namespace>/sweb.eval.x86_64.<id, "__" -> "_1776_", lower case>:latest`."""
    return f"{namespace}/sweb.eval.x86_64.{instance_id.replace('__', '_1776_').lower()}:latest"


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_DATE": "2001-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2001-01-01T00:00:00+0000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def make_repository(root: Path, package: str = "calc", bulk_bytes: int = 0) -> tuple[Path, str, str]:
    """A small package whose import needs its install-generated `_version.py`, with a failing test at
    the base commit and the fix in a later commit. Returns (repository, base commit, fix commit).

    `bulk_bytes` adds that much incompressible data in 1 MiB files under `data/`, committed with the
    base (a large repository: its working tree and its history both hold it)."""
    repo = root / "upstream"
    (repo / package).mkdir(parents=True)
    (repo / "tests").mkdir()
    if bulk_bytes > 0:
        (repo / "data").mkdir()
        for index in range(0, bulk_bytes, 1 << 20):
            (repo / "data" / f"blob{index >> 20:05d}.bin").write_bytes(os.urandom(min(1 << 20, bulk_bytes - index)))
    (repo / ".gitignore").write_text(f"{package}/_version.py\n__pycache__/\n")
    (repo / package / "__init__.py").write_text(
        f"from {package}._version import version as __version__\n\n\ndef add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text(
        f"from {package} import add, __version__\n\n\ndef test_version():\n    assert __version__ == '1.0'\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    (repo / package / "__init__.py").write_text(
        f"from {package}._version import version as __version__\n\n\ndef add(a, b):\n    return a + b\n")
    git(repo, "commit", "-q", "-am", "fix add (the answer the model must not read)")
    fix = git(repo, "rev-parse", "HEAD")
    return repo, base, fix


def host_can_compile_locale() -> bool:
    return shutil.which("localedef") is not None and Path("/usr/share/i18n/locales/en_US").is_file()


def _compile_locale(target: Path) -> None:
    """en_US.UTF-8 compiled into `target/en_US.UTF-8` (the layout of /usr/lib/locale)."""
    subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(target / "en_US.UTF-8")], check=True,
                   capture_output=True)


def build_official_image(base_image: str, repo: Path, commit: str, tag: str, *, package: str = "calc",
                         remote: bool = True, install: str = "true", locale: bool = False,
                         snapshot: bool = False, task_branches: Sequence[TaskBranch] = ()) -> str:
    """Build `tag`: /testbed a clone of `repo` reset to `commit` with later history still reachable from
    the reflog, the untracked `_version.py`, and the bashrc-only `testbed` environment (`install` runs
    last, in the image, e.g. to edit tracked files as some official install steps do).

    `snapshot`: SWE-smith's shape instead (`swebench/swesmith.x86_64.<repo>.<commit[:8]>`): /testbed holds
    `commit`'s files as the one commit `Initial commit` on `main`, as its mirrors are made
    (`swesmith/profiles/base.py`), with the mirror as origin and no bug branch; `task_branches` adds
    SWE-smith task branches as its own tools make them (`_add_task_branch`), as an image built with
    them, or with the branches fetched, would hold."""
    with tempfile.TemporaryDirectory(prefix="cwm-official-") as scratch:
        context = Path(scratch)
        if locale:  # (an empty COPY would leave an empty layer, which fuse-overlayfs builds trip over)
            (context / "locale").mkdir()
            _compile_locale(context / "locale")
        testbed = context / "testbed"
        subprocess.run(["git", "clone", "-q", "--no-local", str(repo), str(testbed)], check=True)  # a pack, as from GitHub
        git(testbed, "reset", "-q", "--hard", commit)
        if snapshot:
            _as_snapshot(testbed)
        for branch in task_branches:
            _add_task_branch(testbed, branch, context / "bug.patch")
        if remote:
            git(testbed, "remote", "set-url", "origin", "https://github.com/example/calc.git")
        else:
            git(testbed, "remote", "remove", "origin")
        (testbed / package / "_version.py").write_text("version = '1.0'\n")
        (context / "conda.sh").write_text(CONDA_SH)
        (context / "Dockerfile").write_text(DOCKERFILE.format(
            base=base_image, install=install, locale="COPY locale /usr/lib/locale/" if locale else ""))
        client = docker.from_env(timeout=600)
        try:
            client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        finally:
            client.close()
    return tag


def _as_snapshot(testbed: Path) -> None:
    """The checkout's files as a fresh repository of one commit, as SWE-smith's mirrors hold a snapshot."""
    shutil.rmtree(testbed / ".git")
    git(testbed, "init", "-q", "-b", "main")
    git(testbed, "add", "-A")
    git(testbed, "commit", "-q", "-m", "Initial commit")
    git(testbed, "remote", "add", "origin", "git@github.com:swesmith/example__calc.1a2b3c4d.git")


class TaskBranch(NamedTuple):
    """A SWE-smith task branch: `name` (the instance id), the bug patch, the test files its last commit
    removes (none: SWE-smith then makes no removal commit)."""

    name: str
    bug_patch: str
    removed: tuple[str, ...] = ()


def _add_task_branch(testbed: Path, branch: TaskBranch, scratch: Path) -> None:
    """`Bug Patch` (the bug applied to main) then, if it removes any, `Remove F2P Tests`, on a branch
    named by the instance; main stays checked out."""
    scratch.write_text(branch.bug_patch)
    git(testbed, "checkout", "-q", "-b", branch.name, "main")
    git(testbed, "apply", str(scratch))
    git(testbed, "add", "-A")
    git(testbed, "commit", "-q", "-m", "Bug Patch")
    if branch.removed:
        git(testbed, "rm", "-q", "--", *branch.removed)
        git(testbed, "commit", "-q", "-m", "Remove F2P Tests")
    git(testbed, "checkout", "-q", "main")


def build_from(base_image: str, tag: str, *run: str) -> str:
    """A small image: `base_image` plus one RUN line per command (for start-up and pull tests)."""
    with tempfile.TemporaryDirectory(prefix="cwm-image-") as context:
        lines = [f"FROM {base_image}", *(f"RUN {command}" for command in run)]
        (Path(context) / "Dockerfile").write_text("\n".join(lines) + "\n")
        client = docker.from_env(timeout=600)
        try:
            client.images.build(path=context, tag=tag, rm=True, forcerm=True)
        finally:
            client.close()
    return tag


def remove_image(tag: str) -> None:
    client = docker.from_env(timeout=120)
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()


__all__ = ["OFFICIAL_PREFIX", "TaskBranch", "build_from", "build_official_image", "host_can_compile_locale", "make_repository",
           "official_image_name", "remove_image"]


def add_fix_replies(path: Path, first_command: str) -> Path:
    """Scripted replies of a model that looks (`first_command`), fixes `add` in the calc package of
    make_repository, runs the tests, submits `git diff` and ends: the gold fix, by the loop's own tools."""
    return write_replies(path, [
        bash(first_command),
        "The sign is wrong.\n</think>\n\n<tool: edit>\ncalc/__init__.py\n<<<<<<< SEARCH\n    return a - b\n"
        "=======\n    return a + b\n>>>>>>> REPLACE\n</tool>",
        bash("git diff > /tmp/fix.patch && python3 -m pytest -q -p no:cacheprovider tests | tail -1 | cut -d' ' -f1-2"),
        "Submitting.\n</think>\n\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\n\nadd() adds now.",
    ])

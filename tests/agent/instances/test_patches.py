"""Reversing a diff as text (SWE-smith's bug patch into its gold fix): the result is git's own reverse
diff, and it applies with plain `git apply`, on real repositories."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent.instances.patches import PatchError, invert_patch


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, env=env)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts)


def hunks_without_headings(diff: str) -> list[str]:
    """Per-file sections, order-free, without the function names git prints after `@@` (taken from
    whichever side it diffs from)."""
    return sorted(re.sub(r"^(@@ [^@]* @@).*$", r"\1", diff, flags=re.MULTILINE).split("diff --git"))


@pytest.fixture
def two_commits(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose second commit does everything a diff header can say: edits, a line that reads
    `-- ...`, an added and a deleted file, a rename with edits, a mode change, a last line without newline."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "f.sql").write_text("select 1;\n-- keep\nselect 2;\n-- drop me\nselect 3;\n")
    (repo / "nonl.txt").write_text("x\ny")
    (repo / "gone.txt").write_text("gone\n")
    (repo / "old.py").write_text("".join(f"line {n}\n" for n in range(12)))
    (repo / "run.sh").write_text("echo hi\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "before")
    (repo / "f.sql").write_text("select 1;\n-- keep\nselect 20;\nselect 3;\n-- added\n")
    (repo / "nonl.txt").write_text("x\nz")
    (repo / "gone.txt").unlink()
    (repo / "new.txt").write_text("new\n")
    git(repo, "mv", "old.py", "moved.py")
    (repo / "moved.py").write_text("".join(f"line {n}\n" if n != 6 else "line six\n" for n in range(12)))
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "after")
    return repo, git(repo, "diff", "-M", "HEAD~1", "HEAD").stdout


def test_the_reverse_is_gits_own_reverse_diff(two_commits: tuple[Path, str]) -> None:
    repo, forward = two_commits
    backward = git(repo, "diff", "-M", "HEAD", "HEAD~1").stdout
    assert hunks_without_headings(invert_patch(forward)) == hunks_without_headings(backward)
    assert invert_patch(invert_patch(forward)) == forward


def test_the_reverse_applies_and_restores_the_first_commit(two_commits: tuple[Path, str], tmp_path: Path) -> None:
    repo, forward = two_commits
    (tmp_path / "reverse.diff").write_text(invert_patch(forward))
    git(repo, "apply", str(tmp_path / "reverse.diff"))
    git(repo, "add", "-A")
    assert git(repo, "diff", "--cached", "HEAD~1").stdout == ""  # contents and modes as before
    assert files(repo) == ["f.sql", "gone.txt", "nonl.txt", "old.py", "run.sh"]


def test_the_forward_diff_no_longer_applies_where_it_was_applied(two_commits: tuple[Path, str],
                                                                  tmp_path: Path) -> None:
    """Why the bug patch must never be taken for the fix: at the bug commit it does not even apply."""
    repo, forward = two_commits
    (tmp_path / "forward.diff").write_text(forward)
    assert git(repo, "apply", "--check", str(tmp_path / "forward.diff"), check=False).returncode != 0


def test_binary_changes_are_refused() -> None:
    binary = "diff --git a/i.png b/i.png\nindex 1..2 100644\nGIT binary patch\nliteral 3\nKcmZ?wbN~PV\n"
    with pytest.raises(PatchError, match="binary"):
        invert_patch(binary)
    with pytest.raises(PatchError):
        invert_patch("diff --git a/i.png b/i.png\nBinary files a/i.png and b/i.png differ\n")

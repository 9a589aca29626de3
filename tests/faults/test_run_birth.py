"""A kill at any instant of a batch's very first start leaves a directory that `--resume` continues.

The runner is the real command line in its own process; strace kills it (SIGKILL, no cleanup) at the
system call that marks each instant of the start: opening status.log, writing its first line,
renaming instances.jsonl into place. The same command with `--resume` must then finish the run with
the same predictions as an undisturbed run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.batch.test_run import expected_preds, make_instances, make_replays, status_events, write_instances
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")]

# strace arguments that kill the runner at one instant of the start, and what that instant leaves in
# the output directory (proof that the kill happened where it says).
INSTANTS = {
    # The run's first rename is instances.jsonl's (no bytecode is written: PYTHONDONTWRITEBYTECODE).
    "renaming instances.jsonl into place": (
        ["-e", "trace=rename,renameat,renameat2", "-e", "inject=rename,renameat,renameat2:signal=KILL:when=1"],
        ["instances.jsonl.tmp"]),
    "opening status.log": (
        ["-P", "{out}/status.log", "-e", "trace=openat", "-e", "inject=openat:signal=KILL"], ["instances.jsonl"]),
    "writing the first session line": (
        ["-P", "{out}/status.log", "-e", "trace=write", "-e", "inject=write:signal=KILL"],
        ["instances.jsonl", "status.log"]),
}


def left_behind(out: Path) -> list[str]:
    """The output directory's files, temporary ones named by their target."""
    return sorted(f"{p.name.split('.')[1]}.jsonl.tmp" if p.name.endswith(".tmp") else p.name for p in out.iterdir())


def batch(listing: Path, out: Path, spec: str, *extra: str, strace: list[str] | None = None,
          image: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent.cli", "batch", str(listing), "--output", str(out), "--model", spec,
               "--workers", "1", "--image", image, *extra]
    if strace is not None:
        command = ["strace", "-f", "-qq", "-o", "/dev/null", *strace, *command]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("instant", list(INSTANTS))
def test_resume_after_a_kill_during_the_first_start(tmp_path: Path, base_image: str, instant: str) -> None:
    instances = make_instances(1)
    listing = write_instances(tmp_path / "instances.jsonl", instances)
    spec = make_replays(tmp_path / "replays", instances)
    out = tmp_path / "out"
    arguments, expected = INSTANTS[instant]
    killed = batch(listing, out, spec, strace=[arg.format(out=out) for arg in arguments], image=base_image)
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    assert left_behind(out) == expected  # it died at that instant, not elsewhere
    if (out / "status.log").exists():
        assert (out / "status.log").read_text() == ""
    resumed = batch(listing, out, spec, "--resume", image=base_image)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (out / "preds.jsonl").read_text() == expected_preds(instances)
    sessions = [e for e in status_events(out) if e["event"] == "session"]
    assert len(sessions) == 1  # the killed start left nothing that counts as a session
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_directory_with_other_files_is_still_refused(tmp_path: Path, base_image: str) -> None:
    """Only a first start's own files are taken for a half-made run; anything else is the user's."""
    instances = make_instances(1)
    listing = write_instances(tmp_path / "instances.jsonl", instances)
    out = tmp_path / "out"
    out.mkdir()
    (out / "instances.jsonl").write_text("")
    (out / "notes.txt").write_text("mine")
    refused = batch(listing, out, "replay:/x", "--resume", image=base_image)
    assert refused.returncode == 2
    assert "holds no batch run to resume" in refused.stderr
    assert (out / "notes.txt").read_text() == "mine"

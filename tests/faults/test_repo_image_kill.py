"""A runner killed while it makes a repository image leaves nothing a later run would use.

The runner is the real `agent solve` in its own process; strace kills it (SIGKILL, no cleanup) at the
system call that marks each instant of the build: writing the layer file, reading it back to upload
it to `docker load`, and unlinking it once the daemon has loaded the image but before it is tagged.
After each, no image carries the repository image's tag (at most an untagged one, which lookups never
return and `agent images prune` removes), and the same command run again makes the image and gives
the tree a copy gives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from agent.episode.repo import prepare_repo
from agent.episode.repo_image import repo_image_key, repo_image_tag
from images.registry import prune_images
from images.repo_images import LABEL_KEY, find_repo_image, image_id, layer_path
from tests.helpers import REPO_ROOT, bash, write_replies
from tests.repo_states import state_script
from traces.recorder import read_trajectory

pytestmark = [pytest.mark.docker, pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")]

# strace arguments that kill the runner at one instant of the build ({layer}: the layer file's path),
# and how many images carrying the key the daemon holds afterwards (all untagged).
INSTANTS = {
    "writing the layer": (["-e", "trace=write", "-e", "inject=write:signal=KILL:when=3"], 0),
    "uploading the layer to docker load": (["-e", "trace=read", "-e", "inject=read:signal=KILL:when=2"], 0),
    "loaded, before the tag": (["-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL:when=1"], 1),
}



def solve(repo: Path, commit: str, replies: Path, out: Path, image: str,
          strace: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent.cli", "solve", "--repo", str(repo), "--commit", commit,
               "--issue", "Fix add.", "--model", f"replay:{replies}", "--image", image, "--output", str(out),
               "--instance-id", "killed"]
    if strace is not None:
        command = ["strace", "-f", "-qq", "-o", "/dev/null", *strace, *command]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


def keyed_images(key: str) -> list[list[str]]:
    client = docker.from_env()
    try:
        return [image.tags for image in client.images.list(all=True, filters={"label": f"{LABEL_KEY}={key}"})]
    finally:
        client.close()


@pytest.mark.parametrize("instant", list(INSTANTS))
def test_a_kill_mid_build_leaves_no_image_a_later_run_uses(instant: str, repository: tuple[Path, str, str],
                                                           tmp_path: Path, base_image: str) -> None:
    repo, base, fix = repository
    prepared = prepare_repo(str(repo), base)
    key = repo_image_key(prepared, image_id(base_image), "/testbed")
    tag = repo_image_tag(prepared, key)
    replies = write_replies(tmp_path / "replies.jsonl", [
        bash(state_script(fix, mtimes=True)),
        bash("echo more >> empty && git diff > /tmp/p.patch"),
        "Submitting.\n</think>\n\n<tool: submit>\n/tmp/p.patch\n</tool>",
        "Done.\n</think>\n\nDone.",
    ])
    arguments, untagged = INSTANTS[instant]
    killed = solve(repo, base, replies, tmp_path / "killed", base_image,
                   strace=["-P", str(layer_path(key)), *arguments])
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    assert find_repo_image(tag, key) is None
    assert keyed_images(key) == [[]] * untagged  # at most the whole image, untagged: it died where it says
    assert layer_path(key).exists()  # killed with the layer file still there: the next build removes it
    if untagged:
        dry = prune_images(dry_run=True, match=rf"untagged:{key}$")
        assert [(i.tags, i.chosen) for i in dry.images] == [([], True)]

    again = solve(repo, base, replies, tmp_path / "again", base_image)
    assert again.returncode == 0, again.stdout + again.stderr
    header = read_trajectory(tmp_path / "again" / "killed.traj.jsonl").header
    assert header.repo_from == "image-build" and header.repo_image == tag
    assert f": copied into {tag}" in again.stdout  # the live display says so too
    assert find_repo_image(tag, key) is not None and not layer_path(key).exists()
    third = solve(repo, base, replies, tmp_path / "third", base_image)
    assert third.returncode == 0, third.stdout + third.stderr
    cached = read_trajectory(tmp_path / "third" / "killed.traj.jsonl")
    rebuilt = read_trajectory(tmp_path / "again" / "killed.traj.jsonl")
    assert cached.header.repo_from == "image-cache" and f": image cache hit ({tag})" in third.stdout
    assert cached.steps[0].output == rebuilt.steps[0].output and "fix-gone" in (cached.steps[0].output or "")
    prepared.cleanup()

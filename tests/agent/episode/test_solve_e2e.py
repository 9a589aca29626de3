"""`agent solve` end to end through the real CLI, Docker and git, with the replay model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from agent.episode.repo import prepare_repo
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import REPO_ROOT, bash, write_replies
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker
ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def run_tests_with_patch(image: str, patch: str | None) -> subprocess.CompletedProcess[str] | int:
    prepared = prepare_repo(str(EXAMPLE / "repo"))
    try:
        with DockerSandbox(SandboxConfig(image=image, workdir="/work")) as box:
            box.copy_in(prepared.path, "/")
            box.run("rm -rf /work && mv /repo /work && cd /work")
            if patch is not None:
                box.write_file("/tmp/fix.patch", patch.encode())
                assert box.run("git apply /tmp/fix.patch").exit_code == 0
            return box.run("python3 -m pytest -q").exit_code
    finally:
        prepared.cleanup()


def test_solve_example_end_to_end(tmp_path: Path, base_image: str) -> None:
    done = agent("solve", "--example", "intervals", "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "submitted after 7 steps" in done.stdout
    assert "repository ready in " in done.stdout and ": copied into the sandbox" in done.stdout  # a plain directory
    patch = (tmp_path / "intervals.patch").read_text()
    assert "-        if merged and start < merged[-1][1]:" in patch
    assert "+        if merged and start <= merged[-1][1]:" in patch
    trajectory = read_trajectory(tmp_path / "intervals.traj.jsonl")
    assert [s.index for s in trajectory.steps] == list(range(1, 8))
    assert trajectory.ending is not None and trajectory.ending.status == "submitted"
    assert trajectory.ending.sandbox_diff == (tmp_path / "intervals.sandbox.diff").read_text()
    assert "start <= merged[-1][1]" in trajectory.ending.sandbox_diff
    assert all(s.observation for s in trajectory.steps[:-1])
    # The repository's failing test fails without the patch and passes with it, in a fresh sandbox.
    assert run_tests_with_patch(base_image, None) == 1
    assert run_tests_with_patch(base_image, patch) == 0


def test_dirty_repository_is_refused(tmp_path: Path) -> None:
    repo = git.Repo.init(tmp_path / "r")
    (tmp_path / "r" / "a.txt").write_text("a\n")
    repo.git.add(A=True)
    repo.git.commit("-m", "init", "--no-gpg-sign", author="t <t@t>")
    (tmp_path / "r" / "a.txt").write_text("changed\n")
    done = agent("solve", "--repo", str(tmp_path / "r"), "--issue", "x", "--model", "replay:/nonexistent")
    assert done.returncode == 2
    assert "uncommitted changes" in done.stderr and "--allow-dirty" in done.stderr


def test_unknown_repository_and_missing_issue_are_one_line_errors(tmp_path: Path) -> None:
    done = agent("solve", "--repo", str(tmp_path / "nope"), "--issue", "x")
    assert done.returncode == 2 and "not a directory or a git URL" in done.stderr
    done = agent("solve", "--repo", str(tmp_path))
    assert done.returncode == 2 and "exactly one of --issue" in done.stderr


class _GitHubHandler(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).calls.append(self.path)
        if len(type(self).calls) == 1:
            self.send_response(502)
            self.end_headers()
            return
        body = json.dumps({"title": "merge() keeps touching intervals apart",
                           "body": "merge([(1, 3), (3, 5)]) should be [(1, 5)]"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_github_issue_is_read_through_the_rest_api(tmp_path: Path, base_image: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GitHubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    replies = write_replies(tmp_path / "r.jsonl", [bash("cat intervals/core.py | head -1"),
                                                   "Give up.\n</think>\nno tool"])
    env = {**__import__("os").environ, "CWM_GITHUB_API": f"http://127.0.0.1:{server.server_port}"}
    try:
        done = agent("solve", "--repo", str(EXAMPLE / "repo"), "--github-issue",
                     "https://github.com/acme/intervals/issues/7", "--model", f"replay:{replies}",
                     "--output", str(tmp_path / "out"), "--max-turns", "2", env=env)
    finally:
        server.shutdown()
    assert _GitHubHandler.calls == ["/repos/acme/intervals/issues/7"] * 2  # one 502, retried once
    assert done.returncode == 1, done.stderr  # ended by max turns, not submitted
    trajectory = read_trajectory(next((tmp_path / "out").glob("*.traj.jsonl")))
    assert trajectory.header.issue == "merge() keeps touching intervals apart\n\nmerge([(1, 3), (3, 5)]) should be [(1, 5)]"
    assert "<issue_description>\nmerge() keeps touching intervals apart" in trajectory.header.user_prompt

"""SWE-smith instances in an image shaped as SWE-smith publishes them: /testbed a bug-free snapshot (one
`Initial commit`), no bug branch. The base is made in the sandbox from the image's HEAD and the row's
bug patch, committed as a neutral root commit; the model sees the buggy tree with a clean status and
no trace of the bug patch; the diff the episode ends with, and the graded patch, are relative to it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.episode.base_patch import BASE_IDENTITY, BASE_MESSAGE, INDEX_PATH, PATCH_PATH
from agent.episode.checkout import SNAPSHOT_DATE
from agent.episode.failures import classify
from agent.episode.replay import verify
from agent.episode.repo import RepoError, place_in_image
from agent.instances.patches import invert_patch
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import REPO_ROOT
from tests.official_images import add_fix_replies, build_official_image, git, make_repository, remove_image
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker

TEST_FILE = "tests/test_calc.py"
INSTANCE_ID = "example__calc.1a2b3c4d.func_pm_op_swap__k3x9q2"
EVAL_SCRIPT = textwrap.dedent(f"""\
    #!/bin/bash
    set -uxo pipefail
    source /opt/miniconda3/bin/activate
    conda activate testbed
    cd /testbed
    : '>>>>> Start Test Output'
    python3 -m pytest -rA -p no:cacheprovider {TEST_FILE}
    : '>>>>> End Test Output'
    """)
# What the model looks at first: the buggy line, the status, the whole history, every object's text.
FIRST_LOOK = ("grep -c 'return a - b' calc/__init__.py; git status --porcelain | wc -l; "
              "git log --all --format='%H|%an <%ae>|%ad|%P|%s' --date=iso-strict; git reflog --all | wc -l; "
              "git stash list | wc -l; git branch --format='%(refname:short)'; git remote | wc -l; "
              "git cat-file --batch-all-objects --batch | grep -c 'return a + b'; "
              f"ls {PATCH_PATH} {INDEX_PATH} 2>/dev/null | wc -l")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[tuple[str, str, str]]:
    """(image, bug patch, the base commit expected from it): the image holds the bug-free `fix` commit's
    files; the bug patch turns them into the `base` commit's (add() subtracts)."""
    repo, base, fix = make_repository(tmp_path_factory.mktemp("swesmith"))
    bug = git(repo, "diff", fix, base) + "\n"
    env = {**os.environ, "GIT_AUTHOR_NAME": BASE_IDENTITY[0], "GIT_AUTHOR_EMAIL": BASE_IDENTITY[1],
           "GIT_AUTHOR_DATE": SNAPSHOT_DATE, "GIT_COMMITTER_NAME": BASE_IDENTITY[0],
           "GIT_COMMITTER_EMAIL": BASE_IDENTITY[1], "GIT_COMMITTER_DATE": SNAPSHOT_DATE}
    expected = subprocess.run(["git", "-C", str(repo), "commit-tree", "--no-gpg-sign", "-m", BASE_MESSAGE,
                               f"{base}^{{tree}}"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    image = build_official_image(base_image, repo, fix, f"cwm-test/swesmith-{secrets.token_hex(4)}:latest",
                                 snapshot=True)
    yield image, bug, expected
    remove_image(image)


def test_an_episode_starts_on_the_bug_and_its_gold_fix_resolves(snapshot: tuple[str, str, str],
                                                                 tmp_path: Path) -> None:
    image, bug, expected = snapshot
    row = {"instance_id": INSTANCE_ID, "repo": "swesmith/example__calc.1a2b3c4d", "image_name": image,
           "patch": bug, "problem_statement": "calc.add(2, 3) returns -1; it must return 5.",
           "FAIL_TO_PASS": [f"{TEST_FILE}::test_add"], "PASS_TO_PASS": [f"{TEST_FILE}::test_version"],
           "eval_script": EVAL_SCRIPT, "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail"}
    instances = tmp_path / "smith.jsonl"
    instances.write_text(json.dumps(row) + "\n")
    replies = add_fix_replies(tmp_path / "replies.jsonl", FIRST_LOOK)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "batch", str(instances), "--output", str(out), "--model",
         f"replay:{replies}", "--workers", "1", "--evaluate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 done, 0 errored" in done.stdout and "1/1 resolved" in done.stdout, done.stdout

    (trajectory,) = out.rglob("*.traj.jsonl")
    recorded = read_trajectory(trajectory)
    header = recorded.header
    # The base is the made commit, the same id the host computes from the buggy tree and the fixed metadata.
    assert (header.commit, header.repo_in_image, header.image, header.base_patch) == (expected, True, image, bug)
    # The buggy line, a clean status, one root commit with neutral metadata on main, no reflog, stash or
    # remote, no object anywhere holding the bug-free line, and the bug patch's file gone.
    assert recorded.steps[0].output == (
        f"1\n0\n{expected}|cwm-runner <runner@localhost>|2000-01-01T00:00:00+00:00||Initial commit\n"
        "0\n0\nmain\n0\n0\n0\n")
    assert recorded.steps[2].output == "2 passed\n"
    ending = recorded.ending
    assert ending is not None and ending.status == "submitted"
    gold = invert_patch(bug)
    assert ending.submission == gold and ending.sandbox_diff == gold  # the diff against the made base
    prediction = json.loads((out / "preds.jsonl").read_text())
    assert prediction["model_patch"] == gold
    evaluation = ending.evaluation
    assert evaluation is not None and evaluation.resolved, evaluation  # graded on the same made base
    assert evaluation.fail_to_pass == {f"{TEST_FILE}::test_add": True}

    report = verify(trajectory, output=tmp_path / "again")  # the replay makes the same base in a fresh sandbox
    assert report.replayed_commit == expected and not report.divergences, report


def test_a_bug_patch_that_does_not_apply_is_one_line_and_leaves_the_image_as_it_was(
        snapshot: tuple[str, str, str]) -> None:
    image, bug, _ = snapshot
    wrong = bug.replace("-    return a + b", "-    return a * b")  # made for another snapshot
    with DockerSandbox(SandboxConfig(image=image, run_id=f"pytest-swesmith-{secrets.token_hex(3)}")) as sandbox:
        head = sandbox.run("cd /testbed && git rev-parse HEAD").output.strip()
        with pytest.raises(RepoError) as raised:
            place_in_image(sandbox, INSTANCE_ID, wrong)
        after = sandbox.run(f"cd /testbed && git rev-parse HEAD; git status --porcelain | wc -l; "
                            f"ls {PATCH_PATH} {INDEX_PATH} 2>/dev/null | wc -l").output
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"the instance's bug patch does not apply to the repository at /testbed in {image}"), message
    assert message.endswith("error: calc/__init__.py: patch does not apply"), message
    assert classify(raised.value).kind == "episode"  # the instance's error, not the model's nor the machine's
    assert after == f"{head}\n0\n0\n"

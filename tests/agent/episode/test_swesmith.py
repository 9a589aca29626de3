"""SWE-smith instances in an image shaped as SWE-smith publishes them: /testbed a bug-free snapshot (one
`Initial commit`), no bug branch. The base is made in the sandbox from the image's HEAD and the row's
bug patch, without the FAIL_TO_PASS test file (SWE-smith's branch head removes it), committed as a
neutral root commit; the model sees the buggy tree with a clean status and no trace of the bug patch
nor of the hidden tests; the diff the episode ends with, and the graded patch, are relative to it, and
grading puts the tests back. The same image also carries two task branches as SWE-smith's own tools
make them, which grading reaches at `tests_commit` (`<id>~1`) when the branch ends in `Remove F2P Tests`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.episode.base_patch import BASE_IDENTITY, BASE_MESSAGE, INDEX_PATH, PATCH_PATH
from agent.episode.checkout import SNAPSHOT_DATE
from agent.episode.failures import classify
from agent.episode.replay import verify
from agent.episode.repo import RepoError, place_in_image
from agent.grading.evaluate import grade_detailed
from agent.instances.mappers import instances_from_rows
from agent.instances.patches import invert_patch
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import REPO_ROOT
from tests.official_images import (
    TaskBranch,
    add_fix_replies,
    build_official_image,
    git,
    make_repository,
    remove_image,
)
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker

TEST_FILE = "tests/test_calc.py"  # holds the FAIL_TO_PASS test: hidden from the model
OTHER_TEST = "tests/test_more.py"  # not FAIL_TO_PASS: stays, so the model still has tests to run
HIDDEN_LINE = "add(2, 3) == 5"  # in the hidden test file and nowhere else
INSTANCE_ID = "example__calc.1a2b3c4d.func_pm_op_swap__k3x9q2"  # no branch in the image: the base is made
BRANCH_ID = "example__calc.1a2b3c4d.func_pm_op_swap__b7r2m1"  # Bug Patch, then Remove F2P Tests
ONE_COMMIT_ID = "example__calc.1a2b3c4d.func_pm_op_swap__c8s3n4"  # Bug Patch only
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


def first_look(test_blob: str) -> str:
    """What the model looks at first: the buggy line, the status, the whole history, every object's text,
    then the hidden test file: in the tree, the index, any commit's diff, the object store (by its blob's
    id and by its text), any file under /testbed."""
    return ("grep -c 'return a - b' calc/__init__.py; git status --porcelain | wc -l; "
            "git log --all --format='%H|%an <%ae>|%ad|%P|%s' --date=iso-strict; git reflog --all | wc -l; "
            "git stash list | wc -l; git branch --format='%(refname:short)'; git remote | wc -l; "
            "git cat-file --batch-all-objects --batch | grep -c 'return a + b'; "
            f"ls {PATCH_PATH} {INDEX_PATH} 2>/dev/null | wc -l; ls tests; git ls-files tests; "
            f"git log -p --all | grep -c '{HIDDEN_LINE}'; "
            f"git cat-file --batch-all-objects --batch-check | grep -c {test_blob}; "
            f"git cat-file --batch-all-objects --batch | grep -c '{HIDDEN_LINE}'; "
            f"grep -rl '{HIDDEN_LINE}' . | wc -l")


class Snapshot(NamedTuple):
    image: str
    bug: str  # the bug patch
    expected: str  # the base commit the episode must make
    test_blob: str  # the hidden test file's blob id


def _made_base(repo: Path, snapshot: str, bug: str, scratch: Path) -> str:
    """The base the episode must make, made on the host: `snapshot`'s tree plus the bug, less TEST_FILE,
    as one root commit with the fixed metadata."""
    (scratch / "bug.patch").write_text(bug)
    env = {**os.environ, "GIT_INDEX_FILE": str(scratch / "index"), "GIT_AUTHOR_NAME": BASE_IDENTITY[0],
           "GIT_AUTHOR_EMAIL": BASE_IDENTITY[1], "GIT_AUTHOR_DATE": SNAPSHOT_DATE,
           "GIT_COMMITTER_NAME": BASE_IDENTITY[0], "GIT_COMMITTER_EMAIL": BASE_IDENTITY[1],
           "GIT_COMMITTER_DATE": SNAPSHOT_DATE}

    def run(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    run("read-tree", snapshot)
    run("apply", "--cached", str(scratch / "bug.patch"))
    run("update-index", "--force-remove", "--", TEST_FILE)
    return run("commit-tree", "--no-gpg-sign", "-m", BASE_MESSAGE, run("write-tree"))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[Snapshot]:
    """The image holds the bug-free `fix` commit's files plus OTHER_TEST on main, and two task branches;
    the bug patch turns calc's files into the `base` commit's (add() subtracts)."""
    repo, base, fix = make_repository(tmp_path_factory.mktemp("swesmith"))
    bug = git(repo, "diff", fix, base) + "\n"
    (repo / OTHER_TEST).write_text("def test_more():\n    assert True\n")
    git(repo, "add", OTHER_TEST)
    git(repo, "commit", "-q", "-m", "another test file")
    head = git(repo, "rev-parse", "HEAD")
    expected = _made_base(repo, head, bug, tmp_path_factory.mktemp("index"))
    branches = (TaskBranch(BRANCH_ID, bug, (TEST_FILE,)), TaskBranch(ONE_COMMIT_ID, bug))
    image = build_official_image(base_image, repo, head, f"cwm-test/swesmith-{secrets.token_hex(4)}:latest",
                                 snapshot=True, task_branches=branches)
    yield Snapshot(image, bug, expected, git(repo, "rev-parse", f"{head}:{TEST_FILE}"))
    remove_image(image)


def _row(instance_id: str, image: str, bug: str) -> dict[str, object]:
    return {"instance_id": instance_id, "repo": "swesmith/example__calc.1a2b3c4d", "image_name": image,
            "patch": bug, "problem_statement": "calc.add(2, 3) returns -1; it must return 5.",
            "FAIL_TO_PASS": [f"{TEST_FILE}::test_add"], "PASS_TO_PASS": [f"{TEST_FILE}::test_version"],
            "eval_script": EVAL_SCRIPT, "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail"}


def test_an_episode_starts_on_the_bug_without_the_hidden_tests_and_its_gold_fix_resolves(
        snapshot: Snapshot, tmp_path: Path) -> None:
    image, bug, expected, test_blob = snapshot
    instances = tmp_path / "smith.jsonl"
    instances.write_text(json.dumps(_row(INSTANCE_ID, image, bug)) + "\n")
    replies = add_fix_replies(tmp_path / "replies.jsonl", first_look(test_blob))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "batch", str(instances), "--output", str(out), "--model",
         f"replay:{replies}", "--workers", "1", "--evaluate", "--trace-tests", "failing"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 done, 0 errored" in done.stdout and "1/1 resolved" in done.stdout, done.stdout

    (trajectory,) = out.rglob("*.traj.jsonl")
    recorded = read_trajectory(trajectory)
    header = recorded.header
    # The base is the made commit, the same id the host computes from the buggy tree less the hidden
    # test file and the fixed metadata.
    assert (header.commit, header.repo_in_image, header.image, header.base_patch) == (expected, True, image, bug)
    assert header.base_hidden == [TEST_FILE]
    # The buggy line, a clean status, one root commit with neutral metadata on main, no reflog, stash or
    # remote, no object anywhere holding the bug-free line, and the bug patch's file gone; the hidden
    # test file in neither the tree nor the index, and its text and blob nowhere in the history, the
    # object store or the files (the other test file stays).
    assert recorded.steps[0].output == (
        f"1\n0\n{expected}|cwm-runner <runner@localhost>|2000-01-01T00:00:00+00:00||Initial commit\n"
        f"0\n0\nmain\n0\n0\n0\ntest_more.py\n{OTHER_TEST}\n0\n0\n0\n0\n")
    assert recorded.steps[2].output == "1 passed\n"  # the model's run: the visible test file only
    ending = recorded.ending
    assert ending is not None and ending.status == "submitted"
    # The FAIL_TO_PASS test traced before and after, the hidden file put back for the traces only.
    assert [(t.node_id, t.phase, t.outcome, t.error) for t in ending.test_traces] == [
        (f"{TEST_FILE}::test_add", "before", "failed", None), (f"{TEST_FILE}::test_add", "after", "passed", None)]
    gold = invert_patch(bug)
    assert ending.submission == gold and ending.sandbox_diff == gold  # the diff against the made base
    assert "tests/" not in gold  # ...which shows no deletion of the hidden test file
    prediction = json.loads((out / "preds.jsonl").read_text())
    assert prediction["model_patch"] == gold
    evaluation = ending.evaluation
    # Graded with the hidden test file back: its FAIL_TO_PASS test ran and passed.
    assert evaluation is not None and evaluation.resolved, evaluation
    assert evaluation.fail_to_pass == {f"{TEST_FILE}::test_add": True}
    assert evaluation.pass_to_pass == {f"{TEST_FILE}::test_version": True}

    report = verify(trajectory, output=tmp_path / "again")  # the replay makes the same base in a fresh sandbox
    assert report.replayed_commit == expected and not report.divergences, report


def test_an_image_with_the_task_branch_is_graded_at_its_tests_commit(snapshot: Snapshot) -> None:
    image, bug, _, _ = snapshot
    rows = [(f"row {n}", _row(name, image, bug)) for n, name in enumerate((BRANCH_ID, ONE_COMMIT_ID))]
    branch, one_commit = instances_from_rows(rows, "test")
    assert (branch.base_commit, branch.tests_commit) == (BRANCH_ID, f"{BRANCH_ID}~1")
    # The branch head has no test file: graded there, the gold fix would fail; at `<id>~1` it resolves.
    graded = grade_detailed(branch, invert_patch(bug))
    assert graded.resolved and graded.error is None, graded
    assert graded.fail_to_pass == {f"{TEST_FILE}::test_add": True}
    # A branch without the removal commit is graded at its head: its `~1` is the bug-free snapshot,
    # where a patch that fixes nothing would resolve.
    unrelated = "diff --git a/NOTES b/NOTES\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES\n@@ -0,0 +1 @@\n+notes\n"
    graded = grade_detailed(one_commit, unrelated)
    assert graded.error is None and graded.patch_applied and not graded.resolved, graded
    assert graded.fail_to_pass == {f"{TEST_FILE}::test_add": False}
    assert graded.pass_to_pass == {f"{TEST_FILE}::test_version": True}  # the tests ran: the file is there


def test_a_bug_patch_that_does_not_apply_is_one_line_and_leaves_the_image_as_it_was(snapshot: Snapshot) -> None:
    image, bug, _, _ = snapshot
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

"""`agent batch` over an official-style SWE-bench image, end to end through the command line.

The image is built here (tests/official_images.py), pushed to a real registry on 127.0.0.1 under its
official name, and deleted from this machine. The instance row names no image: the runner derives the
name by SWE-bench's rule, pulls it through `--registry` (the mirror option), runs the episode in the
image's own /testbed with a scripted model, and grades the submitted patch with `--evaluate`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.instances.images import rule_image
from images.registry import image_present
from tests.helpers import REPO_ROOT, bash, write_replies
from tests.local_registry import remove_local
from tests.official_images import add_fix_replies, build_official_image, make_repository, remove_image
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker

TEST_FILE = "tests/test_calc.py"


def eval_script(base: str) -> str:
    """The shape of a SWE-bench 5 row's eval script (activation, test-file reset, markers, pytest)."""
    return textwrap.dedent(f"""\
        #!/bin/bash
        set -uxo pipefail
        source /opt/miniconda3/bin/activate
        conda activate testbed
        cd /testbed
        git checkout {base} {TEST_FILE}
        : '>>>>> Start Test Output'
        python3 -m pytest -rA -p no:cacheprovider {TEST_FILE}
        : '>>>>> End Test Output'
        git checkout {base} {TEST_FILE}
        """)


def first_look(fix: str) -> str:
    return (f'echo "env=$CONDA_DEFAULT_ENV"; ls calc; git log --all --format=%H; '
            f'git cat-file -e {fix} 2>/dev/null && echo fix-reachable || echo fix-gone; '
            'echo "remotes=$(git remote | wc -l)"; git rev-list --all | wc -l')


def test_batch_pulls_runs_in_the_image_and_grades_resolved(tmp_path: Path, base_image: str,
                                                           local_registry) -> None:
    repo, base, fix = make_repository(tmp_path / "src")
    instance_id = f"example__calc-{secrets.randbelow(10**6)}"
    local = build_official_image(base_image, repo, base, f"cwm-test/official-batch-{secrets.token_hex(4)}:latest")
    pushed = local_registry.push(local, rule_image(instance_id, "swe-bench"))
    remove_image(local)
    remove_local(pushed)
    assert not image_present(pushed)

    row = {"instance_id": instance_id, "repo": "example/calc", "base_commit": base, "dataset": "swe-bench",
           "problem_statement": "calc.add(2, 3) returns -1; it must return 5.", "version": "1.0",
           "FAIL_TO_PASS": [f"{TEST_FILE}::test_add"], "PASS_TO_PASS": [f"{TEST_FILE}::test_version"],
           "eval_script": eval_script(base), "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail"}
    instances = tmp_path / "instances.jsonl"
    instances.write_text(json.dumps(row) + "\n")
    replies = add_fix_replies(tmp_path / "replies.jsonl", first_look(fix))
    out = tmp_path / "run"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "batch", str(instances), "--output", str(out), "--model",
             f"replay:{replies}", "--workers", "1", "--evaluate", "--registry", local_registry.host],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1/1 done, 0 errored" in done.stdout and "1/1 resolved" in done.stdout, done.stdout
        assert image_present(pushed)  # pulled from the registry by its official name
        output = done.stdout + done.stderr  # the display says what it pulls, and when the pull ended
        assert f"pulling {pushed}" in output and f"pulled {pushed} (" in output, output

        (trajectory,) = out.rglob("*.traj.jsonl")
        recorded = read_trajectory(trajectory)
        header = recorded.header
        assert (header.image, header.repo, header.commit, header.repo_in_image) == (pushed, "example/calc", base, True)
        assert "source ~/.bashrc" in header.start_script
        # The first observation: the image's environment active, its untracked build output present, only
        # the base commit's history, the fix unreachable, no remotes.
        assert recorded.steps[0].output == (f"env=testbed\n__init__.py\n_version.py\n{base}\nfix-gone\n"
                                            "remotes=0\n1\n")
        assert recorded.steps[2].output == "2 passed\n"
        assert recorded.ending is not None and recorded.ending.status == "submitted"
        evaluation = recorded.ending.evaluation
        assert evaluation is not None and evaluation.resolved, evaluation
        assert evaluation.fail_to_pass == {f"{TEST_FILE}::test_add": True}
        prediction = json.loads((out / "preds.jsonl").read_text())
        assert prediction["instance_id"] == instance_id and "+    return a + b" in prediction["model_patch"]
    finally:
        remove_local(pushed)


def _batch(tmp_path: Path, instance_id: str, registry: str) -> subprocess.CompletedProcess[str]:
    row = {"instance_id": instance_id, "repo": "example/calc", "base_commit": "0" * 40, "dataset": "swe-bench",
           "problem_statement": "x", "FAIL_TO_PASS": [f"{TEST_FILE}::test_add"]}
    instances = tmp_path / "instances.jsonl"
    instances.write_text(json.dumps(row) + "\n")
    replies = write_replies(tmp_path / "replies.jsonl", [bash("true")])
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "batch", str(instances), "--output", str(tmp_path / "run"), "--model",
         f"replay:{replies}", "--workers", "1", "--registry", registry],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_an_image_the_registry_lacks_is_that_instances_error(tmp_path: Path, local_registry) -> None:
    instance_id = f"example__absent-{secrets.randbelow(10**6)}"
    done = _batch(tmp_path, instance_id, local_registry.host)
    assert done.returncode == 1 and "0/1 done, 1 errored" in done.stdout, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (sample,) = manifest["instances"][0]["samples"]
    expected = f"PullError: no such image {local_registry.host}/{rule_image(instance_id, 'swe-bench')}"
    assert sample["status"] == "error" and sample["error"].startswith(expected), sample


def test_an_unreachable_registry_stops_the_batch_with_one_line(tmp_path: Path) -> None:
    from tests.local_registry import closed_port

    done = _batch(tmp_path, "example__calc-1", f"127.0.0.1:{closed_port()}")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: registry unreachable for 127.0.0.1:"), done.stderr
    assert "(after 3 attempts)" in lines[0] and "connection refused" in lines[0]

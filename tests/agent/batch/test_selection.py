"""`agent batch --samples K`: the chosen prediction does not depend on the hidden tests.

Three samples of one instance, replayed: samples 0 and 1 submit the same patch, which fixes the bug
but also merges intervals that are far apart (it breaks an existing test that passes before the
change); sample 2 submits the recorded fix. The same batch is run against two instance files that
differ only in their hidden tests (FAIL_TO_PASS/PASS_TO_PASS), graded with `--evaluate` both times:

- `majority` and `regression` write identical preds.jsonl under both test sets (majority: the two-vote
  patch; regression: the fix, since the two-vote patch breaks an existing test);
- `oracle` (best of K by the hidden tests) picks differently under the two sets, which shows the two
  sets do tell the samples apart, and marks itself in the vote and the model name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.batch.run import BatchRequest, run_batch
from agent.grading.regression import regressions, run_suite
from tests.agent.batch.test_run import EXAMPLE, RECORDED, TESTS, make_instances, quiet, read_manifest

pytestmark = pytest.mark.docker

FIX = RECORDED.ending.submission if RECORDED.ending else ""
# Which hidden tests each set grades by: A tells the samples apart, B cannot (both patches pass it).
HIDDEN = {"A": {"FAIL_TO_PASS": TESTS[:1], "PASS_TO_PASS": TESTS[1:]},
          "B": {"FAIL_TO_PASS": TESTS[:1], "PASS_TO_PASS": []}}


def write_overreaching_fix(path: Path) -> None:
    """The recorded episode, but its edit also merges intervals up to 100 apart."""
    text = (EXAMPLE / "trajectory.jsonl").read_text()
    right = "        if merged and start <= merged[-1][1]:\\n>>>>>>> REPLACE"
    assert right in text
    path.write_text(text.replace(right, "        if merged and start <= merged[-1][1] + 100:\\n>>>>>>> REPLACE"))


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("replays")
    write_overreaching_fix(folder / "pick-00-0.jsonl")
    write_overreaching_fix(folder / "pick-00-1.jsonl")
    shutil.copy(EXAMPLE / "trajectory.jsonl", folder / "pick-00-2.jsonl")
    return f"replay:{folder}/{{instance_id}}-{{sample}}.jsonl"


def run(tmp_path: Path, replays: str, image: str, hidden: str, select: str) -> tuple[list[dict], dict]:
    (instance,) = make_instances(1, prefix="pick")
    instance = instance.model_copy(update=HIDDEN[hidden])
    out = tmp_path / f"{select}-{hidden}"
    result = run_batch(BatchRequest(instances=[instance], output=out, model=replays, workers=2, samples=3,
                                    evaluate=True, image=image, select=select), progress=quiet())
    assert (result.done, result.graded) == (3, 3)
    preds = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    (record,) = read_manifest(out).instances
    return preds, record.vote or {}


def test_selection_ignores_the_hidden_tests(tmp_path: Path, base_image: str, replays: str) -> None:
    chosen = {}
    for select in ("majority", "regression", "oracle"):
        for hidden in HIDDEN:
            preds, vote = run(tmp_path, replays, base_image, hidden, select)
            chosen[select, hidden] = (preds, vote)
            assert vote["method"] == select and vote["oracle"] is (select == "oracle")
    for select in ("majority", "regression"):
        assert chosen[select, "A"][0] == chosen[select, "B"][0], select  # same preds.jsonl, whatever the tests
    majority, regression = chosen["majority", "A"], chosen["regression", "A"]
    assert majority[1]["chosen_sample"] == 0 and majority[1]["groups"][0]["votes"] == 2
    assert regression[1]["chosen_sample"] == 2 and regression[0][0]["model_patch"] == FIX
    counts = sorted(g["regressions"] for g in regression[1]["groups"])
    assert counts[0] == 0 and counts[1] >= 1  # the fix breaks nothing; the two-vote patch breaks a test
    oracle_a, oracle_b = chosen["oracle", "A"], chosen["oracle", "B"]
    assert (oracle_a[1]["chosen_sample"], oracle_b[1]["chosen_sample"]) == (2, 0)  # the tests did differ
    assert oracle_a[0][0]["model_name_or_path"].endswith("+oracle")


def test_regressions_count_existing_tests_broken(base_image: str) -> None:
    (instance,) = make_instances(1, prefix="suite")
    baseline = run_suite(instance, "", image=base_image)
    assert baseline.error is None and "tests/test_core.py::test_disjoint_intervals_stay_apart" in baseline.passing
    assert "tests/test_core.py::test_touching_intervals_merge" not in baseline.passing  # the bug
    assert regressions(baseline, run_suite(instance, FIX, image=base_image)) == 0

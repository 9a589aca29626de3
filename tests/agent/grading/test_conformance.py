"""Conformance: `agent eval` and the official SWE-bench harness give the same verdicts on the same cases.

The official side is swebench 5.0.2's `run_evaluation` itself (containers, apply chain, eval script,
log parsers, report.json, run summary), offline, on official-style images built here
(tests/official_images.py) from three repositories in the shapes the official eval scripts expect
(tests/official_repos.py: pytest, Django's runner, sympy's bin/test). Rows come in both shapes:

- SWE-bench 5 rows, which carry their eval script, parser and image;
- SWE-bench 4.x rows, which carry none: the official side gets them as swebench 4.1.0 itself turns
  them into rows (tests/official_harness.py); `agent eval` gets the bare 4.x rows and derives the
  same from its own data (agent/grading/specs.py).

Cases per repository: gold, empty, wrong; for pytest also a conftest.py that prints `PASSED` for every
test and exits 1 (forged; the exit-code cross-check rejects it) or 0 (a rewrite the official harness
resolves and `--strict` rejects). The pytest case has a parametrised id cut at a space, the Django case
a skipped PASS_TO_PASS test.
"""

from __future__ import annotations

import io
import json
from typing import Any

import docker
import pytest

from agent.grading import official
from agent.grading.evaluate import grade_detailed
from agent.grading.runs import run_eval
from agent.grading.specs import END_MARKER, NON_TEST_EXTS, START_MARKER, from_swebench4, swebench4_specs
from agent.instances.records import Instance
from tests.official_harness import run_official, translate_v4_rows
from tests.official_images import build_official_image, remove_image
from tests.official_repos import Case, calc_case, django_case, forged_conftest, sympy_case

NAMESPACE = "cwm-conformance"
MODEL = "conformance"
RUN_ID = "conformance"
# (case, kind) -> the verdict the official harness must give; the test fails if it does not.
EXPECTED = {"gold": True, "empty": False, "wrong": False, "forged-exit1": False, "conftest-exit0": True}


def _patches(case: Case) -> dict[str, str]:
    kinds = {"gold": case.patch, "empty": "", "wrong": case.wrong_patch}
    if case.name == "calc":
        tests = case.FAIL_TO_PASS + case.PASS_TO_PASS
        kinds |= {"forged-exit1": forged_conftest(tests, 1), "conftest-exit0": forged_conftest(tests, 0)}
    return kinds


def _row(case: Case, instance_id: str) -> dict[str, Any]:
    return {"instance_id": instance_id, "repo": case.repo, "version": case.version, "base_commit": case.base_commit,
            "patch": case.patch, "test_patch": case.test_patch, "FAIL_TO_PASS": case.FAIL_TO_PASS,
            "PASS_TO_PASS": case.PASS_TO_PASS, "problem_statement": f"conformance case {instance_id}"}


def _stop_at_once(tag: str) -> str:
    """The same image with SIGKILL as its stop signal: the official harness stops each container (a `tail -f
    /dev/null` that ignores SIGTERM) before removing it, 10 s apiece otherwise. Nothing graded sees it."""
    client = docker.from_env(timeout=300)
    try:
        client.images.build(fileobj=io.BytesIO(f"FROM {tag}\nSTOPSIGNAL SIGKILL\n".encode()), tag=tag, rm=True)
    finally:
        client.close()
    return tag


def _tag(source: str, target: str) -> None:
    client = docker.from_env()
    try:
        repository, tag = target.rsplit(":", 1)
        client.images.get(source).tag(repository, tag)
    finally:
        client.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Any:
    """Images, rows of both shapes, predictions; the official harness and `agent eval` run once each."""
    root = tmp_path_factory.mktemp("conformance")
    cases = [calc_case(root), django_case(root), sympy_case(root)]
    tags = [_stop_at_once(build_official_image(base_image, c.path, c.base_commit, f"{NAMESPACE}/{c.name}:latest",
                                               package=c.name)) for c in cases]
    v4, v5, predictions, kinds = [], [], [], {}
    for number, (case, image) in enumerate(zip(cases, tags)):
        for offset, (kind, patch) in enumerate(_patches(case).items()):
            for shape, base in (("v4", 9000), ("v5", 9500)):
                instance_id = f"{case.repo.replace('/', '__')}-{base + 10 * number + offset}"
                kinds[instance_id] = (case.name, kind, shape)
                predictions.append({"instance_id": instance_id, "model_name_or_path": MODEL, "model_patch": patch})
                (v4 if shape == "v4" else v5).append(_row(case, instance_id))
    translated = translate_v4_rows(v4 + v5, NAMESPACE)
    images = {c.repo: t for c, t in zip(cases, tags)}
    for row in translated:
        if kinds[row["instance_id"]][2] == "v4":
            _tag(images[row["repo"]], row["image"])
            tags.append(row["image"])
        else:
            row["image"] = images[row["repo"]]  # a SWE-bench 5 row names its image
    theirs = run_official(translated, predictions, root / "official", RUN_ID)
    ours_dir = root / "ours"
    instances = root / "instances.jsonl"
    v5_rows = [r for r in translated if kinds[r["instance_id"]][2] == "v5"]
    instances.write_text("".join(json.dumps(r) + "\n" for r in v4 + v5_rows))
    preds = root / "preds.jsonl"
    preds.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    report = run_eval(preds, instances, workers=2, report_path=ours_dir / "report.json", namespace=NAMESPACE,
                      run_id=RUN_ID)
    yield {"kinds": kinds, "theirs": theirs, "ours": report, "ours_dir": ours_dir, "rows": translated,
           "instances": {i["instance_id"]: i for i in v4 + v5_rows}, "predictions": predictions}
    for tag in tags:
        remove_image(tag)


# Building three images and running two harnesses over 22 rows takes minutes on two cores: the module's
# fixture gets more than the suite's 300 s per test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


def _our_report(world: Any, instance_id: str) -> dict[str, Any] | None:
    path = world["ours_dir"] / "logs" / "run_evaluation" / RUN_ID / MODEL / instance_id / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_verdicts_and_reports_match_the_official_harness(world: Any) -> None:
    theirs, results = world["theirs"]["reports"], {r.instance_id: r for r in world["ours"].results}
    assert len(results) == len(world["kinds"]) == 2 * (5 + 3 + 3)
    for instance_id, (case, kind, shape) in world["kinds"].items():
        where = f"{case} {kind} ({shape} row, {instance_id})"
        official_verdict = theirs.get(instance_id, {}).get("resolved", False)
        assert official_verdict is EXPECTED[kind], (where, world["theirs"]["log"][-2000:])
        assert results[instance_id].resolved is official_verdict, (where, results[instance_id].log_tail)
        mine = _our_report(world, instance_id)
        if kind == "empty":
            assert mine is None and instance_id not in theirs and results[instance_id].empty_patch
            continue
        extra = mine[instance_id].pop("cwm_runner")
        assert mine == {instance_id: theirs[instance_id]}, where  # the whole report.json, tests_status included
        assert extra["official_resolved"] is official_verdict and extra["strict"] is False
        assert results[instance_id].spec_source == ("swebench4" if shape == "v4" else "row")


def test_forged_and_rewritten_conftests_are_flagged(world: Any) -> None:
    results = {r.instance_id: r for r in world["ours"].results}
    for instance_id, (case, kind, _shape) in world["kinds"].items():
        rules = {f.rule for f in results[instance_id].findings}
        assert rules == ({"conftest"} if kind in ("forged-exit1", "conftest-exit0") else set()), (instance_id, rules)
        if kind == "forged-exit1":
            assert results[instance_id].test_exit_code == 1 and not results[instance_id].official_resolved


def test_run_summary_matches_the_official_one(world: Any) -> None:
    mine = json.loads((world["ours_dir"] / f"{MODEL}.{RUN_ID}.json").read_text())
    theirs = world["theirs"]["summary"]
    assert {k: theirs[k] for k in mine} == mine
    assert mine["resolved_instances"] == sum(EXPECTED[k] for _c, k, _s in world["kinds"].values())


def test_strict_grades_a_conftest_rewrite_unresolved(world: Any) -> None:
    for instance_id, (case, kind, shape) in world["kinds"].items():
        if case != "calc" or kind not in ("gold", "conftest-exit0") or shape != "v5":
            continue
        patch = next(p["model_patch"] for p in world["predictions"] if p["instance_id"] == instance_id)
        result = grade_detailed(Instance(**world["instances"][instance_id]), patch, strict=True, model_name=MODEL)
        assert result.official_resolved, result.log_tail
        assert result.resolved is (kind == "gold") and result.strict is (kind != "gold")
        assert [f.rule for f in result.findings] == ([] if kind == "gold" else ["conftest"])


def test_gold_resolves_every_row_shape_and_repository(world: Any, tmp_path: Any) -> None:
    """`agent eval --gold` on one row of each repository and shape: all resolved."""
    rows = {}
    for instance_id, (case, kind, shape) in world["kinds"].items():
        if kind == "gold":
            rows[instance_id] = world["instances"][instance_id]
    assert len(rows) == 6
    instances = tmp_path / "gold.jsonl"
    instances.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    report = run_eval(None, instances, gold=True, workers=2, namespace=NAMESPACE)
    assert report.resolved == 6, report.summary()


def test_v4_rows_get_the_eval_script_parser_and_image_of_swebench4() -> None:
    """Every repository and version of the 4.x specifications, against swebench 4.1.0's own functions."""
    test_patch = ("diff --git a/tests/unit/test_a.py b/tests/unit/test_a.py\nindex 1..2 100644\n--- a/tests/unit/test_a.py\n"
                  "+++ b/tests/unit/test_a.py\n@@ -1 +1 @@\n-x\n+y\ndiff --git a/tests/data/new.json "
                  "b/tests/data/new.json\nnew file mode 100644\n--- /dev/null\n+++ b/tests/data/new.json\n@@ -0,0 +1 @@\n"
                  "+{}\ndiff --git a/tests/test_new.py b/tests/test_new.py\nnew file mode 100644\n--- /dev/null\n"
                  "+++ b/tests/test_new.py\n@@ -0,0 +1 @@\n+def test(): pass\n")
    rows = [{"instance_id": f"{repo.replace('/', '__')}-{i}", "repo": repo, "version": version, "base_commit": "abc123",
             "test_patch": test_patch, "FAIL_TO_PASS": ["t"], "PASS_TO_PASS": [], "problem_statement": "p"}
            for i, (repo, data) in enumerate(swebench4_specs()["repos"].items()) for version in data["versions"]]
    assert len(rows) > 250
    for row, theirs in zip(rows, translate_v4_rows(rows, NAMESPACE)):
        mine = from_swebench4(Instance(**row), NAMESPACE)
        where = (theirs["repo"], theirs["version"])
        assert mine.eval_script == theirs["eval_script"], where
        assert (mine.log_parser, mine.image) == (theirs["log_parser"], theirs["image"]), where


def test_constants_copied_from_swebench_match_it() -> None:
    c = official.harness().constants
    assert (START_MARKER, END_MARKER) == (c.START_TEST_OUTPUT, c.END_TEST_OUTPUT)
    assert list(NON_TEST_EXTS) == c.NON_TEST_EXTS


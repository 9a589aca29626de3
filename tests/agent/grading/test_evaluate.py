"""Grading end to end on the PyPI fixtures (real libraries, real releases) in real Docker sandboxes: the
official harness's code path with a pytest spec, gold and empty patches, the apply chain, K samples per
instance with pass@k and the selected prediction's score, the official outputs; and environment specs."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.batch.voting import select_prediction
from agent.grading.evaluate import grade, grade_detailed, passed, run_tests
from agent.grading.runs import run_eval
from agent.grading.specs import patch_files
from agent.instances.envs import EnvError, EnvSpec, ensure_env_image, load_registry
from agent.instances.records import Instance
from agent.instances.sources import load_instances, repo_source
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
PYPI = ROOT / "tests" / "fixtures" / "pypi"
MAJORITY = ("majority vote", lambda _instance, preds: select_prediction([p.model_patch for p in preds]))


def test_patch_files() -> None:
    git_style = "diff --git a/src/x.py b/src/x.py\n--- a/src/x.py\n+++ b/src/x.py\n@@ -1 +1 @@\n-a\n+b\n" \
                "diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+c\n"
    assert patch_files(git_style) == ["src/x.py", "new.py"]
    assert patch_files("--- x.py\t2020\n+++ x.py\t2021\n@@ -1 +1 @@\n-a\n+b\n") == ["x.py"]


# -- environment specs ---------------------------------------------------------------------------


def test_registry_resolves_by_name_repo_and_default() -> None:
    registry = load_registry()
    fixture = Instance(instance_id="a", repo="benjaminp/six", problem_statement="p")
    other = Instance(instance_id="b", repo="someone/else", problem_statement="p")
    named = Instance(instance_id="c", repo="someone/else", problem_statement="p", env="pypi-pure",
                     test_command="python3 -m pytest -x {tests}")
    assert registry.for_instance(fixture).name == "pypi-pure"
    assert registry.for_instance(other).name == registry.default == "python-pytest"
    spec = registry.for_instance(named)
    assert spec.name == "pypi-pure" and spec.command_for(["t/a.py::x[1 2]", "t/a.py::y", "t/b.py"]) == \
        "python3 -m pytest -x t/a.py t/b.py"
    with pytest.raises(EnvError, match="unknown env 'nope'"):
        registry.for_instance(Instance(instance_id="d", repo="r", problem_statement="p", env="nope"))


def test_spec_validation(tmp_path: Path) -> None:
    ids = EnvSpec(name="x", targets="ids", test_command="pytest {tests}")
    assert ids.command_for(["a.py::t[x y]"]) == "pytest 'a.py::t[x y]'"
    with pytest.raises(ValueError, match="not available offline"):
        EnvSpec(name="old-python", python="3.8")
    assert EnvSpec(name="prebuilt", python="3.8", image="example/py38").image == "example/py38"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[env]]\nname = "ok"\n\n[[env]]\nname = "Bad Name"\n')
    with pytest.raises(EnvError) as caught:
        load_registry([bad])
    assert str(caught.value).startswith(f"{bad}: env[1]: name: Value error, must be lower-case")
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"env": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(EnvError, match=r"env\[1\]: name: 'a' is defined twice"):
        load_registry([dup])


def test_empty_patch_resolves_none_without_a_sandbox() -> None:
    for instance in load_instances(PYPI / "instances.jsonl"):
        for empty in ("", "  \n"):
            result = grade_detailed(instance, empty, image="no-such-image-is-needed")
            assert result.empty_patch and not result.resolved and result.error is None
            assert not any(result.fail_to_pass.values()) and set(result.fail_to_pass) == set(instance.FAIL_TO_PASS)
        assert grade(instance, "").resolved is False


# -- grading in sandboxes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Instance]:
    return {i.instance_id: i for i in load_instances(PYPI / "instances.jsonl")}


@pytest.fixture(scope="module")
def env_image(base_image: str) -> str:
    return ensure_env_image(load_registry().envs["pypi-pure"])


def edit_patch(instance: Instance, path: str, line: str) -> str:
    """A real `git diff` that appends `line` to `path` of the instance's base commit."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "r"
        subprocess.run(["git", "clone", "-q", repo_source(instance), str(clone)], check=True)
        with open(clone / path, "a") as handle:
            handle.write(line + "\n")
        return subprocess.run(["git", "-C", str(clone), "diff"], capture_output=True, text=True, check=True).stdout


def _preds(path: Path, predictions: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"instance_id": i, "model_name_or_path": "test", "model_patch": p}) + "\n"
                            for i, p in predictions))
    return path


@pytest.mark.docker
def test_gold_resolves_every_fixture_and_empty_none(fixtures: dict[str, Instance], env_image: str,
                                                    tmp_path: Path) -> None:
    """`agent eval --gold` on the fixture set: all resolved, through the official report logic; the
    official outputs are written beside the report."""
    report = run_eval(None, PYPI / "instances.jsonl", gold=True, workers=2, report_path=tmp_path / "gold.json")
    assert len(report.results) == len(fixtures) == 4
    for result in report.results:
        assert result.resolved and result.official_resolved, (result.instance_id, result.log_tail)
        assert result.apply_method == "git apply --verbose" and result.spec_source == "env"
        assert result.log_parser == "parse_log_pytest" and result.test_exit_code is not None
        assert set(result.fail_to_pass) == set(fixtures[result.instance_id].FAIL_TO_PASS)
        official = json.loads((tmp_path / "logs" / "run_evaluation" / "cwm-eval" / "gold" / result.instance_id
                               / "report.json").read_text())[result.instance_id]
        assert official["resolved"] and official["patch_successfully_applied"]
        assert sorted(official["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(result.fail_to_pass)
    summary = json.loads((tmp_path / "gold.cwm-eval.json").read_text())
    assert summary["resolved_instances"] == 4 and summary["schema_version"] == 2
    empty = run_eval(_preds(tmp_path / "empty.jsonl", [(i, "") for i in fixtures]), PYPI / "instances.jsonl",
                     report_path=tmp_path / "empty" / "r.json")
    assert empty.resolved == 0 and all(r.empty_patch for r in empty.results)
    assert json.loads((tmp_path / "empty" / "test.cwm-eval.json").read_text())["empty_patch_instances"] == 4


@pytest.mark.docker
def test_patch_that_does_not_apply(fixtures: dict[str, Instance], env_image: str) -> None:
    six = fixtures["six-1.14.0"]
    wrong = ("diff --git a/six.py b/six.py\n--- a/six.py\n+++ b/six.py\n@@ -10,3 +10,3 @@\n"
             " this line is not in six.py\n-neither is this one\n+so nothing applies\n and the end\n")
    result = grade_detailed(six, wrong, env_image)
    assert not result.patch_applied and result.apply_method is None and not result.resolved
    assert result.error is None and result.official_report is None  # the official harness writes none either
    assert "patch --batch --forward --fuzz=5 -p1 -i" in result.log_tail and ">>>>> Patch Apply Failed" in result.log_tail
    assert result.line().startswith("no-apply")
    evaluation = result.evaluation()
    assert (evaluation.patch_applied, evaluation.apply_method, evaluation.resolved) == (False, None, False)


@pytest.mark.docker
def test_apply_chain_falls_back_to_patch_with_fuzz(fixtures: dict[str, Instance], env_image: str,
                                                    tmp_path: Path) -> None:
    six = fixtures["six-1.14.0"]
    context = '     MovedModule("copyreg", "copy_reg"),\n'
    assert six.patch.count(context) == 1
    # A context line that no longer matches (git apply refuses) and a hunk header 9 lines off.
    fuzzy = six.patch.replace(context, '     MovedModule("copyreg", "copy_reg"),  # edited since\n') \
                     .replace("@@ -259,7 +259,7 @@", "@@ -250,7 +250,7 @@")
    result = grade_detailed(six, fuzzy, env_image, log_file=tmp_path / "six.log")
    assert result.patch_applied and result.apply_method == "patch --batch --forward --fuzz=5 -p1 -i", result.log_tail
    assert "Hunk #3 succeeded at 259 with fuzz 1 (offset 9 lines)." in (tmp_path / "six.log").read_text()
    assert result.resolved, result.log_tail


@pytest.mark.docker
def test_k_samples_give_pass_at_k_and_the_selected_score(fixtures: dict[str, Instance], env_image: str,
                                                         tmp_path: Path) -> None:
    six, idna, wc = fixtures["six-1.14.0"], fixtures["idna-3.4"], fixtures["wcwidth-0.2.13"]
    instances = tmp_path / "instances.jsonl"
    missing = six.model_copy(update={"instance_id": "six-missing-test",
                                     "PASS_TO_PASS": six.PASS_TO_PASS + ["test_six.py::test_not_in_the_log"]})
    instances.write_text("".join(i.model_dump_json() + "\n" for i in (six, idna, wc, missing)))
    readme = edit_patch(idna, "README.rst", "A harmless note.")
    preds = _preds(tmp_path / "preds.jsonl", [
        (six.instance_id, six.patch), (six.instance_id, ""), (six.instance_id, six.patch),  # 2 of 3
        (idna.instance_id, readme), (idna.instance_id, readme), (idna.instance_id, idna.patch),  # vote: readme
        (wc.instance_id, six.patch), (wc.instance_id, wc.patch), (wc.instance_id, ""),  # does not apply, gold
        (missing.instance_id, six.patch), (missing.instance_id, six.patch), (missing.instance_id, six.patch),
    ])
    one = run_eval(preds, instances, workers=1, report_path=tmp_path / "one" / "r.json", select=MAJORITY)
    two = run_eval(preds, instances, workers=2, report_path=tmp_path / "two" / "r.json", select=MAJORITY)
    strip = ("duration_s", "log_tail")
    assert [r.model_dump(exclude=set(strip)) for r in one.results] == [r.model_dump(exclude=set(strip))
                                                                      for r in two.results]
    resolved = {(r.instance_id, r.sample): r.resolved for r in one.results}
    assert [resolved[six.instance_id, k] for k in range(3)] == [True, False, True]
    assert [resolved[idna.instance_id, k] for k in range(3)] == [False, False, True]
    assert [resolved[wc.instance_id, k] for k in range(3)] == [False, True, False]
    assert not any(resolved[missing.instance_id, k] for k in range(3))  # a P2P test absent from the log fails
    scores = one.scores
    assert scores is not None and scores.instances == 4
    assert scores.pass_at_1 == pytest.approx((2 / 3 + 1 / 3 + 1 / 3 + 0) / 4)
    assert scores.pass_at_k[3] == pytest.approx(3 / 4)
    assert (scores.selected_method, scores.selected_resolved) == ("majority vote", 1)  # six only
    assert "pass@3 0.750 (unbiased estimator)" in one.summary()
    runs = sorted(p.name for p in (tmp_path / "one").glob("test.cwm-eval.sample*.json"))
    assert runs == ["test.cwm-eval.sample0.json", "test.cwm-eval.sample1.json", "test.cwm-eval.sample2.json"]
    first = json.loads((tmp_path / "one" / "test.cwm-eval.sample0.json").read_text())
    assert (first["resolved_ids"], first["error_ids"]) == ([six.instance_id], [wc.instance_id])


@pytest.mark.docker
def test_run_tests_reads_statuses_with_the_official_parser(fixtures: dict[str, Instance], env_image: str) -> None:
    """The fixture builder's call: tests before and after the fix."""
    wc = fixtures["wcwidth-0.2.13"]
    env = load_registry().envs["pypi-pure"]
    before = run_tests(wc, "", env_image, env, ["tests/test_core.py"])
    after = run_tests(wc, wc.patch, env_image, env, ["tests/test_core.py"])
    for test in wc.FAIL_TO_PASS:
        assert not passed(before.statuses, test) and passed(after.statuses, test)
    assert grade(wc, wc.patch, env_image).resolved

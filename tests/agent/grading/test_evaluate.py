"""Grading: the pytest log parser on real pytest output, environment specs, and `grade` / `agent eval`
end to end on the PyPI fixtures (real libraries, real releases) in real Docker sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.grading.evaluate import grade, grade_detailed, parse_pytest_log, passed, patch_files, run_eval
from agent.instances.envs import EnvError, EnvSpec, ensure_env_image, load_registry
from agent.instances.records import Instance
from agent.instances.sources import load_instances, repo_source
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
PYPI = ROOT / "tests" / "fixtures" / "pypi"

SAMPLE_TESTS = '''
import pytest

def test_ok():
    pass

def test_fail():
    assert 1 == 2

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_error(broken):
    pass

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed now")
def test_xpass():
    pass

@pytest.mark.parametrize("text", ["a b", "x - y", "[", "ok"])
def test_param(text):
    assert text != "x - y"

class TestGroup:
    def test_method(self):
        pass

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_teardown(bad_teardown):
    pass
'''

EXPECTED = {
    "test_sample.py::test_ok": "PASSED",
    "test_sample.py::test_fail": "FAILED",
    "test_sample.py::test_error": "ERROR",
    "test_sample.py::test_xfail": "XFAIL",
    "test_sample.py::test_xpass": "XPASS",
    "test_sample.py::test_param[a b]": "PASSED",
    "test_sample.py::test_param[x - y]": "FAILED",
    "test_sample.py::test_param[[]": "PASSED",
    "test_sample.py::test_param[ok]": "PASSED",
    "test_sample.py::TestGroup::test_method": "PASSED",
    "test_sample.py::test_teardown": "ERROR",  # PASSED, then an error in teardown: the worse wins
}


@pytest.fixture(scope="module")
def real_pytest_log() -> str:
    """`pytest -rA` output of a real run (this interpreter's pytest) over every kind of outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_sample.py").write_text(SAMPLE_TESTS)
        Path(tmp, "test_broken_import.py").write_text("import not_a_module\n\ndef test_never():\n    pass\n")
        done = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
                               "--continue-on-collection-errors"],
                              cwd=tmp, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout
    return done.stdout


def test_parser_on_real_pytest_output(real_pytest_log: str) -> None:
    statuses = parse_pytest_log(real_pytest_log)
    for test_id, status in EXPECTED.items():
        assert statuses.get(test_id) == status, (test_id, statuses)
    assert "test_sample.py::test_skipped" not in statuses  # SKIPPED lines name file:line, not a test
    assert statuses.get("test_broken_import.py") == "ERROR"  # a collection error names the file
    assert not passed(statuses, "test_broken_import.py::test_never")  # absent: failed


def test_parser_with_known_ids_and_verbose_lines(real_pytest_log: str) -> None:
    known = list(EXPECTED)
    assert {k: v for k, v in parse_pytest_log(real_pytest_log, known).items() if k in EXPECTED} == EXPECTED
    verbose = ("tests/test_x.py::test_a PASSED                [ 50%]\n"
               "tests/test_x.py::test_b[1 2] FAILED           [100%]\n"
               "\x1b[32mPASSED\x1b[0m tests/test_x.py::test_c\n")
    assert parse_pytest_log(verbose) == {"tests/test_x.py::test_a": "PASSED", "tests/test_x.py::test_b[1 2]": "FAILED",
                                         "tests/test_x.py::test_c": "PASSED"}


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


@pytest.mark.docker
def test_gold_patch_resolves_every_fixture(fixtures: dict[str, Instance], env_image: str) -> None:
    assert len(fixtures) >= 2
    for instance in fixtures.values():
        evaluation = grade(instance, instance.patch, env_image)
        assert evaluation.resolved, (instance.instance_id, evaluation.log[-3000:])
        assert all(evaluation.fail_to_pass.values()) and all(evaluation.pass_to_pass.values())
        assert set(evaluation.fail_to_pass) == set(instance.FAIL_TO_PASS)
        assert evaluation.log.startswith("patch: git apply")
        assert (evaluation.patch_applied, evaluation.apply_method, evaluation.empty_patch) == (True, "git apply", False)


@pytest.mark.docker
def test_patch_that_does_not_apply(fixtures: dict[str, Instance], env_image: str) -> None:
    six = fixtures["six-1.14.0"]
    wrong = ("diff --git a/six.py b/six.py\n--- a/six.py\n+++ b/six.py\n@@ -10,3 +10,3 @@\n"
             " this line is not in six.py\n-neither is this one\n+so nothing applies\n and the end\n")
    result = grade_detailed(six, wrong, env_image)
    assert not result.patch_applied and result.apply_method is None and not result.resolved
    assert result.error is None and "git apply failed; trying patch" in result.log_tail
    assert result.line().startswith("no-apply")
    evaluation = result.evaluation()  # as the trajectory's end record keeps it
    assert (evaluation.patch_applied, evaluation.apply_method, evaluation.resolved) == (False, None, False)


@pytest.mark.docker
def test_patch_fallback_applies_with_offset_and_fuzz(fixtures: dict[str, Instance], env_image: str,
                                                     tmp_path: Path) -> None:
    six = fixtures["six-1.14.0"]
    context = '     MovedModule("copyreg", "copy_reg"),\n'
    assert six.patch.count(context) == 1
    # A context line that no longer matches (git apply refuses) and a hunk header 9 lines off.
    fuzzy = six.patch.replace(context, '     MovedModule("copyreg", "copy_reg"),  # edited since\n') \
                     .replace("@@ -259,7 +259,7 @@", "@@ -250,7 +250,7 @@")
    result = grade_detailed(six, fuzzy, env_image, log_file=tmp_path / "six.log")
    assert result.patch_applied and result.apply_method == "patch", result.log_tail
    assert "Hunk #3 succeeded at 259 with fuzz 1 (offset 9 lines)." in (tmp_path / "six.log").read_text()
    assert result.resolved, result.log_tail


@pytest.mark.docker
def test_parallel_eval_gives_the_same_report(fixtures: dict[str, Instance], env_image: str, tmp_path: Path) -> None:
    six, idna = fixtures["six-1.14.0"], fixtures["idna-3.4"]
    more, wc = fixtures["more-itertools-11.0.1"], fixtures["wcwidth-0.2.13"]
    missing = six.model_copy(update={"instance_id": "six-missing-test",
                                     "PASS_TO_PASS": six.PASS_TO_PASS + ["test_six.py::test_not_in_the_log"]})
    instances = tmp_path / "instances.jsonl"
    instances.write_text("".join(i.model_dump_json() + "\n" for i in (six, idna, more, wc, missing)))
    predictions = [
        (six.instance_id, six.patch),  # resolved
        (idna.instance_id, edit_patch(idna, "README.rst", "A harmless note.")),  # applies, fixes nothing
        (more.instance_id, ""),  # empty
        (wc.instance_id, six.patch),  # the wrong project's patch: does not apply
        (missing.instance_id, six.patch),  # a PASS_TO_PASS test absent from the log counts as failed
    ]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"instance_id": i, "model_name_or_path": "test", "model_patch": p}) + "\n"
                             for i, p in predictions))
    one = run_eval(preds, instances, workers=1, report_path=tmp_path / "one.json")
    run_eval(preds, instances, workers=2, report_path=tmp_path / "two.json")

    def comparable(path: Path) -> list[dict]:
        data = json.loads(path.read_text())
        assert data["predictions_file"] == str(preds)
        return [{k: v for k, v in r.items() if k not in ("duration_s", "log_tail")} for r in data["results"]]

    assert comparable(tmp_path / "one.json") == comparable(tmp_path / "two.json")
    results = {r.instance_id: r for r in one.results}
    assert [r.instance_id for r in one.results] == sorted(results)
    assert results["six-1.14.0"].resolved
    readme_only = results["idna-3.4"]
    assert readme_only.patch_applied and not readme_only.resolved
    assert not any(readme_only.fail_to_pass.values()) and all(readme_only.pass_to_pass.values())
    assert results["more-itertools-11.0.1"].empty_patch and not results["more-itertools-11.0.1"].resolved
    assert not results["wcwidth-0.2.13"].patch_applied and results["wcwidth-0.2.13"].error is None
    absent = results["six-missing-test"]
    assert not absent.resolved and absent.pass_to_pass["test_six.py::test_not_in_the_log"] is False
    assert sum(absent.pass_to_pass.values()) == len(six.PASS_TO_PASS)
    assert one.summary().splitlines()[-1].startswith("resolved 1/5 (20.0%); errors 0, empty patches 1, "
                                                     "patches that did not apply 1")
    assert (tmp_path / "one.logs" / "six-1.14.0.log").read_text().count("PASSED test_six.py::") >= 180

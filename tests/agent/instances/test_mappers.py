"""One mapper per family: SWE-smith (the bug patch reversed into the gold fix, the bug branch, the
test files from the commit before it), SWE-rebench (image, list-valued tests, install_config), Multimodal
(image_assets), SWE-bench; columns nothing honours are kept and reported once per column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.instances.mappers import RowMapper, detect_family, instances_from_rows
from agent.instances.patches import invert_patch
from agent.instances.records import Instance
from agent.instances.sources import load_instances
from tests.agent.instances.dataset_rows import (
    SMITH_ID,
    multimodal_row,
    rebench_row,
    smith_row,
    swe_bench_row,
    write_jsonl,
    write_parquet,
)
from tests.helpers import REPO_ROOT

BUG = ("diff --git a/calc/__init__.py b/calc/__init__.py\nindex 1111111..2222222 100644\n--- a/calc/__init__.py\n"
       "+++ b/calc/__init__.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a + b\n+    return a - b\n")


def notices(rows: list[dict], family: str | None = None) -> dict[str, str]:
    mapper = RowMapper(family)
    for index, row in enumerate(rows):
        mapper.check(Instance.model_validate(mapper.record(row, f"rows[{index}]")), f"rows[{index}]")
    return {column: notice.line() for column, notice in mapper.notices.items()}


def test_families_are_told_by_their_columns() -> None:
    assert [detect_family(row) for row in (swe_bench_row(), smith_row(BUG), rebench_row(), multimodal_row())] == [
        "swe-bench", "swe-smith", "swe-rebench", "multimodal"]
    local = {"instance_id": "six-1.14.0", "repo": "benjaminp/six", "repo_path": "six.bundle", "base_commit": "d"}
    assert detect_family(local) is None  # the runner's own record (a local repository)
    assert detect_family({"instance_id": "a-1", "repo": "o/n", "problem_statement": "p"}) is None


# -- SWE-smith ---------------------------------------------------------------------------------------


def test_swe_smith_patch_creates_the_bug_so_the_gold_fix_is_its_reverse(tmp_path: Path) -> None:
    (instance,) = load_instances(write_jsonl(tmp_path / "smith.jsonl", [smith_row(BUG)]))
    assert (instance.dataset, instance.image) == ("swe-smith", "swebench/swesmith.x86_64.calc_1776_calc.1a2b3c4d")
    assert instance.patch == invert_patch(BUG) and "+    return a + b" in instance.patch
    assert instance.bug_patch == BUG and "bug_patch" not in instance.extra  # kept, never the fix
    assert (instance.base_commit, instance.tests_commit) == (SMITH_ID, f"{SMITH_ID}~1")
    assert instance.FAIL_TO_PASS == ["tests/test_calc.py::test_add"] and "image_name" not in instance.extra


def test_swe_smith_row_naming_its_bug_commit_needs_no_test_commit(tmp_path: Path) -> None:
    (instance,) = load_instances(write_jsonl(tmp_path / "smith.jsonl", [smith_row(BUG, base_commit="f" * 40)]))
    assert (instance.base_commit, instance.tests_commit) == ("f" * 40, None)


def test_a_run_directorys_smith_instance_keeps_its_bug_patch_mapped_once(tmp_path: Path) -> None:
    """instances.jsonl of a run is read as it is (the fix is not reversed again); files written before
    `bug_patch` was a field kept it in `extra`."""
    (mapped,) = load_instances(write_jsonl(tmp_path / "smith.jsonl", [smith_row(BUG)]))
    (again,) = load_instances(write_jsonl(tmp_path / "run.jsonl", [mapped.model_dump()]))
    assert (again.bug_patch, again.patch) == (BUG, mapped.patch)
    older = {**mapped.model_dump(exclude={"bug_patch"}), "extra": {"bug_patch": BUG, "license_name": "MIT"}}
    (old,) = load_instances(write_jsonl(tmp_path / "older.jsonl", [older]))
    assert (old.bug_patch, old.extra, old.patch) == (BUG, {"license_name": "MIT"}, mapped.patch)


def test_a_binary_bug_patch_leaves_no_gold_fix_and_says_so() -> None:
    binary = "diff --git a/x.png b/x.png\nGIT binary patch\nliteral 1\nKcmV+b0RR6000031\n"
    assert notices([smith_row(binary)]) == {
        "patch": "rows[0]: patch: the bug patch cannot be reversed (it holds binary changes, which cannot be reversed "
                 "as text): no gold fix (`--gold` cannot check it)"}


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def smith_repository(root: Path, remove_tests: bool = True) -> tuple[Path, str]:
    """SWE-smith's layout: the clean snapshot, then on a branch named by the instance id the `Bug Patch`
    commit and, on top, `Remove F2P Tests`. Returns the repository and the bug patch (clean -> bug)."""
    repo = root / "calc"
    (repo / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "calc" / "__init__.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_sub():\n"
        "    assert 5 - 3 == 2\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Initial commit")
    git(repo, "checkout", "-q", "-b", SMITH_ID)
    (repo / "calc" / "__init__.py").write_text("def add(a, b):\n    return a - b\n")
    git(repo, "commit", "-qam", "Bug Patch")
    bug = git(repo, "diff", "main", "HEAD") + "\n"
    if remove_tests:
        git(repo, "rm", "-q", "tests/test_calc.py")
        git(repo, "commit", "-qm", "Remove F2P Tests")
    git(repo, "checkout", "-q", "main")
    return repo, bug


def pytest_in(repo: Path) -> int:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo,
                          capture_output=True, text=True).returncode


def test_swe_smith_mapping_grades_like_swe_smith_on_its_branch_layout(tmp_path: Path) -> None:
    """On a real repository laid out as SWE-smith publishes it: the episode starts at the bug branch (its
    head has no F2P test file), grading restores the test files from `tests_commit`, and the gold fix
    makes them pass where the bug made them fail."""
    repo, bug = smith_repository(tmp_path)
    (instance,) = load_instances(write_jsonl(tmp_path / "smith.jsonl", [smith_row(bug)]))
    git(repo, "checkout", "-q", instance.base_commit)
    assert not (repo / "tests" / "test_calc.py").exists()  # what the model sees: the tests are not there
    git(repo, "checkout", instance.tests_commit or "", "--", "tests/test_calc.py")
    assert pytest_in(repo) == 1  # the bug is in place
    (tmp_path / "gold.diff").write_text(instance.patch)
    git(repo, "apply", str(tmp_path / "gold.diff"))
    assert pytest_in(repo) == 0


@pytest.mark.docker
def test_eval_gold_resolves_a_swe_smith_row(tmp_path: Path, base_image: str) -> None:
    """`agent eval --gold` grades the reversed bug patch at the bug commit (a row naming its commit, as
    SWE-smith's first releases did), in a real sandbox: resolved."""
    repo, bug = smith_repository(tmp_path, remove_tests=False)
    row = smith_row(bug, base_commit=git(repo, "rev-parse", SMITH_ID))
    del row["image_name"]  # the repository comes from the local clone here, not from SWE-smith's image
    instances = instances_from_rows([("row", {**row, "repo_path": str(repo)})], "rows", family="swe-smith")
    path = tmp_path / "mapped.jsonl"
    path.write_text("".join(i.model_dump_json() + "\n" for i in instances))
    done = subprocess.run(["agent", "eval", "--gold", "--instances", str(path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resolved 1/1" in done.stdout


def test_rows_in_the_runners_form_are_not_mapped_again(tmp_path: Path) -> None:
    """A run directory's instances.jsonl holds mapped instances: reading it back must not reverse the fix
    into the bug again."""
    (mapped,) = load_instances(write_jsonl(tmp_path / "smith.jsonl", [smith_row(BUG)]))
    again = tmp_path / "instances.jsonl"
    again.write_text(mapped.model_dump_json() + "\n")
    assert load_instances(again) == [mapped]


# -- SWE-rebench ----------------------------------------------------------------------------------------


def test_swe_rebench_rows(tmp_path: Path) -> None:
    (instance,) = load_instances(write_jsonl(tmp_path / "rebench.jsonl", [rebench_row()]))
    assert (instance.dataset, instance.image) == ("swe-rebench", "swerebench/sweb.eval.x86_64.owner_1776_project-1")
    assert (instance.FAIL_TO_PASS, instance.PASS_TO_PASS) == (["tests/test_p.py::test_new"], ["tests/test_p.py::test_old"])
    config = instance.install_config
    assert config is not None and (config.python, config.packages, config.test_cmd) == (
        "3.9", "requirements.txt", "pytest --no-header -rA --tb=line")
    assert (config.requirements, config.environment, config.pip_packages) == ("pytest==7.4.0\n", "name: testbed\n",
                                                                            ["pytest"])
    assert set(instance.extra) == {"created_at", "hints_text", "meta", "FAIL_TO_FAIL", "PASS_TO_FAIL", "license_name"}


def test_swe_rebench_parquet_with_mixed_install_keys_loads_as_its_json_lines(tmp_path: Path) -> None:
    """Parquet stores install_config as one struct of every key: keys a row lacks must not appear."""
    rows = [rebench_row(1), rebench_row(2, install_config={"python": "3.11", "test_cmd": "pytest -rA"})]
    from_jsonl = load_instances(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert load_instances(write_parquet(tmp_path / "rows.parquet", rows)) == from_jsonl
    assert from_jsonl[1].install_config is not None and from_jsonl[1].install_config.model_extra == {}


def test_install_keys_nothing_reads_are_reported_only_when_the_image_is_built() -> None:
    assert notices([rebench_row()]) == {}  # the row's image already holds what the spec installs
    assert notices([rebench_row(1, docker_image=None), rebench_row(2, docker_image=None)]) == {
        "install_config.reqs_path": "rows[0] and 1 more rows: install_config.reqs_path: not read when building the "
                                    "environment (the build may lack what it adds)"}


# -- Multimodal, unknown columns --------------------------------------------------------------------------


def test_multimodal_assets_are_kept_and_what_is_lost_is_said(tmp_path: Path) -> None:
    (instance,) = load_instances(write_jsonl(tmp_path / "mm.jsonl", [multimodal_row()]))
    assert instance.dataset == "multimodal"
    assert instance.image_assets == {"problem_statement": ["https://example.invalid/1.png"], "patch": [],
                                     "test_patch": []}
    empty = multimodal_row(2, image_assets=json.dumps({"problem_statement": [], "patch": [], "test_patch": []}),
                           FAIL_TO_PASS="[]")
    assert notices([multimodal_row(), empty]) == {
        "image_assets": "rows[0]: image_assets: the images the problem statement links to are not shown (CWM reads "
                        "text: the links stay in the text), and binary files of patch/test_patch are not put in "
                        "place for grading",
        "FAIL_TO_PASS": "rows[1]: FAIL_TO_PASS: empty: nothing decides whether the instance is resolved, so it "
                        "cannot be graded"}


def test_unknown_columns_are_kept_and_reported_once_per_column(tmp_path: Path) -> None:
    rows = [swe_bench_row(n, pip_packages=["hypothesis"], language="python") for n in range(3)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with capture_logs() as logs:
        instances = load_instances(path)
    assert [i.extra["pip_packages"] for i in instances] == [["hypothesis"]] * 3
    reported = sorted(entry["detail"] for entry in logs if entry["event"] == "instances.column_not_honoured")
    assert reported == [
        f"{path}:1 and 2 more rows: language: not used by the runner (kept in Instance.extra)",
        f"{path}:1 and 2 more rows: pip_packages: not used by the runner (kept in Instance.extra)"]
    assert all(entry["log_level"] == "warning" for entry in logs if entry["event"] == "instances.column_not_honoured")

"""Datasets as distributed: the same rows load as the same instances from JSON Lines, Parquet, a
`save_to_disk` folder (one split or several), a local copy of a Hub repository, and `--subset` through a
real `datasets` cache read in offline mode; a dataset that is not cached is one clear line; the
`datasets` extra is imported only by the sources that need it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.instances.datasets import SUBSETS, DatasetSource
from agent.instances.records import Instance, InstanceSourceError
from agent.instances.sources import LoadedSource, load_instances
from tests.agent.instances.dataset_rows import (
    hub_cache,
    hub_copy,
    save_to_disk,
    swe_bench_row,
    write_jsonl,
    write_parquet,
)
from tests.helpers import REPO_ROOT

PYPI = REPO_ROOT / "tests" / "fixtures" / "pypi"


def dumps(instances: list[Instance]) -> list[dict[str, object]]:
    return [i.model_dump(mode="json") for i in instances]


def offline(hf_home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it on a machine without internet: its own HF_HOME, offline mode on."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_DATASETS_CACHE", None)
    return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)


def loaded_offline(hf_home: Path, *sources: dict[str, str]) -> list[str]:
    """Each DatasetSource loaded in one offline process: its instances as JSON, or `ERROR <line>`."""
    code = ("import json, sys\nfrom agent.instances.datasets import DatasetSource\n"
            "from agent.instances.sources import load_instances\n"
            "for source in json.loads(sys.argv[1]):\n"
            "    try:\n        print(json.dumps([i.model_dump(mode='json') for i in load_instances(DatasetSource(**source))]))\n"
            "    except ValueError as error:\n        print('ERROR', error)\n")
    done = offline(hf_home, sys.executable, "-c", code, json.dumps(sources))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- every form, the same instances ------------------------------------------------------------------


def test_every_distributed_form_loads_the_same_instances(tmp_path: Path) -> None:
    rows = [swe_bench_row(1), swe_bench_row(2, hints_text="try the parser")]
    expected = dumps(load_instances(write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert [e["dataset"] for e in expected] == ["swe-bench", "swe-bench"]
    assert expected[0]["FAIL_TO_PASS"] == ["t.py::test_1"] and expected[1]["extra"]["hints_text"] == "try the parser"
    forms = {
        "parquet": write_parquet(tmp_path / "rows.parquet", rows),
        "save_to_disk": save_to_disk(tmp_path / "saved", rows),
        "save_to_disk with splits": save_to_disk(tmp_path / "saved-splits", rows, split="test"),
        "hub repository copy": hub_copy(tmp_path / "hub", "SWE-bench/SWE-bench_Lite", rows),
    }
    for form, path in forms.items():
        assert dumps(load_instances(path)) == expected, form


def test_a_folder_of_several_splits_takes_split(tmp_path: Path) -> None:
    folder = save_to_disk(tmp_path / "saved", [swe_bench_row(1), swe_bench_row(2)], split="test")
    assert len(load_instances(folder)) == 2  # test, when no split is named
    assert [i.instance_id for i in load_instances(folder, split="dev")] == ["astropy__astropy-12901"]
    with pytest.raises(InstanceSourceError) as caught:
        load_instances(folder, split="train")
    assert str(caught.value) == f"{folder}: no split 'train' (it has: test, dev); choose one with --split"


def test_a_bad_row_in_parquet_names_its_index_and_field(tmp_path: Path) -> None:
    rows = [swe_bench_row(1), {**swe_bench_row(2), "problem_statement": ""}]
    path = write_parquet(tmp_path / "rows.parquet", rows)
    with pytest.raises(InstanceSourceError) as caught:
        load_instances(path)
    assert str(caught.value) == f"{path}[1]: problem_statement: String should have at least 1 character"


def test_a_file_that_is_not_parquet_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_text("not parquet\n")
    with pytest.raises(InstanceSourceError) as caught:
        load_instances(path)
    assert str(caught.value).startswith(f"{path}: not a readable Parquet file (")


def test_a_loaded_source_is_not_read_again(tmp_path: Path) -> None:
    instances = load_instances(write_jsonl(tmp_path / "rows.jsonl", [swe_bench_row(1)]))
    source = LoadedSource(name="checked set", instances=instances)
    assert load_instances(source) == instances and str(source) == "checked set"


# -- by name, through the datasets cache -----------------------------------------------------------------


def test_subsets_name_the_published_datasets() -> None:
    assert {name: s.name for name, s in SUBSETS.items()} == {
        "verified": "SWE-bench/SWE-bench_Verified", "lite": "SWE-bench/SWE-bench_Lite",
        "full": "SWE-bench/SWE-bench", "multilingual": "SWE-bench/SWE-bench_Multilingual",
        "multimodal": "SWE-bench/SWE-bench_Multimodal", "gym": "SWE-Gym/SWE-Gym", "smith": "SWE-bench/SWE-smith",
        "rebench": "nebius/SWE-rebench"}
    assert str(DatasetSource(subset="gym")) == "SWE-Gym/SWE-Gym (split train)"
    assert DatasetSource(subset="someone/Other_Set").family is None


def test_subset_loads_offline_from_the_datasets_cache(tmp_path: Path) -> None:
    """The cache a machine with internet leaves, read with HF_HUB_OFFLINE=1 by the library's own fallback."""
    rows = [swe_bench_row(1), swe_bench_row(2)]
    hf_home = tmp_path / "hf"
    hub_cache(hf_home, "SWE-bench/SWE-bench_Verified", rows)
    right, wrong = loaded_offline(hf_home, {"subset": "verified", "split": "test"}, {"subset": "verified",
                                                                                  "split": "dev"})
    assert json.loads(right) == dumps(load_instances(write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert wrong.startswith("ERROR SWE-bench/SWE-bench_Verified: no split 'dev'"), wrong


def test_subset_from_a_dataset_dir(tmp_path: Path) -> None:
    rows = [swe_bench_row(3)]
    hub_copy(tmp_path / "mirror", "SWE-bench/SWE-bench_Lite", rows)
    instances = load_instances(DatasetSource(subset="lite", dataset_dir=tmp_path / "mirror"))
    assert dumps(instances) == dumps(load_instances(write_jsonl(tmp_path / "rows.jsonl", rows)))
    with pytest.raises(InstanceSourceError) as caught:
        load_instances(DatasetSource(subset="verified", dataset_dir=tmp_path / "mirror"))
    expected = tmp_path / "mirror" / "SWE-bench" / "SWE-bench_Verified"
    assert str(caught.value) == (f"--dataset-dir {tmp_path / 'mirror'}: no copy of SWE-bench/SWE-bench_Verified at "
                                 f"{expected}; make one with `hf download SWE-bench/SWE-bench_Verified --repo-type "
                                 f"dataset --local-dir {expected}`")


def test_a_subset_not_cached_offline_is_one_line_saying_how_to_fetch_it(tmp_path: Path) -> None:
    done = offline(tmp_path / "empty-hf", "agent", "batch", "--subset", "lite", "--split", "test",
                   "-o", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done.stderr)
    cache = tmp_path / "empty-hf" / "datasets"
    assert line == (
        f"error: SWE-bench/SWE-bench_Lite (split test) is not in the Hugging Face datasets cache ({cache}) and "
        "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): on a machine with internet run `python3 -c "
        "\"import datasets; datasets.load_dataset('SWE-bench/SWE-bench_Lite', split='test')\"` and copy "
        f"{cache} here (or point HF_DATASETS_CACHE at the copy), or run `hf download SWE-bench/SWE-bench_Lite "
        "--repo-type dataset --local-dir DIR/SWE-bench/SWE-bench_Lite` and pass --dataset-dir DIR")
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_the_options_refuse_contradictions_in_one_line(tmp_path: Path) -> None:
    cases = {
        ("batch", str(tmp_path / "x.jsonl"), "--subset", "lite", "-o", str(tmp_path / "r")):
            "error: give INSTANCES or --subset, not both",
        ("batch", "--dataset-dir", str(tmp_path), "-o", str(tmp_path / "r")):
            "error: --dataset-dir goes with --subset (it holds local copies of Hub datasets)",
        ("batch", "--subset", "verifed", "-o", str(tmp_path / "r")):
            "error: --subset 'verifed': choose one of verified, lite, full, multilingual, multimodal, gym, smith, "
            "rebench or give a Hugging Face dataset name (owner/name)",
        ("eval", "--gold"): "error: give --instances (a file or folder of instances) or --subset NAME --split NAME",
        ("eval", "--gold", "--instances", str(PYPI / "instances.jsonl"), "--split", "test"):
            f"error: --split picks a split of a Hugging Face dataset (--subset or a dataset folder); "
            f"{PYPI / 'instances.jsonl'} is a file",
    }
    for args, expected in cases.items():
        done = offline(tmp_path / "hf", "agent", *args)
        assert (done.returncode, error_lines(done.stderr)) == (2, [expected]), args


@pytest.mark.docker
def test_eval_gold_of_a_subset_read_offline_resolves(tmp_path: Path, base_image: str) -> None:
    """End to end: `agent eval --gold --subset verified --split test` on a machine without internet,
    the rows (local repositories of the PyPI fixtures) coming from the datasets cache."""
    rows = [json.loads(line) for line in (PYPI / "instances.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        row["repo_path"] = str(PYPI / row["repo_path"])
    hf_home = tmp_path / "hf"
    hub_cache(hf_home, "SWE-bench/SWE-bench_Verified", rows)
    done = offline(hf_home, "agent", "eval", "--gold", "--subset", "verified", "--split", "test", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resolved 2/2" in done.stdout


@pytest.mark.docker
def test_images_pull_takes_a_subset(tmp_path: Path, base_image: str) -> None:
    """`agent images pull --subset ...`: the v5 rows name their image, here one this machine has."""
    hf_home = tmp_path / "hf"
    hub_cache(hf_home, "SWE-bench/SWE-bench_Lite", [swe_bench_row(1, image=base_image)])
    done = offline(hf_home, "agent", "images", "pull", "--subset", "lite", "--split", "test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 images present" in done.stdout


# -- the extra stays optional ------------------------------------------------------------------------


def test_datasets_and_pyarrow_are_imported_only_when_a_source_needs_them(tmp_path: Path) -> None:
    code = ("import sys\nimport agent.cli.main, agent.batch.run\nfrom agent.instances.sources import load_instances\n"
            f"load_instances({str(write_jsonl(tmp_path / 'rows.jsonl', [swe_bench_row(1)]))!r})\n"
            "print(sorted(m for m in ('datasets', 'pyarrow', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.stdout.strip() == "[]", done.stderr


def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    """As on an install without the extra: the modules cannot be imported (None in sys.modules)."""
    path = write_parquet(tmp_path / "rows.parquet", [swe_bench_row(1)])
    code = ("import sys\nfor name in ('datasets', 'pyarrow', 'pyarrow.parquet'):\n    sys.modules[name] = None\n"
            "from agent.cli.main import main\n"
            f"sys.argv = ['agent', 'batch', {str(path)!r}, '-o', {str(tmp_path / 'run')!r}]\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        f"error: {path}: reading Parquet needs the `datasets` extra (datasets, pyarrow), which is not installed: "
        "pip install 'cwm-runner[datasets]'"]

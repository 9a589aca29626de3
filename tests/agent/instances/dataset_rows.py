"""Rows shaped like each family's published columns, and the files and caches they are distributed in.

Column sets as the projects publish them: SWE-bench's docs/guides/datasets.md and harness (v4 rows,
plus `image`/`eval_script`/`log_parser`/`eval_type` in v5), SWE-smith's `harness/gather.py` (`image_name`,
a `patch` that creates the bug, list-valued tests), SWE-rebench's rows (`docker_image`, list-valued
tests, `install_config`, `requirements`, `environment`, FAIL_TO_FAIL/PASS_TO_FAIL, `meta`), SWE-bench
Multimodal (`image_assets` as a JSON string).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SMITH_ID = "calc__calc.1a2b3c4d.func_pm_op_swap__x1y2z3"


def swe_bench_row(n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "repo": "astropy/astropy", "instance_id": f"astropy__astropy-{12900 + n}", "base_commit": "c" * 40,
        "patch": "diff --git a/a.py b/a.py\n", "test_patch": "diff --git a/t.py b/t.py\n",
        "problem_statement": f"problem {n}", "hints_text": "", "created_at": "2022-03-03T15:14:54Z",
        "version": "4.3", "FAIL_TO_PASS": json.dumps([f"t.py::test_{n}"]), "PASS_TO_PASS": json.dumps(["t.py::ok"]),
        "environment_setup_commit": "e" * 40, "difficulty": "15 min - 1 hour", **extra,
    }


def smith_row(patch: str, **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": SMITH_ID, "repo": "swesmith/calc__calc.1a2b3c4d", "patch": patch,
        "FAIL_TO_PASS": ["tests/test_calc.py::test_add"], "PASS_TO_PASS": ["tests/test_calc.py::test_sub"],
        "created_at": "2025-04-01T00:00:00", "image_name": "swebench/swesmith.x86_64.calc_1776_calc.1a2b3c4d",
        "problem_statement": "add() subtracts", **extra,
    }


def rebench_row(n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": f"owner__project-{n}", "base_commit": "b" * 40, "created_at": "2025-01-02T03:04:05",
        "environment_setup_commit": "b" * 40, "hints_text": "", "patch": "diff --git a/p.py b/p.py\n",
        "problem_statement": f"rebench problem {n}", "repo": "owner/project", "test_patch": "", "version": "1.0",
        "meta": {"llm_score": {"difficulty_score": 1}, "has_test_patch": True},
        "install_config": {"python": "3.9", "packages": "requirements.txt", "pip_packages": ["pytest"],
                           "install": "pip install -e .", "test_cmd": "pytest --no-header -rA --tb=line",
                           "log_parser": "parse_log_pytest", "reqs_path": ["requirements.txt"]},
        "requirements": "pytest==7.4.0\n", "environment": "name: testbed\n",
        "FAIL_TO_PASS": ["tests/test_p.py::test_new"], "FAIL_TO_FAIL": [], "PASS_TO_PASS": ["tests/test_p.py::test_old"],
        "PASS_TO_FAIL": [], "license_name": "MIT", "docker_image": f"swerebench/sweb.eval.x86_64.owner_1776_project-{n}",
        **extra,
    }


def multimodal_row(n: int = 1, **extra: Any) -> dict[str, Any]:
    assets = {"problem_statement": [f"https://example.invalid/{n}.png"], "patch": [], "test_patch": []}
    fields = {"repo": "chartjs/Chart.js", "instance_id": f"chartjs__Chart.js-{1000 + n}",
              "image_assets": json.dumps(assets), **extra}
    return swe_bench_row(n, **fields)


# -- the forms datasets are distributed in -------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_to_disk(path: Path, rows: list[dict[str, Any]], split: str | None = None) -> Path:
    """`Dataset.save_to_disk`, or `DatasetDict.save_to_disk` with the rows as `split` (and a one-row 'dev')."""
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    if split is None:
        dataset.save_to_disk(str(path))
    else:
        datasets.DatasetDict({split: dataset, "dev": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(path))
    return path


def hub_copy(root: Path, name: str, rows: list[dict[str, Any]], split: str = "test") -> Path:
    """What `hf download NAME --repo-type dataset --local-dir ROOT/NAME` leaves: data/<split>-*.parquet."""
    folder = root / name
    (folder / "data").mkdir(parents=True)
    write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", rows)
    (folder / "README.md").write_text(f"# {name}\n")
    return folder


def hub_cache(hf_home: Path, name: str, rows: list[dict[str, Any]], split: str = "test",
              revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The datasets cache entry `load_dataset(name, split=split)` leaves on a machine with internet,
    written by the library's own Parquet builder into the folder the library looks in offline:
    HF_HOME/datasets/<owner>___<snake_case name>/default/0.0.0/<revision>/."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, short = name.split("/")
    snake = camelcase_to_snakecase(short)
    hf_home.mkdir(parents=True, exist_ok=True)
    source = write_parquet(hf_home / f"{snake}-{split}.parquet", rows)
    output = hf_home / "datasets" / f"{owner}___{snake}" / "default" / "0.0.0" / revision
    builder = Parquet(dataset_name=snake, config_name="default", data_files={split: str(source)},
                      cache_dir=str(hf_home / "scratch"))
    builder.download_and_prepare(output_dir=str(output))
    source.unlink()
    return output

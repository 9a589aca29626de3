"""The official SWE-bench harnesses as the reference for the grading tests, run offline.

- swebench 5.0.2 (the `grading` extra, installed): `python -m swebench.harness.run_evaluation` with a
  local JSON dataset, as a separate process in its own working folder. It finds each row's image
  locally (`client.images.get`) and so never pulls; the dataset is a file, so nothing reaches Hugging
  Face.
- swebench 4.1.0, the last release with the per-repository specifications, unpacked from its wheel
  into a cache folder (no dependencies installed: the 5.0.2 ones serve) and imported in a subprocess
  with that folder first on PYTHONPATH. It turns SWE-bench 4.x rows into the rows swebench 5 runs:
  its own eval script (`make_eval_script_list` and `TestSpec.eval_script`), image name
  (`TestSpec.instance_image_key` with a namespace) and log parser (`MAP_REPO_TO_PARSER`). Its
  `make_test_spec` is not called: it fetches requirements files from GitHub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

SWEBENCH4 = "4.1.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cwm-runner" / f"swebench-{SWEBENCH4}"

TRANSLATE = r"""
import json, sys
from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS
from swebench.harness.log_parsers import MAP_REPO_TO_PARSER
from swebench.harness.test_spec.create_scripts import make_eval_script_list
from swebench.harness.test_spec.test_spec import TestSpec
import swebench
assert swebench.__version__ == sys.argv[1], swebench.__version__
rows, namespace = json.load(sys.stdin)
out = []
for row in rows:
    specs = MAP_REPO_VERSION_TO_SPECS[row["repo"]][row["version"]]
    script = make_eval_script_list(row, specs, "testbed", "/testbed", row["base_commit"], row["test_patch"])
    spec = TestSpec(instance_id=row["instance_id"], repo=row["repo"], version=row["version"], repo_script_list=[],
                    eval_script_list=script, env_script_list=[], arch="x86_64", FAIL_TO_PASS=row["FAIL_TO_PASS"],
                    PASS_TO_PASS=row["PASS_TO_PASS"], language="py", docker_specs={}, namespace=namespace)
    out.append({**row, "image": spec.instance_image_key, "eval_script": spec.eval_script,
                "log_parser": MAP_REPO_TO_PARSER[row["repo"]].__name__, "eval_type": "pass_and_fail"})
json.dump(out, sys.stdout)
"""


def swebench4() -> Path:
    """The unpacked swebench 4.1.0 (downloaded once per machine with pip, no dependencies)."""
    marker = CACHE / "swebench" / "__init__.py"
    if not marker.is_file():
        wheels = CACHE.parent / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"swebench=={SWEBENCH4}",
                        "-d", str(wheels)], check=True, timeout=300)
        wheel = next(wheels.glob(f"swebench-{SWEBENCH4}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(CACHE)
    return CACHE


def translate_v4_rows(rows: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """SWE-bench 4.x rows as swebench 4.1.0 itself turns them into what swebench 5 runs."""
    env = {**os.environ, "PYTHONPATH": str(swebench4())}
    done = subprocess.run([sys.executable, "-c", TRANSLATE, SWEBENCH4], input=json.dumps([rows, namespace]),
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def run_official(rows: list[dict[str, Any]], predictions: list[dict[str, Any]], workdir: Path,
                 run_id: str, workers: int = 2) -> dict[str, Any]:
    """swebench 5's run_evaluation on local rows; returns {"reports": {id: report}, "summary": ..., "log": ...}."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rows.json").write_text(json.dumps(rows))
    (workdir / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    done = subprocess.run(
        [sys.executable, "-m", "swebench.harness.run_evaluation", "-d", "rows.json", "-p", "preds.jsonl",
         "-id", run_id, "--max_workers", str(workers), "--report_dir", "."],
        cwd=workdir, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    model = predictions[0]["model_name_or_path"]
    reports = {}
    for path in (workdir / "logs" / "run_evaluation" / run_id / model).glob("*/report.json"):
        reports.update(json.loads(path.read_text()))
    summary = json.loads((workdir / f"{model}.{run_id}.json").read_text())
    return {"reports": reports, "summary": summary, "log": done.stdout + done.stderr}

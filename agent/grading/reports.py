"""The official outputs, beside ours: what `swebench.harness.run_evaluation` leaves in its working folder.

For a report at DIR/NAME.json, DIR then holds, as a run of the official harness with DIR as its
working folder and report folder would:

    DIR/logs/run_evaluation/<run_id>/<model>/<instance_id>/
        report.json        swebench's get_eval_report output (written only where the official harness
                           writes one: not for empty patches, patches that do not apply, time-outs)
        test_output.txt    the eval script's output, the file the report was read from
        patch.diff, eval.sh, run_instance.log (our transcript)
    DIR/<model>.<run_id>.json   the run summary in make_run_report's schema (version 2)

With `--strict`, an instance whose forgery findings overturned an official pass has `resolved: false`
in its report.json, and the official verdict kept under `cwm_runner.official_resolved`; the rules
that fired are under `cwm_runner.findings` either way. With K samples per instance, sample k is its
own official run, `<run_id>.sample<k>`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.grading import official
from agent.grading.evaluate import InstanceResult

RUN_EVALUATION_DIR = Path("logs") / "run_evaluation"  # swebench.harness.constants.RUN_EVALUATION_LOG_DIR
SCHEMA_VERSION = 2


def model_dir_name(model_name: str) -> str:
    return model_name.replace("/", "__")


def instance_dir(root: Path, run_id: str, result: InstanceResult) -> Path:
    return root / RUN_EVALUATION_DIR / run_id / model_dir_name(result.model_name) / result.instance_id


def report_json(result: InstanceResult) -> dict[str, Any] | None:
    """report.json's content: the official report, our rules added under our own key."""
    if result.official_report is None:
        return None
    report = json.loads(json.dumps(result.official_report))
    mine = report[result.instance_id]
    mine["cwm_runner"] = {"official_resolved": result.official_resolved, "strict": result.strict,
                          "findings": [f.model_dump() for f in result.findings]}
    mine["resolved"] = result.resolved
    return report


def write_instance(root: Path, run_id: str, result: InstanceResult) -> None:
    """The per-instance files of one graded, non-empty prediction."""
    if result.empty_patch:
        return
    folder = instance_dir(root, run_id, result)
    folder.mkdir(parents=True, exist_ok=True)
    run = result._run
    (folder / "patch.diff").write_text(result._patch, encoding="utf-8")
    (folder / "run_instance.log").write_text((run.log if run else "") + (f"\n{result.error}" if result.error else ""),
                                             encoding="utf-8")
    if run is not None and run.eval_script:
        (folder / "eval.sh").write_text(run.eval_script, encoding="utf-8")
        (folder / "test_output.txt").write_text(run.test_output, encoding="utf-8")
    report = report_json(result)
    if report is not None:
        (folder / "report.json").write_text(json.dumps(report, indent=4), encoding="utf-8")


def _classify(root: Path, run_id: str, results: dict[str, InstanceResult], ids: set[str]) -> dict[str, Any]:
    """swebench's post-hoc failure reasons for unresolved and errored instances."""
    reasons: dict[str, str] = {}
    environment, ambiguous = set(), set()
    for instance_id in ids:
        folder = instance_dir(root, run_id, results[instance_id])
        found = official.classify_failure(folder / "test_output.txt", folder / "run_instance.log")
        if found:
            reasons[instance_id] = found[0]
            (environment if found[1] == official.environment_tier() else ambiguous).add(instance_id)
    return {"reasons": reasons, "environment": environment, "ambiguous": ambiguous}


def run_summary(root: Path, run_id: str, instance_ids: Sequence[str], results: Sequence[InstanceResult],
                unknown: Sequence[str] = ()) -> dict[str, Any]:
    """make_run_report's dictionary for one sample of each predicted instance."""
    by_id = {r.instance_id: r for r in results}
    empty = {i for i, r in by_id.items() if r.empty_patch}
    completed = {i for i, r in by_id.items() if report_json(r) is not None}
    resolved = {i for i in completed if by_id[i].resolved}
    unresolved = completed - resolved
    errors = set(by_id) - completed - empty
    failures = _classify(root, run_id, by_id, unresolved | errors)
    incomplete = {i for i in instance_ids if i not in by_id}
    return {
        "total_instances": len(instance_ids), "submitted_instances": len(by_id) + len(unknown),
        "completed_instances": len(completed), "resolved_instances": len(resolved),
        "unresolved_instances": len(unresolved), "infra_failure_instances": len(failures["environment"]),
        "ambiguous_failure_instances": len(failures["ambiguous"]), "empty_patch_instances": len(empty),
        "error_instances": len(errors), "completed_ids": sorted(completed), "incomplete_ids": sorted(incomplete),
        "empty_patch_ids": sorted(empty), "submitted_ids": sorted([*by_id, *unknown]),
        "resolved_ids": sorted(resolved), "unresolved_ids": sorted(unresolved),
        "infra_failure_ids": sorted(failures["environment"]), "ambiguous_failure_ids": sorted(failures["ambiguous"]),
        "failure_reasons": dict(sorted(failures["reasons"].items())), "error_ids": sorted(errors),
        "schema_version": SCHEMA_VERSION,
    }


def write_run(root: Path, run_id: str, instance_ids: Sequence[str], results: Sequence[InstanceResult],
              unknown: Sequence[str] = ()) -> Path:
    """Every official file of one run (one sample per instance); returns the summary's path."""
    for result in results:
        write_instance(root, run_id, result)
    summary = run_summary(root, run_id, instance_ids, results, unknown)
    name = results[0].model_name if results else "none"
    path = root / f"{model_dir_name(name)}.{run_id}.json"
    path.write_text(json.dumps(summary, indent=4) + "\n", encoding="utf-8")
    return path


def write_official(root: Path, run_id: str, instance_ids: Sequence[str], results: Sequence[InstanceResult],
                   unknown: Sequence[str] = ()) -> list[Path]:
    """One official run per sample index (`<run_id>` alone when every instance has one sample)."""
    samples = sorted({r.sample for r in results}) or [0]
    paths = []
    for k in samples:
        chosen = [r for r in results if r.sample == k]
        paths.append(write_run(root, run_id if samples == [0] else f"{run_id}.sample{k}", instance_ids, chosen,
                               unknown))
    return paths

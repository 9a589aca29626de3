"""What a vote needs besides the patches, read from the run directory; and the regression runs.

`--select regression` needs, per instance with two or more distinct patches, one run of the
repository's existing tests at the base commit and one per distinct patch (agent.grading.regression).
They run after the episodes, in parallel over the batch's worker count, and are kept in
`trajectories/<instance>/regression.json` (agent.batch.voting.RegressionRecord, written atomically
before the votes that read it), so a resumed run does not repeat them. No run reads a hidden test; votes by `majority` never read this file.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import structlog

from agent.batch.voting import REGRESSION_FILE, RegressionRecord, normalize_patch, patch_sha, read_regressions

if TYPE_CHECKING:
    from agent.batch.state import BatchState
    from agent.instances.records import Instance

log = structlog.get_logger()

SuiteRunner = Callable[["Instance", str], Any]


def _measure(instance: Instance, patches: dict[str, str], run: SuiteRunner) -> RegressionRecord:
    from agent.grading.regression import regressions

    baseline = run(instance, "")
    record = RegressionRecord(baseline_passing=len(baseline.passing), baseline_error=baseline.error)
    for sha, patch in patches.items():
        result = run(instance, patch)
        record.regressions[sha] = regressions(baseline, result)
        if result.error:
            record.errors[sha] = result.error[:300]
    return record


def rank_by_existing_tests(state: BatchState, workers: int, run: SuiteRunner | None = None) -> int:
    """Measure regressions for every finished instance that has none measured yet; returns how many."""
    from agent.batch.state import atomic_write
    from agent.grading.regression import run_suite

    runner = run or (lambda instance, patch: run_suite(instance, patch))
    todo: list[tuple[Instance, dict[str, str]]] = []
    for instance in state.instances:
        folder = state.layout.instance_dir(instance.instance_id)
        if not state.records[instance.instance_id].finished or read_regressions(folder) is not None:
            continue
        patches = {patch_sha(c.patch): c.patch or "" for c in state.candidates(instance.instance_id)
                   if normalize_patch(c.patch).strip()}
        if len(patches) > 1:
            todo.append((instance, patches))

    def one(item: tuple[Instance, dict[str, str]]) -> None:
        instance, patches = item
        record = _measure(instance, patches, runner)
        atomic_write(state.layout.instance_dir(instance.instance_id) / REGRESSION_FILE,
                     record.model_dump_json(indent=1) + "\n")
        log.info("batch.regressions", instance=instance.instance_id, groups=len(patches))

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="regression") as pool:
        list(pool.map(one, todo))
    for instance, _ in todo:
        state.forget_vote(instance.instance_id)
    if todo:
        state.write_preds()  # votes again, now with the regressions
        state.write_manifest(force=True)
    return len(todo)

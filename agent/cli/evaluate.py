"""`agent eval`: grade patches in fresh sandboxes with the official harness's code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from agent.cli.common import console, fail
from agent.cli.instance_source import DATASET_DIR, PATH_HELP, SPLIT, SUBSET, instance_source
from agent.grading.runs import DEFAULT_RUN_ID
from agent.grading.specs import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from agent.instances.datasets import DatasetSource
    from agent.instances.sources import LoadedSource


def checked_instances(predictions: Optional[Path], source: Path | DatasetSource, split: Optional[str],
                      gold: bool) -> LoadedSource:
    """The instances, loaded once, whose environments were checked before any grading: an instance
    graded in an environment that cannot run its tests would count as a silent failure.

    Only the instances that will be graded are checked (those with a prediction, or all with --gold).
    """
    from agent.instances.envs import EnvError
    from agent.instances.preflight import check_environments
    from agent.instances.sources import LoadedSource, load_instances, load_predictions

    try:
        instances = load_instances(source, split=split)
        wanted = None if gold or predictions is None else {p.instance_id for p in load_predictions(predictions)}
        report = check_environments([i for i in instances if wanted is None or i.instance_id in wanted])
    except (ValueError, EnvError, RuntimeError) as error:  # a source, a registry, Docker or a build
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    for problem in report.problems:
        console.print(f"[bold red]error:[/] {escape(problem.line())}", highlight=False)
    if report.problems:
        fail(f"{len(report.problems)} of the instances to grade have an environment the runner cannot provide "
             "(lines above): fix those rows, or grade without them")
    return LoadedSource(name=str(source), instances=instances)


def evaluate(
    predictions: Optional[Path] = typer.Argument(None, help="SWE-bench predictions (JSONL/JSON; K lines per "
                                                 "instance for K samples); omit with --gold"),
    instances: Optional[Path] = typer.Option(None, "--instances", help=PATH_HELP + "; or use --subset"),
    subset: Optional[str] = SUBSET,
    split: Optional[str] = SPLIT,
    dataset_dir: Optional[Path] = DATASET_DIR,
    workers: int = typer.Option(1, help="sandboxes graded at once"),
    gold: bool = typer.Option(False, "--gold", help="grade the instances' reference patches (harness self-check)"),
    report: Optional[Path] = typer.Option(None, help="JSON report; the official report.json files and run "
                                          "summary are written in its folder (logs/run_evaluation/...)"),
    strict: bool = typer.Option(False, "--strict", help="a patch that changes test infrastructure "
                                "(conftest.py, pytest plugins or config, the test runner) is unresolved"),
    namespace: str = typer.Option(DEFAULT_NAMESPACE, help="image namespace of SWE-bench 4.x rows "
                                  "(<namespace>/sweb.eval.x86_64.<id>:latest)"),
    run_id: str = typer.Option(DEFAULT_RUN_ID, "--run-id", help="names the official run (logs/run_evaluation/RUN_ID)"),
) -> None:
    """Grade patches (FAIL_TO_PASS and PASS_TO_PASS decide, read by swebench's own parsers and report logic);
    with K samples per instance also pass@1, pass@k and the majority-voted prediction's score."""
    from agent.batch.voting import select_prediction
    from agent.grading.evaluate import EvalError
    from agent.grading.official import GradingUnavailable
    from agent.grading.runs import run_eval
    from agent.instances.envs import EnvError
    from agent.instances.sources import InstanceSourceError

    if predictions is None and not gold:
        fail("give a predictions file, or --gold to grade the instances' reference patches")
    majority = ("majority vote", lambda _instance, preds: select_prediction([p.model_patch for p in preds]))
    loaded = checked_instances(predictions, instance_source(instances, subset, split, dataset_dir, "--instances"),
                               split, gold)
    try:
        result = run_eval(predictions, loaded, workers=workers, gold=gold, report_path=report, strict=strict,
                          namespace=namespace, run_id=run_id, select=None if gold else majority)
    except (InstanceSourceError, EvalError, EnvError, GradingUnavailable) as error:
        fail(str(error))
    print(result.summary())
    for path in result.official:
        print(f"official run summary {path}")
    if result.errors or (gold and result.resolved < len(result.results)):
        raise typer.Exit(1)

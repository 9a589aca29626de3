"""`agent eval`: grade patches in fresh sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent.cli.common import fail


def evaluate(
    predictions: Optional[Path] = typer.Argument(None, help="SWE-bench predictions (JSONL/JSON); omit with --gold"),
    instances: Path = typer.Option(..., "--instances", help="SWE-bench JSON/JSONL, issue-URL list or task folder"),
    workers: int = typer.Option(1, help="sandboxes graded at once"),
    gold: bool = typer.Option(False, "--gold", help="grade the instances' reference patches (harness self-check)"),
    report: Optional[Path] = typer.Option(None, help="JSON report (full logs in REPORT.logs/)"),
) -> None:
    """Grade patches in fresh sandboxes (FAIL_TO_PASS and PASS_TO_PASS decide) and report resolved N/M."""
    from agent.grading.evaluate import EvalError, run_eval
    from agent.instances.envs import EnvError
    from agent.instances.sources import InstanceSourceError

    if predictions is None and not gold:
        fail("give a predictions file, or --gold to grade the instances' reference patches")
    try:
        result = run_eval(predictions, instances, workers=workers, gold=gold, report_path=report)
    except (InstanceSourceError, EvalError, EnvError) as error:
        fail(str(error))
    print(result.summary())
    if result.errors or (gold and result.resolved < len(result.results)):
        raise typer.Exit(1)

"""`agent doctor`: what a run needs, checked, with the fix for each thing missing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent.cli.common import console


def doctor(
    model: Optional[str] = typer.Option(None, help="model server URL to check", envvar="CWM_MODEL_URL"),
) -> None:
    """Check Docker, the base image, free disk and the model server, and say what to fix."""
    from agent.doctor import run_checks

    checks = run_checks(model, Path.cwd())
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
        fix = f"  -> {check.fix}" if check.fix and not check.ok else ""
        console.print(f"{mark:>18}  {check.name:<13} {check.detail}{fix}", highlight=False)
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(1)

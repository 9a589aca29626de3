"""`agent export` and `agent import-cwm`: trajectories to and from other tools' formats."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent.cli.common import fail


def export(
    trajectories: list[Path] = typer.Argument(..., help="trajectory files (<instance>.traj.jsonl); for cwm-traces "
                                                    "also run directories of agent batch or agent solve"),
    to: str = typer.Option(..., "--to", help="swebench (predictions JSONL), swe-agent (.traj files), mini-swe-agent "
                                             "(.traj.json files), cwm "
                                             "(CWM's rollout dump) or cwm-traces (test traces as CWM trace "
                                             "examples, JSONL + OUTPUT's .manifest.json)"),
    output: Path = typer.Option(..., "--output", "-o",
                                help="file to write (swebench, cwm) or directory (swe-agent: OUTPUT/<id>/<id>.traj, "
                                     "mini-swe-agent: OUTPUT/<id>/<id>.traj.json)"),
    model_name: Optional[str] = typer.Option(None, help="swebench: model_name_or_path (default: the one model all "
                                             "trajectories name; a mix is refused)"),
    layout: str = typer.Option("rollouts", help="cwm: 'rollouts' (CWM's dump lines) or 'transitions' (one per line)"),
) -> None:
    """Export trajectories to SWE-bench predictions, SWE-agent's .traj or CWM's trajectory format."""
    from agent.exports.files import ConvertError, export_files

    if layout not in ("rollouts", "transitions"):
        fail(f"unknown --layout {layout!r}; choose rollouts or transitions")
    try:
        written = export_files(trajectories, to, output, model_name=model_name, layout=layout)  # type: ignore[arg-type]
    except ConvertError as error:
        fail(str(error))
    for path in written:
        print(path)


def import_cwm(
    source: Path = typer.Argument(..., help="a file in CWM's format (rollout dump lines, a rollout, a trajectory, "
                                            "or one transition per line)"),
    output: Path = typer.Option(Path("runs/imported"), help="directory for the converted trajectories"),
) -> None:
    """Convert CWM-format trajectories into ours, to view them (agent view) or replay them (agent replay)."""
    from agent.exports.files import ConvertError, import_cwm_file

    try:
        written = import_cwm_file(source, output)
    except ConvertError as error:
        fail(str(error))
    for path in written:
        print(path)

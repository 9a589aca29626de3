"""`agent replay`: show a recorded trajectory, or re-run it in a fresh sandbox and prove it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from agent.cli.common import fail, step_line


def show(out: Console, trajectory: Path) -> None:
    """Print the recorded steps and ending, no sandbox involved."""
    from traces.recorder import TrajectoryFormatError, read_trajectory

    try:
        recorded = read_trajectory(trajectory)
    except TrajectoryFormatError as error:
        fail(str(error))
    for step in recorded.steps:
        out.print(step_line(step), highlight=False, markup=False)
    ending = recorded.ending
    out.print(f"{ending.status}: {ending.reason}" if ending else "(no ending: the run was killed)",
              highlight=False, markup=False)


def replay(
    trajectory: Path = typer.Argument(..., help="trajectory file (<instance>.traj.jsonl)"),
    verify_run: bool = typer.Option(False, "--verify",
                                    help="re-run the episode in a fresh sandbox and compare it with the recording"),
    repo: Optional[str] = typer.Option(None, help="repository to replay on (default: the header's; a relative "
                                                  "path is looked up from here, then next to the trajectory)"),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the header's)"),
    strict: bool = typer.Option(False, help="compare observations byte for byte (no default normalisers)"),
    normalize: list[str] = typer.Option([], "--normalize", metavar="REGEX",
                                        help="also ignore what REGEX matches in observations (repeatable)"),
    keep: Optional[Path] = typer.Option(None, help="keep the replayed run's files in this directory"),
    all_diffs: bool = typer.Option(False, "--all-diffs", help="show every divergence's diff, not only the first"),
) -> None:
    """Show a recorded trajectory; with --verify, prove it (exit 0 identical, 1 divergence, 2 cannot replay)."""
    from agent.episode.replay import CannotReplay, verify
    from traces.normalize import NormalizerError, select

    out = Console(soft_wrap=True)
    if not verify_run:
        show(out, trajectory)
        return
    try:
        normalizers = select(strict=strict, patterns=normalize)
    except NormalizerError as error:
        fail(str(error))
    try:
        report = verify(trajectory, repo=repo, image=image, normalizers=normalizers, output=keep,
                        on_step=lambda s: out.print(step_line(s), highlight=False, markup=False))
    except CannotReplay as error:
        fail(str(error), code=2)
    out.print(report.render(all_diffs=all_diffs), highlight=False, markup=False)
    raise typer.Exit(report.exit_code)

"""`agent view`: the local trajectory viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent.cli.common import fail


def view(
    path: Path = typer.Argument(..., help="a trajectory file or a run directory"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback requires a token"),
    port: int = typer.Option(8765, help="port to listen on (0: any free port)"),
    token: Optional[str] = typer.Option(None, help="access token (generated when binding beyond loopback)"),
    open_browser: bool = typer.Option(False, "--open", help="open the viewer in a browser"),
) -> None:
    """Browse trajectories: a run table and a step-by-step player that follows live runs."""
    from agent.viewer.server import run_viewer

    if not path.exists():
        fail(f"{path} does not exist; pass a .traj.jsonl file or a run directory")
    run_viewer(path, host=host, port=port, token=token, open_browser=open_browser)

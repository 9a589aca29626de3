"""`agent sandbox`: sandboxes left behind by earlier runs."""

from __future__ import annotations

from typing import Optional

import typer

from agent.cli.common import fail

app = typer.Typer(help="Manage sandboxes left by earlier runs.", no_args_is_help=True)


@app.command("prune")
def prune(
    all_: bool = typer.Option(False, "--all", help="also remove containers whose owner cannot be checked "
                                                   "(another host, missing labels); never a live owner's"),
    run_id: Optional[str] = typer.Option(None, help="only this run's containers"),
) -> None:
    """Remove sandbox containers and host checkouts whose owning process is gone (a killed run's leftovers)."""
    from agent.episode.repo import reap_workspaces
    from sandbox.base import SandboxError
    from sandbox.docker import connect
    from sandbox.reaper import prune as prune_containers

    checkouts = reap_workspaces()
    try:
        removed = prune_containers(connect(), all=all_, run_id=run_id)
    except SandboxError as error:
        fail(str(error))
    print(f"removed {len(removed)} container(s) and {len(checkouts)} orphaned checkout(s)")

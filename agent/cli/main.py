"""The `agent` command: one Typer app wired from the command modules beside this one.

Each command module is a thin shell over a library function; this module only registers them and
sets up logging, so `agent --help` lists every command in one place.
"""

from __future__ import annotations

import os
import sys

import typer

from agent.cli import batch, doctor, evaluate, export, images, replay, sandbox, serve, solve, view, worldmodel
from agent.cli.common import console
from agent.logs import configure_logging

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}

app = typer.Typer(
    name="agent",
    help="cwm-runner: run Code World Model (or any OpenAI-compatible model) as a software-engineering "
    "agent in Docker sandboxes, and record every step as a replayable trajectory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(images.app, name="images")
app.add_typer(sandbox.app, name="sandbox")
app.command("doctor")(doctor.doctor)
app.command("solve")(solve.solve)
app.command("view")(view.view)
app.command("serve", context_settings=EXTRA_ARGS)(serve.serve)
app.command("replay")(replay.replay)
app.command("export")(export.export)
app.command("import-cwm")(export.import_cwm)
app.command("eval")(evaluate.evaluate)
app.command("trace", context_settings=EXTRA_ARGS)(worldmodel.trace)
app.command("debug")(worldmodel.debug)
app.command("batch")(batch.batch)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    configure_logging()
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)

"""`agent images`: the sandbox images (offline: bootstrapped from Debian packages)."""

from __future__ import annotations

from typing import Optional

import typer

from agent.cli.common import fail

app = typer.Typer(help="Build the sandbox images (offline: bootstrapped from Debian packages).", no_args_is_help=True)


@app.command("build")
def build(
    from_image: Optional[str] = typer.Option(
        None, "--from", help="build FROM this registry image (e.g. debian:bookworm-slim) instead of bootstrapping"
    ),
    rebuild: bool = typer.Option(False, help="rebuild even if this machine has the image"),
) -> None:
    """Build the base sandbox image once per machine (debootstrap + docker import, cached by content hash)."""
    from images.build import ImageBuildError, ensure_base_image

    try:
        tag = ensure_base_image(from_image=from_image, rebuild=rebuild)
    except ImageBuildError as error:
        fail(str(error))
    print(tag)

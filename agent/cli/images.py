"""`agent images`: the sandbox images. Built here (the base image, offline from Debian packages), or
pulled from registries (the prebuilt image of each SWE-bench-style instance), and pruned again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from agent.cli.common import default_of, fail, first_line
from agent.cli.instance_source import DATASET_DIR, SPLIT, SUBSET, instance_source
from images.registry import PullOptions

app = typer.Typer(help="Build, pull and prune the sandbox images.", no_args_is_help=True)


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


def image_options(registry: Optional[str], image_prefix: Optional[str], platform: Optional[str],
                  pull_timeout: float, pulls: int):  # noqa: ANN201 - agent.instances.images.ImageOptions
    """The options `agent images pull` and `agent batch` share, as the library's model."""
    from agent.instances.images import ImageOptions

    return ImageOptions(registry=registry, prefix=image_prefix,
                        pull=PullOptions(platform=platform, timeout_s=pull_timeout, concurrency=pulls))


REGISTRY_HELP = "serve every official image from this registry (HOST:PORT or HOST/PATH), e.g. a mirror"
PREFIX_HELP = "replace the naming rule's prefix, e.g. swebench/sweb.eval.arm64."
PLATFORM_HELP = "pull this platform's variant, e.g. linux/amd64"


@app.command("pull")
def pull(
    instances: Optional[Path] = typer.Argument(None, help="SWE-bench-style JSON or JSON Lines (or any source "
                                               "`agent batch` reads); or use --subset"),
    subset: Optional[str] = SUBSET,
    split: Optional[str] = SPLIT,
    dataset_dir: Optional[Path] = DATASET_DIR,
    slice_spec: Optional[str] = typer.Option(None, "--slice", help="take START:STOP[:STEP] of the instances"),
    pattern: Optional[str] = typer.Option(None, "--filter", help="only instances whose id matches this regex"),
    registry: Optional[str] = typer.Option(None, help=REGISTRY_HELP),
    image_prefix: Optional[str] = typer.Option(None, help=PREFIX_HELP),
    platform: Optional[str] = typer.Option(None, help=PLATFORM_HELP),
    pulls: int = typer.Option(default_of(PullOptions, "concurrency"), min=1, help="images pulled at once"),
    pull_timeout: float = typer.Option(default_of(PullOptions, "timeout_s"), help="seconds for one image"),
) -> None:
    """Pull every instance's prebuilt image that this machine lacks, before a batch (exit 1 if any failed)."""
    from agent.instances.images import ImageError, official_image, repo_in_image
    from agent.instances.sources import load_instances, select_instances

    options = image_options(registry, image_prefix, platform, pull_timeout, pulls)
    source = instance_source(instances, subset, split, dataset_dir)
    try:
        chosen = select_instances(load_instances(source, split=split), slice_spec=slice_spec, pattern=pattern)
        names = sorted({official_image(i, options) for i in chosen if repo_in_image(i)})
    except (ValueError, ImageError) as error:
        fail(first_line(error))
    if not names:
        fail(f"no instance of {source} runs in a prebuilt image (rows need `image`, `image_name`, "
             "`docker_image` or a dataset family)")
    outcomes = _pull_all(names, options.pull)
    out = Console(soft_wrap=True)
    for name in names:
        out.print(f"{outcomes[name]:<8} {name}", highlight=False, markup=False)
    good = sum(1 for outcome in outcomes.values() if outcome != "failed")
    out.print(f"{good}/{len(names)} images present", highlight=False)
    if good < len(names):
        raise typer.Exit(1)


def _pull_all(names: list[str], options: PullOptions) -> dict[str, str]:
    """Pull with a bar per image (at most `options.concurrency` at once), one error line per failure;
    returns each image's outcome: pulled, present (already here) or failed."""
    from images.registry import PullError, ensure_image

    err = Console(stderr=True, soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    outcomes: dict[str, str] = {}
    with Progress(*columns, console=err, transient=True) as bars:
        def one(name: str) -> str:
            task = bars.add_task(name, total=None)

            def show(progress) -> None:  # noqa: ANN001 - images.registry.PullProgress
                bars.update(task, completed=progress.done, total=progress.total or None)

            try:
                return "pulled" if ensure_image(name, options, show) else "present"
            finally:
                bars.remove_task(task)

        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="pull") as pool:
            futures = {pool.submit(one, name): name for name in names}
            for future in as_completed(futures):
                try:
                    outcomes[futures[future]] = future.result()
                except PullError as error:
                    outcomes[futures[future]] = "failed"
                    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
    return outcomes


@app.command("prune")
def prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what would go and how much it holds"),
    match: Optional[str] = typer.Option(None, help="only images whose tag matches this regex"),
    keep_under: Optional[str] = typer.Option(None, "--keep-under", metavar="SIZE",
                                             help="remove least recently used first, only until the rest take at "
                                                  "most SIZE (e.g. 50GB, 500MiB)"),
) -> None:
    """Remove prebuilt instance images (sweb.eval.*, swesmith.*), cwm-runner/env-* and cwm-runner/repo-*
    images that no container uses; the base image stays. Prints each image and the space freed."""
    import re

    from images.registry import PullError, parse_size, prune_images

    try:
        budget = parse_size(keep_under) if keep_under is not None else None
    except ValueError as error:
        fail(f"--keep-under: {error}")
    try:
        report = prune_images(dry_run=dry_run, match=match, keep_under=budget)
    except PullError as error:  # no daemon
        fail(str(error))
    except re.error as error:
        fail(f"--match {match!r}: invalid regular expression: {error}")
    out = Console(soft_wrap=True)
    for image in report.images:
        state = ("in use, kept" if image.in_use else "within budget" if image.within_budget else
                 "would remove" if dry_run else "removed" if image.removed else f"kept: {image.error}")
        names = ", ".join(image.tags) or f"{image.id[:19]} (untagged repository image)"
        out.print(f"{_size(image.size):>9}  {state:<14} {names}", highlight=False, markup=False)
    count = sum(1 for i in report.images if i.chosen)
    if dry_run:
        out.print(f"{count} image(s) would go, freeing at least {_size(report.reclaimable)} (layers they share "
                  "with kept images stay)", highlight=False)
    else:
        removed = sum(1 for i in report.images if i.removed)
        out.print(f"removed {removed}/{count} image(s), freed {_size(report.freed or 0)}", highlight=False)


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"

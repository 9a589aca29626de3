"""Where the commands that take a set of instances (`agent batch`, `agent eval`) read it from: a path
(file or folder), or a Hugging Face dataset by name (`--subset verified --split test`).

The options are declared once here so each command offers them with the same names and help.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from agent.cli.common import fail

if TYPE_CHECKING:
    from agent.instances.datasets import DatasetSource

PATH_HELP = ("SWE-bench JSON/JSON Lines, Parquet, a Hugging Face dataset folder (save_to_disk or a copy of a Hub "
             "repository), a file of GitHub issue URLs, or a directory of <name>/repo + <name>/issue.md")
SUBSET = typer.Option(None, "--subset", help="instead of a path: verified, lite, full, multilingual, multimodal, gym, "
                      "smith, rebench, or a Hugging Face dataset name (owner/name), read through `datasets` "
                      "(its cache; HF_HUB_OFFLINE honoured)")
SPLIT = typer.Option(None, "--split", help="the split to run (default: test; train for gym and smith)")
DATASET_DIR = typer.Option(None, "--dataset-dir", help="with --subset: read DIR/<owner>/<name>, a local copy of the "
                           "Hub repository (hf download NAME --repo-type dataset --local-dir DIR/NAME)")


def instance_source(path: Optional[Path], subset: Optional[str], split: Optional[str],
                    dataset_dir: Optional[Path], path_name: str = "INSTANCES") -> Path | DatasetSource:
    """The one source the options name; contradictions are one line each."""
    from agent.instances.datasets import DatasetSource, check_subset
    from agent.instances.records import InstanceSourceError

    if path is not None and subset is not None:
        fail(f"give {path_name} or --subset, not both")
    if dataset_dir is not None and subset is None:
        fail("--dataset-dir goes with --subset (it holds local copies of Hub datasets)")
    if subset is None:
        if path is None:
            fail(f"give {path_name} (a file or folder of instances) or --subset NAME --split NAME")
        if split is not None and path.is_file():
            fail(f"--split picks a split of a Hugging Face dataset (--subset or a dataset folder); {path} is a file")
        return path
    try:
        check_subset(subset)
    except InstanceSourceError as error:
        fail(str(error))
    return DatasetSource(subset=subset, split=split, dataset_dir=dataset_dir)

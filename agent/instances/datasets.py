"""Datasets as their projects distribute them: Parquet files, Hugging Face dataset folders, and the
Hub's datasets by name (`--subset verified --split test`), read into rows for `agent.instances.mappers`.

`datasets` and `pyarrow` are an optional extra (`pip install 'cwm-runner[datasets]'`): importing
`datasets` takes about a second and 130 MiB, which no other command should pay, so both are imported
here, inside the functions that read such a source, and a missing extra is one line naming it.

By name, rows come through `datasets.load_dataset`, so its cache is used (HF_HOME,
HF_DATASETS_CACHE) and its offline mode is honoured (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): a
dataset loaded once on a machine with internet loads again offline from that cache, or from a copy
of it. `--dataset-dir DIR` reads local copies of the Hub's dataset repositories instead, laid out as
DIR/<owner>/<name> (what `hf download NAME --repo-type dataset --local-dir DIR/NAME` writes).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field

from agent.instances.records import InstanceSourceError

log = structlog.get_logger()

EXTRA = "pip install 'cwm-runner[datasets]'"
Rows = list[tuple[str, dict[str, Any]]]


class HubDataset(BaseModel):
    """A dataset on the Hugging Face Hub: its name, the family of its rows, the split it is run on."""

    name: str
    family: str
    split: str = "test"


# Names as the projects publish them (SWE-bench's README and docs/guides/datasets.md, SWE-Gym's README,
# SWE-smith's docs, the SWE-rebench paper); mini-swe-agent's --subset uses the same short names.
SUBSETS: dict[str, HubDataset] = {
    "verified": HubDataset(name="SWE-bench/SWE-bench_Verified", family="swe-bench"),
    "lite": HubDataset(name="SWE-bench/SWE-bench_Lite", family="swe-bench"),
    "full": HubDataset(name="SWE-bench/SWE-bench", family="swe-bench"),
    "multilingual": HubDataset(name="SWE-bench/SWE-bench_Multilingual", family="swe-bench"),
    "multimodal": HubDataset(name="SWE-bench/SWE-bench_Multimodal", family="multimodal"),
    "gym": HubDataset(name="SWE-Gym/SWE-Gym", family="swe-gym", split="train"),
    "smith": HubDataset(name="SWE-bench/SWE-smith", family="swe-smith", split="train"),
    "rebench": HubDataset(name="nebius/SWE-rebench", family="swe-rebench"),
}


class DatasetSource(BaseModel):
    """`--subset NAME [--split S] [--dataset-dir DIR]`: a short name above or any Hub name (owner/name,
    its family then detected from the columns)."""

    subset: str = Field(min_length=1)
    split: str | None = None
    dataset_dir: Path | None = None

    @property
    def known(self) -> HubDataset | None:
        return SUBSETS.get(self.subset.lower())

    @property
    def name(self) -> str:
        return self.known.name if self.known else self.subset

    @property
    def family(self) -> str | None:
        return self.known.family if self.known else None

    @property
    def chosen_split(self) -> str:
        return self.split or (self.known.split if self.known else "test")

    def __str__(self) -> str:
        return f"{self.name} (split {self.chosen_split})"


def check_subset(subset: str) -> None:
    """A subset is a short name or owner/name: anything else is a typo worth one line."""
    if subset.lower() not in SUBSETS and subset.count("/") != 1:
        raise InstanceSourceError(f"--subset {subset!r}: choose one of {', '.join(SUBSETS)} "
                                  "or give a Hugging Face dataset name (owner/name)")


def _require(module: str, reading: str) -> Any:
    """Import an optional dependency, or one line saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InstanceSourceError(f"{reading} needs the `datasets` extra (datasets, pyarrow), "
                                  f"which is not installed: {EXTRA}") from None


# -- Parquet ------------------------------------------------------------------------------------------


def parquet_rows(path: Path) -> Rows:
    """Every row of a Parquet file (pyarrow alone: lighter than `datasets`)."""
    pq = _require("pyarrow.parquet", f"{path}: reading Parquet")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError
        raise InstanceSourceError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    return [(f"{path}[{i}]", row) for i, row in enumerate(table.to_pylist())]


# -- Hugging Face folders ---------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def is_hub_copy(path: Path) -> bool:
    """A local copy of a Hub dataset repository: data files under data/ or beside the dataset card."""
    data = path / "data"
    return any(data.glob("*.parquet")) or ((path / "README.md").is_file() and any(path.glob("*.parquet")))


def _pick_split(splits: dict[str, Any], split: str | None, where: str) -> tuple[str, Any]:
    if split is not None:
        if split not in splits:
            raise InstanceSourceError(f"{where}: no split {split!r} (it has: {', '.join(splits)}); choose one with "
                                      "--split")
        return split, splits[split]
    if len(splits) == 1:
        return next(iter(splits.items()))
    if "test" in splits:
        return "test", splits["test"]
    raise InstanceSourceError(f"{where}: it has the splits {', '.join(splits)}; choose one with --split")


def _rows_of(dataset: Any, where: str) -> Rows:
    return [(f"{where}[{i}]", row) for i, row in enumerate(dataset.to_list())]


def folder_rows(path: Path, split: str | None = None) -> Rows:
    """Rows of a `save_to_disk` folder or of a local copy of a Hub dataset repository."""
    datasets = _require("datasets", f"{path}: reading a Hugging Face dataset folder")
    try:
        loaded = (datasets.load_from_disk(str(path)) if is_saved_dataset(path)
                  else datasets.load_dataset(str(path)))
    except Exception as error:  # noqa: BLE001 - the library raises many kinds for a folder it cannot read
        raise InstanceSourceError(f"{path}: not a readable Hugging Face dataset folder "
                                  f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                                  ) from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen, loaded = _pick_split(dict(loaded), split, str(path))
        return _rows_of(loaded, f"{path}:{chosen}")
    return _rows_of(loaded, str(path))


# -- the Hub, by name ----------------------------------------------------------------------------------


def _offline() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def not_cached_message(source: DatasetSource, cache: str) -> str:
    """One line: which dataset is missing, and the two ways to bring it from a machine with internet."""
    name, split = source.name, source.chosen_split
    why = "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)" if _offline() else "the Hub cannot be reached"
    return (f"{name} (split {split}) is not in the Hugging Face datasets cache ({cache}) and {why}: on a machine "
            f"with internet run `python3 -c \"import datasets; datasets.load_dataset('{name}', split='{split}')\"` "
            f"and copy {cache} here (or point HF_DATASETS_CACHE at the copy), or run `hf download {name} "
            f"--repo-type dataset --local-dir DIR/{name}` and pass --dataset-dir DIR")


def _from_copy(source: DatasetSource) -> Rows:
    assert source.dataset_dir is not None
    local = source.dataset_dir / source.name
    if not local.is_dir():
        raise InstanceSourceError(f"--dataset-dir {source.dataset_dir}: no copy of {source.name} at {local}; make one "
                                  f"with `hf download {source.name} --repo-type dataset --local-dir {local}`")
    return folder_rows(local, source.chosen_split)


def hub_rows(source: DatasetSource) -> Rows:
    """Rows of a Hub dataset through `datasets.load_dataset` (its cache, its offline mode), or of a local
    copy under `--dataset-dir`."""
    if source.dataset_dir is not None:
        return _from_copy(source)
    datasets = _require("datasets", f"--subset {source.subset}")
    split = source.chosen_split
    try:
        loaded = datasets.load_dataset(source.name, split=split)
    except ValueError as error:
        if "split" in str(error).lower():
            raise InstanceSourceError(f"{source.name}: no split {split!r} ({str(error).splitlines()[0]})") from None
        raise InstanceSourceError(f"{source.name}: {str(error).splitlines()[0]}") from None
    except ConnectionError:
        raise InstanceSourceError(not_cached_message(source, str(datasets.config.HF_DATASETS_CACHE))) from None
    except FileNotFoundError as error:  # DatasetNotFoundError: the Hub answered that there is no such dataset
        raise InstanceSourceError(f"{source.name}: {str(error).splitlines()[0]}") from None
    return _rows_of(loaded, f"{source.name}:{split}")

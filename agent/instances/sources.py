"""Where instances come from, validated at the boundary, and how a batch picks some of them.

Sources:
- SWE-bench files: a JSON array (or one object) or JSON Lines, one `agent.instances.records.Instance` each;
- datasets as distributed (`agent.instances.datasets`): Parquet files, Hugging Face dataset folders
  (`save_to_disk`, or a copy of a Hub repository) and Hub datasets by name; every row of these and of
  the JSON files goes through its family's mapper (`agent.instances.mappers`);
- a text file of GitHub issue URLs, one per line (read through `agent.instances.github.fetch_issue`);
- a directory of local repositories with issue texts: DIR/<name>/repo/ + DIR/<name>/issue.md, and
  optionally DIR/<name>/instance.json holding any other Instance fields (tests, base commit...);
  DIR itself may be one such folder (e.g. traces/examples/intervals).

Every problem is reported as ONE line naming the file, the line (JSON Lines, URL lists) or index
(JSON arrays) and the field, e.g. `instances.jsonl:7: FAIL_TO_PASS: Input should be a valid list`,
because a batch of hundreds of instances is usually fixed by editing one record.

Selection (filter by regex on instance_id, seeded shuffle, slice) is pure: same input, same output.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel
from tenacity import retry, stop_after_attempt, wait_exponential

from agent.instances.datasets import DatasetSource, folder_rows, hub_rows, is_hub_copy, is_saved_dataset, parquet_rows
from agent.instances.mappers import check_unique as _check_unique
from agent.instances.mappers import instances_from_rows
from agent.instances.mappers import validate as _validate
from agent.instances.records import Instance, InstanceSourceError, Prediction

log = structlog.get_logger()

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
OWNER_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")
GITHUB_FETCH_WORKERS = 4


# -- error formatting ------------------------------------------------------------------------------


def _where(path: Path, line: int | None = None, index: int | None = None) -> str:
    if line is not None:
        return f"{path}:{line}"
    if index is not None:
        return f"{path}[{index}]"
    return str(path)


def _json_error(path: Path, error: json.JSONDecodeError, line: int | None = None) -> InstanceSourceError:
    return InstanceSourceError(f"{path}:{line or error.lineno}: invalid JSON: {error.msg} (column {error.colno})")


# -- JSON and JSON Lines -----------------------------------------------------------------------------


def _json_records(path: Path) -> list[tuple[str, Any]]:
    """(location, raw record) pairs of a JSON array/object or a JSON Lines file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InstanceSourceError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise InstanceSourceError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    stripped = text.lstrip()
    if path.suffix in JSON_SUFFIXES or (path.suffix not in JSONL_SUFFIXES and stripped.startswith("[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg == "Extra data" and stripped.startswith("{"):
                return _jsonl_records(path, text)  # JSON Lines under a .json name
            raise _json_error(path, error) from None
        if isinstance(data, dict):
            # One record, or SWE-bench's {instance_id: prediction} mapping.
            if all(isinstance(v, dict) for v in data.values()) and data and "instance_id" not in data:
                return [(f"{path}[{key!r}]", {"instance_id": key, **value}) for key, value in data.items()]
            return [(str(path), data)]
        if not isinstance(data, list):
            raise InstanceSourceError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
        return [(_where(path, index=i), record) for i, record in enumerate(data)]
    return _jsonl_records(path, text)


def _jsonl_records(path: Path, text: str) -> list[tuple[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((_where(path, line=number), json.loads(line)))
        except json.JSONDecodeError as error:
            raise _json_error(path, error, number) from None
    return records


def load_json_instances(path: Path) -> list[Instance]:
    """SWE-bench instances from a JSON array or JSON Lines file, each row through its family's mapper.

    A relative `repo_path` is taken from the file's folder, so a fixture set can be moved as a whole.
    """
    path = Path(path)
    return instances_from_rows(_json_records(path), str(path), fix=_relative_to(path.parent))


def _relative_to(folder: Path) -> Callable[[Instance], None]:
    def fix(instance: Instance) -> None:
        if instance.repo_path and not Path(instance.repo_path).is_absolute():
            instance.repo_path = str((folder / instance.repo_path).resolve())
    return fix


def load_predictions(path: Path) -> list[Prediction]:
    """SWE-bench predictions (JSON Lines, a JSON array, or {instance_id: prediction}).

    A null `model_patch` (SWE-bench's files have them for runs that produced nothing) is an empty patch.
    An instance may have several predictions, K samples of one method (CWM's eval_cli.py reads such
    files): they are kept in file order, and agent.grading numbers them 0..K-1.
    """
    path = Path(path)
    predictions: list[Prediction] = []
    for where, record in _json_records(path):
        if isinstance(record, dict) and record.get("model_patch", "") is None:
            record = {**record, "model_patch": ""}
        predictions.append(_validate(Prediction, record, where))
    return predictions


# -- GitHub issue URLs ----------------------------------------------------------------------------


def load_issue_urls(path: Path, fetch: Callable[[str], Any] | None = None) -> list[Instance]:
    """One instance per GitHub issue URL (blank lines and `#` comments skipped).

    The base commit is left empty: the default branch's HEAD when the episode starts.
    """
    from agent.instances.github import ISSUE_URL, GitHubError, fetch_issue

    path = Path(path)
    fetch = fetch or fetch_issue
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InstanceSourceError(f"{path}: cannot read: {error.strerror or error}") from None
    wanted: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        if not ISSUE_URL.match(url):
            raise InstanceSourceError(
                f"{path}:{number}: url: {url!r} is not a GitHub issue URL (https://github.com/OWNER/REPO/issues/N)"
            )
        wanted.append((number, url))

    def one(item: tuple[int, str]) -> Instance:
        number, url = item
        try:
            issue = fetch(url)
        except GitHubError as error:
            raise InstanceSourceError(f"{path}:{number}: {error}") from None
        record = {
            "instance_id": f"{issue.owner}__{issue.repo}-{issue.number}",
            "repo": f"{issue.owner}/{issue.repo}",
            "base_commit": "",
            "problem_statement": issue.text(),
        }
        return _validate(Instance, record, f"{path}:{number}")

    with ThreadPoolExecutor(max_workers=GITHUB_FETCH_WORKERS) as pool:
        instances = list(pool.map(one, wanted))  # re-raises the first error, in file order
    _check_unique((f"{path}:{n}", i.instance_id) for (n, _), i in zip(wanted, instances))
    return instances


# -- directories of local repositories -------------------------------------------------------------


def _is_task_folder(folder: Path) -> bool:
    return (folder / "repo").is_dir() or (folder / "issue.md").is_file()


def _load_task_folder(folder: Path) -> Instance:
    repo, issue = folder / "repo", folder / "issue.md"
    if not repo.is_dir():
        raise InstanceSourceError(f"{folder}: repo: missing folder {repo.name}/ next to issue.md")
    if not issue.is_file():
        raise InstanceSourceError(f"{folder}: problem_statement: missing issue.md next to repo/")
    record: dict[str, Any] = {}
    extra = folder / "instance.json"
    if extra.is_file():
        try:
            record = json.loads(extra.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise _json_error(extra, error) from None
        if not isinstance(record, dict):
            raise InstanceSourceError(f"{extra}: expected a JSON object, got {type(record).__name__}")
    record = {
        "instance_id": folder.name,
        "repo": str(repo.resolve()),
        **record,
        "problem_statement": issue.read_text(encoding="utf-8"),
        "repo_path": str(repo.resolve()),
    }
    return _validate(Instance, record, str(extra if extra.is_file() else folder))


def load_directory(path: Path) -> list[Instance]:
    """Instances from DIR/<name>/{repo/,issue.md[,instance.json]}, sorted by name.

    Folders with neither repo/ nor issue.md (e.g. traces/examples/cwm-format) are not tasks and are
    skipped; a folder with only one of them is an error, since it was surely meant as a task.
    """
    path = Path(path)
    if not path.is_dir():
        raise InstanceSourceError(f"{path}: not a directory")
    if _is_task_folder(path):
        return [_load_task_folder(path)]
    folders = [child for child in sorted(path.iterdir()) if child.is_dir() and _is_task_folder(child)]
    instances = [_load_task_folder(folder) for folder in folders]
    if not instances:
        raise InstanceSourceError(f"{path}: no task folders (<name>/repo/ with <name>/issue.md) inside")
    _check_unique((str(path / i.instance_id), i.instance_id) for i in instances)
    return instances


# -- dispatch -------------------------------------------------------------------------------------


def _looks_like_url_list(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line and not line.startswith("#"):
                    return line.startswith(("http://", "https://"))
    except (OSError, UnicodeDecodeError):
        return False
    return False


class LoadedSource(BaseModel):
    """Instances already loaded, passed where a source is expected (e.g. to `agent eval`'s library call
    after the command checked their environments), so a source is not read, nor reported on, twice."""

    name: str
    instances: list[Instance]

    def __str__(self) -> str:
        return self.name


def load_instances(source: Path | str | DatasetSource | LoadedSource, split: str | None = None) -> list[Instance]:
    """Load instances from any supported source, chosen by what `source` is.

    `split` picks one split of a Hugging Face folder holding several (a DatasetSource has its own).
    """
    if isinstance(source, LoadedSource):
        return list(source.instances)
    if isinstance(source, DatasetSource):
        return instances_from_rows(hub_rows(source), str(source), source.family)
    path = Path(source)
    if path.is_dir() and not _is_task_folder(path) and (is_saved_dataset(path) or is_hub_copy(path)):
        return instances_from_rows(folder_rows(path, split), str(path), fix=_relative_to(path))
    if path.is_dir():
        return load_directory(path)
    if not path.exists():
        raise InstanceSourceError(f"{path}: no such file or directory")
    if path.suffix == ".parquet":
        return instances_from_rows(parquet_rows(path), str(path), fix=_relative_to(path.parent))
    if path.suffix not in JSON_SUFFIXES + JSONL_SUFFIXES and _looks_like_url_list(path):
        return load_issue_urls(path)
    return load_json_instances(path)


# -- selection (pure) -----------------------------------------------------------------------------


def parse_slice(text: str) -> slice:
    """`10:20`, `:5`, `3:`, `::2` or a single index `7` (the one instance at 7) -> slice."""
    parts = text.strip().split(":")
    if len(parts) > 3 or not all(re.fullmatch(r"-?\d*", p) for p in parts):
        raise ValueError(f"--slice {text!r}: expected START:STOP[:STEP] with integers, e.g. 10:20")
    numbers = [int(p) if p else None for p in parts]
    if len(numbers) == 1:
        if numbers[0] is None:
            raise ValueError("--slice: empty")
        start = numbers[0]
        return slice(start, start + 1 if start != -1 else None)
    if len(numbers) == 3 and numbers[2] == 0:
        raise ValueError("--slice: step cannot be zero")
    return slice(*numbers)


def filter_instances(instances: Sequence[Instance], pattern: str) -> list[Instance]:
    """Instances whose instance_id matches the regex (re.search, so `django` matches a substring)."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"--filter {pattern!r}: invalid regular expression: {error}") from None
    return [i for i in instances if regex.search(i.instance_id)]


def shuffle_instances(instances: Sequence[Instance], seed: int) -> list[Instance]:
    """A copy shuffled by its own Random(seed): the same seed gives the same order on any machine."""
    shuffled = list(instances)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def select_instances(
    instances: Sequence[Instance],
    slice_spec: str | None = None,
    pattern: str | None = None,
    shuffle_seed: int | None = None,
) -> list[Instance]:
    """Filter, then shuffle, then slice (so `--slice 0:10` takes ten of the filtered, shuffled set)."""
    chosen = list(instances)
    if pattern:
        chosen = filter_instances(chosen, pattern)
    if shuffle_seed is not None:
        chosen = shuffle_instances(chosen, shuffle_seed)
    if slice_spec:
        chosen = chosen[parse_slice(slice_spec)]
    return chosen


# -- where the repository comes from ---------------------------------------------------------------

_bundle_lock = threading.Lock()
_bundle_clones: dict[str, Path] = {}


@atexit.register
def _remove_clones() -> None:
    """The per-process clones (bundles, mirrors) live in temporary folders: remove them at exit."""
    for clone in [*_bundle_clones.values(), *_mirrors.values()]:
        shutil.rmtree(clone.parent, ignore_errors=True)


def _clone_bundle(bundle: Path) -> Path:
    """A git bundle (how the test fixtures store repositories) cloned once per process, read-only use."""
    key = hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]
    with _bundle_lock:
        if key in _bundle_clones and _bundle_clones[key].is_dir():
            return _bundle_clones[key]
        dest = Path(tempfile.mkdtemp(prefix="cwm-bundle-")) / bundle.stem
        try:
            heads = _git(["bundle", "list-heads", str(bundle)], bundle).split("\n")
            refs = dict(reversed(line.split(" ", 1)) for line in heads if " " in line)
            head = refs.get("HEAD") or next(iter(refs.values()), None)
            if head is None:
                raise InstanceSourceError(f"{bundle}: the git bundle holds no refs")
            _git(["clone", "-q", "--no-checkout", str(bundle), str(dest)], bundle)
            # Detached at the bundle's HEAD (or first ref): a bundle made without HEAD still checks out.
            _git(["-C", str(dest), "checkout", "-q", "--detach", head], bundle)
        except BaseException:
            shutil.rmtree(dest.parent, ignore_errors=True)
            raise
        _bundle_clones[key] = dest
        return dest


def _git(args: list[str], bundle: Path) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InstanceSourceError(f"{bundle}: cannot read the git bundle: {done.stderr.strip()[-200:]}")
    return done.stdout.strip()


_mirror_locks: dict[str, threading.Lock] = {}
_mirrors: dict[str, Path] = {}


def _mirror(url: str) -> Path:
    """A local clone of a remote repository, made once per process: grading 500 instances of one
    repository should not clone it 500 times over the network."""
    with _bundle_lock:
        lock = _mirror_locks.setdefault(url, threading.Lock())
    with lock:
        if url in _mirrors and _mirrors[url].is_dir():
            return _mirrors[url]
        _mirrors[url] = _clone_remote(url)
        return _mirrors[url]


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=1, max=10), reraise=True)
def _clone_remote(url: str) -> Path:
    """Retried: a clone over the network fails now and then for reasons that go away (resets, 5xx)."""
    dest = Path(tempfile.mkdtemp(prefix="cwm-mirror-")) / "repo"
    done = subprocess.run(["git", "clone", "-q", url, str(dest)], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(dest.parent, ignore_errors=True)
        log.warning("instances.clone_failed", url=url, error=done.stderr.strip()[-200:])
        raise InstanceSourceError(f"cannot clone {url}: {done.stderr.strip()[-200:]}")
    return dest


def repo_source(instance: Instance, mirror: bool = False) -> str:
    """What `agent.episode.repo.prepare_repo` should clone for this instance: a local path or a git URL.

    `repo_path` wins (a git bundle is cloned first); then `repo` as a URL or existing path; then
    SWE-bench's owner/name, which means GitHub. With `mirror`, a URL is cloned once per process and
    the local clone returned (for graders that prepare the same repository many times).
    """
    if instance.repo_path:
        local = Path(instance.repo_path)
        if local.is_file() and local.suffix == ".bundle":
            return str(_clone_bundle(local))
        return str(local)
    if "://" in instance.repo or instance.repo.startswith("git@") or Path(instance.repo).exists():
        source = instance.repo
    elif OWNER_NAME.match(instance.repo):
        source = f"https://github.com/{instance.repo}.git"
    else:
        raise InstanceSourceError(
            f"{instance.instance_id}: repo: {instance.repo!r} is not a URL, an existing path or owner/name"
        )
    is_url = "://" in source or source.startswith("git@")
    return str(_mirror(source)) if mirror and is_url else source

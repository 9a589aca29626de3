"""Rows of SWE-bench-style datasets, as their projects distribute them, mapped onto `Instance`.

One mapper per family, chosen by the source (`--subset`) or detected from the columns:

- swe-bench (SWE-bench, Lite, Verified, Multilingual) and swe-gym (same columns): fields by name; a
  v5 row's `image`, `eval_script`, `log_parser` and `eval_type` are fields too.
- swe-smith: `image_name` is the image. The row's `patch` CREATES the bug (SWE-smith commits it on a
  branch named by the instance id), so the gold fix is that diff reversed (`agent.instances.patches`);
  the bug patch is kept in `Instance.bug_patch`. The episode starts at the bug branch (`base_commit` is
  the instance id unless the row names a commit) if the image has it; images as SWE-smith publishes them
  do not (its harness fetches the branch from GitHub), and the base is then made in the sandbox from the
  image's HEAD and the bug patch, without the FAIL_TO_PASS test files (agent.episode.base_patch).
  `tests_commit` (`<id>~1`) is where SWE-smith grades, those files present (agent.episode.repo.reach_tests_base).
- swe-rebench: `docker_image` (or `image_name`) is the image; FAIL_TO_PASS/PASS_TO_PASS come as lists;
  `install_config` (Python version, packages, test command), with the `requirements` and `environment`
  columns folded into it, is kept for `agent.instances.envs`.
- multimodal: `image_assets` is kept; what the runner cannot do with it is reported.

A row that has a `dataset` field is already in the runner's form (a run directory's instances.jsonl,
a file written by hand) and is validated as it is: mapping it again would, e.g., reverse a SWE-smith
fix back into the bug. Columns are never dropped: those that are neither Instance fields nor used by
a mapper go to `Instance.extra`, and each one that carries something the runner cannot honour is
reported once per load, naming what is lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ValidationError

from agent.instances.patches import PatchError, invert_patch
from agent.instances.records import InstallConfig, Instance, InstanceSourceError

log = structlog.get_logger()

Family = Literal["swe-bench", "swe-gym", "swe-smith", "swe-rebench", "multimodal"]
FAMILIES: tuple[str, ...] = ("swe-bench", "swe-gym", "swe-smith", "swe-rebench", "multimodal")
FIELDS = frozenset(Instance.model_fields)
# Columns that describe a row without changing how it is run or graded: kept in `extra`, not reported.
INFORMATIONAL = frozenset({
    "created_at", "hints_text", "difficulty", "issue_url", "pr_url", "issue_numbers", "pull_number",
    "license_name", "meta", "__index_level_0__", "FAIL_TO_FAIL", "PASS_TO_FAIL",
})
SWE_BENCH_ID = re.compile(r"^[\w.-]+__[\w.-]+-\d+$")
Note = Callable[[str, str], None]


# -- validation, shared by every source ------------------------------------------------------------


def first_error(error: ValidationError) -> str:
    """`FIELD: message` for the first problem pydantic found (nested fields joined with dots)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "record"
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {message}"


def validate(model: type[BaseModel], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InstanceSourceError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InstanceSourceError(f"{where}: {first_error(error)}") from None


def check_unique(items: Iterable[tuple[str, str]], kind: str = "instance_id") -> None:
    seen: dict[str, str] = {}
    for where, key in items:
        if key in seen:
            raise InstanceSourceError(f"{where}: {kind}: duplicate {key!r} (first at {seen[key]})")
        seen[key] = where


# -- which family --------------------------------------------------------------------------------


def detect_family(row: dict[str, Any]) -> str | None:
    """The family a row's columns show; None for the runner's own records (local repositories,
    named environments) and rows that look like no dataset."""
    if "install_config" in row or "docker_image" in row:
        return "swe-rebench"
    if "image_assets" in row:
        return "multimodal"
    if "image_name" in row and (str(row.get("repo", "")).startswith("swesmith/")
                                or "swesmith" in str(row.get("image_name", ""))):
        return "swe-smith"
    if "repo_path" in row or "env" in row:
        return None
    if SWE_BENCH_ID.match(str(row.get("instance_id", ""))) and row.get("base_commit"):
        return "swe-bench"
    return None


# -- the family mappers (row in, record for Instance out) ------------------------------------------


def _parsed(value: Any) -> Any:
    """A JSON string column as its object; left as it is when it is not JSON (validation then names it)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            return value
    return value


def _swe_smith(row: dict[str, Any], record: dict[str, Any], note: Note) -> set[str]:
    bug = row.get("patch") or ""
    record["bug_patch"] = bug
    try:
        record["patch"] = invert_patch(bug) if bug.strip() else ""
    except PatchError as error:
        record["patch"] = ""
        note("patch", f"the bug patch cannot be reversed ({error}): no gold fix (`--gold` cannot check it)")
    if row.get("image_name"):
        record["image"] = row["image_name"]
    if not row.get("base_commit") and row.get("instance_id"):
        record["base_commit"] = row["instance_id"]  # the bug branch
        record["tests_commit"] = f"{row['instance_id']}~1"
    if row.get("repo") and "/" not in str(row["repo"]):
        record["repo"] = f"swesmith/{row['repo']}"  # the mirror SWE-smith publishes its branches in
    return {"image_name"}


def _install_config(row: dict[str, Any]) -> dict[str, Any]:
    """`install_config` with SWE-rebench's `requirements` and `environment` columns folded in."""
    config = _parsed(row.get("install_config")) or {}
    if not isinstance(config, dict):
        return config  # validation names the field
    # Parquet stores a struct column with every key any row has: a key a row lacks reads as None.
    config = {key: value for key, value in config.items() if value is not None}
    for column in ("requirements", "environment"):
        if row.get(column) and not config.get(column):
            config = {**config, column: row[column]}
    return config


def _unused_install_keys(config: dict[str, Any], note: Note) -> None:
    """Keys of an install spec the environment builder does not read: what each one loses."""
    known = set(InstallConfig.model_fields)
    for key in sorted(set(config) - known):
        note(f"install_config.{key}", "not read when building the environment (the build may lack what it adds)")


def _swe_rebench(row: dict[str, Any], record: dict[str, Any], note: Note) -> set[str]:
    image = row.get("docker_image") or row.get("image_name")
    if image:
        record["image"] = image
    if row.get("install_config") is not None or row.get("requirements") or row.get("environment"):
        config = _install_config(row)
        record["install_config"] = config
        if not image and isinstance(config, dict):
            _unused_install_keys(config, note)
    return {"docker_image", "image_name", "requirements", "environment"}


def _multimodal(row: dict[str, Any], record: dict[str, Any], note: Note) -> set[str]:
    assets = _parsed(record.get("image_assets"))
    if isinstance(assets, dict) and any(assets.get(key) for key in ("problem_statement", "patch", "test_patch")):
        note("image_assets", "the images the problem statement links to are not shown (CWM reads text: the links "
             "stay in the text), and binary files of patch/test_patch are not put in place for grading")
    return set()


def _swe_bench(row: dict[str, Any], record: dict[str, Any], note: Note) -> set[str]:
    return set()


MAPPERS: dict[str, Callable[[dict[str, Any], dict[str, Any], Note], set[str]]] = {
    "swe-bench": _swe_bench, "swe-gym": _swe_bench, "swe-smith": _swe_smith,
    "swe-rebench": _swe_rebench, "multimodal": _multimodal,
}


# -- rows to instances ------------------------------------------------------------------------------


class ColumnNotice(BaseModel):
    """A column (or install_config key) whose content the runner cannot honour, reported once per load."""

    column: str
    lost: str
    rows: int = 1
    first: str

    def line(self) -> str:
        more = f" and {self.rows - 1} more rows" if self.rows > 1 else ""
        return f"{self.first}{more}: {self.column}: {self.lost}"


class RowMapper:
    """Maps the rows of one source, collecting what it could not honour (one notice per column)."""

    def __init__(self, family: str | None = None) -> None:
        if family is not None and family not in MAPPERS:
            raise InstanceSourceError(f"unknown dataset family {family!r}; known: {', '.join(FAMILIES)}")
        self.family = family
        self.notices: dict[str, ColumnNotice] = {}

    def _note(self, where: str) -> Note:
        def note(column: str, lost: str) -> None:
            if column in self.notices:
                self.notices[column].rows += 1
            else:
                self.notices[column] = ColumnNotice(column=column, lost=lost, first=where)
        return note

    def record(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """The record to validate as an Instance (the row itself when it is in the runner's form)."""
        note = self._note(where)
        if row.get("dataset") is not None:
            family, record = None, {**row, "extra": dict(row.get("extra") or {})}
        else:
            family = self.family or detect_family(row)
            record = {key: value for key, value in row.items() if key in FIELDS}
            record["dataset"] = family
            record["extra"] = {}
        consumed = MAPPERS[family](row, record, note) if family else set()
        for column in sorted(set(row) - FIELDS - consumed):
            record["extra"][column] = row[column]
            if column not in INFORMATIONAL:
                note(column, "not used by the runner (kept in Instance.extra)")
        return record

    def check(self, instance: Instance, where: str) -> None:
        """What only the validated instance shows: a dataset row that nothing can grade."""
        if instance.dataset and not instance.FAIL_TO_PASS:
            self._note(where)("FAIL_TO_PASS", "empty: nothing decides whether the instance is resolved, "
                              "so it cannot be graded")

    def report(self, origin: str) -> list[ColumnNotice]:
        """Log each notice once (a warning line naming the column and what is lost) and return them."""
        for notice in self.notices.values():
            log.warning("instances.column_not_honoured", source=origin, detail=notice.line())
        return list(self.notices.values())


def instances_from_rows(rows: Iterable[tuple[str, Any]], origin: str, family: str | None = None,
                        fix: Callable[[Instance], None] | None = None) -> list[Instance]:
    """Validated instances from (location, row) pairs; one-line errors name the location and field.

    `fix` adjusts each instance after validation (e.g. relative repo paths of a file's folder).
    """
    mapper = RowMapper(family)
    instances: list[Instance] = []
    located: list[tuple[str, str]] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise InstanceSourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
        instance = validate(Instance, mapper.record(row, where), where)
        mapper.check(instance, where)
        if fix is not None:
            fix(instance)
        instances.append(instance)
        located.append((where, instance.instance_id))
    check_unique(located)
    mapper.report(origin)
    return instances

"""Instances: what one episode of a batch works on, validated at the boundary.

An instance is SWE-bench's record (repository, base commit, problem statement, tests that decide
resolution) plus where the repository can be found locally and which environment image runs it.
Loading and validation of instance files live in `agent.instances.sources`; rows of the datasets as
their projects distribute them are mapped onto `Instance` by `agent.instances.mappers`.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class InstanceSourceError(ValueError):
    """A source cannot be read; the one-line message names file, line or index, and field."""


class InstallConfig(BaseModel):
    """An install spec carried by a row instead of (or beside) an image: SWE-rebench's `install_config`,
    which has the shape of SWE-bench's per-version specifications. `agent.instances.envs` turns it into an
    environment image (when the row has no image) and takes the test command from it either way.

    Keys this model does not name are kept (`extra="allow"`); the row mapper warns about each one, since
    nothing honours them.
    """

    model_config = ConfigDict(extra="allow")

    python: str | None = Field(default=None, description="Python version the repository needs, e.g. '3.9'")
    packages: str | None = Field(default=None, description="'requirements.txt', 'environment.yml' or conda "
                                 "package names separated by spaces")
    requirements: str | None = Field(default=None, description="the text of requirements.txt (SWE-rebench's "
                                     "`requirements` column), used when packages is 'requirements.txt'")
    environment: str | None = Field(default=None, description="the text of environment.yml (SWE-rebench's "
                                    "`environment` column), used when packages is 'environment.yml'")
    pip_packages: list[str] = Field(default_factory=list, description="pip requirements installed on top")
    pre_install: list[str] = Field(default_factory=list, description="commands run before the install")
    install: str | None = Field(default=None, description="installs the repository itself, e.g. pip install -e .")
    test_cmd: str | None = Field(default=None, description="the test command; the test files are appended")
    log_parser: str | None = Field(default=None, description="name of the log parser that reads its output")

    @field_validator("pip_packages", mode="before")
    @classmethod
    def _package_list(cls, value: Any) -> Any:
        """SWE-bench's specs give a list; hand-written configs often one string of names."""
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("pre_install", mode="before")
    @classmethod
    def _command_list(cls, value: Any) -> Any:
        """A single command may come as a string."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("python", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        """YAML- or JSON-typed configs write 3.9 as a number."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("test_cmd", mode="before")
    @classmethod
    def _joined_command(cls, value: Any) -> Any:
        """Some rows list several commands; they run one after the other in one shell."""
        if isinstance(value, list):
            return " && ".join(str(part) for part in value if str(part).strip()) or None
        return value


class Instance(BaseModel):
    """One task. Field names follow SWE-bench so its files load unchanged."""

    instance_id: str = Field(min_length=1)
    repo: str = Field(description="owner/name (SWE-bench), a git URL, or a local path")
    base_commit: str = ""
    problem_statement: str = Field(min_length=1)
    patch: str = Field(default="", description="the reference (gold) patch, when known")
    test_patch: str = ""
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    environment_setup_commit: str = ""
    version: str = ""
    # SWE-bench 5 rows say how they are graded; v4 rows have none of these (agent.grading derives them).
    eval_script: str | None = Field(default=None, description="the script the official harness runs to test")
    log_parser: str | None = Field(default=None, description="name of the official log parser for this row")
    eval_type: str | None = Field(default=None, description="the official harness's evaluation type")
    # cwm-runner additions (absent from SWE-bench files).
    dataset: str | None = Field(default=None, description="the family the row came from (swe-bench, swe-gym, "
                                "swe-smith, swe-rebench, multimodal): image naming rules and row mappers key on it")
    repo_path: str | None = Field(default=None, description="local clone or directory to use instead of fetching")
    image: str | None = Field(default=None, description="environment image to run in (default: built from env spec)")
    env: str | None = Field(default=None, description="name of the environment spec (see agent.instances.envs)")
    test_command: str | None = Field(default=None, description="how to run the tests named in FAIL/PASS_TO_PASS")
    install_config: InstallConfig | None = Field(default=None, description="an install spec carried by the row "
                                                 "(SWE-rebench): builds the environment when there is no image")
    tests_commit: str | None = Field(default=None, description="SWE-smith: where its harness grades, the FAIL_TO_PASS "
                                     "test files present (its branch head deleted them); grading checks it out when "
                                     "the image has the branch (agent.episode.repo.reach_tests_base)")
    bug_patch: str = Field(default="", description="SWE-smith: the row's `patch`, which CREATES the bug (the gold "
                           "fix, `patch`, is its reverse); when the image lacks `base_commit` (the bug branch), the "
                           "episode and grading make the base from the image's HEAD and this patch")
    image_assets: dict[str, Any] | None = Field(default=None, description="SWE-bench Multimodal: images linked "
                                                "from the problem statement and binary files of the patches")
    extra: dict[str, Any] = Field(default_factory=dict, description="the row's other columns, kept as they came "
                                  "(the mapper reports the ones nothing honours)")

    @model_validator(mode="before")
    @classmethod
    def _bug_patch_from_extra(cls, data: Any) -> Any:
        """Run directories written before `bug_patch` was a field kept it in `extra["bug_patch"]`."""
        if isinstance(data, dict) and not data.get("bug_patch") and isinstance(data.get("extra"), dict) \
                and isinstance(data["extra"].get("bug_patch"), str):
            extra = dict(data["extra"])
            data = {**data, "bug_patch": extra.pop("bug_patch"), "extra": extra}
        return data

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """SWE-bench's datasets store these lists as JSON strings."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @field_validator("install_config", "image_assets", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """Both ship as JSON strings in some Hugging Face exports and as objects in others."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else None
        return value


class Prediction(BaseModel):
    """One line of preds.jsonl, in SWE-bench's format."""

    instance_id: str
    model_name_or_path: str
    model_patch: str

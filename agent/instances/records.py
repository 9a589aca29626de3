"""Instances: what one episode of a batch works on, validated at the boundary.

An instance is SWE-bench's record (repository, base commit, problem statement, tests that decide
resolution) plus where the repository can be found locally and which environment image runs it.
Loading and validation of instance files live in `agent.instances.sources`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, field_validator


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

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """SWE-bench's datasets store these lists as JSON strings."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value


class Prediction(BaseModel):
    """One line of preds.jsonl, in SWE-bench's format."""

    instance_id: str
    model_name_or_path: str
    model_patch: str

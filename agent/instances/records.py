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
    # cwm-runner additions (absent from SWE-bench files).
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

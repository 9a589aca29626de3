"""The manifest of a batch run: the replayed state of every instance and sample, written as JSON.

agent.batch.state rebuilds these records from status.log and rewrites manifest.json from them; nothing
reads the file back, so it is a report for people and tools (`agent view`, the benchmarks), and these
models are its schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.batch.status_log import EpisodeSummary, RunConfig, utc_now
from agent.episode.failures import FailureKind, InfraCause

MANIFEST_VERSION = 1
SampleStatus = Literal["pending", "running", "done", "error"]


class SampleRecord(BaseModel):
    sample: int
    status: SampleStatus = "pending"
    attempts: int = 0
    error: str | None = None
    error_kind: FailureKind | None = Field(default=None, description="whose failure the error was "
                                           "(agent.episode.failures); infra errors are redone by --resume")
    error_cause: InfraCause | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    trajectory: str | None = Field(default=None, description="path relative to the run directory")
    traces: str | None = Field(default=None, description="--trace-tests: the folder of this outcome's traces, "
                               "relative to the run directory (`<k>.traces`, or `<k>.attempt<a>.error.traces` for "
                               "an error); null when it keeps none. Its phases: summary.trace_phases")
    summary: EpisodeSummary | None = None


class InstanceRecord(BaseModel):
    instance_id: str
    samples: list[SampleRecord]
    vote: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Every sample has its final outcome: an infrastructure error is not one (it is redone)."""
        return all(s.status == "done" or (s.status == "error" and s.error_kind != "infra") for s in self.samples)


class Totals(BaseModel):
    pending: int = 0
    running: int = 0
    done: int = 0
    error: int = 0
    infra_errors: int = Field(default=0, description="of `error`: the infrastructure's (redone by --resume)")
    model_errors: int = Field(default=0, description="of `error`: the model's (count against it)")
    episode_errors: int = Field(default=0, description="of `error`: the instance's own (kept until --redo-errors)")
    submitted: int = 0
    resolved: int = 0
    graded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    episode_seconds: float = 0.0


class Manifest(BaseModel):
    format_version: int = MANIFEST_VERSION
    run_id: str
    created_at: datetime
    updated_at: datetime = Field(default_factory=utc_now)
    config: RunConfig
    model_name: str | None = None
    instances_sha256: str
    instance_count: int
    sessions: list[dict[str, Any]] = Field(default_factory=list)
    totals: Totals = Field(default_factory=Totals)
    instances: list[InstanceRecord]

"""The status log of a batch run: its events, appended one JSON line each, fsynced; the run's config.

This log is the run's only source of truth (agent.batch.state derives everything else from it): an
event is appended, flushed and fsynced before anything relies on it, and replaying the log after a
kill drops a torn last line and nothing else. An append that fails (a full disk) is undone before the
error goes up, so the log never holds a partial line that a later append would bury mid-file.

Error events carry the failure's kind (agent.episode.failures): `infra` errors are redone by every
resume and never graded; `model` and `episode` errors are kept until `--redo-errors`.
"""

from __future__ import annotations

import errno
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import structlog
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agent.episode.failures import FailureKind, InfraCause
from sandbox.base import DEFAULT_TIMEOUT_S
from traces.schema import Evaluation

log = structlog.get_logger()


class BatchRefused(RuntimeError):
    """The run directory cannot be used as asked; the one-line message says what to do instead."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- the run's configuration ---------------------------------------------------------------------


class RunConfig(BaseModel):
    """What the results depend on; a resume must use the same (workers and executor may change)."""

    model: str = Field(description="the model spec, or its template, as given")
    model_options: dict[str, Any] = Field(default_factory=dict)
    samples: int = 1
    image: str | None = None
    evaluate: bool = False
    loop: dict[str, Any] = Field(default_factory=dict)
    sandbox_timeout_s: float = DEFAULT_TIMEOUT_S
    model_name: str | None = Field(default=None, description="model_name_or_path for preds.jsonl")
    trace_tests: dict[str, Any] | None = Field(default=None, description="--trace-tests and its bounds (a run's "
                                               "samples are all traced alike)")
    select: Literal["majority", "regression", "oracle"] = Field(
        default="majority", description="how one of K samples is chosen (agent.batch.voting)")
    image_prefix: str | None = Field(default=None, description="--image-prefix: another namespace is other images "
                                     "(arm64 builds); --registry, a mirror of the same images, may change")
    platform: str | None = Field(default=None, description="--platform of the pulled images")

    def differences(self, other: RunConfig) -> list[str]:
        """The settings that differ; the model's replica list is a deployment detail (`same_model`)."""
        from agent.models.factory import same_model

        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return [key for key in mine if mine[key] != theirs.get(key)
                and not (key == "model" and same_model(self.model, other.model))]


# -- the status log --------------------------------------------------------------------------------


class _Event(BaseModel):
    at: datetime = Field(default_factory=utc_now)


class SessionEvent(_Event):
    """One invocation of the runner on this directory (the first, then one per --resume)."""

    event: Literal["session"] = "session"
    run_id: str
    pid: int = Field(default_factory=os.getpid)
    host: str = Field(default_factory=socket.gethostname)
    executor: str = "local"
    workers: int = 1
    resume: bool = False
    config: RunConfig
    instances_sha256: str


class StartEvent(_Event):
    event: Literal["start"] = "start"
    instance_id: str
    sample: int
    attempt: int
    slot: int = 0


class EpisodeSummary(BaseModel):
    """What the manifest keeps of a finished episode (the files hold the rest)."""

    ending: str | None = None
    reason: str = ""
    steps: int = 0
    has_patch: bool = False
    evaluation: Evaluation | None = None
    elapsed_s: float = 0.0
    command_s: float = 0.0
    model_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    node: str = ""
    model_name: str = ""
    trace_phases: list[Literal["before", "after"]] = Field(
        default_factory=list, description="--trace-tests: the phases of which this outcome keeps traces (an "
        "errored episode: those it reached); [] without tracing, and in runs made before this field")


class DoneEvent(_Event):
    event: Literal["done"] = "done"
    instance_id: str
    sample: int
    attempt: int
    summary: EpisodeSummary


class ErrorEvent(_Event):
    event: Literal["error"] = "error"
    instance_id: str
    sample: int
    attempt: int
    error: str
    kind: FailureKind = Field(default="episode", description="whose failure (agent.episode.failures); logs "
                              "written before kinds existed read as episode errors")
    cause: InfraCause | None = Field(default=None, description="for infra errors: what failed")
    summary: EpisodeSummary = Field(default_factory=EpisodeSummary)


class AbandonedEvent(_Event):
    """A resumed run found this attempt running with no outcome: its runner died mid-episode."""

    event: Literal["abandoned"] = "abandoned"
    instance_id: str
    sample: int
    attempt: int
    kept: str | None = Field(default=None, description="where its partial trajectory was put aside")


Event = Annotated[
    Union[SessionEvent, StartEvent, DoneEvent, ErrorEvent, AbandonedEvent], Field(discriminator="event")
]
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


class StatusLog:
    """Append-only JSON Lines; each event is written and fsynced before the call returns.

    Written with os.write on a descriptor of its own, not through a buffered file: a buffer that
    failed to flush would try again at close and could land a fragment after later lines.
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, event: BaseModel) -> None:
        """Append one line whole, or raise OSError (naming the log) with the log as it was before."""
        assert self._fd is not None, "the status log is closed"
        data = (event.model_dump_json() + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as error:
            os.ftruncate(self._fd, size)  # no partial line stays behind (a full disk refuses the rest)
            raise OSError(error.errno or errno.EIO, error.strerror or str(error), str(self.path)) from error

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def replay(path: Path) -> list[Any]:
        """Every complete event in order; a torn last line (killed mid-write) is cut off the file."""
        if not path.exists():
            return []
        data = path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            log.warning("batch.status_log_torn_tail", path=str(path), dropped_bytes=len(data) - good)
            with path.open("r+b") as handle:
                handle.truncate(good)
        events = []
        for number, line in enumerate(data[:good].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(EVENT_ADAPTER.validate_json(line))
            except ValidationError as error:
                raise BatchRefused(f"{path}:{number} is not a status event ({error.errors()[0]['msg']}); "
                                   "the run directory is damaged: choose another --output") from None
        return events

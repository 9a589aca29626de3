"""Whose failure ended an episode: the infrastructure's, the model's, or the episode's own.

The distinction decides what happens next, so it is made in one place. SWE-bench's harness keeps
`infra_failure` apart from `unresolved` for the same reason: a score must only count what the model
did. Three kinds:

- `infra`: the machinery under the episode gave way and the same episode can succeed when it is
  back: the sandbox or the Docker daemon died, the model server went away past its outage bound (or
  could not be reached at all), a Ray worker was lost, the disk filled. Such an attempt is never
  graded and never enters a vote or pass@k; `agent batch --resume` redoes it without being asked.
- `model`: the model's side answered and the answer ended the episode: the server rejected the
  request or sent something malformed, a replay ran out of replies. It counts against the model as a
  failed attempt does.
- `episode`: everything else about this instance: a repository that cannot be prepared, an
  environment that cannot be provided, a grading that failed, a runner bug. Deterministic as a rule,
  so it is kept until `--redo-errors`.

`cause` says which part of the infrastructure failed, so the batch knows what to wait for: `docker`
(a sandbox failure: the batch asks the daemon whether it is there), `model_server`, `disk`, `worker`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, Field

FailureKind = Literal["infra", "model", "episode"]
InfraCause = Literal["docker", "model_server", "disk", "worker"]
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Failure(BaseModel):
    kind: FailureKind
    cause: InfraCause | None = None
    since: float | None = Field(default=None, description="for an outage: when the failing side first saw it "
                                "(epoch seconds), so a driver in another process knows how long it has lasted")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it was raised from (explicitly or while handling), oldest last."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full(error: BaseException) -> bool:
    """Did this fail because the file system is full (or the user's quota reached)?"""
    return any(isinstance(e, OSError) and e.errno in DISK_FULL for e in _chain(error))


def _docker_gone(error: BaseException) -> bool:
    """The Docker daemon's socket failed under a call (the docker client raises requests' errors raw)."""
    import requests

    return isinstance(error, requests.exceptions.ConnectionError)


def classify(error: BaseException) -> Failure:
    """The kind (and, for infrastructure, the cause) of the error that ended an episode."""
    from agent.models.base import ModelError
    from agent.models.http import ServerError, ServerUnavailable
    from sandbox.base import SandboxError

    if disk_full(error):
        return Failure(kind="infra", cause="disk")
    for link in _chain(error):
        if isinstance(link, ServerUnavailable) or (isinstance(link, ServerError) and link.status is None):
            since = link.down_since if isinstance(link, ServerUnavailable) else None
            return Failure(kind="infra", cause="model_server", since=since)  # gone past its bound, or never reachable
        if isinstance(link, SandboxError) or _docker_gone(link):
            return Failure(kind="infra", cause="docker")
    if isinstance(error, ModelError):
        return Failure(kind="model")
    return Failure(kind="episode")

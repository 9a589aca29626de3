"""Find and remove sandbox containers whose owning runner process is gone.

Every container carries labels naming its owner: pid, the pid's start time (field 22 of
/proc/PID/stat, so a recycled pid is not mistaken for the owner) and the host (hostname plus the
kernel's boot id, so a pid is only ever checked in the pid namespace and boot it came from). A runner
killed with SIGKILL leaves its containers behind; the next runner removes them.

Semantics:
- `reap_orphans(api)`: removes containers whose owner is provably dead: same hostname, and either
  another boot (the machine rebooted) or no process with that pid and start time. Containers of
  other hosts (another machine or container sharing the daemon) are left alone: we cannot tell.
- `prune(api, all=False)`: the same as `reap_orphans`. `prune(api, all=True)` additionally removes
  containers whose owner cannot be checked from here (other hosts, missing labels); it still never
  touches a container whose owner is a live process on this host, so it is safe to run while runs
  are in progress here.
"""

from __future__ import annotations

import os
import socket
from enum import Enum
from functools import lru_cache
from pathlib import Path

import structlog
from docker import APIClient
from docker.errors import APIError, NotFound
from pydantic import BaseModel

log = structlog.get_logger()

LABEL = "cwm-runner"
LABEL_RUN_ID = "cwm-runner.run-id"
LABEL_OWNER_PID = "cwm-runner.owner-pid"
LABEL_OWNER_START = "cwm-runner.owner-start"
LABEL_OWNER_HOST = "cwm-runner.owner-host"


class OwnerState(str, Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


class Owner(BaseModel):
    """The runner process a container belongs to."""

    pid: int
    start: str  # clock ticks since boot, as in /proc/PID/stat
    host: str  # "<hostname>/<boot id>"


def process_start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]  # field 22 overall; fields[0] is field 3 (state)


@lru_cache(maxsize=1)
def _host_id() -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown-boot"
    return f"{socket.gethostname()}/{boot_id}"


def current_owner() -> Owner:
    """This process as a container owner (recomputed per call: a forked child is another owner)."""
    pid = os.getpid()
    return Owner(pid=pid, start=process_start_time(pid) or "0", host=_host_id())


def owner_labels(run_id: str) -> dict[str, str]:
    """Labels that tie a new container to this process and run."""
    owner = current_owner()
    return {
        LABEL: "1",
        LABEL_RUN_ID: run_id,
        LABEL_OWNER_PID: str(owner.pid),
        LABEL_OWNER_START: owner.start,
        LABEL_OWNER_HOST: owner.host,
    }


def owner_state(labels: dict[str, str]) -> OwnerState:
    """Whether the process named by a container's labels is alive, dead, or not checkable here."""
    try:
        owner = Owner(
            pid=int(labels[LABEL_OWNER_PID]),
            start=labels[LABEL_OWNER_START],
            host=labels[LABEL_OWNER_HOST],
        )
    except (KeyError, ValueError):
        return OwnerState.UNKNOWN
    here = _host_id()
    hostname, _, _boot = owner.host.partition("/")
    if hostname != here.partition("/")[0]:
        return OwnerState.UNKNOWN
    if owner.host != here:
        return OwnerState.DEAD  # same host name, another boot: every process of that boot is gone
    started = process_start_time(owner.pid)
    if started is None or started != owner.start:
        return OwnerState.DEAD
    return OwnerState.ALIVE


def _remove(api: APIClient, container_id: str) -> bool:
    try:
        api.remove_container(container_id, force=True, v=True)
    except NotFound:
        return False  # another reaper (or its owner) was faster
    except APIError as exc:
        if exc.status_code == 409:  # removal already in progress
            return False
        raise
    return True


def _sweep(api: APIClient, remove_unknown: bool, run_id: str | None) -> list[str]:
    labels = [f"{LABEL}=1"] + ([f"{LABEL_RUN_ID}={run_id}"] if run_id is not None else [])
    removed = []
    for container in api.containers(all=True, filters={"label": labels}):
        state = owner_state(container.get("Labels") or {})
        if state is OwnerState.DEAD or (remove_unknown and state is OwnerState.UNKNOWN):
            if _remove(api, container["Id"]):
                removed.append(container["Id"])
                log.info("sandbox.reaped", container=container["Id"][:12], owner=state.value)
    return removed


def reap_orphans(api: APIClient, run_id: str | None = None) -> list[str]:
    """Remove cwm-runner containers whose owner process on this host is gone; returns their ids."""
    return _sweep(api, remove_unknown=False, run_id=run_id)


def prune(api: APIClient, all: bool = False, run_id: str | None = None) -> list[str]:  # noqa: A002
    """`agent sandbox prune [--all] [--run-id ID]`: orphans only, or (all=True) everything not owned
    by a live process of this host; `run_id` restricts either to one run's containers."""
    return _sweep(api, remove_unknown=all, run_id=run_id)

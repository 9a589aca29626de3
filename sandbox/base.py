"""The one interface every sandbox backend implements, and the typed values that cross it.

The agent loop, the tools and replay only ever see `Sandbox`; Docker and bubblewrap differ behind it.
Results are pydantic models so that they can be recorded in trajectories unchanged.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

from pydantic import BaseModel, Field

# Defaults from docs/cwm-protocol.md, section 5.
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_OUTPUT_LIMIT_BYTES = 480_000
DEFAULT_WORKDIR = "/testbed"


# CWM's session limits (`cwm/rl/swerl/default_configs.py`: MEM_LIMIT, 12 GiB in KiB, for `ulimit -v` and
# `ulimit -d`; THREAD_LIMIT for `ulimit -u`), set by the start-up script of every session.
CWM_MEMORY_LIMIT_KIB = 12 * 1024 * 1024
CWM_PROCESS_LIMIT = 65536


class Limits(BaseModel):
    """Resource limits applied to every sandbox (containers get them from the kernel's cgroups).

    The `ulimit_*` ones are CWM's and are set inside the session (None: not set). A sandbox whose own
    hard limit is lower (bubblewrap derives them from `memory_bytes` and `pids`) keeps the lower one:
    the start-up script cannot raise a hard limit, and its failed `ulimit` is not shown to anyone.
    """

    memory_bytes: int = 4 * 1024**3
    cpus: float = 2.0
    pids: int = 1024
    ulimit_virtual_kib: int | None = CWM_MEMORY_LIMIT_KIB
    ulimit_data_kib: int | None = CWM_MEMORY_LIMIT_KIB
    ulimit_processes: int | None = CWM_PROCESS_LIMIT


class SandboxConfig(BaseModel):
    """Everything needed to start a sandbox; the same config works for every backend."""

    image: str = Field(description="Docker image (Docker backend) or root filesystem directory (bwrap)")
    workdir: str = DEFAULT_WORKDIR
    timeout_s: float = DEFAULT_TIMEOUT_S
    output_limit_bytes: int = DEFAULT_OUTPUT_LIMIT_BYTES
    limits: Limits = Field(default_factory=Limits)
    network: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    # Host directories to mount, host path -> (container path, "ro" | "rw"). Nothing else from the host.
    mounts: dict[str, tuple[str, Literal["ro", "rw"]]] = Field(default_factory=dict)
    run_id: str = "adhoc"
    # Extra shell run at the start of every session (after the protocol's own start-up lines).
    startup_extra: str = ""


class CommandResult(BaseModel):
    """What one command in the session produced.

    `output` is stdout and stderr merged, decoded as UTF-8 with replacement, exactly as produced
    (not stripped). When `timed_out`, `overflowed` or `session_died` is set the session has been
    restarted and `output` holds whatever partial output was read (the protocol drops it).
    """

    output: str
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    overflowed: bool = False
    session_died: bool = False
    cwd: str | None = Field(default=None, description="session working directory after the command")

    @property
    def failed_session(self) -> bool:
        return self.timed_out or self.overflowed or self.session_died


class SandboxError(RuntimeError):
    """A sandbox could not be created or used; the message says what to do."""


# What tools print when a write in the sandbox fails, by the errno they name (matched case-insensitively
# in the shell's or the daemon's message).
_WRITE_ERRNOS = (errno.ENAMETOOLONG, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES,
                 errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ETXTBSY, errno.ENOENT)


def write_error(target: str, message: str | bytes | None) -> OSError | None:
    """The OSError a failed in-sandbox write stands for, or None when `message` names no known error.

    Why: the model sees this error's text. It must read the same on every backend and in every replay,
    so it is rebuilt from the errno alone (`File name too long`), never passed on with the shell's
    line counter or a daemon's URL in it.
    """
    text = (message.decode(errors="replace") if isinstance(message, bytes) else message or "").lower()
    for code in _WRITE_ERRNOS:
        if os.strerror(code).lower() in text:
            return OSError(code, os.strerror(code), target)
    return None


class Sandbox(ABC):
    """A started, isolated environment holding one persistent bash session.

    Implementations must be safe to `close()` more than once and from signal/atexit handlers.
    """

    config: SandboxConfig
    backend: ClassVar[str]  # recorded in trajectories: what a replay must reproduce

    @abstractmethod
    def run(self, command: str, timeout_s: float | None = None, aside: bool = False) -> CommandResult:
        """Run `command` (any bash text, multi-line allowed) in the persistent session.

        `aside=True` marks the runner's own commands (diff stats, the final diff): they run in the
        same session but leave the model's `$?` as it was, so the model never sees them.
        """

    @abstractmethod
    def restart_session(self) -> None:
        """Kill every process of the session and start a fresh one with the start-up script."""

    @property
    @abstractmethod
    def cwd(self) -> str:
        """The session's current working directory (tools resolve relative paths against it)."""

    @abstractmethod
    def read_file(self, path: str) -> bytes:
        """Read a file; raises FileNotFoundError if it is missing (relative paths use `cwd`)."""

    @abstractmethod
    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file whose parent directory exists (relative paths use `cwd`)."""

    @abstractmethod
    def copy_in(self, host_path: Path, sandbox_dir: str) -> None:
        """Copy a host file or directory into `sandbox_dir` (created if missing)."""

    def extract(self, archive: BinaryIO, sandbox_dir: str) -> None:
        """Unpack the tar stream `archive` into `sandbox_dir` (created if missing), as the sandbox's root.

        Backends override this to unpack in one pass (Docker: the daemon unpacks into the container;
        bubblewrap: `tar` inside the sandbox reads a pipe). This fallback, for wrappers, spools the
        stream to a host file, copies that in and unpacks it with the sandbox's `tar`."""
        with tempfile.TemporaryDirectory(prefix="cwm-extract-") as scratch:
            spool = Path(scratch) / "stream.tar"
            with spool.open("wb") as handle:
                shutil.copyfileobj(archive, handle, 1 << 20)
            self.copy_in(spool, "/tmp/.cwm-extract")
        dest = shlex.quote(self.resolve(sandbox_dir))
        done = self.run(f"(mkdir -p -- {dest} && tar --no-same-owner -xf /tmp/.cwm-extract/stream.tar -C {dest}; "
                        "rc=$?; rm -rf /tmp/.cwm-extract; exit $rc)", aside=True)
        if done.exit_code != 0:
            raise SandboxError(f"could not unpack into {sandbox_dir}: {done.output.strip()[-300:]}")

    @abstractmethod
    def copy_out(self, sandbox_path: str, host_dir: Path) -> None:
        """Copy a sandbox file or directory into the host directory `host_dir`."""

    @abstractmethod
    def close(self) -> None:
        """Stop and remove the sandbox and everything it holds."""

    def resolve(self, path: str) -> str:
        """Absolute sandbox path for `path`, relative paths taken from the session's cwd."""
        if path.startswith("/"):
            return path
        return str(Path(self.cwd) / path)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        """Close; a sandbox that cannot be removed now (its daemon is restarting) does not undo the work
        done in it: the failure is logged, and the backend's own cleanup (at exit, or the reaper of the
        next run) removes it later. An error of the block itself still goes up unchanged."""
        try:
            self.close()
        except SandboxError as error:
            import structlog

            structlog.get_logger().warning("sandbox.close_failed", error=str(error))

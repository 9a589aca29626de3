"""Docker backend: one locked-down container per sandbox, the bash session over one exec stream.

The container's PID 1 is a tiny bash loop blocked in `read` on a stdin nobody writes to: it has no
child, survives `kill -9 -1` (the kernel never delivers it a signal from inside its namespace) and
reaps orphans. The session is `docker exec -i bash` through the low-level API with the hijacked
socket used directly (select() for deadlines, Docker's 8-byte frame headers stripped here), so a
command costs one socket write and read instead of an HTTP exchange. Killing the session is one more
exec running `kill -9 -1` (it works even at the pids limit: the kernel charges but does not refuse a
process joining the cgroup); should that exec fail or never finish, the container is stopped and
started again, which keeps its files.

Capabilities: ALL are dropped and only CHOWN, DAC_OVERRIDE and FOWNER come back. Without them root
in the sandbox cannot `rm -rf` a read-only tree, extract a tarball with foreign owners, or chmod
files it does not own, and test suites whose expected results were recorded as root (SWE-bench
grades as root) would behave differently. Nothing else (setuid, raw sockets, mknod, kill of other
users, ptrace...) is needed; tests/sandbox/test_docker_isolation.py pins the set.
"""

from __future__ import annotations

import base64
import errno
import io
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests
import structlog
from docker import APIClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig
from docker.utils import kwargs_from_env
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from sandbox import lifecycle
from sandbox.archive import extract_untrusted, root_owned
from sandbox.base import CommandResult, Sandbox, SandboxConfig, SandboxError, write_error
from sandbox.reaper import owner_labels, reap_orphans
from sandbox.session import RECV_BYTES, BashSession, DeadlineChannel, overwrite_script, overwrite_succeeded

log = structlog.get_logger()

CAP_ADD: tuple[str, ...] = ("CHOWN", "DAC_OVERRIDE", "FOWNER")
# PID 1: blocks in `read` on the never-written stdin (OpenStdin, never attached); falls back to
# sleeping should that stdin ever close, so it can never spin.
KEEPER_ARGV = ["/bin/bash", "-c", "trap '' TERM INT HUP; while :; do read -r _ || sleep 3600; done"]
KILL_ARGV = ["/bin/bash", "-c", "kill -9 -1"]
KILL_WAIT_S = 10.0
# Measured with bench/sandbox_bench.py-style timings (fuse-overlayfs, Docker 20.10): an archive
# call costs about 35 ms at any size; a session read about 4-11 ms up to 1 MiB; an inline session
# write 6 ms at 1 KB but 24 ms at 50 KB (bash reads its input byte by byte).
FAST_FILE_BYTES = 1024 * 1024  # reads up to this size go through the session
INLINE_WRITE_BYTES = 64 * 1024  # writes up to this size go inline through the session
_FRAME_HEADER = 8

_reap_lock = threading.Lock()
_reaped_pid: int | None = None
_api_version: str | None = None


# -- daemon connection ----------------------------------------------------------------------------


def connect() -> APIClient:
    """A low-level client; raises SandboxError saying how to get a daemon if there is none."""
    global _api_version
    try:
        # DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI reads them.
        api = APIClient(version=_api_version or "auto", timeout=120, **kwargs_from_env())
        if _api_version is None:
            _api_version = api.api_version  # "auto" asked the daemon once; reuse it
        else:
            api.ping()
        return api
    except (DockerException, requests.exceptions.ConnectionError) as exc:
        raise SandboxError(
            "cannot reach the Docker daemon: start it (e.g. `sudo systemctl start docker`) or set "
            f"DOCKER_HOST, or use the bubblewrap backend ({exc})"
        ) from exc


def daemon_answers(timeout_s: float = 5.0) -> bool:
    """Does the Docker daemon (DOCKER_HOST's, as `connect`) answer a ping within `timeout_s`? For
    callers waiting for it to come back: never raises, never waits on the long API timeout."""
    try:
        api = APIClient(version=_api_version or "auto", timeout=timeout_s, **kwargs_from_env())
    except (DockerException, requests.exceptions.RequestException):
        return False
    try:
        return bool(api.ping())
    except (DockerException, requests.exceptions.RequestException):
        return False
    finally:
        api.close()


def _reap_once(api: APIClient) -> None:
    """Remove orphans of dead runners when a process creates its first sandbox."""
    global _reaped_pid
    with _reap_lock:
        if _reaped_pid == os.getpid():
            return
        _reaped_pid = os.getpid()
    try:
        reap_orphans(api)
    except (APIError, requests.exceptions.RequestException) as exc:
        log.warning("sandbox.reap_failed", error=str(exc))


def _docker_socket_paths() -> list[Path]:
    paths = [Path("/var/run/docker.sock"), Path("/run/docker.sock")]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        paths.append(Path(host[len("unix://") :]))
    return [p.resolve() for p in paths if p.exists()]


def _binds(config: SandboxConfig) -> dict[str, dict[str, str]]:
    """config.mounts as docker binds, refusing anything that would expose the Docker socket."""
    sockets = _docker_socket_paths()
    binds = {}
    for host_path, (container_path, mode) in config.mounts.items():
        source = Path(host_path).resolve()
        if not source.exists():
            raise SandboxError(f"mount source {host_path} does not exist: create it or drop the mount")
        if stat.S_ISSOCK(source.stat().st_mode) or any(s == source or source in s.parents for s in sockets):
            raise SandboxError(f"refusing to mount {host_path}: it exposes the Docker socket to the sandbox")
        binds[str(source)] = {"bind": container_path, "mode": mode}
    return binds


@retry(
    retry=retry_if_exception(lambda exc: isinstance(exc, APIError) and exc.is_server_error()),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)
def _remove_container(api: APIClient, container_id: str) -> None:
    """Force-remove; retried because the daemon can answer 500 "device or resource busy" while
    the storage driver (fuse-overlayfs in particular) is still unmounting a just-killed container."""
    api.remove_container(container_id, force=True, v=True)


# -- the exec stream --------------------------------------------------------------------------------


class ExecChannel(DeadlineChannel):
    """`session.Channel` over a hijacked `docker exec` socket (stdin=True, tty=False)."""

    def __init__(self, sock_io: Any) -> None:
        self._io = sock_io  # keep the SocketIO (and through it the HTTP response) alive
        self._sock: socket.socket = sock_io._sock if hasattr(sock_io, "_sock") else sock_io
        self._sock.setblocking(False)
        self._write_fd = self._read_fd = self._sock
        self._header = bytearray()
        self._left = 0  # payload bytes still to come in the current frame
        self._closed = False

    def _write(self, view: memoryview) -> int:
        return self._sock.send(view)

    def _read(self) -> bytes:
        return self._sock.recv(RECV_BYTES)

    def _payload(self, data: bytes) -> bytes:
        return self._demux(data)

    def _demux(self, data: bytes) -> bytes:
        """Strip Docker's stream headers ([type, 0, 0, 0, big-endian length]) from `data`."""
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self._left == 0:
                take = min(_FRAME_HEADER - len(self._header), n - i)
                self._header += data[i : i + take]
                i += take
                if len(self._header) == _FRAME_HEADER:
                    self._left = int.from_bytes(self._header[4:8], "big")
                    self._header.clear()
            else:
                take = min(self._left, n - i)
                out += data[i : i + take]
                i += take
                self._left -= take
        return bytes(out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for closer in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close, self._io.close):
            try:
                closer()
            except OSError:
                pass


class DockerShellHost:
    """`session.ShellHost` for one container."""

    def __init__(self, api: APIClient, container_id: str, workdir: str) -> None:
        self._api = api
        self._id = container_id
        self._workdir = workdir

    def open_shell(self, argv: tuple[str, ...]) -> ExecChannel:
        try:
            exec_id = self._api.exec_create(
                self._id, list(argv), stdin=True, stdout=True, stderr=True, tty=False, workdir=self._workdir
            )["Id"]
            return ExecChannel(self._api.exec_start(exec_id, socket=True))
        except APIError as exc:
            raise SandboxError(f"cannot start the sandbox shell: {exc.explanation or exc}") from exc

    def kill_all(self) -> None:
        exit_code = self._run_kill_exec()
        # `kill -9 -1` exits 0, or 1 when nothing was left to kill; anything else means the exec
        # itself could not run or never finished. Then restart the container (files are kept),
        # unless it is no longer running: nothing inside can stop its PID 1, so the daemon did (it
        # restarted, or was told to), and a session on a restarted container would hide that the
        # episode's processes were lost. That is the sandbox dying, said as such.
        if exit_code not in (0, 1):
            self._check_running()
            log.warning("sandbox.restarting_container", container=self._id[:12], exit_code=exit_code)
            try:
                self._api.kill(self._id)
            except APIError:
                pass  # not running any more: starting it again is all that is needed
            self._api.wait(self._id, timeout=60)
            try:
                self._api.start(self._id)
            except APIError as exc:
                raise SandboxError(f"the sandbox container could not be restarted: {exc.explanation or exc}") from exc

    def _check_running(self) -> None:
        """Raise SandboxError if the container stopped or the daemon is gone (requests raises raw)."""
        try:
            state = self._api.inspect_container(self._id).get("State") or {}
        except NotFound as exc:
            raise SandboxError(f"the sandbox container {self._id[:12]} is gone: {exc.explanation or exc}") from exc
        except (APIError, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"lost the Docker daemon under sandbox {self._id[:12]}: {exc}") from exc
        if not state.get("Running"):
            raise SandboxError(f"the sandbox container {self._id[:12]} was stopped under its session (exit code "
                               f"{state.get('ExitCode')}): was the Docker daemon restarted?")

    def _run_kill_exec(self) -> int | None:
        """Run `kill -9 -1` in the container; its exit code, or None if it did not run or finish.

        Detached and polled rather than attached, so that a daemon that never reports the exit
        cannot hang us: after KILL_WAIT_S we fall back to restarting the container.
        """
        try:
            exec_id = self._api.exec_create(self._id, KILL_ARGV)["Id"]
            self._api.exec_start(exec_id, detach=True)
            deadline = time.monotonic() + KILL_WAIT_S
            while True:
                info = self._api.exec_inspect(exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return int(info["ExitCode"])
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.002)
        except (APIError, requests.exceptions.RequestException) as exc:  # the daemon itself may be gone
            log.warning("sandbox.kill_exec_failed", error=str(exc))
            return None


# -- archives -------------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")  # a view, so consuming a multi-MB chunk piecewise is not quadratic

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# -- the sandbox ----------------------------------------------------------------------------------


class DockerSandbox(Sandbox):
    """A running container holding one persistent bash session."""

    backend = "docker"

    def __init__(self, config: SandboxConfig, api: APIClient | None = None) -> None:
        self.config = config
        self._owns_api = api is None
        self._api = api or connect()
        self._lock = threading.RLock()  # one command (or file operation) at a time
        self._close_lock = threading.Lock()  # separate: close() must not wait for a running command
        self._closed = False
        self.container_id: str | None = None
        _reap_once(self._api)
        self.container_id = self._create_container()
        lifecycle.register(self)
        try:
            self._start_container()
            self._session = BashSession(DockerShellHost(self._api, self.container_id, config.workdir), config)
            self._session.start()
        except BaseException:
            try:
                self.close()
            except SandboxError:
                pass  # the reaper removes it once this process is gone
            raise
        log.debug("sandbox.started", container=self.container_id[:12], image=config.image)

    def _create_container(self) -> str:
        cfg, limits = self.config, self.config.limits
        host_config = self._api.create_host_config(
            network_mode="bridge" if cfg.network else "none",
            cap_drop=["ALL"],
            cap_add=list(CAP_ADD),
            security_opt=["no-new-privileges"],
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            binds=_binds(cfg),
            ipc_mode="private",
            log_config=LogConfig(type=LogConfig.types.NONE),
        )
        name = "cwm-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", cfg.run_id)[:40] + "-" + secrets.token_hex(4)
        try:
            created = self._api.create_container(
                cfg.image,
                entrypoint=KEEPER_ARGV,  # whatever the image's entrypoint/cmd: PID 1 is our keeper
                stdin_open=True,
                name=name,
                hostname="sandbox",
                working_dir=cfg.workdir,  # created by Docker if the image lacks it
                labels=owner_labels(cfg.run_id),
                host_config=host_config,
            )
        except ImageNotFound as exc:
            raise SandboxError(
                f"sandbox image {cfg.image} not found on this machine: build it with `agent images build` (the "
                "base image), or pull it (`agent images pull INSTANCES` for instance images)"
            ) from exc
        except APIError as exc:
            raise SandboxError(f"Docker could not create the sandbox: {exc.explanation or exc}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise SandboxError("lost the Docker daemon: check that it is running (`docker info`)") from exc
        return created["Id"]

    def _start_container(self) -> None:
        try:
            self._api.start(self.container_id)
        except APIError as exc:
            raise SandboxError(f"Docker could not start the sandbox: {exc.explanation or exc}") from exc

    # -- the session --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox is closed: create a new one")

    def run(self, command: str, timeout_s: float | None = None, aside: bool = False) -> CommandResult:
        with self._lock:
            self._check_open()
            return self._session.run(command, timeout_s, aside=aside)

    def restart_session(self) -> None:
        with self._lock:
            self._check_open()
            self._session.restart()

    @property
    def cwd(self) -> str:
        return self._session.cwd

    # -- files ----------------------------------------------------------------------------------

    def _internal(self, script: str, output_limit: int) -> bytes | None:
        """Run one of our own commands in the session; None if it did not complete normally."""
        outcome = self._session.execute(
            script, timeout_s=max(60.0, self.config.timeout_s), output_limit=output_limit, aside=True
        )
        return outcome.output if outcome.ok else None

    def read_file(self, path: str) -> bytes:
        with self._lock:
            self._check_open()
            target = self.resolve(path)
            data = self._read_small(target)
            return data if data is not None else self._read_archive(target)

    def _read_small(self, target: str) -> bytes | None:
        """Through the session: one round trip, follows symlinks; None for large files or surprises."""
        q = shlex.quote(target)
        script = (
            f"if [ -d {q} ]; then builtin printf D; elif [ ! -e {q} ]; then builtin printf N; "
            f"elif [ ! -r {q} ]; then builtin printf R; else builtin printf O; "
            f"command -p head -c {FAST_FILE_BYTES + 1} -- {q} | command -p base64 -w0; fi"
        )
        out = self._internal(script, output_limit=FAST_FILE_BYTES * 4 // 3 + 64)
        if not out:
            return None
        code, payload = out[:1], out[1:]
        if code == b"D":
            raise IsADirectoryError(target)
        if code == b"N":
            raise FileNotFoundError(target)
        if code == b"R":
            raise PermissionError(target)
        try:
            data = base64.b64decode(payload, validate=True) if code == b"O" else None
        except ValueError:
            data = None
        if data is None or len(data) > FAST_FILE_BYTES:
            return None
        return data

    def _read_archive(self, target: str, depth: int = 0) -> bytes:
        """Through the archive API, for large files: follows symlinks itself."""
        if depth > 40:
            raise OSError(f"too many levels of symbolic links: {target}")
        try:
            chunks, _ = self._api.get_archive(self.container_id, target)
        except NotFound as exc:
            raise FileNotFoundError(target) from exc
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(iter(chunks))), mode="r|") as tar:
            member = tar.next()
            if member is None:
                raise FileNotFoundError(target)
            if member.isdir():
                raise IsADirectoryError(target)
            if member.issym():
                link = posixpath.join(posixpath.dirname(target), member.linkname)
                return self._read_archive(posixpath.normpath(link), depth + 1)
            handle = tar.extractfile(member)
            if handle is None:
                raise SandboxError(f"{target} is not a regular file")
            return handle.read()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write `data`; `mode` applies when the file is created (an edit keeps an existing mode).

        Writes follow symlinks and keep the file's inode, like `open(path, "wb")`. Small data goes
        inline through the session as base64 (bash reads a command at a few MB/s, so this wins
        below about 64 KiB); larger data is uploaded to a temporary file with the archive API and
        copied over the target by the session.
        """
        with self._lock:
            self._check_open()
            target = self.resolve(path)
            if len(data) <= INLINE_WRITE_BYTES:
                # One line (a here-string): every write then advances the session's line counter,
                # which bash prints in the model's error messages, by one line, as on every backend.
                source = f"command -p base64 -d <<< '{base64.b64encode(data).decode('ascii')}'"
                done = self._write_via_session(target, mode, source)
            else:
                upload = f"/tmp/.cwm-upload-{secrets.token_hex(8)}"
                self._write_archive(upload, data, 0o600)
                done = self._write_via_session(target, mode, f"command -p cat -- {upload}", cleanup=upload)
            if not done:
                self._write_archive(target, data, mode)

    def _write_via_session(self, target: str, mode: int, source: str, cleanup: str | None = None) -> bool:
        """Run `source > target` in the session (`source` is one line); False on anything unexpected
        (the caller falls back to the archive API)."""
        script = overwrite_script(target, mode, source) + (f"; command -p rm -f -- {cleanup}" if cleanup else "")
        out = self._internal(script, output_limit=4096)
        if not overwrite_succeeded(target, out):
            error = write_error(target, out)
            if error is not None:
                raise error  # the filesystem refused it: the archive API would only say so less clearly
            log.info("sandbox.write_fallback", path=target, output=(out or b"")[:200])
            return False
        return True

    def _write_archive(self, target: str, data: bytes, mode: int) -> None:
        """Through the archive API: fast for any size, but replaces the file (and any symlink)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = root_owned(tarfile.TarInfo(posixpath.basename(target)))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        try:
            self._api.put_archive(self.container_id, posixpath.dirname(target) or "/", buf.getvalue())
        except NotFound as exc:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", posixpath.dirname(target) or "/") from exc
        except APIError as exc:
            raise write_error(target, str(exc)) or OSError(errno.EIO, os.strerror(errno.EIO), target) from exc

    def copy_in(self, host_path: Path, sandbox_dir: str) -> None:
        with self._lock:
            self._check_open()
            host_path = Path(host_path)
            if not host_path.exists():
                raise FileNotFoundError(host_path)
            dest = self.resolve(sandbox_dir)
            made = self._internal(f"command -p mkdir -p -- {shlex.quote(dest)} && builtin printf O", 4096)
            if made != b"O":
                raise SandboxError(f"cannot create {dest} in the sandbox: {made!r}")
            with tempfile.TemporaryFile() as spool:  # a repository can be large: spool to disk
                with tarfile.open(fileobj=spool, mode="w") as tar:
                    tar.add(str(host_path), arcname=host_path.name, filter=root_owned)
                spool.seek(0)
                try:
                    self._api.put_archive(self.container_id, dest, spool)
                except APIError as exc:
                    raise SandboxError(f"copy into the sandbox failed: {exc.explanation or exc}") from exc

    def extract(self, archive: BinaryIO, sandbox_dir: str) -> None:
        """The daemon unpacks the stream straight into the container (chrooted there, so the archive's
        links cannot lead out of it); nothing is spooled on the host."""
        with self._lock:
            self._check_open()
            dest = self.resolve(sandbox_dir)
            made = self._internal(f"command -p mkdir -p -- {shlex.quote(dest)} && builtin printf O", 4096)
            if made != b"O":
                raise SandboxError(f"cannot create {dest} in the sandbox: {made!r}")
            try:
                self._api.put_archive(self.container_id, dest, archive)
            except APIError as exc:
                raise SandboxError(f"copy into the sandbox failed: {exc.explanation or exc}") from exc

    def copy_out(self, sandbox_path: str, host_dir: Path) -> None:
        with self._lock:
            self._check_open()
            source = self.resolve(sandbox_path)
            host_dir = Path(host_dir)
            host_dir.mkdir(parents=True, exist_ok=True)
            try:
                chunks, _ = self._api.get_archive(self.container_id, source)
            except NotFound as exc:
                raise FileNotFoundError(source) from exc
            with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(iter(chunks))), mode="r|") as tar:
                extract_untrusted(tar, str(host_dir))

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill and remove the container; idempotent, safe from atexit and signal handlers."""
        with self._close_lock:
            if self._closed:
                return
            session = getattr(self, "_session", None)
            if session is not None:
                try:
                    session.close()
                except OSError:
                    pass
            if self.container_id is not None:
                try:
                    _remove_container(self._api, self.container_id)
                except NotFound:
                    pass
                except (APIError, requests.exceptions.RequestException) as exc:
                    # Stay registered: atexit retries, and the reaper removes it once we are gone.
                    log.warning("sandbox.remove_failed", container=self.container_id[:12], error=str(exc))
                    raise SandboxError(f"could not remove sandbox {self.container_id[:12]}: {exc}") from exc
            self._closed = True
            lifecycle.unregister(self)
            if self._owns_api:
                self._api.close()  # its connection pool: a batch run creates thousands of sandboxes

    def __repr__(self) -> str:
        cid = (self.container_id or "?")[:12]
        return f"DockerSandbox({self.config.image!r}, container={cid}, closed={self._closed})"

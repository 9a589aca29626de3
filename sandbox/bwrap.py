"""Bubblewrap backend: the Docker backend's interface on hosts without a Docker daemon (GPU servers).

`config.image` is a root filesystem directory (see sandbox/rootfs.py: exported from our images,
carried as a tarball, unpacked once). Each shell of a sandbox is one `bwrap` process tree:

Layout. The tree is bound read-only at `/`; writable per-sandbox host directories are bound at the
workdir, /tmp, /var/tmp and /root (HOME), each seeded with what the image had there; /proc is fresh,
/dev minimal (plus a 64 MiB tmpfs /dev/shm, as Docker gives), /etc/hosts, /etc/hostname and
/etc/resolv.conf are the sandbox's own. A mount point the tree lacks (say workdir /srv/work) is made
by "splicing" its deepest existing ancestor: a tmpfs there holding read-only binds of the tree's
entries, remounted read-only. bwrap resolves every bind source by path as the sandbox's uid, so for
a root runner the tree must sit under directories others may traverse (/var/cache/cwm-runner, not
/root/.cache). Its arguments come through a memfd, so no host path shows in the sandbox's `ps`.

Identity. Every namespace is unshared (no network: only `lo`), including a user namespace in which
the shell is uid 0 with CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER only (Docker's set), no new
privileges and no further user namespaces. Outside, that "root" is an ordinary uid: the runner's own
when it is not root; when the runner is root, a fresh uid per sandbox (SANDBOX_UID_RANGE) owning the
sandbox's directories, because real root is exempt from RLIMIT_NPROC and should never be what a
sandbox runs as. Only that one uid is mapped, so files of other owners show as `nobody` and chown to
other uids fails; TAR_OPTIONS=--no-same-owner keeps `tar x` as root working.

Limits. bubblewrap has no cgroups: a small bash wrapper inside sets hard rlimits, then execs the
session shell. How they differ from the Docker backend:

    limit              Docker (cgroups)                  bubblewrap (rlimits)
    limits.pids        pids.max for the container        RLIMIT_NPROC; counted per user namespace
                                                         (kernel >= 5.14), i.e. per sandbox; older
                                                         kernels count per host uid, still per
                                                         sandbox for a root runner (uid of its own)
    limits.memory      RSS+swap of the whole container   RLIMIT_AS per process (address space, not
                       (OOM kill)                        RSS: allocations fail with ENOMEM/MemoryError;
                                                         tools reserving huge virtual ranges (JVM
                                                         heaps, ASan, wasm) may fail to start)
    limits.cpus        CFS quota                         none (no RLIMIT_CPU either)
    disk               none (overlay on host disk)       none (host directories); /dev/shm 64 MiB

Killing. `bwrap --info-fd` gives the host pid of the sandbox's PID-namespace init; SIGKILL to it (via
a pidfd, so a recycled pid is never hit) makes the kernel kill every process in the namespace, and
its exit is only reported once they are all gone. A fresh `bwrap` then starts a new shell over the
same directories (files persist, the cwd resets), as Docker's backend does. `--die-with-parent`
ties each sandbox to the thread that started it (PR_SET_PDEATHSIG follows threads, not processes),
so all bwraps are started from one process-wide thread that lives as long as the process: a runner
killed with SIGKILL takes its sandboxes with it, and the next runner deletes their directories.

Files. Paths are resolved the way the sandbox sees them, component by component with O_NOFOLLOW on
directory descriptors (so a symlink the sandbox plants can never lead outside its directories). A
target inside the sandbox's own writable directories is read or written directly on the host; any
other path (the read-only tree, /proc, /dev, user mounts) goes through the session, with the bytes
passed through a spool file in the sandbox's /tmp. copy_in/copy_out run `tar` inside the sandbox, so
extraction obeys the sandbox's view of symlinks.
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import queue
import resource
import secrets
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from sandbox import lifecycle
from sandbox.archive import extract_untrusted, root_owned
from sandbox.base import CommandResult, Sandbox, SandboxConfig, SandboxError, write_error
from sandbox.reaper import LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_START, OwnerState, current_owner, owner_state
from sandbox.rootfs import DEFAULT_PATH, ImageMeta, Layout, Mount, Resolver, Target, read_meta, validate_rootfs
from sandbox.session import RECV_BYTES, BashSession, DeadlineChannel, overwrite_script, overwrite_succeeded

log = structlog.get_logger()

# Host uids for sandboxes of a root runner: inside systemd's unused 0x70000000-0x7FFDFFFF block,
# clear of regular users, DynamicUser, nspawn's container range and 2^31 (signed-int trouble).
SANDBOX_UID_RANGE = (1_900_000_000, 2_000_000_000)
CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")  # the Docker backend's set
SHM_BYTES = 64 * 1024 * 1024  # Docker's default /dev/shm
HOME = "/root"
# Sandbox path -> (host directory name, mode when the image lacks the directory).
WRITABLE_DIRS = {"/tmp": ("tmp", 0o1777), "/var/tmp": ("vartmp", 0o1777), HOME: ("home", 0o700)}
# Files naming the host that every sandbox gets its own copy of (mounted over the tree's).
DATA_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
KILL_WAIT_S = 10.0
INFO_WAIT_S = 30.0
INTERNAL_TIMEOUT_S = 120.0
EXTRACT_TIMEOUT_S = 1800.0  # a repository of gigabytes, unpacked by the sandbox's tar
_OWNER_FILE = "owner.json"
_LIMITS_SCRIPT = 'ulimit -H -S -u "$1" && ulimit -H -S -v "$2" && shift 2 && exec "$@"'
_REQUIRED_OPTIONS = ("--args", "--info-fd", "--die-with-parent", "--cap-add", "--remount-ro", "--symlink")


# -- the bwrap binary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BwrapInfo:
    path: str
    options: frozenset[str]


@lru_cache(maxsize=1)
def bwrap_info() -> BwrapInfo:
    """Where bwrap is and which options it has; SandboxError saying how to get it if unusable."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bubblewrap is not installed: `apt-get install bubblewrap` (or use the Docker backend)")
    usage = subprocess.run([path, "--help"], capture_output=True, text=True).stdout
    options = frozenset(word for word in usage.split() if word.startswith("--"))
    missing = [option for option in _REQUIRED_OPTIONS if option not in options]
    if missing:
        raise SandboxError(f"{path} is too old (no {', '.join(missing)}): install bubblewrap 0.8 or newer")
    return BwrapInfo(path, options)


# -- starting processes from one long-lived thread --------------------------------------------------


class _Spawner:
    """Runs every `Popen` of bwrap on one daemon thread that lives until the interpreter ends.

    PR_SET_PDEATHSIG (bwrap's --die-with-parent) fires when the *thread* that forked the process
    exits, so a sandbox started from a worker thread would die with that thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="cwm-bwrap-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            job, box = self._jobs.get()
            try:
                box["result"] = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            with box["lock"]:
                box["done"].set()
                abandoned = box["abandoned"]
            if abandoned and isinstance(box.get("result"), subprocess.Popen):
                box["result"].kill()  # the caller was interrupted: nobody owns this process
                box["result"].wait()

    def call(self, job: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return job()
        box: dict[str, Any] = {"done": threading.Event(), "lock": threading.Lock(), "abandoned": False}
        self._jobs.put((job, box))
        try:
            box["done"].wait()
        except BaseException:
            with box["lock"]:
                box["abandoned"] = not box["done"].is_set()
            raise
        if "error" in box:
            raise box["error"]
        return box["result"]


_spawner_lock = threading.Lock()
_spawner: _Spawner | None = None


def _spawn(job: Callable[[], Any]) -> Any:
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():  # a forked child has no such thread
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.call(job)


# -- the byte channel -------------------------------------------------------------------------------


class PipeChannel(DeadlineChannel):
    """`session.Channel` over bwrap's stdin and (merged) stdout pipes."""

    def __init__(self, stdin: io.BufferedWriter, stdout: io.BufferedReader) -> None:
        self._stdin, self._stdout = stdin, stdout
        self._write_fd, self._read_fd = stdin.fileno(), stdout.fileno()
        os.set_blocking(self._write_fd, False)
        os.set_blocking(self._read_fd, False)
        self._closed = False

    def _write(self, view: memoryview) -> int:
        return os.write(self._write_fd, view)

    def _read(self) -> bytes:
        return os.read(self._read_fd, RECV_BYTES)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in (self._stdin, self._stdout):
            try:
                handle.close()
            except OSError:
                pass


# -- host directories -------------------------------------------------------------------------------


def state_root() -> Path:
    """Where sandboxes keep their writable directories: $CWM_BWRAP_STATE_DIR or a private temp dir."""
    override = os.environ.get("CWM_BWRAP_STATE_DIR")
    root = Path(override) if override else Path(tempfile.gettempdir()) / f"cwm-runner-bwrap-{os.getuid()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SandboxError(f"{root} is not a directory owned by you: remove it or set CWM_BWRAP_STATE_DIR")
    if os.geteuid() == 0:
        # Sandbox uids must pass through (not list) it to their own directory: bwrap binds by path.
        root.chmod(0o711)
        blocked = unreachable_ancestor(root)
        if blocked is not None:
            raise SandboxError(f"sandbox uids cannot reach {root} ({blocked} lacks o+x): set CWM_BWRAP_STATE_DIR")
    return root


def unreachable_ancestor(path: Path) -> Path | None:
    """The first directory on the way to `path` that a stranger uid may not pass, if any.

    A root runner starts bwrap as a fresh unprivileged uid, and bwrap resolves every bind source by
    path as that uid: each directory on the way needs the others' execute bit.
    """
    for directory in [path, *path.parents] if path.is_dir() else list(path.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def remove_tree(path: Path) -> None:
    """Delete a sandbox's directory even where the sandbox made read-only subdirectories."""

    def retry_writable(func: Callable[..., Any], target: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
            func(target)
        except FileNotFoundError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=retry_writable)


_reaped_pid: int | None = None
_reap_lock = threading.Lock()


def reap_orphans(root: Path | None = None) -> list[Path]:
    """Delete sandbox directories whose runner is provably dead (e.g. killed with SIGKILL)."""
    root = root or state_root()
    removed = []
    for entry in root.iterdir():
        try:
            labels = json.loads((entry / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if owner_state(labels) is OwnerState.DEAD:
            remove_tree(entry)
            removed.append(entry)
    if removed:
        log.info("sandbox.bwrap_reaped", count=len(removed))
    return removed


def _reap_once() -> None:
    global _reaped_pid
    with _reap_lock:
        if _reaped_pid == os.getpid():
            return
        _reaped_pid = os.getpid()
    try:
        reap_orphans()
    except OSError as exc:
        log.warning("sandbox.bwrap_reap_failed", error=str(exc))


# -- the shell host ---------------------------------------------------------------------------------


def _memfd(name: str, data: bytes) -> int:
    """A sealed-in-practice in-memory file bwrap reads its arguments or a data file from."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_info(fd: int, deadline: float) -> dict[str, Any]:
    """bwrap's --info-fd JSON (written once the namespaces exist, then closed)."""
    data = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class BwrapShellHost:
    """`session.ShellHost`: each shell is a fresh bwrap over the sandbox's layout."""

    def __init__(self, sandbox: BwrapSandbox) -> None:
        self._box = sandbox
        # Held while a shell starts and while kill_all takes it over: a close() from another thread
        # then either finds the new bwrap or stops it from starting.
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._init_pidfd: int | None = None

    def _bwrap_args(self, data_fds: dict[str, int]) -> list[str]:
        box, cfg = self._box, self._box.config
        options = bwrap_info().options
        args = ["--unshare-all", "--unshare-user", "--uid", "0", "--gid", "0"]
        if cfg.network:
            args.append("--share-net")
        if "--disable-userns" in options:
            args.append("--disable-userns")
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        args += box.layout.base_args(SHM_BYTES if "--size" in options else None)
        for dest, fd in data_fds.items():
            args += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
        args += box.layout.final_args()
        args += ["--cap-drop", "ALL"]
        for cap in CAPABILITIES:
            args += ["--cap-add", cap]
        args.append("--clearenv")
        for name, value in box.environment().items():
            args += ["--setenv", name, value]
        args += ["--chdir", cfg.workdir]
        return args

    def _data_files(self) -> dict[str, int]:
        """Per-shell copies of the files that name the host: the sandbox gets its own."""
        hosts = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback sandbox\n"
        resolv = b""
        if self._box.config.network:
            try:
                resolv = Path("/etc/resolv.conf").read_bytes()
            except OSError:
                pass
        files = {"/etc/hosts": hosts.encode(), "/etc/hostname": b"sandbox\n", "/etc/resolv.conf": resolv}
        present = {p: d for p, d in files.items() if p in self._box.layout.mounts}
        return {path: _memfd("cwm-" + posixpath.basename(path), data) for path, data in present.items()}

    def open_shell(self, argv: tuple[str, ...]) -> PipeChannel:
        box = self._box
        data_fds = self._data_files()
        args_fd = _memfd("cwm-bwrap-args", b"".join(a.encode() + b"\0" for a in self._bwrap_args(data_fds)))
        info_read, info_write = os.pipe()
        nproc, vmem_kib = box.rlimits()
        command = [
            bwrap_info().path, "--args", str(args_fd), "--info-fd", str(info_write), "--",
            "/bin/bash", "--noprofile", "--norc", "-c", _LIMITS_SCRIPT, "cwm-limits", str(nproc), str(vmem_kib),
            *argv,
        ]
        identity: dict[str, Any] = {}
        if os.geteuid() == 0:
            identity = {"user": box.host_uid, "group": box.host_gid, "extra_groups": []}

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(args_fd, info_write, *data_fds.values()),
                env={"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": "C.UTF-8"},
                start_new_session=True,  # the terminal's Ctrl-C is the runner's, not the sandbox's
                close_fds=True,
                **identity,
            )

        with self._lock:
            try:
                if box.closed:
                    raise SandboxError("this sandbox is closed: create a new one")
                proc = _spawn(start)
                os.close(info_write)  # bwrap holds the only other copy: EOF once it has written
                info_write = -1
                info = _read_info(info_read, time.monotonic() + INFO_WAIT_S)
            except OSError as exc:
                raise SandboxError(f"cannot start bwrap: {exc}") from exc
            finally:
                for fd in (args_fd, info_write, info_read, *data_fds.values()):
                    if fd >= 0:
                        os.close(fd)
            self._proc = proc
            self._init_pid = info.get("child-pid") if isinstance(info.get("child-pid"), int) else None
            self._init_pidfd = self._open_pidfd(proc, self._init_pid)
        assert proc.stdin is not None and proc.stdout is not None
        return PipeChannel(proc.stdin, proc.stdout)

    @staticmethod
    def _open_pidfd(proc: subprocess.Popen[bytes], pid: int | None) -> int | None:
        """A pidfd for the namespace's init, checked to be bwrap's child (pids get recycled)."""
        if pid is None or not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if _parent_pid(pid) != proc.pid:
            os.close(fd)
            return None
        return fd

    def kill_all(self) -> None:
        """SIGKILL the PID namespace's init (the kernel kills the rest), then bwrap itself."""
        with self._lock:
            proc, pid, pidfd = self._proc, self._init_pid, self._init_pidfd
            self._proc, self._init_pid, self._init_pidfd = None, None, None
        if proc is None:
            return
        try:
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # Readable once init has exited, which it does only after the whole namespace.
                if not select.select([pidfd], [], [], KILL_WAIT_S)[0]:
                    log.warning("sandbox.bwrap_kill_slow", pid=pid)
            elif pid is not None and proc.poll() is None:
                os.kill(pid, signal.SIGKILL)
        except OSError as exc:
            log.warning("sandbox.bwrap_kill_failed", error=str(exc))
        finally:
            if pidfd is not None:
                os.close(pidfd)
            proc.kill()
            try:
                proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("sandbox.bwrap_not_reaped", pid=proc.pid)
            for handle in (proc.stdin, proc.stdout):
                if handle is not None:
                    try:
                        handle.close()
                    except OSError:
                        pass


# -- the sandbox ------------------------------------------------------------------------------------


class BwrapSandbox(Sandbox):
    """A root filesystem tree run under bubblewrap, holding one persistent bash session."""

    backend = "bwrap"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.RLock()  # one command (or file operation) at a time
        self._close_lock = threading.Lock()  # close() must not wait for a running command
        self._closed = False
        self._session: BashSession | None = None
        self._host: BwrapShellHost | None = None
        bwrap_info()
        rootfs = validate_rootfs(Path(config.image))
        self._check_reachable(rootfs)
        self.meta: ImageMeta = read_meta(rootfs)
        if os.geteuid() == 0:
            self.host_uid = self.host_gid = secrets.choice(range(*SANDBOX_UID_RANGE))
        else:
            self.host_uid, self.host_gid = os.getuid(), os.getgid()
        _reap_once()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{_safe_name(config.run_id)}-", dir=state_root()))
        if os.geteuid() == 0:
            os.chown(self.dir, self.host_uid, self.host_gid)  # 0700: only the sandbox's uid gets in
        lifecycle.register(self)
        try:
            owner = current_owner()
            labels = {LABEL_OWNER_PID: str(owner.pid), LABEL_OWNER_START: owner.start, LABEL_OWNER_HOST: owner.host}
            (self.dir / _OWNER_FILE).write_text(json.dumps(labels))
            self.layout = Layout.for_tree(rootfs)
            self._make_directories()
            self.layout.plan_splices()
            self.resolver = Resolver(self.layout)
            self._host = BwrapShellHost(self)
            self._session = BashSession(self._host, config)
            self._session.start()
        except BaseException as exc:
            self.close()
            if isinstance(exc, SandboxError):
                raise SandboxError(_explain_start_failure(str(exc))) from None
            raise
        log.debug("sandbox.started", backend="bwrap", dir=str(self.dir), uid=self.host_uid)

    # -- set-up -----------------------------------------------------------------------------------

    def _make_directories(self) -> None:
        """The writable directories (seeded from the tree), user mounts, and fixed mount points."""
        workdir = posixpath.normpath(self.config.workdir)
        if not workdir.startswith("/"):
            raise SandboxError(f"workdir {self.config.workdir!r} must be an absolute path")
        wanted = dict(WRITABLE_DIRS)
        if not any(workdir == p or workdir.startswith(p + "/") for p in wanted) and workdir != "/":
            wanted[workdir] = ("work", 0o755)
        for point, (name, default_mode) in wanted.items():
            host = self.dir / name
            source = self.layout.rootfs / point.lstrip("/")
            host.mkdir()
            if source.is_dir() and not source.is_symlink():
                _seed(source, host)
                mode = stat.S_IMODE(source.stat().st_mode)
            else:
                mode = default_mode
            if os.geteuid() == 0:
                _chown_tree(host, self.host_uid, self.host_gid)
            host.chmod(mode)
            self.layout.mounts[point] = Mount(point, host, writable=True, fd=self.layout.open_fd(host), fast=True)
        for host_path, (container_path, mode) in self.config.mounts.items():
            point = posixpath.normpath(container_path)
            source = Path(host_path).resolve()
            if not source.exists():
                raise SandboxError(f"mount source {host_path} does not exist: create it or drop the mount")
            self._check_reachable(source)
            self.layout.mounts[point] = Mount(point, source, writable=mode == "rw")
        for point in ("/proc", "/dev", "/dev/shm", *DATA_FILES):
            if point in DATA_FILES and not os.path.isfile(self.layout.rootfs / point.lstrip("/")):
                continue  # the tree lacks it: the sandbox does without, as the image would
            self.layout.mounts.setdefault(point, Mount(point))

    @staticmethod
    def _check_reachable(source: Path) -> None:
        if os.geteuid() != 0:
            return
        blocked = unreachable_ancestor(source)
        if blocked is not None:
            raise SandboxError(
                f"{source} is not reachable by the sandbox's unprivileged uid ({blocked} lacks o+x): "
                "keep root filesystems and mounts under a traversable directory (e.g. /var/cache/cwm-runner) "
                "or `chmod o+x` the directory"
            )

    def environment(self) -> dict[str, str]:
        """The shell's environment: the image's, plus what Docker adds (HOME, HOSTNAME)."""
        env = {"PATH": DEFAULT_PATH, **self.meta.env_dict(), "HOME": HOME, "HOSTNAME": "sandbox"}
        # Only uid 0 is mapped: GNU tar as root would fail to restore archived owners.
        env["TAR_OPTIONS"] = (env.get("TAR_OPTIONS", "") + " --no-same-owner").strip()
        return env

    def rlimits(self) -> tuple[int, int]:
        """(RLIMIT_NPROC, RLIMIT_AS in KiB) for the shell: the config's, capped by ours."""
        limits = self.config.limits
        _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
        _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
        nproc = limits.pids if nproc_hard == resource.RLIM_INFINITY else min(limits.pids, nproc_hard)
        vmem = limits.memory_bytes if as_hard == resource.RLIM_INFINITY else min(limits.memory_bytes, as_hard)
        return nproc, vmem // 1024

    # -- the session ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> BashSession:
        if self._closed or self._session is None:
            raise SandboxError("this sandbox is closed: create a new one")
        return self._session

    def run(self, command: str, timeout_s: float | None = None, aside: bool = False) -> CommandResult:
        with self._lock:
            return self._check_open().run(command, timeout_s, aside=aside)

    def restart_session(self) -> None:
        with self._lock:
            self._check_open().restart()

    @property
    def cwd(self) -> str:
        return self._session.cwd if self._session is not None else self.config.workdir

    def _internal(self, script: str, output_limit: int = 4096) -> bytes | None:
        """Run one of our own commands; None if it did not complete normally."""
        outcome = self._check_open().execute(
            script, timeout_s=max(INTERNAL_TIMEOUT_S, self.config.timeout_s), output_limit=output_limit, aside=True
        )
        return outcome.output if outcome.ok else None

    # -- spool files in the sandbox's /tmp ----------------------------------------------------------

    @contextmanager
    def _spool(self) -> Iterator[tuple[str, int]]:
        """A fresh name in the sandbox's /tmp, and the host descriptor of that directory."""
        tmp = self.layout.mounts["/tmp"]
        assert tmp.fd is not None
        name = f".cwm-xfer-{secrets.token_hex(8)}"
        try:
            yield name, tmp.fd
        finally:
            try:
                os.unlink(name, dir_fd=tmp.fd)
            except FileNotFoundError:
                pass

    def _create_spool(self, name: str, dir_fd: int) -> io.BufferedWriter:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        if os.geteuid() == 0:
            os.fchown(fd, self.host_uid, self.host_gid)
        return os.fdopen(fd, "wb")

    @staticmethod
    def _open_spool(name: str, dir_fd: int) -> io.BufferedReader:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SandboxError("the sandbox replaced a transfer file: try again")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    # -- files --------------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        with self._lock:
            self._check_open()
            target = self.resolve(path)
            found = self.resolver.resolve(target)
            if found is not None:
                try:
                    if found.is_dir:
                        raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
                    if found.st is None:
                        raise FileNotFoundError(errno.ENOENT, "No such file or directory", target)
                    if found.fast:
                        data = self._read_direct(found)
                        if data is not None:
                            return data
                finally:
                    found.close()
            return self._read_via_session(target)

    @staticmethod
    def _read_direct(found: Target) -> bytes | None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(found.name, flags, dir_fd=found.parent_fd)
        except OSError:
            return None  # replaced meanwhile, or a fifo/socket: the session decides
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            os.set_blocking(fd, True)
            return handle.read()

    def _read_via_session(self, target: str) -> bytes:
        q = shlex.quote(target)
        with self._spool() as (name, dir_fd):
            script = (
                f"if [ -d {q} ]; then builtin printf D; elif [ ! -e {q} ]; then builtin printf N; "
                f"elif [ ! -r {q} ]; then builtin printf R; elif [ ! -f {q} ]; then builtin printf S; "
                f"else command -p cat -- {q} > /tmp/{name} && builtin printf O; fi"
            )
            out = self._internal(script)
            if out == b"D":
                raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
            if out == b"N":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", target)
            if out == b"R":
                raise PermissionError(errno.EACCES, "Permission denied", target)
            if out == b"S":  # a fifo would block, a device never end
                raise OSError(errno.EINVAL, "Not a regular file", target)
            if out != b"O":
                detail = (out or b"").decode(errors="replace")[:200]
                raise OSError(errno.EIO, f"could not read the file: {detail}", target)
            with self._open_spool(name, dir_fd) as handle:
                return handle.read()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write `data`, following symlinks and keeping an existing file's inode and mode."""
        with self._lock:
            self._check_open()
            target = self.resolve(path)
            found = self.resolver.resolve(target)
            if found is not None:
                try:
                    if found.is_dir:
                        raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
                    if found.fast and self._write_direct(found, data, mode):
                        return
                finally:
                    found.close()
            self._write_via_session(target, data, mode)

    def _write_direct(self, found: Target, data: bytes, mode: int) -> bool:
        base = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            if found.st is None:
                fd = os.open(found.name, base | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=found.parent_fd)
                os.fchmod(fd, mode)
                if os.geteuid() == 0:
                    os.fchown(fd, self.host_uid, self.host_gid)
            else:
                fd = os.open(found.name, base | os.O_NONBLOCK, dir_fd=found.parent_fd)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    return False
                os.set_blocking(fd, True)
                os.ftruncate(fd, 0)
        except OSError:
            return False  # a race with the sandbox, or a mode we may not write: the session decides
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def _write_via_session(self, target: str, data: bytes, mode: int) -> None:
        with self._spool() as (name, dir_fd):
            with self._create_spool(name, dir_fd) as handle:
                handle.write(data)
            out = self._internal(overwrite_script(target, mode, f"command -p cat -- /tmp/{name}"))
        if not overwrite_succeeded(target, out):
            log.info("sandbox.write_failed", path=target, output=(out or b"")[:200])
            raise write_error(target, out) or OSError(errno.EIO, os.strerror(errno.EIO), target)

    def copy_in(self, host_path: Path, sandbox_dir: str) -> None:
        """Copy a host file or tree in: packed here, unpacked by `tar` inside the sandbox."""
        with self._lock:
            self._check_open()
            host_path = Path(host_path)
            if not host_path.exists():
                raise FileNotFoundError(host_path)
            dest = shlex.quote(self.resolve(sandbox_dir))
            with self._spool() as (name, dir_fd):
                with self._create_spool(name, dir_fd) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
                    tar.add(str(host_path), arcname=host_path.name, filter=root_owned)
                out = self._internal(_capped(
                    f"command -p mkdir -p -- {dest} && command -p tar --no-same-owner -xf /tmp/{name} -C {dest}"
                ))
            if out is None or not out.endswith(b"O"):
                raise SandboxError(f"copy into the sandbox failed: {(out or b'').decode(errors='replace')[:300]}")

    def extract(self, archive: BinaryIO, sandbox_dir: str) -> None:
        """Unpack a tar stream with `tar` inside the sandbox, fed through a FIFO in its /tmp: one pass, no
        spool file, and extraction obeys the sandbox's view of links like copy_in."""
        with self._lock:
            session = self._check_open()
            dest = shlex.quote(self.resolve(sandbox_dir))
            with self._spool() as (name, dir_fd):
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
                if os.geteuid() == 0:
                    os.chown(name, self.host_uid, self.host_gid, dir_fd=dir_fd, follow_symlinks=False)
                finished = threading.Event()
                feeder = threading.Thread(target=_feed_fifo, args=(archive, name, dir_fd, finished), daemon=True)
                feeder.start()
                try:
                    outcome = session.execute(_capped(
                        f"command -p mkdir -p -- {dest} && command -p tar --no-same-owner -xf /tmp/{name} -C {dest}"
                    ), timeout_s=max(EXTRACT_TIMEOUT_S, self.config.timeout_s), output_limit=4096, aside=True)
                finally:
                    finished.set()
                    feeder.join()
            out = outcome.output if outcome.ok else None
            if out is None or not out.endswith(b"O"):
                raise SandboxError(f"copy into the sandbox failed: {(out or b'').decode(errors='replace')[:300]}")

    def copy_out(self, sandbox_path: str, host_dir: Path) -> None:
        """Copy a sandbox file or tree out: packed by `tar` inside, unpacked here with a filter."""
        with self._lock:
            self._check_open()
            source = posixpath.normpath(self.resolve(sandbox_path))
            host_dir = Path(host_dir)
            host_dir.mkdir(parents=True, exist_ok=True)
            q = shlex.quote(source)
            parent, base = shlex.quote(posixpath.dirname(source) or "/"), shlex.quote(posixpath.basename(source))
            with self._spool() as (name, dir_fd):
                script = (
                    f"if [ ! -e {q} ] && [ ! -L {q} ]; then builtin printf N; "
                    f"else {_capped(f'command -p tar -C {parent} -cf /tmp/{name} -- {base}')}; fi"
                )
                out = self._internal(script)
                if out == b"N":
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", source)
                if out is None or not out.endswith(b"O"):
                    raise SandboxError(f"copy out of the sandbox failed: {(out or b'').decode(errors='replace')[:300]}")
                with self._open_spool(name, dir_fd) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
                    extract_untrusted(tar, str(host_dir))

    # -- teardown -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process and delete the sandbox's directories; idempotent, signal-safe."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._session is not None:
                try:
                    self._session.close()
                except OSError:
                    pass
            if self._host is not None:
                self._host.kill_all()
            layout = getattr(self, "layout", None)
            if layout is not None:
                layout.close()
            remove_tree(self.dir)
            lifecycle.unregister(self)

    def __repr__(self) -> str:
        return f"BwrapSandbox({self.config.image!r}, dir={self.dir.name}, closed={self._closed})"


# -- helpers ----------------------------------------------------------------------------------------


def _capped(command: str) -> str:
    """Bash printing O if `command` succeeds, else the end of its output (tar can print a line per file)."""
    return (
        f"if __cwm_out=$({command} 2>&1); then builtin printf O; "
        "else builtin printf '%s' \"${__cwm_out: -1000}\"; fi; builtin unset __cwm_out"
    )


def _feed_fifo(archive: BinaryIO, name: str, dir_fd: int, finished: threading.Event) -> None:
    """Copy `archive` into the FIFO `name` once the sandbox's `tar` opens it; give up when `finished` is
    set first (the command failed before opening it) or the reader goes away (EPIPE)."""
    while True:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or finished.wait(0.01):
                return
    os.set_blocking(fd, True)
    try:
        with os.fdopen(fd, "wb") as fifo:
            shutil.copyfileobj(archive, fifo, 1 << 20)
    except BrokenPipeError:
        pass


def _safe_name(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id)[:40] or "sandbox"


def _seed(source: Path, dest: Path) -> None:
    """Copy the image's contents of a writable directory into its host copy (e.g. /testbed's repo)."""
    try:
        if not any(source.iterdir()):
            return
    except PermissionError:  # e.g. the image's /root, unpacked by root, seen by an ordinary user
        log.warning("sandbox.seed_skipped", directory=str(source), reason="not readable")
        return
    done = subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", f"{dest}/"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"could not copy the image's {source.name} into the sandbox: {done.stderr.strip()[-300:]}")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give the sandbox's uid everything in its directory (without following symlinks)."""
    os.lchown(root, uid, gid)
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(current, name), uid, gid)


def _explain_start_failure(message: str) -> str:
    hints = {
        "setting up uid map": "user namespaces seem disabled (sysctl kernel.unprivileged_userns_clone=1, "
        "user.max_user_namespaces>0, or AppArmor's kernel.apparmor_restrict_unprivileged_userns=0)",
        "No permissions to create": "this host does not allow unprivileged user namespaces",
        "Operation not permitted": "bubblewrap lacks permission for a namespace or mount here",
    }
    for needle, hint in hints.items():
        if needle in message:
            return f"{message} ({hint})"
    return message

"""Root filesystems for the bubblewrap backend: made from our Docker images, carried as tarballs.

Hosts without a Docker daemon (GPU servers) run sandboxes over a plain directory tree instead of an
image. The tree is made where a daemon exists (`export_image_rootfs`: `docker create` + `docker
export`, unpacked), packed into a tarball (`pack_rootfs`), copied to the GPU host and unpacked there
once (`ensure_rootfs`, cached by the tarball's content hash). `docker export` drops the image's
configuration, so its environment and working directory are kept in the tree itself, at
/etc/cwm-runner/image.json, where the bubblewrap backend reads them.

The module also holds a sandbox's view of a tree, free of any process handling: the mounts laid
over it (`Layout`, which splices directories the tree lacks) and path resolution as the sandbox
sees it, done with host descriptors only (`Resolver`).

On a host with Docker (once per image):

    python -m sandbox.rootfs export cwm-runner/base:<hash> cwm-base.tar.gz

On the GPU host (once; prints the directory to pass as the sandbox image):

    python -m sandbox.rootfs unpack cwm-base.tar.gz

A tree unpacked by root keeps the image's owners (root-owned files show as `nobody` inside the
sandbox, whose user namespace maps only its own uid); one unpacked by an ordinary user is owned by
that user and shows as root-owned inside. Either works: the tree is mounted read-only.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import BaseModel, Field

from sandbox.base import SandboxError

log = structlog.get_logger()

META_PATH = "etc/cwm-runner/image.json"
# Files the sandbox gets its own copies of (bind-mounted over), so they must exist as mount points.
PLACEHOLDER_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")
# Mounted fresh in every sandbox: their contents in the image are never seen.
MOUNTED_DIRS = ("dev", "proc", "sys")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_SYMLINKS = 40  # as the kernel's path walk


class ImageMeta(BaseModel):
    """The parts of the image's configuration a sandbox needs, which `docker export` drops."""

    image: str = ""
    image_id: str = ""
    env: list[str] = Field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    workdir: str = ""

    def env_dict(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.env if "=" in item)
        return {name: value for name, value in pairs}


def read_meta(rootfs: Path) -> ImageMeta:
    """The tree's image configuration, or defaults for a tree not made by `export_image_rootfs`."""
    path = Path(rootfs) / META_PATH
    try:
        return ImageMeta.model_validate_json(path.read_text())
    except FileNotFoundError:
        return ImageMeta()


def default_cache_dir() -> Path:
    """Where exported and unpacked trees are kept: $CWM_ROOTFS_CACHE, else the user's cache dir."""
    override = os.environ.get("CWM_ROOTFS_CACHE")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        # Root runs sandboxes as unprivileged uids, which must reach the tree; /root is 0700.
        return Path("/var/cache/cwm-runner/rootfs")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cwm-runner" / "rootfs"


def validate_rootfs(path: Path) -> Path:
    """`path` resolved, if it looks like a root filesystem with bash; SandboxError otherwise."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise SandboxError(
            f"root filesystem {path} is not a directory: unpack a tarball made with "
            "`python -m sandbox.rootfs export` using `python -m sandbox.rootfs unpack`"
        )
    if not any(os.path.lexists(root / candidate) for candidate in ("bin/bash", "usr/bin/bash")):
        raise SandboxError(f"{path} has no /bin/bash: it is not a usable sandbox root filesystem")
    return root


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise exports/unpacks into one cache directory between processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_tar(args: list[str], stdin: object = None) -> None:
    if shutil.which("tar") is None:
        raise SandboxError("GNU tar is needed to pack and unpack root filesystems: install `tar`")
    done = subprocess.run(["tar", *args], stdin=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"tar {' '.join(args[:2])} failed: {done.stderr.strip()[-400:]}")


def _finish_tree(root: Path, meta: ImageMeta) -> None:
    """Make a freshly unpacked tree fit for bubblewrap and record the image's configuration.

    Docker's placeholders (/.dockerenv, device nodes in /dev) go; the files the sandbox replaces
    must exist as mount points; the image's working directory must exist (Docker creates it).
    """
    dockerenv = root / ".dockerenv"
    if dockerenv.is_file():
        dockerenv.unlink()
    for name in MOUNTED_DIRS:
        target = root / name
        if target.is_dir() and not target.is_symlink():
            for entry in target.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        else:
            target.mkdir(mode=0o755, exist_ok=True)
    for name in PLACEHOLDER_FILES:
        target = root / name
        if not os.path.lexists(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o644)
    if meta.workdir:
        (root / meta.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    meta_file = root / META_PATH
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(meta.model_dump_json(indent=2) + "\n")
    meta_file.chmod(0o644)


def export_image_rootfs(image_tag: str, dest: Path) -> Path:
    """Unpack the Docker image `image_tag` as a directory tree at `dest` (which must not exist).

    Needs a Docker daemon. The tree is written next to `dest` and renamed into place, so a crash
    never leaves a half-written `dest`.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound

    dest = Path(dest)
    if dest.exists():
        raise SandboxError(f"{dest} already exists: remove it or export somewhere else")
    try:
        client = docker.from_env(timeout=600)
        image = client.images.get(image_tag)
    except ImageNotFound:
        raise SandboxError(f"image {image_tag} not found: build it with `agent images build`") from None
    except DockerException as exc:
        raise SandboxError(f"exporting a root filesystem needs the Docker daemon ({exc})") from None
    config = image.attrs.get("Config") or {}
    meta = ImageMeta(
        image=image_tag,
        image_id=image.id,
        env=list(config.get("Env") or [f"PATH={DEFAULT_PATH}"]),
        workdir=config.get("WorkingDir") or "",
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    container = client.api.create_container(image.id, entrypoint=["/nonexistent"], network_disabled=True)
    try:
        stream = client.api.export(container["Id"])
        tar = subprocess.Popen(
            ["tar", "-x", "-C", str(staging), "--numeric-owner", "--exclude=./dev/*"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert tar.stdin is not None and tar.stderr is not None
        try:
            for chunk in stream:
                tar.stdin.write(chunk)
        finally:
            tar.stdin.close()
            errors = tar.stderr.read().decode(errors="replace")
            tar.wait()
        if tar.returncode != 0:
            raise SandboxError(f"unpacking the exported image failed: {errors.strip()[-400:]}")
        _finish_tree(staging, meta)
        staging.chmod(0o755)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        client.api.remove_container(container["Id"], force=True)
        client.close()
    log.info("rootfs.exported", image=image_tag, dest=str(dest))
    return dest


def cached_image_rootfs(image_tag: str, cache_dir: Path | None = None) -> Path:
    """The tree of `image_tag` under the cache, keyed by image id: exported on first use."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env(timeout=120)
        image_id = client.images.get(image_tag).id
        client.close()
    except ImageNotFound:
        raise SandboxError(f"image {image_tag} not found: build it with `agent images build`") from None
    except DockerException as exc:
        raise SandboxError(f"exporting a root filesystem needs the Docker daemon ({exc})") from None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / image_id.split(":", 1)[-1][:16]
    with _locked(cache):
        if not dest.exists():
            export_image_rootfs(image_tag, dest)
    return dest


def pack_rootfs(rootfs: Path, tarball: Path) -> Path:
    """Write `rootfs` as a gzip tarball (numeric owners kept) for carrying to another host."""
    root = validate_rootfs(rootfs)
    tarball = Path(tarball)
    partial = tarball.with_name(tarball.name + ".partial")
    compress = ["-z"] if tarball.name.endswith((".gz", ".tgz")) else []
    _run_tar(["-c", *compress, "-f", str(partial), "-C", str(root), "--numeric-owner", "."])
    partial.rename(tarball)
    return tarball


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def ensure_rootfs(path_or_tarball: str | Path, cache_dir: Path | None = None) -> Path:
    """A usable root filesystem directory from a directory or a tarball (unpacked once, cached).

    A tarball is unpacked into the cache under its content hash, so unpacking it again (or another
    process asking at the same time) costs one hash of the file.
    """
    source = Path(path_or_tarball)
    if source.is_dir():
        return validate_rootfs(source)
    if not source.is_file():
        raise SandboxError(f"root filesystem {source} does not exist: pass a directory or a tarball")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / f"tar-{_digest(source)[:16]}"
    with _locked(cache):
        if not dest.exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache))
            try:
                # Device nodes cannot be made without privileges and are never used: skip them.
                _run_tar(["-x", "-f", str(source), "-C", str(staging), "--numeric-owner", "--exclude=./dev/*"])
                _finish_tree(staging, read_meta(staging))
                staging.chmod(0o755)
                staging.rename(dest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            log.info("rootfs.unpacked", tarball=str(source), dest=str(dest))
    return validate_rootfs(dest)


# -- the mount layout -------------------------------------------------------------------------------


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _ancestors(path: str) -> list[str]:
    """Proper ancestors of an absolute normalised path, "/" first."""
    parts = _parts(path)
    return ["/" + "/".join(parts[:i]) if i else "/" for i in range(len(parts))]


@dataclass
class Mount:
    """One mount point of the sandbox as the host sees it."""

    path: str  # in the sandbox, normalised
    source: Path | None = None  # host directory bound there (None for proc, dev, data files)
    writable: bool = False
    fd: int | None = None  # O_PATH descriptor of `source`, held for host-side file operations
    fast: bool = False  # one of our own directories: file operations may go straight to the host


@dataclass
class Layout:
    """The sandbox's mounts over a tree, as bubblewrap options (the same at every session restart)."""

    rootfs: Path
    rootfs_fd: int
    mounts: dict[str, Mount] = field(default_factory=dict)
    spliced: list[str] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)
    _splice_args: list[str] = field(default_factory=list)

    @classmethod
    def for_tree(cls, rootfs: Path) -> Layout:
        fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(rootfs, fd, _fds=[fd])

    def open_fd(self, host_path: Path | str, dir_fd: int | None = None) -> int:
        fd = os.open(host_path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def plan_splices(self) -> None:
        """Find which directories of the tree must be spliced to hold mount points it lacks."""
        spliced: set[str] = set()
        for point in sorted(self.mounts, key=lambda p: p.count("/")):
            enclosing = max((m for m in self.mounts if m != point and point.startswith(m.rstrip("/") + "/")),
                            key=len, default="/")
            if enclosing != "/" or os.path.lexists(self.rootfs / point.lstrip("/")):
                continue  # bwrap makes it inside a writable bind, or it is already there
            anchor = "/"
            for ancestor in _ancestors(point)[1:]:
                host = self.rootfs / ancestor.lstrip("/")
                if os.path.islink(host):
                    raise SandboxError(f"mount point {point} is under a symlink of the image ({ancestor})")
                if not host.is_dir():
                    break
                anchor = ancestor
            spliced.add(anchor)
        self.spliced = sorted(spliced, key=lambda p: (p.count("/"), p) if p != "/" else (0, ""))
        for anchor in self.spliced:
            self._splice_args += self._splice(anchor)

    def _splice(self, anchor: str) -> list[str]:
        """A tmpfs at `anchor` re-creating the tree's entries there as read-only binds and links."""
        host = self.rootfs / anchor.lstrip("/")
        args = [] if anchor == "/" else ["--perms", f"{stat.S_IMODE(os.stat(host).st_mode):o}", "--tmpfs", anchor]
        with os.scandir(host) as entries:
            for entry in entries:
                dest = posixpath.join(anchor, entry.name)
                if entry.is_symlink():
                    args += ["--symlink", os.readlink(entry.path), dest]
                elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                    args += ["--ro-bind", entry.path, dest]
        return args

    def base_args(self, shm_bytes: int | None) -> list[str]:
        """bwrap options for the root, the splices, /proc, /dev and the binds, in mounting order."""
        args = [] if "/" in self.spliced else ["--ro-bind", str(self.rootfs), "/"]
        args += self._splice_args
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
        if shm_bytes is not None:
            args += ["--size", str(shm_bytes)]
        args += ["--tmpfs", "/dev/shm"]
        for point in sorted(self.mounts, key=lambda p: (p.count("/"), p)):
            mount = self.mounts[point]
            if mount.source is not None:
                args += ["--bind" if mount.writable else "--ro-bind", str(mount.source), point]
        return args

    def final_args(self) -> list[str]:
        """Read-only remounts, which must come after everything mounted beneath them."""
        args = ["--remount-ro", "/dev"]
        for anchor in self.spliced:
            args += ["--remount-ro", anchor]
        return args


# -- resolving sandbox paths on the host ------------------------------------------------------------


@dataclass
class Target:
    """Where a sandbox path ends up: a name in a directory we hold open, and what is there."""

    fast: bool  # inside one of our own writable directories
    parent_fd: int | None  # O_PATH descriptor of the containing directory (owned by the Target)
    name: str | None  # None: the path is a mount point (a directory)
    st: os.stat_result | None  # lstat of the final entry, None if it does not exist

    @property
    def is_dir(self) -> bool:
        return self.name is None or (self.st is not None and stat.S_ISDIR(self.st.st_mode))

    def close(self) -> None:
        if self.parent_fd is not None:
            os.close(self.parent_fd)
            self.parent_fd = None


class Resolver:
    """Resolves sandbox paths like the kernel would inside the sandbox, using only host descriptors.

    Returns None when a path leaves what the host can see faithfully (/proc, /dev, data files and
    user mounts, too many symlinks): the caller then asks the session instead.
    """

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._ancestors = {a for point in layout.mounts for a in _ancestors(point)}

    def resolve(self, path: str, follow_last: bool = True) -> Target | None:
        pending = deque(_parts(path))
        stack: list[tuple[str, int | None, bool]] = [("", self._layout.rootfs_fd, False)]
        opened: list[int] = []
        links = 0
        try:
            while pending:
                comp = pending.popleft()
                if comp == "..":
                    if len(stack) > 1:
                        stack.pop()
                    continue
                base, fd, fast = stack[-1]
                candidate = f"{base}/{comp}"
                last = not pending
                mount = self._layout.mounts.get(candidate)
                if mount is not None:
                    if not mount.fast or mount.fd is None:
                        return None
                    if last:
                        return Target(True, None, None, None)
                    stack.append((candidate, mount.fd, True))
                    continue
                try:
                    if fd is None:
                        raise FileNotFoundError(candidate)
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if candidate in self._ancestors:  # a directory that only the splice makes
                        stack.append((candidate, None, False))
                        continue
                    if last and fd is not None:
                        return Target(fast, os.dup(fd), comp, None)
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
                if stat.S_ISLNK(st.st_mode) and (not last or follow_last):
                    links += 1
                    if links > MAX_SYMLINKS:
                        return None
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        del stack[1:]
                    pending.extendleft(reversed(_parts(target) or ["."]))
                    continue
                if last:
                    return Target(fast, os.dup(fd), comp, st)
                if not stat.S_ISDIR(st.st_mode):
                    raise FileNotFoundError(errno.ENOTDIR, "Not a directory", path)
                child = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                opened.append(child)
                stack.append((candidate, child, fast))
            base, fd, fast = stack[-1]
            if len(stack) == 1 or fd is None:
                return Target(False, None, None, None)
            return Target(fast, None, None, None)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            return None  # a race with the sandbox (ELOOP, ENOTDIR...): let the session answer
        finally:
            for fd in opened:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """`python -m sandbox.rootfs export IMAGE OUT` / `unpack TARBALL`: prepare and install trees."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.rootfs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="image -> directory, or tarball if OUT ends in .tar[.gz]")
    export.add_argument("image")
    export.add_argument("out", type=Path)
    unpack = commands.add_parser("unpack", help="tarball -> cached directory (printed)")
    unpack.add_argument("tarball", type=Path)
    unpack.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            if args.out.name.endswith((".tar", ".tar.gz", ".tgz")):
                tree = cached_image_rootfs(args.image)
                print(pack_rootfs(tree, args.out))
            else:
                print(export_image_rootfs(args.image, args.out))
        else:
            print(ensure_rootfs(args.tarball, args.cache_dir))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sandbox's copy of a repository as one tar stream: its files and its pruned history, in one pass.

Nothing is checked out on the host. The stream holds:

- the files: `git archive` of the commit (the same files, modes and filters a checkout writes: modes
  follow the umask, `text`/`eol`/smudge filters apply; `export-ignore` and `export-subst`, which only
  archives honour, are switched off for it), with the working tree's changes laid over them for
  `--allow-dirty`; a snapshot's files are read from the snapshot itself, ignored ones included;
- `.git`: a clone of the source made without objects and without a working tree (`--shared`), its HEAD
  detached at the commit, pruned with the ref half of the sandbox's own pruning
  (sandbox.session.prune_refs_script) and repacked with exactly what the kept refs and HEAD reach, so
  the future is gone before the first byte is sent and nothing is pruned in the sandbox. The index is
  the commit's tree (as a fresh checkout's is; git refreshes the stat data in the sandbox on first use,
  as it did for copied checkouts).

Every member belongs to root. The stream is what `Sandbox.extract` unpacks at the workdir (Docker:
straight into the container; bubblewrap: by `tar` inside the sandbox) and what a repository image's
layer holds (images.repo_images), so a cached start and a copy give the same tree.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from agent.episode.checkout import PreparedRepo, RepoError, process_umask
from sandbox.archive import root_owned
from sandbox.session import prune_refs_script

# Switches off the two attributes only `git archive` honours, for the archive of the files.
ARCHIVE_ATTRIBUTES = "* -export-subst -export-ignore\n"
_READY = ".cwm-sandbox-git-ready"
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = b"\0" * BLOCK

Member = tuple[tarfile.TarInfo, "IO[bytes] | None"]


def _git(*args: str | Path) -> str:
    done = subprocess.run(["git", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        words = [str(a) for a in args]
        command = next((w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] not in ("-C", "-c")),
                       "")
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise RepoError(f"git {command} failed while preparing the repository: {detail}")
    return done.stdout


def sandbox_git(prepared: PreparedRepo) -> Path:
    """The repository whose `.git` the sandbox gets (see the module docstring); made once per preparation."""
    if prepared.snapshot:
        repo = prepared.path  # the snapshot is ours: pruned in place
    else:
        repo = prepared.new_workspace() / "sandbox"
    if (repo / ".git" / _READY).exists():
        return repo
    if not prepared.snapshot:
        shutil.rmtree(repo, ignore_errors=True)
        _git("clone", "-q", "--no-checkout", "--shared", prepared.path, repo)
        _git("-C", repo, "update-ref", "--no-deref", "HEAD", prepared.commit)
    done = subprocess.run(["bash", "-c", prune_refs_script(str(repo))], capture_output=True, text=True)
    if done.returncode != 0:
        raise RepoError(f"could not prune the repository's history: {done.stderr.strip()[-300:]}")
    # Not `git gc`: it packs only local objects, and a --shared clone borrows all of them. The settings are
    # the sandbox's gc's (no delta search, no bitmaps, no reverse index: older gits write none).
    _git("-C", repo, "-c", "pack.window=0", "-c", "repack.writeBitmaps=false", "-c", "pack.writeReverseIndex=false",
         "repack", "-a", "-d", "-q")
    (repo / ".git" / "objects" / "info" / "alternates").unlink(missing_ok=True)
    _git("-C", repo, "pack-refs", "--all", "--prune")
    _git("-C", repo, "read-tree", "HEAD")
    (repo / ".git" / _READY).touch()
    return repo


# -- members ------------------------------------------------------------------------------------------


@contextmanager
def _git_archive(repo: Path, commit: str, prefix: str = "") -> Iterator[IO[bytes]]:
    """`git archive` of `commit` under `prefix`, as a stream (see the module docstring for the attributes
    switched off); RepoError if git fails."""
    attributes = repo / ".git" / "info" / "attributes"
    attributes.parent.mkdir(exist_ok=True)
    saved = attributes.read_bytes() if attributes.exists() else None
    attributes.write_text(ARCHIVE_ATTRIBUTES)
    command = ["git", "-c", f"tar.umask={process_umask():04o}", "-C", str(repo), "archive", "--format=tar",
               f"--prefix={prefix}", commit]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            code = proc.wait()
            if saved is None:
                attributes.unlink(missing_ok=True)
            else:
                attributes.write_bytes(saved)
        if code != 0:
            errors.seek(0)
            raise RepoError(f"git archive failed: {errors.read().decode(errors='replace').strip()[-300:]}")


def _archived(repo: Path, commit: str) -> Iterator[Member]:
    """The commit's files as members, for laying the working tree's changes over them."""
    with _git_archive(repo, commit) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            member.pax_headers = {}  # not git's global comment, copied into every member by tarfile
            yield member, tar.extractfile(member) if member.isreg() else None


def _copy_members(source: IO[bytes], out: BinaryIO) -> None:
    """Copy a tar stream's members block for block, without its end-of-archive blocks, so that more
    members can follow (the only way to join two archives). Fast: no member is parsed but its size."""
    while True:
        header = source.read(BLOCK)
        if len(header) < BLOCK or header == ZERO_BLOCK:
            while source.read(1 << 20):  # the rest is padding; drained so git ends without SIGPIPE
                pass
            return
        out.write(header)
        left = -(-tarfile.nti(header[124:136]) // BLOCK) * BLOCK
        while left:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                raise RepoError("git archive's output ended inside a member")
            out.write(chunk)
            left -= len(chunk)


def _emit(out: BinaryIO, info: tarfile.TarInfo, data: IO[bytes] | None) -> None:
    """Write one member: header, then exactly `info.size` bytes of `data`, padded to a block."""
    out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if data is None:
        return
    try:
        left = info.size
        while left:
            chunk = data.read(min(left, 1 << 20))
            if not chunk:
                raise RepoError(f"{info.name} shrank while it was copied")
            out.write(chunk)
            left -= len(chunk)
    finally:
        data.close()
    out.write(b"\0" * (-info.size % BLOCK))


def _from_host(root: Path, name: str) -> Member:
    """One file, directory or link of a host tree, as root's."""
    path = root / name
    info = root_owned(tarfile.TarFile(fileobj=io.BytesIO(), mode="w").gettarinfo(str(path), arcname=name))
    return info, path.open("rb") if info.isreg() else None


def _walk(root: Path, skip_top: str = ".git") -> Iterator[str]:
    """Relative names under `root`, parents first, in a stable order (the top-level `skip_top` left out)."""
    for current, dirs, files in os.walk(root):
        rel = os.path.relpath(current, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d != skip_top]
            files = [f for f in files if f != skip_top]
        dirs.sort()
        for name in sorted(dirs + files):
            yield name if rel == "." else f"{rel}/{name}"


def _overlaid(members: Iterator[Member], root: Path) -> Iterator[Member]:
    """--allow-dirty: the commit's files with the working tree's changes over them (modified and untracked
    files from `root`, deleted ones left out)."""
    changed = set(filter(None, _git("-C", root, "ls-files", "-m", "-o", "--exclude-standard", "-z").split("\0")))
    deleted = set(filter(None, _git("-C", root, "ls-files", "-d", "-z").split("\0")))
    emitted: set[str] = set()
    for member, data in members:
        emitted.add(member.name)
        if member.name in deleted:
            continue
        if member.name in changed and (root / member.name).exists():
            yield _from_host(root, member.name)
        else:
            yield member, data
    for name in sorted(changed - emitted):
        if not (root / name).exists():
            continue
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in emitted:
                emitted.add(parent)
                yield _from_host(root, parent)
        yield _from_host(root, name)


def write_repo_tar(prepared: PreparedRepo, fileobj: BinaryIO, prefix: str = "",
                   lead: list[tarfile.TarInfo] | None = None) -> None:
    """Write the sandbox's copy of `prepared` to `fileobj` as one tar stream, names under `prefix` (e.g.
    `testbed/` for an image layer), after the data-less entries `lead`. A clean clone's files are git
    archive's own blocks, passed through; a snapshot's and a dirty tree's are read here."""
    repo = sandbox_git(prepared)
    for info in lead or []:
        _emit(fileobj, info, None)
    if prepared.snapshot:
        for name in _walk(repo):
            _emit(fileobj, *_renamed(_from_host(repo, name), prefix))
    elif prepared.overlay is not None:
        for member in _overlaid(_archived(repo, prepared.commit), prepared.overlay):
            _emit(fileobj, *_renamed(member, prefix))
    else:
        with _git_archive(repo, prepared.commit, prefix) as raw:
            _copy_members(raw, fileobj)
    for name in [".git", *(f".git/{n}" for n in _walk(repo / ".git", skip_top=_READY))]:
        _emit(fileobj, *_renamed(_from_host(repo, name), prefix))
    fileobj.write(ZERO_BLOCK * 2)


def _renamed(member: Member, prefix: str) -> Member:
    member[0].name = prefix + member[0].name
    return member


@contextmanager
def repo_stream(prepared: PreparedRepo, prefix: str = "") -> Iterator[BinaryIO]:
    """`write_repo_tar` as a readable pipe (written by a thread while the caller reads), so the copy goes
    to the sandbox without touching the host's disk."""
    sandbox_git(prepared)  # its errors here, not in the thread
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink:
                write_repo_tar(prepared, sink, prefix)
        except BaseException as error:  # noqa: BLE001 - handed to the reader
            failures.append(error)

    writer = threading.Thread(target=produce, name="cwm-repo-stream", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as source:
        try:
            yield source
        finally:
            source.close()  # a reader that stopped early: the writer gets EPIPE and ends
            writer.join()
    if failures:
        raise failures[0]

"""`Sandbox.extract` on each backend: one tar stream unpacked at its place in one pass (Docker: by the
daemon into the container; bubblewrap: by `tar` inside the sandbox, fed through a FIFO), and the
repository copy made of it equal to the old copy path's."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.episode.repo import place_in_sandbox, prepare_repo
from sandbox.base import Sandbox, SandboxError
from tests.repo_states import legacy_copy, make_repository, sandbox_state, without_index


def tar_of(members: dict[str, bytes | str]) -> io.BytesIO:
    """A tar stream: bytes are files, a str value makes a symlink to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


def test_a_stream_is_unpacked_where_asked(sandbox: Sandbox) -> None:
    stream = tar_of({"pkg/mod.py": b"X = 1\n", "run.sh": b"echo hi\n", "link": "pkg/mod.py",
                     "big.bin": bytes(range(256)) * 8192})
    sandbox.extract(stream, "/tmp/extracted/here")
    listing = sandbox.run("cd /tmp/extracted/here && stat -c '%n %a %U' pkg/mod.py run.sh && readlink link && "
                          "./run.sh && wc -c < big.bin").output
    assert listing == "pkg/mod.py 644 root\nrun.sh 755 root\npkg/mod.py\nhi\n2097152\n"
    sandbox.run("rm -rf /tmp/extracted")


def test_a_broken_stream_is_an_error(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError):
        sandbox.extract(io.BytesIO(b"this is not a tar archive" * 100), "/tmp/broken")


def test_a_repository_copy_is_what_the_old_copy_path_gave(sandbox_factory, tmp_path: Path) -> None:  # noqa: ANN001
    repo, base, fix = make_repository(tmp_path)
    box = sandbox_factory()
    legacy_copy(box, repo, base)
    old = sandbox_state(box, fix)
    prepared = prepare_repo(str(repo), base)
    try:
        place_in_sandbox(prepared, box)
    finally:
        prepared.cleanup()
    new = sandbox_state(box, fix)
    assert without_index(new) == without_index(old)
    assert "fix-gone" in new and f"{base}\ndetached\n" in new

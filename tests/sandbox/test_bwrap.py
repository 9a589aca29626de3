"""What the bubblewrap backend locks down, and how it holds up when things go wrong.

The behaviour the model sees is covered for both backends by test_session_behaviour.py; this file
covers isolation (network, read-only tree, invisible host), limits (fork bomb, memory), cleanup (no
process survives a timeout or a SIGKILLed runner), the host-side file fast path against symlink
tricks, layouts the tree lacks, rootfs tarballs, and the tools over this backend.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sandbox.base import Limits, SandboxConfig, SandboxError
from sandbox.bwrap import SANDBOX_UID_RANGE, BwrapSandbox, reap_orphans, remove_tree, state_root
from sandbox.pool import WarmPool
from sandbox.rootfs import ensure_rootfs, pack_rootfs, read_meta
from tools.registry import run_tool

pytestmark = pytest.mark.bwrap

REPO_ROOT = Path(__file__).resolve().parents[2]
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3}


@pytest.fixture(scope="module")
def box(bwrap_rootfs: str, run_id: str):
    sandbox = BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id))
    yield sandbox
    sandbox.close()


@pytest.fixture
def reachable_tmp() -> Path:
    """A temporary directory the sandbox's uid can reach (pytest's tmp_path base is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cwm-bwrap-test-"))
    path.chmod(0o711)
    yield path
    remove_tree(path)


def host_pids(marker: str) -> list[int]:
    """Host processes whose command line contains `marker` (pgrep never lists itself)."""
    done = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def status_field(box: BwrapSandbox, field: str) -> str:
    return box.run(f"grep '^{field}:' /proc/self/status | cut -f2").output.strip()


# -- isolation -------------------------------------------------------------------------------------


def test_no_network_only_loopback(box: BwrapSandbox) -> None:
    interfaces = box.run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").output.split()
    assert interfaces == ["lo"]
    probe = (
        "python3 - <<'EOF'\n"
        "import socket\n"
        "s = socket.socket(); s.settimeout(10)\n"
        "try:\n"
        "    s.connect(('1.1.1.1', 53)); print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno)\n"
        "EOF"
    )
    assert box.run(probe, timeout_s=30).output == "OSError 101\n"  # ENETUNREACH, not a timeout
    # Loopback works and resolves (our own /etc/hosts), so test suites with local servers run.
    local = box.run(
        "python3 -c \"import socket; s=socket.create_server(('localhost', 0)); "
        "c=socket.create_connection(s.getsockname()[:2]); print('ok')\""
    )
    assert local.output == "ok\n"
    assert box.run("hostname; cat /etc/hostname").output == "sandbox\nsandbox\n"


def test_network_when_asked_for(bwrap_rootfs: str, run_id: str) -> None:
    with BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id, network=True)) as online:
        host = sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
        inside = online.run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort").output.split()
        assert inside == host


def test_tree_is_read_only_outside_the_writable_directories(box: BwrapSandbox) -> None:
    for path in ["/x", "/usr/x", "/etc/x", "/usr/local/bin/x", "/srv/x"]:
        result = box.run(f"touch {path}")
        assert result.exit_code == 1 and "Read-only file system" in result.output, path
    writable = box.run("for d in /testbed /tmp /var/tmp /root /dev/shm; do touch $d/w && echo $d; done")
    assert writable.output.split() == ["/testbed", "/tmp", "/var/tmp", "/root", "/dev/shm"]
    assert box.run("stat -c '%a %U' /tmp /root /testbed").output == "1777 root\n700 root\n755 root\n"
    with pytest.raises(OSError) as caught:
        box.write_file("/usr/local/new.txt", b"x")
    assert caught.value.errno == errno.EROFS
    assert box.run("mount -o remount,rw /").exit_code != 0


def test_host_is_invisible(box: BwrapSandbox) -> None:
    seen = box.run(f"ls -d {REPO_ROOT} /work {state_root()} 2>&1; echo rc=$?").output
    assert "rc=2" in seen and "No such file or directory" in seen
    # Only the sandbox's own processes; bwrap's command line does not name host paths.
    processes = box.run("ps -eo pid=,args=").output.splitlines()
    assert len(processes) <= 4, processes
    assert str(box.dir) not in "\n".join(processes) and box.config.image not in "\n".join(processes)
    # Its own cgroup namespace: every hierarchy (v1 or v2) reads as "/".
    assert set(box.run("cut -d: -f3 /proc/self/cgroup").output.split()) == {"/"}


def test_identity_and_capabilities(box: BwrapSandbox) -> None:
    assert box.run("id -u; id -g").output == "0\n0\n"
    expected = sum(1 << bit for bit in CAP_BITS.values())
    assert int(status_field(box, "CapEff"), 16) == expected
    assert int(status_field(box, "CapBnd"), 16) == expected
    assert status_field(box, "NoNewPrivs") == "1"
    assert box.run("unshare -U true").exit_code != 0  # no nested user namespaces
    assert box.run("mknod /tmp/dev c 1 3").exit_code != 0
    assert box.run("hostname other").exit_code != 0
    # Outside, the shell is an unprivileged uid: a fresh one per sandbox when the runner is root.
    marker = f"idprobe{secrets.token_hex(4)}"
    box.run(f"exec -a {marker} sleep 30 >/dev/null 2>&1 &")
    try:
        assert wait_until(lambda: host_pids(marker))
        (pid,) = host_pids(marker)
        uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
        assert uid == box.host_uid
        if os.geteuid() == 0:
            assert SANDBOX_UID_RANGE[0] <= uid < SANDBOX_UID_RANGE[1]
        else:
            assert uid == os.getuid()
    finally:
        box.run("kill %1; wait")


def test_repository_work_as_root_inside(box: BwrapSandbox) -> None:
    # DAC_OVERRIDE: root removes a read-only tree; FOWNER: chmod/touch; tar keeps working as root.
    result = box.run(
        "mkdir -p /tmp/ro/d && echo x > /tmp/ro/d/f && chmod 444 /tmp/ro/d/f && chmod 555 /tmp/ro/d"
        " && rm -rf /tmp/ro && echo removed"
    )
    assert result.output == "removed\n"
    result = box.run(
        "mkdir -p /tmp/t/x && cd /tmp/t && echo hi > f && tar --owner=1000 --group=1000 -cf a.tar f"
        " && tar -C x -xf a.tar && stat -c %u x/f; cd /testbed"
    )
    assert result.output == "0\n" and result.exit_code == 0  # foreign owners become root (documented)
    assert box.run("chmod 600 /tmp/t/x/f && touch -d @0 /tmp/t/x/f && echo ok").output == "ok\n"
    shm = box.run("python3 -c 'import multiprocessing as m; m.Lock(); print(\"ok\")'; df -k --output=size /dev/shm")
    assert shm.output.split() == ["ok", "1K-blocks", "65536"]


def test_sandboxes_do_not_see_each_other(box: BwrapSandbox, bwrap_rootfs: str, run_id: str) -> None:
    box.write_file("/tmp/mine.txt", b"first")
    with BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id)) as other:
        assert other.run("ls /tmp/mine.txt").exit_code != 0
        assert other.run("ps -e --no-headers | wc -l").output.strip() in {"3", "4"}
        if os.geteuid() == 0:
            assert other.host_uid != box.host_uid


# -- limits ----------------------------------------------------------------------------------------


def test_fork_bomb_is_contained(box: BwrapSandbox, bwrap_rootfs: str, run_id: str) -> None:
    """RLIMIT_NPROC counts per user namespace, so it bounds each sandbox (and spares the host)."""
    with BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id, limits=Limits(pids=64))) as bombed:
        assert bombed.run("ulimit -u").output == "64\n"
        result = bombed.run(":(){ :|:& };:", timeout_s=5)
        assert result.timed_out or result.exit_code is not None
        uid = bombed.host_uid
        counts = []
        for _ in range(10):  # sample while the bomb is at its peak
            counts.append(sum(1 for st in Path("/proc").glob("[0-9]*/status") if _uid_of(st) == uid))
            time.sleep(0.1)
        if os.geteuid() == 0:  # a uid of its own: we can count its processes from here
            assert 0 < max(counts) <= 64 + 2, counts  # + bwrap outside and the namespace's init
        assert box.run("echo other sandbox fine").output == "other sandbox fine\n"
        assert subprocess.run(["true"]).returncode == 0  # the host still forks
        bombed.restart_session()
        assert bombed.run("echo recovered").output == "recovered\n"
        assert int(bombed.run("ps -e --no-headers -o stat | grep -vc '^Z'").output) <= 5


def _uid_of(status: Path) -> int | None:
    try:
        return int(status.read_text().split("Uid:")[1].split()[0])
    except (OSError, IndexError):
        return None


def test_memory_hog_fails_inside_and_sandbox_survives(bwrap_rootfs: str, run_id: str) -> None:
    config = SandboxConfig(image=bwrap_rootfs, run_id=run_id, limits=Limits(memory_bytes=256 * 1024**2))
    with BwrapSandbox(config) as small:
        assert small.run("ulimit -v").output == f"{256 * 1024}\n"
        result = small.run("python3 -c \"x = b'a' * (1024**3); print('got', len(x))\"", timeout_s=60)
        assert "MemoryError" in result.output and result.exit_code == 1
        assert not result.failed_session
        assert small.run("echo still here").output == "still here\n"


# -- killing ---------------------------------------------------------------------------------------


def test_timeout_leaves_no_process_on_the_host(box: BwrapSandbox) -> None:
    marker = f"9{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    box.run(f"(sleep {marker} >/dev/null 2>&1 &); setsid sleep {marker} >/dev/null 2>&1 &")
    box.run(f"nohup sleep {marker} >/dev/null 2>&1 & disown")
    assert wait_until(lambda: len(host_pids(f"sleep {marker}")) == 3)
    result = box.run(f"sleep {marker}", timeout_s=1)
    assert result.timed_out
    assert host_pids(f"sleep {marker}") == []  # gone by the time run() returns
    assert box.run("echo fresh").output == "fresh\n"


def test_close_kills_everything_and_removes_the_directories(bwrap_rootfs: str, run_id: str) -> None:
    marker = f"8{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    sandbox = BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id))
    sandbox.run(f"setsid sleep {marker} >/dev/null 2>&1 &")
    assert wait_until(lambda: host_pids(f"sleep {marker}"))
    sandbox.close()
    sandbox.close()  # idempotent
    assert host_pids(f"sleep {marker}") == []
    assert not sandbox.dir.exists()
    with pytest.raises(SandboxError, match="closed"):
        sandbox.run("true")


def test_sigkilled_runner_leaves_no_process(bwrap_rootfs: str, run_id: str) -> None:
    marker = f"7{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    code = textwrap.dedent(
        f"""
        import sys, time
        from sandbox.base import SandboxConfig
        from sandbox.bwrap import BwrapSandbox
        sb = BwrapSandbox(SandboxConfig(image={bwrap_rootfs!r}, run_id={run_id!r}))
        sb.run("setsid sleep {marker} >/dev/null 2>&1 &")
        print("DIR", sb.dir, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = ""
    while not line.startswith("DIR "):  # after any log lines
        line = child.stdout.readline()
        assert line, "the child exited early"
    directory = Path(line.split(None, 1)[1].strip())
    assert wait_until(lambda: host_pids(f"sleep {marker}"))
    child.kill()
    child.wait(30)
    child.stdout.close()
    # --die-with-parent: the kernel kills bwrap and so the namespace.
    assert wait_until(lambda: host_pids(f"sleep {marker}") == [])
    assert directory.exists()  # nothing could delete it after SIGKILL ...
    assert directory in reap_orphans()  # ... so the next runner does
    assert not directory.exists()


def test_sigterm_mid_command_cleans_up(bwrap_rootfs: str, run_id: str) -> None:
    """SIGTERM becomes SystemExit (sandbox/lifecycle.py): atexit kills the sandbox and deletes its files."""
    marker = f"6{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    code = textwrap.dedent(
        f"""
        from sandbox.base import SandboxConfig
        from sandbox.bwrap import BwrapSandbox
        sb = BwrapSandbox(SandboxConfig(image={bwrap_rootfs!r}, run_id={run_id!r}))
        print("DIR", sb.dir, flush=True)
        sb.run("sleep {marker}", timeout_s=600)
        print("not reached", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = ""
    while not line.startswith("DIR "):
        line = child.stdout.readline()
        assert line, "the child exited early"
    directory = Path(line.split(None, 1)[1].strip())
    assert wait_until(lambda: host_pids(f"sleep {marker}"))
    child.send_signal(signal.SIGTERM)
    rest = child.stdout.read()
    assert child.wait(30) == 128 + signal.SIGTERM
    child.stdout.close()
    assert "not reached" not in rest
    assert host_pids(f"sleep {marker}") == []
    assert not directory.exists()


def test_warm_pool_of_bwrap_sandboxes(bwrap_rootfs: str, run_id: str) -> None:
    """The pool starts sandboxes on its own thread; they must outlive it (see the next test)."""
    config = SandboxConfig(image=bwrap_rootfs, run_id=run_id)
    with WarmPool(config, size=2, factory=BwrapSandbox) as pool:
        assert pool.wait_ready(timeout=60)
        sandbox = pool.acquire()
    with sandbox:  # the pool (and its thread) is gone; the sandbox is not
        time.sleep(0.3)
        assert sandbox.run("echo warm").output == "warm\n"


def test_sandbox_outlives_the_thread_that_made_it(bwrap_rootfs: str, run_id: str) -> None:
    """PR_SET_PDEATHSIG follows the forking thread: bwraps are started from a process-wide one."""
    made: list[BwrapSandbox] = []
    config = SandboxConfig(image=bwrap_rootfs, run_id=run_id)
    worker = threading.Thread(target=lambda: made.append(BwrapSandbox(config)))
    worker.start()
    worker.join()
    with made[0] as sandbox:
        time.sleep(0.5)
        result = sandbox.run("echo alive")
        assert result.output == "alive\n" and not result.failed_session
        restarted = threading.Thread(target=sandbox.restart_session)
        restarted.start()
        restarted.join()
        time.sleep(0.5)
        assert sandbox.run("echo still").output == "still\n"


# -- files -----------------------------------------------------------------------------------------


def test_symlinks_resolve_inside_the_sandbox_not_on_the_host(box: BwrapSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only\n")
    box.run(f"ln -sfn {secret} /testbed/to-host; ln -sfn /etc/os-release /testbed/to-tree;"
            f" ln -sfn {tmp_path} /tmp/to-host-dir; ln -sfn ../tmp /testbed/up")
    with pytest.raises(FileNotFoundError):
        box.read_file("/testbed/to-host")
    assert box.read_file("/testbed/to-tree") == box.run("cat /etc/os-release").output.encode()
    with pytest.raises(FileNotFoundError):
        box.write_file("/tmp/to-host-dir/planted", b"x")
    assert not (tmp_path / "planted").exists()
    box.write_file("/testbed/up/through-dotdot", b"ok")  # /testbed/../tmp, across two mounts
    assert box.run("cat /tmp/through-dotdot").output == "ok"
    box.run("mkfifo /tmp/fifo")
    started = time.monotonic()
    with pytest.raises(OSError):  # a fifo is no file: answered without hanging
        box.read_file("/tmp/fifo")
    assert time.monotonic() - started < 5
    assert box.read_file("/proc/self/cmdline").startswith(b"cat\0")  # through the session
    assert b"localhost" in box.read_file("/etc/hosts")  # the sandbox's own, not the tree's


def test_host_written_files_belong_to_root_inside(box: BwrapSandbox) -> None:
    box.write_file("/testbed/made.py", b"print(1)\n", mode=0o640)
    assert box.run("stat -c '%U %a' /testbed/made.py && echo more >> /testbed/made.py").output == "root 640\n"
    assert box.read_file("/testbed/made.py") == b"print(1)\nmore\n"
    box.run("chmod 000 /testbed/made.py")
    box.write_file("/testbed/made.py", b"rewritten\n")  # as root does, whatever the mode
    assert box.run("stat -c %a /testbed/made.py; cat /testbed/made.py").output == "0\nrewritten\n"


def test_copy_round_trip_of_a_repository(box: BwrapSandbox, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (repo / "link").symlink_to("pkg/__init__.py")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e.invalid", "PATH": os.environ["PATH"]}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=repo, env=env, check=True)
    box.copy_in(repo, "/testbed")
    result = box.run("cd /testbed/repo && git status --porcelain && sed -i 's/1/2/' pkg/__init__.py && git diff --stat")
    assert result.output == " pkg/__init__.py | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n"
    out = tmp_path / "out"
    box.copy_out("/testbed/repo", out)
    assert (out / "repo" / "pkg" / "__init__.py").read_text() == "VALUE = 2\n"
    assert os.readlink(out / "repo" / "link") == "pkg/__init__.py"
    box.run("cd /testbed")


# -- layouts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("workdir", ["/srv/work/deep", "/work"], ids=["spliced-dir", "spliced-root"])
def test_workdir_missing_from_the_tree(bwrap_rootfs: str, run_id: str, workdir: str) -> None:
    with BwrapSandbox(SandboxConfig(image=bwrap_rootfs, run_id=run_id, workdir=workdir)) as sandbox:
        assert sandbox.run("pwd && touch made && echo ok").output == f"{workdir}\nok\n"
        parent = os.path.dirname(workdir)
        assert sandbox.run(f"touch {parent}/nope").exit_code != 0  # the splice is read-only
        listing = sandbox.run("ls /").output.split()
        assert {"usr", "etc", "tmp", "testbed"} <= set(listing)
        assert sandbox.run("python3 -c 'print(42)'").output == "42\n"
        sandbox.write_file(f"{workdir}/direct.txt", b"d")
        assert sandbox.read_file("direct.txt") == b"d"
    assert not os.path.exists(os.path.join(bwrap_rootfs, workdir.lstrip("/")))  # the tree is untouched


def test_image_content_at_the_workdir_is_a_writable_copy(bwrap_rootfs: str, run_id: str) -> None:
    config = SandboxConfig(image=bwrap_rootfs, run_id=run_id, workdir="/etc/cwm-runner")
    with BwrapSandbox(config) as sandbox:
        assert "packages.txt" in sandbox.run("ls").output
        sandbox.run("echo changed > packages.txt")
        assert sandbox.read_file("packages.txt") == b"changed\n"
    assert (Path(bwrap_rootfs) / "etc/cwm-runner/packages.txt").read_text() != "changed\n"


def test_mounts(bwrap_rootfs: str, run_id: str, reachable_tmp: Path) -> None:
    ro, rw = reachable_tmp / "ro", reachable_tmp / "rw"
    ro.mkdir()
    rw.mkdir(mode=0o777)
    rw.chmod(0o777)  # the sandbox's uid writes here
    (ro / "given.txt").write_text("from host\n")
    config = SandboxConfig(
        image=bwrap_rootfs, run_id=run_id, mounts={str(ro): ("/mnt/ro", "ro"), str(rw): ("/data/rw", "rw")}
    )
    with BwrapSandbox(config) as sandbox:
        assert sandbox.read_file("/mnt/ro/given.txt") == b"from host\n"
        assert sandbox.run("touch /mnt/ro/x").exit_code != 0
        sandbox.write_file("/data/rw/out.txt", b"to host")
    assert (rw / "out.txt").read_bytes() == b"to host"


def test_rootfs_tarball_round_trip(bwrap_rootfs: str, run_id: str, reachable_tmp: Path) -> None:
    if os.geteuid() != 0 and Path(bwrap_rootfs).stat().st_uid != os.getuid():
        pytest.skip("packing a tree needs to read all of it: done as root, or by the tree's owner")
    tarball = pack_rootfs(Path(bwrap_rootfs), reachable_tmp / "rootfs.tar")
    cache = reachable_tmp / "cache"
    unpacked = ensure_rootfs(tarball, cache_dir=cache)
    assert ensure_rootfs(tarball, cache_dir=cache) == unpacked  # once
    assert read_meta(unpacked) == read_meta(Path(bwrap_rootfs))
    with BwrapSandbox(SandboxConfig(image=str(unpacked), run_id=run_id)) as sandbox:
        assert sandbox.run("echo $LANG $PYTHONDONTWRITEBYTECODE; pwd").output == "C.UTF-8 1\n/testbed\n"


# -- the agent's tools over this backend -----------------------------------------------------------


def test_tools_edit_create_submit(box: BwrapSandbox) -> None:
    def block(search: str, replace: str) -> str:
        return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"

    setup = run_tool(
        "bash", box,
        "mkdir -p /testbed/tools && cd /testbed/tools && git init -q repo && cd repo && printf 'a = 1\\n' > m.py"
        " && git add m.py && git -c user.name=t -c user.email=t@example.com commit -qm init && echo ok",
    )
    assert setup.feedback == "ok\n"
    assert run_tool("edit", box, "m.py\n" + block("a = 1", "a = 2")).success
    assert run_tool("create", box, "n.py\nb = 3\n").feedback == "File created successfully at: n.py (2 lines).\n"
    assert run_tool("create", box, "n.py\nagain").feedback.startswith("n.py already exists")
    missing = run_tool("create", box, "nope/x.py\nx")
    assert missing.feedback == "File creation failed. The parent directory /testbed/tools/repo/nope does not exist.\n"
    run_tool("bash", box, "git add -N n.py && git diff > ../fix.diff")
    result = run_tool("submit", box, "../fix.diff\n")
    patch = box.read_file("/testbed/tools/fix.diff").decode()
    assert patch.startswith("diff --git a/m.py b/m.py\n") and "+b = 3" in patch
    assert result.submission == patch and result.success
    timed_out = run_tool("bash", box, "sleep 5") if box.config.timeout_s < 5 else None
    assert timed_out is None or timed_out.timed_out
    box.run("cd /testbed")

"""What the model observes through the bash session, for every backend (see conftest.BACKENDS).

Tests that leave the session intact share one sandbox per module; those that kill or restart the
session share another, and each sets up the state it checks.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from pathlib import Path

import pytest

from sandbox.base import Limits, Sandbox
from sandbox.session import prune_git_history_script

WORKDIR = "/testbed"


def proc_status_bytes(field: str) -> int:
    """A `kB` field of this test process's /proc/self/status, in bytes (no psutil needed)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def live_processes(sandbox: Sandbox) -> list[str]:
    """Command lines of the sandbox's processes, zombies excluded (they are already dead)."""
    out = sandbox.run("ps -eo stat=,args=").output
    return [line.split(None, 1)[1] for line in out.splitlines() if line.split() and not line.startswith("Z")]


@pytest.fixture(scope="module")
def restartable(sandbox_factory) -> Sandbox:
    """Shared by the tests that kill the session on purpose."""
    return sandbox_factory()


# -- state and syntax ------------------------------------------------------------------------------


def test_state_persists_across_calls(sandbox: Sandbox) -> None:
    assert sandbox.run("mkdir -p /tmp/state/sub && cd /tmp/state/sub").exit_code == 0
    assert sandbox.cwd == "/tmp/state/sub"
    sandbox.run("export GREETING='hello world'")
    sandbox.run("shout() { echo \"${1^^}!\"; }")
    sandbox.run("declare -A colour=([sky]=blue [grass]=green); declare -i n=41; n+=1")
    result = sandbox.run('pwd; echo "$GREETING"; shout quiet; echo "${colour[sky]} $n"')
    assert result.output == "/tmp/state/sub\nhello world\nQUIET!\nblue 42\n"
    assert result.cwd == "/tmp/state/sub"
    sandbox.run(f"cd {WORKDIR}")


def test_cwd_reported_after_every_command(sandbox: Sandbox) -> None:
    result = sandbox.run("mkdir -p '/tmp/dir with space' && cd '/tmp/dir with space'")
    assert result.cwd == "/tmp/dir with space" == sandbox.cwd
    assert sandbox.run("cd /").cwd == "/"
    sandbox.run(f"cd {WORKDIR}")


def test_multiline_script_heredoc_and_operators(sandbox: Sandbox) -> None:
    command = (
        "# a comment line\n"
        "cat > /tmp/heredoc.txt <<'EOF'\n"
        "literal $HOME `not run` \\n\n"
        "EOF\n"
        "for i in 1 2; do\n"
        "  echo \"line $i\"  # trailing comment\n"
        "done\n"
        "true && echo and; false || echo or; echo semi ; cat /tmp/heredoc.txt\n"
    )
    result = sandbox.run(command)
    assert result.output == "line 1\nline 2\nand\nor\nsemi\nliteral $HOME `not run` \\n\n"
    assert result.exit_code == 0


def test_command_text_is_literal(sandbox: Sandbox) -> None:
    # Quotes, backslashes, a line that looks like a heredoc end, `$`, tabs and a final backslash.
    tricky = "printf '%s\\n' 'a\\tb' \"$((6*7))\" 'EOF' '$(id)'\necho '\t<tab'"
    result = sandbox.run(tricky)
    assert result.output == "a\\tb\n42\nEOF\n$(id)\n\t<tab\n"


def test_empty_and_comment_only_commands(sandbox: Sandbox) -> None:
    for command in ["", "\n", "   ", "# nothing to do"]:
        result = sandbox.run(command)
        assert (result.output, result.exit_code, result.failed_session) == ("", 0, False)


def test_output_is_exact(sandbox: Sandbox) -> None:
    assert sandbox.run("printf 'no newline'").output == "no newline"
    assert sandbox.run("printf 'two\\n\\n'").output == "two\n\n"
    assert sandbox.run("printf '  padded  '").output == "  padded  "
    assert sandbox.run("echo héllo ✓").output == "héllo ✓\n"
    assert sandbox.run("printf 'a\\r\\nb'").output == "a\r\nb"


def test_stderr_is_merged_in_order(sandbox: Sandbox) -> None:
    result = sandbox.run("echo out1; echo err1 >&2; echo out2; ls /no/such/path")
    assert result.output.startswith("out1\nerr1\nout2\nls: cannot access '/no/such/path'")
    assert result.exit_code == 2


def test_exit_codes(sandbox: Sandbox) -> None:
    assert sandbox.run("true").exit_code == 0
    assert sandbox.run("false").exit_code == 1
    assert sandbox.run("(exit 42)").exit_code == 42
    assert sandbox.run("bash -c 'kill -TERM $$'").exit_code == 143
    assert sandbox.run("no-such-command-xyz").exit_code == 127


def test_syntax_error_leaves_session_alive(sandbox: Sandbox) -> None:
    result = sandbox.run("echo 'unterminated")
    assert result.exit_code == 2 and not result.failed_session
    assert "unexpected EOF" in result.output
    assert sandbox.run("if then fi").exit_code == 2
    assert sandbox.run("echo fine").output == "fine\n"


def test_commands_reading_stdin_get_eof(sandbox: Sandbox) -> None:
    # With a 20 s timeout, a command that waited for input would come back timed out.
    for command, output in [
        ("cat", ""),
        ('read x; echo "rc=$? x=[$x]"', "rc=1 x=[]\n"),
        ("python3 -c 'input()' 2>&1 | tail -1", "EOFError: EOF when reading a line\n"),
    ]:
        result = sandbox.run(command, timeout_s=20)
        assert not result.timed_out
        assert result.output == output


def test_binary_output_is_decoded_with_replacement(sandbox: Sandbox) -> None:
    result = sandbox.run("head -c 1000 /dev/urandom")
    assert not result.failed_session and result.exit_code == 0
    assert isinstance(result.output, str) and len(result.output) > 0
    assert sandbox.run("printf 'A\\xff\\xfeB\\x00C'").output == "A\ufffd\ufffdB\x00C"


def test_background_job_does_not_block(sandbox: Sandbox) -> None:
    result = sandbox.run("sleep 60 >/dev/null 2>&1 & echo started", timeout_s=20)
    assert result.output == "started\n" and not result.timed_out
    sandbox.run("kill %1; wait")


# -- start-up script -------------------------------------------------------------------------------


def test_startup_script_runs_at_every_session_start(sandbox_factory) -> None:
    sandbox = sandbox_factory(
        env={"PROJECT_FLAG": "it's set"},
        startup_extra="alias ll='ls -l'\nexport FROM_EXTRA=yes",
        workdir="/srv/work",
    )
    check = 'echo "$LANG $LC_ALL|$PROJECT_FLAG|$FROM_EXTRA"; pwd'
    expected = "C.UTF-8 C.UTF-8|it's set|yes\n/srv/work\n"
    assert sandbox.run(check).output == expected
    sandbox.run("cd /tmp; export PROJECT_FLAG=changed")
    sandbox.restart_session()
    assert sandbox.cwd == "/srv/work"
    assert sandbox.run(check).output == expected
    sandbox.close()


def test_startup_script_applies_ulimits(sandbox_factory) -> None:
    sandbox = sandbox_factory(limits=Limits(ulimit_virtual_kib=4_000_000, ulimit_processes=500))
    assert sandbox.run("ulimit -v; ulimit -u").output == "4000000\n500\n"
    sandbox.close()


# -- timeouts, overflow, dying sessions ------------------------------------------------------------


def test_timeout_kills_everything_and_restarts(restartable: Sandbox) -> None:
    restartable.run("cd /tmp && export MARK=before")
    restartable.run("(sleep 31 >/dev/null 2>&1 &)")  # a detached straggler must die too
    result = restartable.run("echo partial; sleep 30", timeout_s=2)
    assert result.timed_out and result.exit_code is None and result.failed_session
    assert result.cwd == WORKDIR == restartable.cwd
    follow = restartable.run('pwd; echo "[$MARK]"')
    assert follow.output == f"{WORKDIR}\n[]\n" and follow.exit_code == 0
    assert not [p for p in live_processes(restartable) if p.startswith(("sleep 30", "sleep 31"))]


def test_per_call_timeout_overrides_default(sandbox_factory) -> None:
    sandbox = sandbox_factory(timeout_s=1.0)
    assert sandbox.run("sleep 3", timeout_s=20).exit_code == 0
    assert sandbox.run("sleep 5").timed_out
    sandbox.close()


def test_endless_output_overflows_and_restarts(restartable: Sandbox) -> None:
    restartable.run("cd /tmp")
    result = restartable.run("yes")
    assert result.overflowed and result.exit_code is None
    assert 0 < len(result.output.encode()) <= restartable.config.output_limit_bytes
    assert restartable.cwd == WORKDIR
    assert restartable.run("echo ok").output == "ok\n"
    assert not [p for p in live_processes(restartable) if p.startswith("yes")]


def test_gigabyte_output_keeps_host_memory_flat(restartable: Sandbox) -> None:
    restartable.run("yes | head -c 1000000 >/dev/null")  # warm up buffers before measuring
    peak_before = proc_status_bytes("VmHWM")
    result = restartable.run("head -c 1000000000 /dev/zero | tr '\\0' x")
    peak_after = proc_status_bytes("VmHWM")
    assert result.overflowed
    assert result.output == "x" * len(result.output)
    assert peak_after - peak_before < 8 * 1024 * 1024, (peak_before, peak_after)
    assert restartable.run("echo ok").output == "ok\n"


def test_output_just_under_limit_is_kept(sandbox_factory) -> None:
    sandbox = sandbox_factory(output_limit_bytes=10_000)
    result = sandbox.run("head -c 9999 /dev/zero | tr '\\0' y")
    assert not result.overflowed and result.output == "y" * 9999
    assert sandbox.run("head -c 10001 /dev/zero").overflowed
    sandbox.close()


def test_exit_ends_session_and_a_fresh_one_starts(restartable: Sandbox) -> None:
    restartable.run("cd /tmp; KEPT=1")
    result = restartable.run("echo bye; exit 3")
    assert result.session_died and not result.timed_out and not result.overflowed
    assert result.output == "bye\n"
    assert restartable.cwd == WORKDIR
    assert restartable.run('echo "[$KEPT]"; pwd').output == f"[]\n{WORKDIR}\n"


def test_explicit_restart_resets_state(restartable: Sandbox) -> None:
    restartable.run("cd /tmp; export GONE=1")
    restartable.restart_session()
    assert restartable.cwd == WORKDIR
    assert restartable.run('echo "[$GONE]"').output == "[]\n"


def test_interrupted_call_restarts_before_the_next(restartable: Sandbox) -> None:
    """An exception mid-command (Ctrl-C in real life) leaves the session unknown: start afresh."""

    class Interrupted(Exception):
        pass

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        restartable.run("cd /tmp")
        timer.start()
        with pytest.raises(Interrupted):
            restartable.run("sleep 30", timeout_s=60)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert restartable.run("pwd").output == f"{WORKDIR}\n"
    assert not [p for p in live_processes(restartable) if p.startswith("sleep 30")]


# -- files ---------------------------------------------------------------------------------------


def test_read_write_round_trip_binary(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * 64 + b"\x00tail without newline"
    sandbox.write_file("/tmp/blob.bin", data)
    assert sandbox.read_file("/tmp/blob.bin") == data
    assert sandbox.run("stat -c %s /tmp/blob.bin").output == f"{len(data)}\n"
    sandbox.write_file("/tmp/empty", b"")
    assert sandbox.read_file("/tmp/empty") == b""


def test_write_file_mode_and_overwrite(sandbox: Sandbox) -> None:
    sandbox.write_file("/tmp/tool.sh", b"#!/bin/sh\necho tool\n", mode=0o755)
    assert sandbox.run("/tmp/tool.sh").output == "tool\n"
    sandbox.write_file("/tmp/tool.sh", b"#!/bin/sh\necho edited\n")  # an edit keeps the mode
    assert sandbox.run("stat -c %a /tmp/tool.sh; /tmp/tool.sh").output == "755\nedited\n"


@pytest.mark.parametrize("size", [100, 300_000], ids=["inline", "uploaded"])
def test_write_follows_symlinks_and_keeps_mode(sandbox: Sandbox, size: int) -> None:
    sandbox.run("rm -rf /tmp/wl && mkdir /tmp/wl && echo old > /tmp/wl/real && chmod 751 /tmp/wl/real"
                " && ln -s real /tmp/wl/link")
    data = b"n" * size
    sandbox.write_file("/tmp/wl/link", data, mode=0o600)
    assert sandbox.run("stat -c '%F %a %s' /tmp/wl/link /tmp/wl/real").output == (
        f"symbolic link 777 4\nregular file 751 {size}\n"
    )
    assert sandbox.read_file("/tmp/wl/real") == data
    assert sandbox.run("ls -A /tmp | grep -c cwm-upload").output == "0\n"  # no temporary left


def test_large_file_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # beyond the session fast path in both directions
    sandbox.write_file("/tmp/large.bin", data)
    assert sandbox.run("stat -c %s /tmp/large.bin").output == f"{len(data)}\n"
    assert sandbox.read_file("/tmp/large.bin") == data


def test_relative_paths_use_session_cwd(sandbox: Sandbox) -> None:
    sandbox.run("mkdir -p /tmp/rel/inner && cd /tmp/rel")
    sandbox.write_file("inner/note.txt", b"relative\n")
    assert sandbox.run("cat /tmp/rel/inner/note.txt").output == "relative\n"
    assert sandbox.read_file("inner/note.txt") == b"relative\n"
    sandbox.run("ln -sf inner/note.txt link")
    assert sandbox.read_file("link") == b"relative\n"
    sandbox.run(f"cd {WORKDIR}")


def test_file_errors(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/tmp/definitely-missing")
    with pytest.raises(FileNotFoundError):
        sandbox.write_file("/tmp/no-such-dir/file", b"x")
    with pytest.raises(IsADirectoryError):
        sandbox.read_file("/tmp")
    sandbox.run("ln -sf /nowhere /tmp/dangling")
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/tmp/dangling")


def test_copy_in_and_out_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "project"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("print('hi')\n")
    (src / "data.bin").write_bytes(bytes(range(256)))
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    sandbox.copy_in(src, "/tmp/in/deeper")
    listing = sandbox.run("cd /tmp/in/deeper/project && find . -type f | sort && ./run.sh && stat -c %U pkg/mod.py")
    assert listing.output == "./data.bin\n./pkg/mod.py\n./run.sh\nran\nroot\n"
    single = tmp_path / "single.txt"
    single.write_bytes(b"one file")
    sandbox.run("cd /tmp/in")
    sandbox.copy_in(single, "rel")  # relative to the session's cwd
    assert sandbox.read_file("/tmp/in/rel/single.txt") == b"one file"

    sandbox.run("cd /tmp/in/deeper && echo changed >> project/pkg/mod.py")
    out = tmp_path / "out"
    sandbox.copy_out("project", out)
    assert (out / "project" / "pkg" / "mod.py").read_text() == "print('hi')\nchanged\n"
    assert (out / "project" / "data.bin").read_bytes() == bytes(range(256))
    assert os.access(out / "project" / "run.sh", os.X_OK)
    sandbox.copy_out("/tmp/in/rel/single.txt", out)
    assert (out / "single.txt").read_bytes() == b"one file"
    with pytest.raises(FileNotFoundError):
        sandbox.copy_out("/tmp/in/missing", out)
    sandbox.run(f"cd {WORKDIR}")


def test_copy_out_skips_links_escaping_the_destination(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.run("mkdir -p /tmp/evil && ln -sf /etc/passwd /tmp/evil/abs && ln -sf ../../x /tmp/evil/up"
                " && echo ok > /tmp/evil/fine")
    sandbox.copy_out("/tmp/evil", tmp_path)
    assert (tmp_path / "evil" / "fine").read_text() == "ok\n"
    assert not (tmp_path / "evil" / "abs").exists() and not (tmp_path / "evil" / "abs").is_symlink()
    assert not (tmp_path / "evil" / "up").is_symlink()


# -- git history pruning -------------------------------------------------------------------------


def test_prune_git_history_removes_the_future(sandbox: Sandbox) -> None:
    repo = f"/tmp/repo-{secrets.token_hex(3)}"
    setup = f"""
set -e
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.invalid GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.invalid
git init -q -b main {repo} && cd {repo}
echo one > f && git add f && git commit -qm one && git tag v1
echo two > f && git commit -qam two
git checkout -q -b future && echo fix > f && git commit -qam 'the fix'
git tag v2-future && git tag -a -m annotated v2-annotated
git notes add -m 'note on the fix'
git remote add origin https://example.invalid/repo.git && git update-ref refs/remotes/origin/main HEAD
git checkout -q main && echo wip > f && git stash -q && echo dirty > untracked.txt && echo local >> f
git branch -q --set-upstream-to=future main
git rev-parse future > /tmp/future-sha; git rev-parse HEAD > /tmp/head-sha
"""
    sandbox.run(f"cd {WORKDIR}")
    created = sandbox.run(f"( {setup} )")
    assert created.exit_code == 0, created.output
    future = sandbox.run("cat /tmp/future-sha").output.strip()
    head = sandbox.run("cat /tmp/head-sha").output.strip()
    assert sandbox.run(f"git -C {repo} cat-file -e {future}").exit_code == 0  # it exists before

    result = sandbox.run(prune_git_history_script(repo), timeout_s=120)
    assert result.exit_code == 0, result.output
    assert sandbox.cwd == WORKDIR  # the script's `cd` stays in its subshell

    refs = sandbox.run(f"git -C {repo} for-each-ref --format='%(refname)'").output.split()
    assert refs == ["refs/heads/main", "refs/tags/v1"]
    assert sandbox.run(f"git -C {repo} rev-parse HEAD").output.strip() == head
    assert sandbox.run(f"git -C {repo} cat-file -e {future}").exit_code != 0
    assert sandbox.run(f"git -C {repo} remote; git -C {repo} stash list; git -C {repo} reflog --all").output == ""
    assert sandbox.run(f"git -C {repo} rev-list --all --reflog | sort").output.split() == sorted(
        sandbox.run(f"git -C {repo} rev-list HEAD").output.split()
    )
    assert sandbox.run(f"grep -rl {future} {repo}/.git").output == ""
    assert sandbox.run(f"git -C {repo} config --get-regexp '^branch[.]' || true").output == ""  # no upstream
    # The working tree is untouched.
    assert sandbox.run(f"cat {repo}/f {repo}/untracked.txt").output == "two\nlocal\ndirty\n"

"""The persistent bash session of a sandbox, driven over any duplex byte channel.

A backend only has to start `/bin/bash --noprofile --norc` with a byte channel to it (`ShellHost.
open_shell`; the start-up script sources ~/.bashrc itself, where CWM's does) and be able to kill
every process of the sandbox (`ShellHost.kill_all`); everything that makes the session behave like
CWM's harness lives here, so the Docker and bubblewrap backends behave identically. Per command we
send (D = random per-session heredoc delimiter, A/B/C/Z = halves of the random per-session sentinel
markers):

    IFS= builtin read -r -d '' __cwm_cmd <<'D' || :
    <the command, byte for byte>
    D
    __cwm_status "$__cwm_rc"; { builtin eval "$__cwm_cmd"
    } </dev/null; __cwm_rc=$?; builtin printf '\\036CWM%s%s:%d %s:%s%s\\036\\n' A B "$__cwm_rc" "$PWD" C Z

(the runner's own commands omit `__cwm_rc=$?;` and print `$?`, so the model's `$?` survives them)

The quoted heredoc keeps the text literal (no expansion, no escaping), `read` and `eval` are builtins
so no process is spawned per command, the `{ ...; }` group runs in the session shell so state
persists, and `</dev/null` makes commands that read stdin see EOF at once. The sentinel line
`\\x1eCWM<A><B>:<rc> <pwd>:<C><Z>\\x1e` carries `$?` and `$PWD`; each marker is printed from two
halves so that `set -x` traces and the command text never contain it whole. Everything before
the sentinel is the output, byte for byte. The first line ever sent is `exec 2>&1`, which merges
stderr into stdout inside the shell, so their interleaving is exact.

On timeout or too much output every process is killed (`kill_all`) and a fresh shell runs the
start-up script again; the same happens when the shell exits by itself.
"""

from __future__ import annotations

import errno
import posixpath
import re
import secrets
import select
import shlex
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from sandbox.base import CommandResult, Limits, SandboxConfig, SandboxError

log = structlog.get_logger()

SHELL_ARGV: tuple[str, ...] = ("/bin/bash", "--noprofile", "--norc")
# $PWD is at most PATH_MAX; the sentinel adds markers and the exit status.
_MAX_SENTINEL_BYTES = 4096 + 128
_STARTUP_TIMEOUT_S = 60.0


class ChannelTimeout(Exception):
    """`Channel.recv` reached its deadline with nothing to return."""


class Channel(Protocol):
    """A duplex byte stream to the shell: its stdin one way, stdout+stderr the other."""

    def send(self, data: bytes, deadline: float) -> None:
        """Write all of `data`; raise ChannelTimeout if `deadline` (time.monotonic()) passes."""

    def recv(self, deadline: float) -> bytes:
        """Next chunk of output; b"" once the shell has gone; ChannelTimeout at `deadline`."""

    def close(self) -> None:
        """Release the stream; the shell sees EOF on its stdin (idempotent)."""


RECV_BYTES = 256 * 1024  # one read's worth of shell output


class DeadlineChannel:
    """The deadline-bounded send and receive loops every backend's `Channel` needs.

    Backends differ only in how one non-blocking write or read is done (a socket, a pipe) and in
    framing (Docker multiplexes stdout and stderr), so they provide `_write`, `_read` and, where
    needed, `_payload`; the waiting, the deadline and "the shell is gone" live here once. Both file
    descriptors must be non-blocking.
    """

    _write_fd: Any
    _read_fd: Any

    def _write(self, view: memoryview) -> int:
        raise NotImplementedError

    def _read(self) -> bytes:
        raise NotImplementedError

    def _payload(self, data: bytes) -> bytes:
        """The shell's bytes in `data` (b"" if it held only framing)."""
        return data

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelTimeout()
            try:
                _, writable, _ = select.select([], [self._write_fd], [], remaining)
            except (ValueError, OSError):
                return  # closed under us by close() from another thread: recv() reports EOF
            if not writable:
                raise ChannelTimeout()
            try:
                view = view[self._write(view):]
            except BlockingIOError:
                continue
            except OSError:
                return  # the shell is gone (broken pipe, reset): recv() reports it as EOF

    def recv(self, deadline: float) -> bytes:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelTimeout()
            try:
                readable, _, _ = select.select([self._read_fd], [], [], remaining)
            except (ValueError, OSError):
                return b""  # closed under us by close() from another thread
            if not readable:
                raise ChannelTimeout()
            try:
                data = self._read()
            except BlockingIOError:
                continue
            except OSError:
                return b""
            if not data:
                return b""
            payload = self._payload(data)
            if payload:
                return payload


class ShellHost(Protocol):
    """What a backend provides to a session."""

    def open_shell(self, argv: tuple[str, ...]) -> Channel:
        """Start `argv` (a bash) in the sandbox's working directory and return a channel to it."""

    def kill_all(self) -> None:
        """SIGKILL every process of the session (and anything it left behind), keeping the sandbox."""


@dataclass
class RawOutcome:
    """What `BashSession.execute` read for one command, before decoding."""

    output: bytes
    exit_code: int | None
    cwd: str | None
    duration_s: float
    timed_out: bool = False
    overflowed: bool = False
    session_died: bool = False

    @property
    def ok(self) -> bool:
        return not (self.timed_out or self.overflowed or self.session_died)


# CWM exports en_US.UTF-8 (SWE-bench's images install every locale); an image without it (the project's
# own base image) gets C.UTF-8, because naming a missing locale makes perl, bash and others warn on
# every call instead of falling back quietly.
LOCALE_SETUP = ("if locale -a 2>/dev/null | grep -qiE '^en_US\\.utf-?8$'; then __cwm_locale=en_US.UTF-8; "
                'else __cwm_locale=C.UTF-8; fi; export LC_ALL="$__cwm_locale" LANG="$__cwm_locale"; '
                "unset __cwm_locale")
# The image's own environment (SWE-bench's images activate their conda env `testbed` only here); an
# image without a ~/.bashrc starts the same, without it.
BASHRC_SETUP = "if [ -f ~/.bashrc ]; then source ~/.bashrc; fi"


def cwm_start_line(limits: Limits) -> str:
    """CWM's `SESSION_START_SCRIPT_BASE` (`cwm/rl/swerl/default_configs.py`) as one line, as CWM writes it:
    locale, `source ~/.bashrc`, `ulimit -v`, `-d`, `-u`. Joined with `;` rather than CWM's `&&`, so an
    image without a ~/.bashrc or a sandbox whose hard limit is already lower still gets the rest.

    One line on purpose: bash numbers the lines it reads over the whole session, and its error messages
    show that number (`bash: eval: line 37: syntax error`), so the start-up script's line count is part
    of what the model sees, and recordings made before this script existed replay only if it stays."""
    parts = [LOCALE_SETUP, BASHRC_SETUP]
    for flag, value in (("-v", limits.ulimit_virtual_kib), ("-d", limits.ulimit_data_kib),
                        ("-u", limits.ulimit_processes)):
        if value is not None:
            parts.append(f"ulimit {flag} {int(value)}")
    return "; ".join(parts)


def startup_script(config: SandboxConfig) -> str:
    """The start-up script run at every session start, before the model's first command and never shown
    to it: CWM's start line (`cwm_start_line`), then the sandbox's own variables and extra lines, then
    `cd` to the workdir as CWM's backend appends it (protocol section 6). The trajectory header records
    this text (`Header.start_script`)."""
    lines = [cwm_start_line(config.limits)]
    for name, value in config.env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SandboxError(f"invalid environment variable name {name!r}: use letters, digits and _")
        lines.append(f"export {name}={shlex.quote(value)}")
    if config.startup_extra.strip():
        lines.append(config.startup_extra)
    lines.append(f"cd -- {shlex.quote(config.workdir)}")
    return "\n".join(lines) + "\n"


class BashSession:
    """One persistent bash; not thread-safe (the sandbox serialises calls)."""

    def __init__(self, host: ShellHost, config: SandboxConfig) -> None:
        self._host = host
        self._config = config
        self._channel: Channel | None = None
        self._pending = b""  # bytes read past the last sentinel (late background output)
        self._cwd = config.workdir
        self._broken = False
        self._new_secrets()

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_secrets(self) -> None:
        """Fresh delimiter and sentinel per shell, so nothing from an old shell can match."""
        self._delim = "CWM_EOF_" + secrets.token_hex(12)
        halves = [secrets.token_hex(8) for _ in range(4)]
        self._marks = halves
        self._start = ("\x1eCWM" + halves[0] + halves[1] + ":").encode()
        self._end = (":" + halves[2] + halves[3] + "\x1e\n").encode()
        self._sentinel_re = re.compile(
            re.escape(self._start) + rb"(\d+) (.*?)" + re.escape(self._end), re.DOTALL
        )

    def start(self) -> None:
        """Open a shell and run the start-up script; raises SandboxError if the shell can't start."""
        self._new_secrets()
        self._pending = b""
        self._channel = self._host.open_shell(SHELL_ARGV)
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        # Merge stderr into stdout inside the shell itself, so their order is exact.
        # `__cwm_status` restores the model's last exit status before each of its commands, so the
        # runner's own commands in between (file reads, diff stats) leave `$?` as bash would.
        self._channel.send(b'exec 2>&1; __cwm_rc=0; __cwm_status() { return "$1"; }\n', deadline)
        self._broken = False
        outcome = self.execute(startup_script(self._config), timeout_s=_STARTUP_TIMEOUT_S, restart=False)
        if not outcome.ok:
            raise SandboxError(
                "the sandbox shell did not start (start-up script "
                f"{'timed out' if outcome.timed_out else 'failed'}): check the image has /bin/bash; "
                f"output: {outcome.output[-500:].decode(errors='replace')!r}"
            )
        if outcome.exit_code:
            log.warning(
                "sandbox.startup_script_failed",
                exit_code=outcome.exit_code,
                output=outcome.output[-2000:].decode(errors="replace"),
            )
        self._broken = False

    def restart(self) -> None:
        """Kill every process of the session and start a fresh shell (cwd back to the workdir).

        The old channel is closed before the kill: a backend may block delivering output we stopped
        reading (Docker does, and then never reports the kill's own exit).
        """
        self._close_channel()
        self._host.kill_all()
        self._cwd = self._config.workdir
        self.start()

    def close(self) -> None:
        self._close_channel()

    def _close_channel(self) -> None:
        if self._channel is not None:
            try:
                self._channel.close()
            finally:
                self._channel = None

    @property
    def cwd(self) -> str:
        return self._cwd

    # -- commands ----------------------------------------------------------------------------

    def run(self, command: str, timeout_s: float | None = None, aside: bool = False) -> CommandResult:
        """Run one command; restarts the session after a timeout, overflow or exit.

        `aside` marks the runner's own commands: the model's `$?` is kept for its next command.
        """
        outcome = self.execute(command, timeout_s=timeout_s, aside=aside)
        return CommandResult(
            output=outcome.output.decode("utf-8", errors="replace"),
            exit_code=outcome.exit_code,
            duration_s=outcome.duration_s,
            timed_out=outcome.timed_out,
            overflowed=outcome.overflowed,
            session_died=outcome.session_died,
            cwd=self._cwd,
        )

    def execute(
        self,
        command: str,
        timeout_s: float | None = None,
        output_limit: int | None = None,
        restart: bool = True,
        aside: bool = False,
    ) -> RawOutcome:
        """Send `command`, read up to its sentinel; on failure restart (unless `restart=False`)."""
        if self._broken or self._channel is None:
            # An earlier call was interrupted mid-command (e.g. KeyboardInterrupt): state unknown.
            log.warning("sandbox.session_restart_after_interrupt")
            self.restart()
        timeout = self._config.timeout_s if timeout_s is None else timeout_s
        limit = self._config.output_limit_bytes if output_limit is None else output_limit
        started = time.monotonic()
        deadline = started + timeout
        self._broken = True  # cleared below only if we got through the protocol cleanly
        try:
            outcome = self._exchange(command, deadline, limit, started, aside)
        except ChannelTimeout:
            outcome = RawOutcome(b"", None, None, time.monotonic() - started, timed_out=True)
        if outcome.ok:
            self._broken = False
            self._cwd = outcome.cwd or self._cwd
        elif restart:
            log.info(
                "sandbox.session_restart",
                timed_out=outcome.timed_out,
                overflowed=outcome.overflowed,
                session_died=outcome.session_died,
            )
            self.restart()
        return outcome

    def _frame(self, command: str, aside: bool = False) -> bytes:
        """The exact bytes sent for one command (see the module docstring)."""
        if "\x00" in command:
            command = command.replace("\x00", "")  # bash cannot hold NUL bytes in a string
        a, b, c, z = self._marks
        body = command if command.endswith("\n") else command + "\n"
        text = (
            f"IFS= builtin read -r -d '' __cwm_cmd <<'{self._delim}' || :\n"
            f"{body}"
            f"{self._delim}\n"
            '__cwm_status "$__cwm_rc"; { builtin eval "$__cwm_cmd"\n'
            "} </dev/null; "
            + ("" if aside else "__cwm_rc=$?; ")
            + "builtin printf '\\036CWM%s%s:%d %s:%s%s\\036\\n' "
            + f'{a} {b} "{"$?" if aside else "$__cwm_rc"}" "$PWD" {c} {z}\n'
        )
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # lone surrogates that did not come from undecodable bytes
            return text.encode("utf-8", errors="replace")

    def _exchange(self, command: str, deadline: float, limit: int, started: float, aside: bool) -> RawOutcome:
        assert self._channel is not None
        self._channel.send(self._frame(command, aside), deadline)
        buf = bytearray(self._pending)
        self._pending = b""
        scan_from = 0
        # Memory stays bounded: never more than limit + one sentinel + one chunk.
        cap = limit + _MAX_SENTINEL_BYTES
        while True:
            match = self._sentinel_re.search(buf, scan_from)
            if match is not None:
                output = bytes(buf[: match.start()])
                self._pending = bytes(buf[match.end() :])
                elapsed = time.monotonic() - started
                cwd = match.group(2).decode("utf-8", errors="replace")
                if len(output) > limit:
                    return RawOutcome(output[:limit], None, None, elapsed, overflowed=True)
                return RawOutcome(output, int(match.group(1)), cwd, elapsed)
            if len(buf) > cap:
                return RawOutcome(bytes(buf[:limit]), None, None, time.monotonic() - started, overflowed=True)
            scan_from = max(0, len(buf) - _MAX_SENTINEL_BYTES)
            try:
                chunk = self._channel.recv(deadline)
            except ChannelTimeout:
                return RawOutcome(bytes(buf[:limit]), None, None, time.monotonic() - started, timed_out=True)
            if not chunk:
                return RawOutcome(bytes(buf[:limit]), None, None, time.monotonic() - started, session_died=True)
            buf += chunk


def overwrite_script(target: str, mode: int, source: str) -> str:
    """One line of bash that writes the output of the command `source` over `target`, as
    `open(path, "wb")` would: following symlinks, keeping an existing file's inode and mode, creating
    a new file with `mode`. It prints N (no parent directory), D (a directory is there) or O (written);
    anything else is the shell's error message (see `overwrite_succeeded`)."""
    q, parent = shlex.quote(target), shlex.quote(posixpath.dirname(target) or "/")
    return (
        f"if [ ! -d {parent} ]; then builtin printf N; elif [ -d {q} ]; then builtin printf D; "
        f"else {{ [ -e {q} ] || {{ : > {q} && command -p chmod {mode:o} -- {q}; }}; }} && "
        f"{source} > {q} && builtin printf O; fi"
    )


def overwrite_succeeded(target: str, out: bytes | None) -> bool:
    """What `overwrite_script` printed: True when written; raises for a missing parent directory or a
    directory in the way (the errors `open` would raise); False otherwise (the caller decides)."""
    if out == b"N":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", posixpath.dirname(target) or "/")
    if out == b"D":
        raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
    return out is not None and out.endswith(b"O")


def _prune_refs_lines(repo: str) -> str:
    """The ref half of `prune_git_history_script`: every step but the final repack."""
    return f"""set -eu
cd -- {shlex.quote(repo)}
git rev-parse --verify -q HEAD >/dev/null
for remote in $(git remote); do git remote remove "$remote"; done
keep=$(git for-each-ref --merged HEAD --format='%(refname)')
git for-each-ref --format='%(refname)' | while IFS= read -r ref; do
  case $'\\n'"$keep"$'\\n' in *$'\\n'"$ref"$'\\n'*) ;; *) printf 'delete %s\\n' "$ref" ;; esac
done | git update-ref --no-deref --stdin
for branch in $(git for-each-ref --format='%(refname:short)' refs/heads); do
  git branch --unset-upstream "$branch" 2>/dev/null || :
done
gitdir=$(git rev-parse --git-dir)
rm -f -- "$gitdir"/FETCH_HEAD "$gitdir"/ORIG_HEAD "$gitdir"/MERGE_HEAD "$gitdir"/CHERRY_PICK_HEAD "$gitdir"/REVERT_HEAD
git worktree prune
git reflog expire --expire=now --expire-unreachable=now --all"""


def prune_refs_script(repo: str) -> str:
    """Bash that does everything `prune_git_history_script` does except repacking: remotes, refs that are
    not ancestors of HEAD, upstreams, stray heads and reflogs go; the objects stay.

    agent.episode.checkout runs it on the host, on a clone that borrows the source's objects, and then
    packs only what HEAD and the kept refs reach itself (a repack that also takes the borrowed objects,
    which `git gc` would leave behind)."""
    return f"(\n{_prune_refs_lines(repo)}\n)"


def prune_git_history_script(repo: str) -> str:
    """Bash that removes every ref, remote, upstream, stash, reflog entry and object not reachable from HEAD.

    Protocol section 6: the model must not be able to read the fix from the repository's future. The
    steps are those of CWM's `retain_only_current_branch_ancestor_commits` (`cwm/rl/swerl/common.py`:
    remove the remotes, delete the other refs, unset the upstream, expire the reflog, gc with
    prune=now), except that refs whose commits are ancestors of HEAD (e.g. release tags, which
    setuptools-scm and `git describe` need) are kept, as the contract says. Only the object store
    changes: the working tree, untracked and ignored files included, is left as it is. Runs in a
    subshell so `set -e` and `cd` do not leak into the session.

    The repack reuses the packed objects as they are and searches no new deltas (`pack.window=0`): the
    sandbox's copy of the history only has to lose its future, not get smaller, and a delta search over
    large files costs tens of seconds (bench/official_image_bench.py) where copying the pack costs
    seconds.
    """
    return f"""(
{_prune_refs_lines(repo)}
git -c gc.cruftPacks=false -c gc.reflogExpire=now -c gc.reflogExpireUnreachable=now -c pack.window=0 \\
  -c gc.writeCommitGraph=false gc --quiet --prune=now
)"""

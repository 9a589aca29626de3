"""`agent solve --trace-tests`: real execution traces of repository tests, before and after the episode.

Why in the episode's own sandbox: the "before" trace must run the very checkout the model starts
from, and the "after" trace the working tree exactly as the model left it; a second sandbox would
need a second copy of the repository and could drift from the first.

Why it must stay invisible: the trajectory records what the model saw, and the diff what it did.
So every command of the tracer runs `aside` (the model's `$?` is kept) inside a subshell (its
directory, variables and options are kept); pytest writes no cache and no bytecode (the tracer runs
it with `-p no:cacheprovider` and PYTHONDONTWRITEBYTECODE); temporary files go under the tracer's
work directory, which is removed afterwards; and whatever the test itself left in the repository is
undone (`git status` before and after: new paths are cleaned, files changed from a clean state are
checked out again).

A test that cannot be traced (no such test, a tracer bound hit, a broken session, the phase's
budget spent, a test patch that does not apply) is recorded in its `TracedTest` with the reason; it
never ends the episode.

SWE-bench-style instances keep their FAIL_TO_PASS tests in a separate test patch: `test_patch` is
applied for the phase's traces (the files it touches first put back as at HEAD, as graders do) and
undone afterwards, so the model never sees it. Each phase has a `TraceBudget` over all its tests
together (frames, bytes, seconds), so `agent batch --trace-tests all` cannot double an episode.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

import structlog
from pydantic import BaseModel, Field

from agent.worldmodel.frames import Trace
from agent.worldmodel.run import WORK_DIR, TraceError, TraceLimits, TraceResult, split_node_id, trace_test
from agent.worldmodel.tracer import decode_source
from sandbox.base import CommandResult, Sandbox
from traces.schema import TracedTest

log = structlog.get_logger()

TRACES_SUFFIX = ".traces"
TRACE_FILE = "trace.jsonl"
PROMPT_FILE = "prompt.txt"
OUTPUT_FILE = "output.txt"  # the test's own output (pytest's report), first 64 KiB
SOURCES_FILE = "sources.json"  # {file: text} of the traced files other than the test file, as they ran
MAX_SOURCE_FILES = 32
MAX_SOURCE_BYTES = 256 * 1024
BOUNDS = {"max_frames", "max_seconds", "max_bytes"}
Phase = Literal["before", "after"]
Outcome = Literal["passed", "failed", "error", "unknown"]
# git must not rewrite the index while the model is not looking (a refresh changes .git/index).
GIT = "GIT_OPTIONAL_LOCKS=0 git -c core.quotepath=off"
TEST_PATCH = f"{WORK_DIR}/test.patch"
MIN_TEST_SECONDS = 1.0  # less left in a phase's budget than this: the remaining tests are not started


class TraceBudget(BaseModel):
    """Bounds on ALL the tests of one phase (before, or after) of one episode, on top of each test's
    own `TraceLimits`: a test gets the smaller of its limit and what the phase has left, and once a
    bound is spent the phase's remaining tests are recorded as not traced.

    Why per phase and not per episode: a training pair needs the same test before and after, so the
    after phase must not starve because the before phase spent everything. A phase can overrun
    `max_seconds` by one test's kill grace (`run.KILL_GRACE_S`) at most.
    """

    max_frames: int = Field(100_000, ge=1, description="frames of all the phase's traces together")
    max_seconds: float = Field(300.0, gt=0, description="wall clock of the whole phase")
    max_bytes: int = Field(32_000_000, ge=1024, description="trace JSON bytes of all the phase's traces together")


class _Spending:
    """What a phase has used of its budget; hands out each test's limits."""

    def __init__(self, budget: TraceBudget) -> None:
        self.budget = budget
        self.started = time.monotonic()
        self.frames = 0
        self.bytes = 0

    def limits_for(self, limits: TraceLimits) -> tuple[TraceLimits | None, str | None]:
        """(the next test's limits, None) or (None, why the budget allows no more tests)."""
        budget = self.budget
        seconds = budget.max_seconds - (time.monotonic() - self.started)
        left = {"max_frames": budget.max_frames - self.frames, "max_bytes": budget.max_bytes - self.bytes,
                "max_seconds": seconds}
        floor = {"max_frames": 1, "max_bytes": 1024, "max_seconds": MIN_TEST_SECONDS}
        for name, value in left.items():
            if value < floor[name]:
                return None, (f"not traced: the phase's trace budget is spent ({name} "
                              f"{getattr(budget, name):g} for all its tests together)")
        return limits.model_copy(update={name: min(getattr(limits, name), value) for name, value in left.items()}), None

    def spend(self, record: TracedTest, base: Path) -> None:
        self.frames += record.frames
        if record.path is not None:
            try:
                self.bytes += (base / record.path / TRACE_FILE).stat().st_size
            except OSError:
                pass


def check_node_id(node_id: str) -> str:
    """A pytest node id relative to the repository, or ValueError saying what is wrong with it."""
    if not node_id or any(c in node_id for c in "\x00\n\r"):
        raise ValueError(f"--trace-tests {node_id!r}: not a pytest node id")
    try:
        file, _ = split_node_id(node_id)
    except TraceError as error:
        raise ValueError(f"--trace-tests: {error}") from None
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"--trace-tests {node_id!r}: the test file must be a path inside the repository")
    return node_id


def traces_root(output: Path, instance_id: str) -> Path:
    """`<output>/<instance_id>.traces`: one directory per episode, beside its trajectory."""
    return Path(output) / f"{instance_id}{TRACES_SUFFIX}"


def fresh_traces_root(output: Path, instance_id: str) -> Path:
    """The traces directory, emptied: traces of an earlier episode of this instance must not mix in."""
    root = traces_root(output, instance_id)
    shutil.rmtree(root, ignore_errors=True)
    return root


def entry_dirname(node_id: str) -> str:
    """A file-system-safe, readable and unique directory name for a node id.

    `tests/test_core.py::test_x` -> `tests_test_core.py__test_x-<8 hex>`: the hash keeps two ids that
    sanitise alike (`a/b` and `a_b`) apart, and the name can never be `.` or `..`.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", node_id.replace("::", "__"))[:80].strip("._-") or "test"
    return f"{readable}-{hashlib.sha256(node_id.encode()).hexdigest()[:8]}"


class AsideSandbox(Sandbox):
    """The episode's sandbox as the tracer sees it: every command is the runner's own, in a subshell.

    The tracer's module (`agent.worldmodel.run`) takes any Sandbox; wrapping the episode's one here
    keeps it unaware of episodes. `close` is a no-op: the episode owns the sandbox.
    """

    def __init__(self, inner: Sandbox, prelude: str = "") -> None:
        self._inner = inner
        self._prelude = prelude
        self.config = inner.config

    def run(self, command: str, timeout_s: float | None = None, aside: bool = True) -> CommandResult:
        return self._inner.run(f"(\n{self._prelude}{command}\n)", timeout_s, aside=True)

    def restart_session(self) -> None:
        self._inner.restart_session()

    @property
    def cwd(self) -> str:
        return self._inner.cwd

    def read_file(self, path: str) -> bytes:
        return self._inner.read_file(path)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._inner.write_file(path, data, mode)

    def copy_in(self, host_path: Path, sandbox_dir: str) -> None:
        self._inner.copy_in(host_path, sandbox_dir)

    def copy_out(self, sandbox_path: str, host_dir: Path) -> None:
        self._inner.copy_out(sandbox_path, host_dir)

    def close(self) -> None:
        pass


# --- keeping the working tree as it was ------------------------------------------------------------


def tree_state(sandbox: Sandbox, repo: str) -> dict[str, str] | None:
    """path -> `git status` code of every changed, untracked or ignored path (None: not a git tree).

    `sandbox` is an AsideSandbox: the `cd` must not move the model's session.
    """
    result = sandbox.run(f"cd {shlex.quote(repo)} && {GIT} status --porcelain=v1 -z --ignored --untracked-files=normal",
                         aside=True)
    if result.exit_code != 0:
        return None
    state: dict[str, str] = {}
    fields = iter(result.output.split("\0"))
    for entry in fields:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        state[path] = code
        if "R" in code or "C" in code:
            next(fields, None)  # the rename's source path
    return state


def restore_tree(sandbox: Sandbox, repo: str, before: dict[str, str], expected: bool = False) -> list[str]:
    """Undo what a test left in the repository since `before`; returns the paths it touched.

    New untracked or ignored paths are removed (`git clean`); a tracked file that was clean before
    and is changed now is checked out again. A file the model or the checkout had already changed
    and the test changed further cannot be told apart, and is left as it is.
    """
    after = tree_state(sandbox, repo)
    if after is None:
        return []
    fresh = [path for path, code in after.items() if before.get(path) != code]
    created = [path for path in fresh if after[path] in ("??", "!!") and path not in before]
    changed = [path for path in fresh if after[path] not in ("??", "!!") and path not in before]
    commands = []
    if created:
        commands.append(f"{GIT} clean -fdxq -- " + " ".join(shlex.quote(f":(literal){p}") for p in created))
    if changed:
        commands.append(f"{GIT} checkout -q -- " + " ".join(shlex.quote(f":(literal){p}") for p in changed))
    if commands:
        sandbox.run(f"cd {shlex.quote(repo)} && " + " && ".join(commands), aside=True)
        # `expected`: undoing the test patch, not a test's side effects.
        (log.info if expected else log.warning)("trace_tests.tree_restored", created=created, changed=changed)
    return created + changed


# --- one phase --------------------------------------------------------------------------------------


def outcome_of(trace: Trace) -> tuple[Outcome, str | None]:
    """(outcome, why the trace is incomplete or None) from the trace's ending and pytest's exit code."""
    end = trace.end
    if end.status in BOUNDS:
        return "unknown", (f"the tracer stopped the test at its {end.status} bound after {end.frames} frames: "
                           "the trace is partial and the test's outcome unknown")
    code = end.exit_code
    outcome: Outcome = "passed" if code == 0 else "failed" if code == 1 else "unknown" if code is None else "error"
    if end.status == "not_called":
        reason = "the test function never ran (skipped, deselected, or its setup failed)"
        return ("unknown" if outcome == "passed" else outcome), reason
    return outcome, None


def trace_phase(sandbox: Sandbox, node_ids: list[str], phase: Phase, root: Path, base: Path,
                limits: TraceLimits | None = None, budget: TraceBudget | None = None,
                test_patch: str = "") -> list[TracedTest]:
    """Trace every node id in the sandbox's repository; write each trace under `root/phase/`.

    `base` is the trajectory's directory: the records' paths are relative to it. `test_patch` (the
    instance's, possibly empty) is applied for these traces only. Never raises for a test that
    cannot be traced (KeyboardInterrupt and SystemExit still pass).
    """
    repo = sandbox.config.workdir
    scratch = f"{WORK_DIR}/tmp"
    box = AsideSandbox(sandbox, prelude=f"export TMPDIR={scratch}; mkdir -p {scratch}\n")
    spending = _Spending(budget or TraceBudget())
    records: list[TracedTest] = []
    with _test_patch_applied(box, repo, test_patch) as refused:
        for node_id in node_ids:
            bounded, why = (None, refused) if refused else spending.limits_for(limits or TraceLimits())
            if bounded is None:
                records.append(TracedTest(node_id=node_id, phase=phase, error=why))
                continue
            records.append(_trace_one(box, repo, node_id, phase, root, base, bounded))
            spending.spend(records[-1], base)
    try:
        box.run(f"rm -rf {WORK_DIR}")  # the tracer and its scratch files: nothing is left in /tmp
    except Exception as error:  # noqa: BLE001 - a broken sandbox is the episode's problem, not tracing's
        log.warning("trace_tests.cleanup_failed", error=str(error))
    return records


@contextmanager
def _test_patch_applied(box: Sandbox, repo: str, patch: str) -> Iterator[str | None]:
    """Apply `patch` for the duration of the block (yields why it could not be, or None); undo it after.

    Undoing is `restore_tree` to the state before: files the patch created are removed, files it
    changed from a clean state are checked out. After the episode, files the model had changed too
    keep the patch's version (the diff was taken before, and the sandbox is closed next).
    """
    if not patch.strip():
        yield None
        return
    state = None
    try:
        state = tree_state(box, repo)
        refused = _apply_test_patch(box, repo, patch)
    except Exception as error:  # noqa: BLE001 - the tests are then recorded as not traced
        refused = f"the test patch could not be applied: {error.__class__.__name__}: {error}"
    try:
        yield refused
    finally:
        if state is not None:
            try:
                restore_tree(box, repo, state, expected=True)
            except Exception as error:  # noqa: BLE001 - as in _trace_one
                log.warning("trace_tests.test_patch_not_undone", error=str(error))


def _apply_test_patch(box: Sandbox, repo: str, patch: str) -> str | None:
    """`git apply` the patch; if the working tree has other versions of its files (the model edited a
    test), put those files back as at HEAD and apply again. Returns why it failed, or None."""
    box.run(f"mkdir -p {WORK_DIR}")
    box.write_file(TEST_PATCH, (patch if patch.endswith("\n") else patch + "\n").encode("utf-8"))
    where = f"cd {shlex.quote(repo)} && "
    if box.run(f"{where}{GIT} apply {TEST_PATCH}").exit_code == 0:
        return None
    paths = _patch_paths(box.run(f"{where}{GIT} apply --numstat -z {TEST_PATCH}").output)
    quoted = " ".join(shlex.quote(p) for p in paths)
    tracked = set(box.run(f"{where}{GIT} ls-tree -r -z --name-only HEAD -- {quoted}").output.split("\0")) - {""}
    steps = [f"{GIT} checkout -q HEAD -- {' '.join(shlex.quote(p) for p in sorted(tracked))}" if tracked else "true",
             f"rm -rf -- {' '.join(shlex.quote(p) for p in paths if p not in tracked)}", f"{GIT} apply {TEST_PATCH}"]
    applied = box.run(where + " && ".join(steps))
    if applied.exit_code == 0:
        return None
    return "not traced: the test patch does not apply: " + (applied.output.strip().splitlines() or ["?"])[-1][:300]


def _patch_paths(numstat: str) -> list[str]:
    """The paths of `git apply --numstat -z`: `added TAB deleted TAB path NUL`, or for a rename
    `added TAB deleted TAB NUL old NUL new NUL` (both sides are returned)."""
    paths: set[str] = set()
    for field in numstat.split("\0"):
        name = field.split("\t", 2)[2] if field.count("\t") >= 2 else field
        if name:
            paths.add(name)
    return sorted(paths)


def _trace_one(box: AsideSandbox, repo: str, node_id: str, phase: Phase, root: Path, base: Path,
               limits: TraceLimits | None) -> TracedTest:
    started = time.monotonic()
    before = None
    try:
        before = tree_state(box, repo)
        result = trace_test(box, repo, node_id, limits=limits)
        directory = root / phase / entry_dirname(node_id)
        result.write(directory)
        write_sources(box, repo, result.trace, directory)
        return _record(result, node_id, phase, directory, base, time.monotonic() - started)
    except Exception as error:  # noqa: BLE001 - any failure is recorded; the episode goes on
        message = _without_sandbox_path(str(error)) if isinstance(error, TraceError) \
            else f"{error.__class__.__name__}: {error}"
        log.warning("trace_tests.failed", node_id=node_id, phase=phase, error=message)
        return TracedTest(node_id=node_id, phase=phase, error=message, wall_s=round(time.monotonic() - started, 3))
    finally:
        if before is not None:
            try:
                restore_tree(box, repo, before)
            except Exception as error:  # noqa: BLE001 - as above
                log.warning("trace_tests.restore_failed", node_id=node_id, error=str(error))


def _without_sandbox_path(message: str) -> str:
    """`/tmp/cwm-trace/trace-1a2b.jsonl: the tracer could not run: ...` -> `the tracer could not run: ...`."""
    return re.sub(rf"^{re.escape(WORK_DIR)}/\S+: ", "", message)


def write_sources(box: Sandbox, repo: str, trace: Trace, directory: Path) -> None:
    """Keep the source of every traced file the frames visit, read from the sandbox right after the run.

    Why: a trace carries the whole source of the test file only (the CWM prompt's context) and, for
    other files, just the lines that ran; the viewer's stepper shows a function's lines that did
    not run too, and the "after" trace must show the patched file, which only the sandbox has.
    """
    sources: dict[str, str] = {}
    files = sorted({frame.file for frame in trace.frames} - {trace.header.file})
    for name in files[:MAX_SOURCE_FILES]:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            continue
        try:
            data = box.read_file(f"{repo}/{name}")
        except Exception as error:  # noqa: BLE001 - a file the test deleted: its frames' lines remain
            log.info("trace_tests.source_unreadable", file=name, error=str(error))
            continue
        if len(data) <= MAX_SOURCE_BYTES:
            sources[name] = decode_source(data)  # as the frames have it: PEP 263, universal newlines
    (directory / SOURCES_FILE).write_text(json.dumps(sources, ensure_ascii=False), encoding="utf-8")


def _record(result: TraceResult, node_id: str, phase: Phase, directory: Path, base: Path,
            wall_s: float) -> TracedTest:
    (directory / OUTPUT_FILE).write_text(result.stdout, encoding="utf-8")
    outcome, reason = outcome_of(result.trace)
    record = TracedTest(
        node_id=node_id, phase=phase, path=directory.relative_to(base).as_posix(), outcome=outcome,
        exit_code=result.trace.end.exit_code, status=result.trace.end.status, frames=len(result.trace.frames),
        error=reason, wall_s=round(wall_s, 3),
    )
    log.info("trace_tests.traced", node_id=node_id, phase=phase, outcome=outcome, frames=record.frames)
    return record

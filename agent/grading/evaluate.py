"""`agent eval`: grade patches the way CWM's published numbers were graded (protocol, section 6).

For each prediction, a FRESH sandbox from the instance's environment image (agent.instances.envs): the
repository at /testbed at the base commit (agent.episode.repo), the patch applied with `git apply`, falling
back to `patch --batch --forward -p1`, the test files reset and the test patch applied, the test
command run on the files of FAIL_TO_PASS + PASS_TO_PASS, and the log parsed. Resolved iff every
FAIL_TO_PASS and PASS_TO_PASS test passed; a test missing from the log failed. An empty patch is
simply not resolved (no sandbox is started). Grading is parallel over a thread pool, each worker with
its own sandbox; the report is ordered by instance_id so that it does not depend on scheduling.

`grade()` is what `agent batch --evaluate` calls as episodes finish; `run_tests()` is the lower level
the fixture builder uses to find which tests fail before and pass after a fix.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, Field, PrivateAttr

from agent.episode.repo import RepoError, place_in_sandbox, prepare_repo
from agent.instances.envs import EnvRegistry, EnvSpec, ensure_env_image, load_registry
from agent.instances.records import Instance, Prediction
from agent.instances.sources import load_instances, load_predictions, repo_source
from sandbox.base import DEFAULT_WORKDIR, Sandbox, SandboxConfig, SandboxError
from traces.schema import Evaluation, utc_now

log = structlog.get_logger()

SCRATCH = "/tmp/cwm-eval"
LOG_TAIL_CHARS = 4000
EVALUATION_LOG_CHARS = 20000
ApplyMethod = Literal["git apply", "patch"]
PASSING = frozenset({"PASSED", "XFAIL"})
# Higher is worse: a test reported twice (PASSED, then ERROR in teardown) keeps the worse outcome.
_SEVERITY = {"ERROR": 5, "FAILED": 4, "XPASS": 3, "SKIPPED": 2, "XFAIL": 1, "PASSED": 0}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERBOSE = re.compile(r"^(?P<id>\S+::\S.*?) (?P<status>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?:\s|$)")

SandboxFactory = Callable[[SandboxConfig], Sandbox]


class EvalError(RuntimeError):
    """Grading could not start (bad inputs); the message says what to do."""


# -- the pytest log --------------------------------------------------------------------------------


def _node_id(rest: str, known: frozenset[str]) -> str:
    """The test id at the start of `rest` (what follows the status word of a summary line).

    A known id (one the instance asks about) that `rest` starts with, followed by the end or a space,
    wins: parametrised ids may hold spaces and unbalanced brackets. Otherwise the id ends at the
    first whitespace outside square brackets (pytest appends ` - message` or ` reason`).
    """
    if known:
        for match in re.finditer(r"\s|$", rest):
            if rest[: match.start()] in known:
                return rest[: match.start()]
    depth = 0
    for position, char in enumerate(rest):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char.isspace() and depth == 0:
            return rest[:position]
    return rest


def parse_pytest_log(text: str, known: Iterable[str] = ()) -> dict[str, str]:
    """Map test id -> PASSED/FAILED/ERROR/SKIPPED/XFAIL/XPASS from a `pytest -rA` (or -v) log.

    Summary lines are `STATUS id[ - message]`; verbose lines are `id STATUS [ nn%]`. SKIPPED
    summary lines name a file and line, not a test, and are ignored. Collection errors name a file
    (`ERROR tests/x.py - ...`): its tests are then absent, which counts as failed.
    """
    known_ids = frozenset(known)
    statuses: dict[str, str] = {}

    def record(test_id: str, status: str) -> None:
        old = statuses.get(test_id)
        if old is None or _SEVERITY[status] > _SEVERITY[old]:
            statuses[test_id] = status

    for raw in text.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        word, _, rest = line.partition(" ")
        if word in _SEVERITY and rest and not rest.startswith("["):
            record(_node_id(rest.strip(), known_ids), word)
            continue
        verbose = _VERBOSE.match(line)
        if verbose:
            record(verbose["id"], verbose["status"])
    return statuses


def passed(statuses: dict[str, str], test_id: str) -> bool:
    return statuses.get(test_id) in PASSING


# -- one grading run ---------------------------------------------------------------------------------


class TestRun(BaseModel):
    """What happened in one grading sandbox."""

    patch_applied: bool = False
    apply_method: ApplyMethod | None = None
    statuses: dict[str, str] = Field(default_factory=dict)
    exit_code: int | None = None
    timed_out: bool = False
    log: str = ""
    error: str | None = None


def _docker_factory(config: SandboxConfig) -> Sandbox:
    from sandbox.docker import DockerSandbox

    return DockerSandbox(config)


def patch_files(patch: str) -> list[str]:
    """Paths a unified diff touches: the b/ side of `diff --git` lines, else the `+++` lines."""
    lines = patch.splitlines()
    git_lines = [re.match(r"diff --git a/(.+?) b/(.+)$", line) for line in lines if line.startswith("diff --git ")]
    if git_lines:
        files = [m[2] for m in git_lines if m]
    else:
        names = [line[4:].split("\t")[0].strip() for line in lines if line.startswith("+++ ")]
        files = [n[2:] if n.startswith("b/") else n for n in names if n != "/dev/null"]
    return list(dict.fromkeys(files))


def _normalised(patch: str) -> str:
    # git apply calls a patch whose last line lacks its newline corrupt; models often drop it.
    return patch if patch.endswith("\n") else patch + "\n"


def apply_patch(sandbox: Sandbox, path: str, workdir: str = DEFAULT_WORKDIR) -> tuple[ApplyMethod | None, str]:
    """Apply the patch file at `path` (inside the sandbox): git apply, else patch(1). Returns the
    method that worked (None: neither) and what the tools printed, for the log."""
    quoted = shlex.quote(path)
    first = sandbox.run(f"cd {workdir} && git apply --verbose {quoted}")
    if first.exit_code == 0:
        return "git apply", first.output
    second = sandbox.run(f"cd {workdir} && patch --batch --forward -p1 --no-backup-if-mismatch -i {quoted}")
    output = f"{first.output}\n>>> git apply failed; trying patch --batch --forward -p1\n{second.output}"
    if second.exit_code == 0:
        return "patch", output
    return None, output


def _reset_test_files(sandbox: Sandbox, files: Sequence[str], workdir: str) -> None:
    """Undo the patch's changes to the files the test patch touches (SWE-bench does the same), so the
    test patch applies and the tests are the reference ones whatever the model did to them."""
    if not files:
        return
    names = " ".join(shlex.quote(f) for f in files)
    sandbox.run(
        f"cd {workdir} && for f in {names}; do "
        'if git cat-file -e "HEAD:$f" 2>/dev/null; then git checkout -q HEAD -- "$f"; else rm -rf -- "$f"; fi; done'
    )


def run_tests(
    instance: Instance,
    patch: str,
    image: str,
    spec: EnvSpec,
    tests: Sequence[str],
    open_sandbox: SandboxFactory | None = None,
) -> TestRun:
    """Fresh sandbox, repository at the base commit, `patch` then the test patch, run `tests`."""
    run = TestRun()
    transcript: list[str] = []
    try:
        prepared = prepare_repo(repo_source(instance, mirror=True), instance.base_commit or None)
    except (RepoError, ValueError) as error:
        run.error = f"cannot prepare the repository: {error}"
        return run
    config = SandboxConfig(image=image, workdir=DEFAULT_WORKDIR, run_id=f"eval-{instance.instance_id}"[:60])
    try:
        with (open_sandbox or _docker_factory)(config) as sandbox:
            place_in_sandbox(prepared, sandbox)
            _grade_in(sandbox, instance, patch, spec, tests, run, transcript)
    except (SandboxError, RepoError) as error:
        run.error = f"sandbox: {error}"
    finally:
        prepared.cleanup()
    run.log = "\n".join(transcript)
    return run


def _grade_in(
    sandbox: Sandbox, instance: Instance, patch: str, spec: EnvSpec, tests: Sequence[str], run: TestRun,
    transcript: list[str],
) -> None:
    """The steps inside the sandbox; each may stop the run, recording why in `run` and `transcript`."""
    sandbox.run(f"mkdir -p {SCRATCH}")
    if patch.strip():
        sandbox.write_file(f"{SCRATCH}/model.patch", _normalised(patch).encode())
        run.apply_method, output = apply_patch(sandbox, f"{SCRATCH}/model.patch")
        transcript.append(f">>> applying the patch\n{output}")
        run.patch_applied = run.apply_method is not None
        if not run.patch_applied:
            return
    else:
        run.patch_applied = True  # nothing to apply: the base commit as it is (the builder's "before")
    if instance.test_patch.strip():
        _reset_test_files(sandbox, patch_files(instance.test_patch), DEFAULT_WORKDIR)
        sandbox.write_file(f"{SCRATCH}/test.patch", _normalised(instance.test_patch).encode())
        applied = sandbox.run(f"cd /testbed && git apply --verbose {SCRATCH}/test.patch")
        transcript.append(f">>> applying the test patch\n{applied.output}")
        if applied.exit_code != 0:
            run.error = "the test patch does not apply: " + applied.output.strip()[-300:]
            return
    for command in spec.setup:
        done = sandbox.run(f"cd /testbed && {command}", timeout_s=spec.timeout_s)
        transcript.append(f">>> {command}\n{done.output}")
        if done.exit_code != 0:
            run.error = f"setup command failed ({command}): " + done.output.strip()[-300:]
            return
    command = spec.command_for(tests)
    transcript.append(f">>> {command}")
    # Output goes to a file: a large suite must not hit the session's output limit.
    done = sandbox.run(f"cd /testbed && {{ {command} ; }} > {SCRATCH}/test.log 2>&1; echo $?",
                       timeout_s=spec.timeout_s)
    run.timed_out = done.timed_out
    if not done.failed_session and done.output.strip().isdigit():
        run.exit_code = int(done.output.strip())
    try:
        test_log = sandbox.read_file(f"{SCRATCH}/test.log").decode("utf-8", errors="replace")
    except FileNotFoundError:
        test_log = ""
    if run.timed_out:
        test_log += f"\n>>> the tests timed out after {spec.timeout_s:g} s"
    transcript.append(test_log)
    run.statuses = parse_pytest_log(test_log, known=tests)


# -- grading -----------------------------------------------------------------------------------------


class InstanceResult(BaseModel):
    """One line of the report."""

    instance_id: str
    resolved: bool = False
    empty_patch: bool = False
    patch_applied: bool = False
    apply_method: ApplyMethod | None = None
    fail_to_pass: dict[str, bool] = Field(default_factory=dict)
    pass_to_pass: dict[str, bool] = Field(default_factory=dict)
    timed_out: bool = False
    error: str | None = None
    log_tail: str = ""
    duration_s: float = 0.0
    _log: str = PrivateAttr(default="")  # the whole transcript, kept out of the JSON report

    @property
    def did_not_apply(self) -> bool:
        return not self.patch_applied and not self.empty_patch and self.error is None

    def evaluation(self) -> Evaluation:
        """As a trajectory's Evaluation record (the log's head says how the patch applied)."""
        head = (
            f"patch: {'empty' if self.empty_patch else (self.apply_method or 'did not apply')}"
            + (f"; error: {self.error}" if self.error else "")
        )
        body = (self._log or self.log_tail)[-EVALUATION_LOG_CHARS:]
        return Evaluation(resolved=self.resolved, empty_patch=self.empty_patch, patch_applied=self.patch_applied,
                          apply_method=self.apply_method, error=self.error, fail_to_pass=self.fail_to_pass,
                          pass_to_pass=self.pass_to_pass, log=f"{head}\n{body}")

    def line(self) -> str:
        """One readable line for the summary."""
        def count(tests: dict[str, bool]) -> str:
            return f"{sum(tests.values())}/{len(tests)}"

        if self.error:
            state, detail = "ERROR", self.error.splitlines()[0][:160]
        elif self.empty_patch:
            state, detail = "empty", "empty patch"
        elif not self.patch_applied:
            state, detail = "no-apply", "the patch does not apply"
        else:
            state = "RESOLVED" if self.resolved else "unresolved"
            detail = (f"{self.apply_method}, FAIL_TO_PASS {count(self.fail_to_pass)}, "
                      f"PASS_TO_PASS {count(self.pass_to_pass)}" + (", timed out" if self.timed_out else ""))
        return f"{state:<10} {self.instance_id}  ({detail}; {self.duration_s:.1f} s)"


def grade_detailed(
    instance: Instance,
    patch: str,
    image: str | None = None,
    *,
    registry: EnvRegistry | None = None,
    open_sandbox: SandboxFactory | None = None,
    log_file: Path | None = None,
) -> InstanceResult:
    """Grade one patch; never raises for a bad patch or a failing run (that is in the result)."""
    started = time.monotonic()
    result = InstanceResult(instance_id=instance.instance_id)
    tests = list(dict.fromkeys(instance.FAIL_TO_PASS + instance.PASS_TO_PASS))
    if not patch.strip():
        result.empty_patch = True
        result.fail_to_pass = {t: False for t in instance.FAIL_TO_PASS}
        result.pass_to_pass = {t: False for t in instance.PASS_TO_PASS}
        return result
    if not tests:
        result.error = "the instance names no FAIL_TO_PASS or PASS_TO_PASS tests, so it cannot be graded"
        return result
    try:
        spec = (registry or load_registry()).for_instance(instance)
        image = image or ensure_env_image(spec)
    except Exception as error:  # noqa: BLE001 - EnvError, ImageBuildError: reported per instance
        result.error = f"environment: {error}"
        result.duration_s = time.monotonic() - started
        return result
    try:
        run = run_tests(instance, patch, image, spec, tests, open_sandbox)
    except Exception as error:  # noqa: BLE001 - one broken instance must not end a whole evaluation
        log.exception("eval.failed", instance=instance.instance_id)
        result.error = f"{error.__class__.__name__}: {error}"
        result.duration_s = round(time.monotonic() - started, 3)
        return result
    result.patch_applied, result.apply_method = run.patch_applied, run.apply_method
    result.timed_out, result.error = run.timed_out, run.error
    result.fail_to_pass = {t: passed(run.statuses, t) for t in instance.FAIL_TO_PASS}
    result.pass_to_pass = {t: passed(run.statuses, t) for t in instance.PASS_TO_PASS}
    result.resolved = (
        run.patch_applied and run.error is None
        and all(result.fail_to_pass.values()) and all(result.pass_to_pass.values())
    )
    result.log_tail = run.log[-LOG_TAIL_CHARS:]
    result._log = run.log
    result.duration_s = round(time.monotonic() - started, 3)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(run.log, encoding="utf-8")
    log.info("eval.graded", instance=instance.instance_id, resolved=result.resolved, method=result.apply_method)
    return result


def grade(
    instance: Instance,
    patch: str,
    image: str | None = None,
    *,
    registry: EnvRegistry | None = None,
    open_sandbox: SandboxFactory | None = None,
) -> Evaluation:
    """Grade one patch for `agent batch --evaluate`: the trajectory's Evaluation record.

    `image` defaults to the instance's environment image (built on first use).
    """
    return grade_detailed(instance, patch, image, registry=registry, open_sandbox=open_sandbox).evaluation()


# -- many predictions --------------------------------------------------------------------------------


class EvalReport(BaseModel):
    """The JSON report of `agent eval`."""

    created_at: datetime = Field(default_factory=utc_now)
    instances_file: str = ""
    predictions_file: str | None = None
    gold: bool = False
    workers: int = 1
    results: list[InstanceResult] = Field(default_factory=list)
    unknown_instances: list[str] = Field(default_factory=list, description="predictions for no known instance")
    without_prediction: list[str] = Field(default_factory=list, description="instances nobody predicted")

    @property
    def resolved(self) -> int:
        return sum(r.resolved for r in self.results)

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.results)

    def summary(self) -> str:
        """What a person reads: one line per instance, then the totals."""
        total = len(self.results)
        share = f" ({100 * self.resolved / total:.1f}%)" if total else ""
        lines = [r.line() for r in self.results]
        lines.append(
            f"resolved {self.resolved}/{total}{share}{' [gold patches]' if self.gold else ''}; "
            f"errors {self.errors}, empty patches {sum(r.empty_patch for r in self.results)}, "
            f"patches that did not apply {sum(r.did_not_apply for r in self.results)}"
        )
        if self.unknown_instances:
            lines.append(f"predictions for unknown instances (ignored): {', '.join(self.unknown_instances)}")
        if self.without_prediction:
            lines.append(f"instances without a prediction: {len(self.without_prediction)}")
        return "\n".join(lines)


def evaluate(
    instances: Sequence[Instance],
    predictions: Sequence[Prediction] | None,
    *,
    workers: int = 1,
    gold: bool = False,
    registry: EnvRegistry | None = None,
    open_sandbox: SandboxFactory | None = None,
    log_dir: Path | None = None,
) -> EvalReport:
    """Grade every prediction (or, with `gold`, every instance's reference patch) in parallel."""
    if workers < 1:
        raise EvalError("--workers must be at least 1")
    if predictions is None and not gold:
        raise EvalError("give a predictions file, or --gold to grade the instances' reference patches")
    by_id = {i.instance_id: i for i in instances}
    report = EvalReport(gold=gold, workers=workers)
    if gold:
        jobs = [(i, i.patch) for i in instances]
    else:
        assert predictions is not None
        report.unknown_instances = sorted(p.instance_id for p in predictions if p.instance_id not in by_id)
        jobs = [(by_id[p.instance_id], p.model_patch) for p in predictions if p.instance_id in by_id]
        predicted = {p.instance_id for p in predictions}
        report.without_prediction = sorted(i for i in by_id if i not in predicted)
    registry = registry or load_registry()
    images = _build_images([i for i, patch in jobs if patch.strip()], registry)

    def one(job: tuple[Instance, str]) -> InstanceResult:
        instance, patch = job
        if gold and not patch.strip():
            return InstanceResult(instance_id=instance.instance_id, error="the instance has no reference patch")
        built = images.get(instance.instance_id)
        if isinstance(built, Exception):
            return InstanceResult(instance_id=instance.instance_id, error=f"environment: {built}")
        log_file = log_dir / f"{instance.instance_id}.log" if log_dir else None
        return grade_detailed(instance, patch, built, registry=registry, open_sandbox=open_sandbox, log_file=log_file)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        report.results = sorted(pool.map(one, jobs), key=lambda r: r.instance_id)
    return report


def _build_images(instances: Sequence[Instance], registry: EnvRegistry) -> dict[str, str | Exception]:
    """Each environment image once, before the workers start, so a build failure is reported per
    instance instead of racing N identical builds."""
    images: dict[str, str | Exception] = {}
    for instance in instances:
        try:
            images[instance.instance_id] = ensure_env_image(registry.for_instance(instance))
        except Exception as error:  # noqa: BLE001 - EnvError, ImageBuildError
            images[instance.instance_id] = error
    return images


def run_eval(
    predictions_file: Path | None,
    instances_file: Path,
    *,
    workers: int = 1,
    gold: bool = False,
    report_path: Path | None = None,
    open_sandbox: SandboxFactory | None = None,
) -> EvalReport:
    """`agent eval` as a library call: load, grade, write the report (and full logs beside it)."""
    instances = load_instances(instances_file)
    predictions = load_predictions(predictions_file) if predictions_file is not None else None
    log_dir = report_path.with_name(report_path.stem + ".logs") if report_path else None
    report = evaluate(instances, predictions, workers=workers, gold=gold, open_sandbox=open_sandbox, log_dir=log_dir)
    report.instances_file = str(instances_file)
    report.predictions_file = str(predictions_file) if predictions_file else None
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return report

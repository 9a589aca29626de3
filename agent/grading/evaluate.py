"""`agent eval`: grade patches with the field's own code, in fresh sandboxes, and score K samples honestly.

For each prediction: the instance's grading spec (agent.grading.specs: the SWE-bench 5 row's own eval
script, one derived from the 4.x specifications, or one of ours from an environment spec), a fresh
sandbox run step for step as the official harness runs it (agent.grading.sandboxed), and the official
report from swebench's `get_eval_report` on the test output: the markers, the exit-code cross-check,
the per-repository log parser, the FAIL_TO_PASS/PASS_TO_PASS rules. On top, the forgery rules
(agent.grading.forgery) flag patches that reach into the test machinery; with `strict` they make the
verdict unresolved. An empty patch is not resolved and starts no sandbox, as officially.

A predictions file may hold K samples per instance (the n-th line of an instance is its sample n-1):
the report gives pass@1, pass@k and, when a selection function is given, the score of the prediction
it picks (agent.grading.scores). The official outputs (report.json per instance and the run summary)
are written beside our report by agent.grading.reports.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, PrivateAttr

from agent.episode.failures import classify
from agent.grading import official
from agent.grading.forgery import Finding
from agent.grading.sandboxed import SandboxFactory, TestRun, run_prediction
from agent.grading.scores import SampleScores
from agent.grading.specs import (
    DEFAULT_NAMESPACE,
    GradingSpec,
    SpecError,
    grading_spec,
    patch_files,  # noqa: F401 - the fixture builder imports it from here
)
from agent.instances.envs import EnvRegistry, EnvSpec, ensure_env_image, load_registry
from agent.instances.records import Instance, Prediction
from sandbox.base import SandboxError
from traces.schema import Evaluation, utc_now

log = structlog.get_logger()

LOG_TAIL_CHARS = 4000
EVALUATION_LOG_CHARS = 20000
GOLD_MODEL = "gold"  # model_name_or_path of gold runs, as the official harness names them
Selector = Callable[[Instance, Sequence[Prediction]], "int | None"]


class EvalError(RuntimeError):
    """Grading could not start (bad inputs); the message says what to do."""


class GradingInterrupted(SandboxError):
    """The grading sandbox or the Docker daemon failed under a grading: no verdict, and none must be
    counted (an infrastructure failure, agent.episode.failures)."""


class InstanceResult(BaseModel):
    """One graded prediction: the official verdict, our rules on top, and the final verdict."""

    instance_id: str
    sample: int = 0
    model_name: str = ""
    resolved: bool = False
    official_resolved: bool = Field(default=False, description="what swebench's report says")
    strict: bool = Field(default=False, description="forgery findings made the verdict unresolved")
    empty_patch: bool = False
    patch_applied: bool = False
    apply_method: str | None = None
    fail_to_pass: dict[str, bool] = Field(default_factory=dict)
    pass_to_pass: dict[str, bool] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    spec_source: str | None = Field(default=None, description="row, swebench4 or env (agent.grading.specs)")
    log_parser: str | None = None
    test_exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    error_kind: Literal["infra", "episode"] | None = Field(
        default=None, description="infra: the sandbox or daemon failed, so the prediction was not graded (it is "
        "left out of pass@k and the official completed ids; grade it again); episode: the prediction's own")
    log_tail: str = ""
    duration_s: float = 0.0
    _run: TestRun | None = PrivateAttr(default=None)
    _official: dict[str, Any] | None = PrivateAttr(default=None)
    _patch: str = PrivateAttr(default="")

    @property
    def did_not_apply(self) -> bool:
        return not self.patch_applied and not self.empty_patch and self.error is None

    @property
    def official_report(self) -> dict[str, Any] | None:
        """The content of report.json (None where the official harness writes none)."""
        return self._official

    def evaluation(self) -> Evaluation:
        """As a trajectory's Evaluation record (the log's head says how the patch applied, and any rule)."""
        head = f"patch: {'empty' if self.empty_patch else (self.apply_method or 'did not apply')}"
        head += f"; error: {self.error}" if self.error else ""
        head += "".join(f"\nforgery rule {f.line()}" for f in self.findings)
        body = (self._run.log if self._run else self.log_tail)[-EVALUATION_LOG_CHARS:]
        return Evaluation(resolved=self.resolved, empty_patch=self.empty_patch, patch_applied=self.patch_applied,
                          apply_method=self.apply_method, error=self.error, fail_to_pass=self.fail_to_pass,
                          pass_to_pass=self.pass_to_pass, log=f"{head}\n{body}")

    def line(self) -> str:
        """One readable line for the summary."""
        def count(tests: dict[str, bool]) -> str:
            return f"{sum(tests.values())}/{len(tests)}"

        name = self.instance_id + (f" #{self.sample}" if self.sample else "")
        if self.error:
            state = "INFRA" if self.error_kind == "infra" else "ERROR"
            detail = self.error.splitlines()[0][:160]
        elif self.empty_patch:
            state, detail = "empty", "empty patch"
        elif not self.patch_applied:
            state, detail = "no-apply", "the patch does not apply"
        else:
            state = "RESOLVED" if self.resolved else "unresolved"
            detail = f"FAIL_TO_PASS {count(self.fail_to_pass)}, PASS_TO_PASS {count(self.pass_to_pass)}"
            detail += "".join(f"; rule {f.rule} ({f.file})" for f in self.findings)
            detail += "; strict: resolved officially" if self.strict else ""
        return f"{state:<10} {name}  ({detail}; {self.duration_s:.1f} s)"


# -- one prediction --------------------------------------------------------------------------------


def _image_for(spec: GradingSpec, image: str | None) -> str:
    if image:
        return image
    if spec.image:
        return spec.image
    assert spec.env is not None  # specs of our own carry their environment
    return ensure_env_image(spec.env)


def _official_verdict(result: InstanceResult, spec: Any, run: TestRun, patch: str) -> None:
    """Read the test output with swebench's report logic (the file it reads is test_output.txt)."""
    with tempfile.TemporaryDirectory(prefix="cwm-grade-") as scratch:
        output = Path(scratch) / "test_output.txt"
        output.write_text(run.test_output, encoding="utf-8")
        report = official.eval_report(spec, result.instance_id, result.model_name, patch, output)
    result._official = report
    mine = report[result.instance_id]
    status = mine.get("tests_status", {})
    for key, target in (("FAIL_TO_PASS", result.fail_to_pass), ("PASS_TO_PASS", result.pass_to_pass)):
        passed = set(status.get(key, {}).get("success", []))
        target.update({t: t in passed for t in target})
    result.official_resolved = bool(mine["resolved"])
    result.test_exit_code = official.exit_code_in(run.test_output)


def _finish(result: InstanceResult, run: TestRun, strict: bool, log_file: Path | None) -> None:
    result._run = run
    result.patch_applied, result.apply_method = run.patch_applied, run.apply_method
    result.timed_out, result.error, result.findings = run.timed_out, run.error, run.findings
    result.error_kind = None if run.error is None else ("infra" if run.infra else "episode")
    result.strict = strict and result.official_resolved and bool(run.findings)
    result.resolved = result.official_resolved and not result.strict
    result.log_tail = run.log[-LOG_TAIL_CHARS:]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(run.log, encoding="utf-8")


def grade_detailed(
    instance: Instance, patch: str, image: str | None = None, *, registry: EnvRegistry | None = None,
    open_sandbox: SandboxFactory | None = None, log_file: Path | None = None, strict: bool = False,
    namespace: str = DEFAULT_NAMESPACE, sample: int = 0, model_name: str = "",
) -> InstanceResult:
    """Grade one patch; never raises for a bad patch or a failing run (that is in the result)."""
    started = time.monotonic()
    result = InstanceResult(instance_id=instance.instance_id, sample=sample, model_name=model_name,
                            fail_to_pass={t: False for t in instance.FAIL_TO_PASS},
                            pass_to_pass={t: False for t in instance.PASS_TO_PASS})
    result._patch = patch
    if not patch.strip():
        result.empty_patch = True
        return result
    try:
        spec = grading_spec(instance, registry or load_registry(), namespace)
        official.check_parser(spec.log_parser)
        result.spec_source, result.log_parser = spec.source, spec.log_parser
        image = _image_for(spec, image)
        test_spec = official.test_spec(spec.row(instance, image))
        run = run_prediction(instance, patch, spec, image, test_spec.eval_script, open_sandbox)
        if run.patch_applied and run.error is None:
            _official_verdict(result, test_spec, run, patch)
        _finish(result, run, strict, log_file)
    except official.GradingUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - one broken instance must not end a whole evaluation
        log.warning("eval.failed", instance=instance.instance_id, error=str(error))
        result.error = f"{error.__class__.__name__}: {error}" if not isinstance(error, SpecError) else str(error)
        result.error_kind = "infra" if classify(error).kind == "infra" else "episode"
    result.duration_s = round(time.monotonic() - started, 3)
    log.info("eval.graded", instance=instance.instance_id, resolved=result.resolved, method=result.apply_method)
    return result


def grade(instance: Instance, patch: str, image: str | None = None, *, registry: EnvRegistry | None = None,
          open_sandbox: SandboxFactory | None = None) -> Evaluation:
    """Grade one patch for `agent batch --evaluate`: the trajectory's Evaluation record. A grading the
    infrastructure interrupted raises GradingInterrupted instead: a verdict it never reached must not
    be recorded as unresolved."""
    result = grade_detailed(instance, patch, image, registry=registry, open_sandbox=open_sandbox)
    if result.error_kind == "infra":
        raise GradingInterrupted(result.error or "the grading sandbox failed")
    return result.evaluation()


def run_tests(instance: Instance, patch: str, image: str, env: EnvSpec, tests: Sequence[str],
              open_sandbox: SandboxFactory | None = None) -> TestRun:
    """Run `tests` with `patch` (may be empty) through the same eval script as grading; the fixture
    builder uses it to find which tests fail before and pass after a fix. `statuses` of the result
    come from the official pytest parser."""
    from agent.grading.specs import from_env

    spec = from_env(instance.model_copy(update={"FAIL_TO_PASS": list(tests), "PASS_TO_PASS": []}), env)
    test_spec = official.test_spec(spec.row(instance, image))
    run = run_prediction(instance, patch, spec, image, test_spec.eval_script, open_sandbox)
    run.statuses = statuses(run)
    return run


def statuses(run: TestRun, parser: str = "parse_log_pytest") -> dict[str, str]:
    """test id -> status of a run's test output, read by the named official parser."""
    from agent.grading.specs import END_MARKER, START_MARKER

    inside = run.test_output.split(START_MARKER, 1)[-1].split(END_MARKER, 1)[0]
    return official.harness().parsers[parser](inside, None)


def passed(statuses_: dict[str, str], test_id: str) -> bool:
    """The official FAIL_TO_PASS rule (PASSED or XFAIL)."""
    return official.test_passed(test_id, statuses_)


# -- many predictions ------------------------------------------------------------------------------


class EvalReport(BaseModel):
    """The JSON report of `agent eval`."""

    created_at: datetime = Field(default_factory=utc_now)
    instances_file: str = ""
    predictions_file: str | None = None
    gold: bool = False
    strict: bool = False
    workers: int = 1
    swebench_version: str = ""
    results: list[InstanceResult] = Field(default_factory=list)
    scores: SampleScores | None = None
    unknown_instances: list[str] = Field(default_factory=list, description="predictions for no known instance")
    without_prediction: list[str] = Field(default_factory=list, description="instances nobody predicted")
    official: list[str] = Field(default_factory=list, description="official run summaries written")

    @property
    def resolved(self) -> int:
        return sum(r.resolved for r in self.results)

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.results)

    @property
    def infra_errors(self) -> int:
        """Of `errors`: predictions the infrastructure kept from being graded (grade them again)."""
        return sum(r.error_kind == "infra" for r in self.results)

    def summary(self) -> str:
        """What a person reads: one line per prediction, then the totals and the scores."""
        total = len(self.results)
        share = f" ({100 * self.resolved / total:.1f}%)" if total else ""
        lines = [r.line() for r in self.results]
        lines.append(
            f"resolved {self.resolved}/{total}{share}{' [gold patches]' if self.gold else ''}; "
            f"errors {self.errors}{self._infra_note()}, empty patches {sum(r.empty_patch for r in self.results)}, "
            f"patches that did not apply {sum(r.did_not_apply for r in self.results)}, "
            f"forgery findings {sum(bool(r.findings) for r in self.results)}"
            + (" (strict: unresolved)" if self.strict else ""))
        if self.scores is not None and max(self.scores.samples_per_instance.values(), default=1) > 1:
            lines += self.scores.lines()
        if self.infra_errors:
            lines.append(f"{self.infra_errors} predictions were not graded (the sandbox or the Docker daemon failed): "
                         "they are left out of pass@k; grade them again")
        if self.unknown_instances:
            lines.append(f"predictions for unknown instances (ignored): {', '.join(self.unknown_instances)}")
        if self.without_prediction:
            lines.append(f"instances without a prediction: {len(self.without_prediction)}")
        return "\n".join(lines)

    def _infra_note(self) -> str:
        return f" ({self.infra_errors} infrastructure)" if self.infra_errors else ""

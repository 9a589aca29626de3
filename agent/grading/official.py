"""The official SWE-bench harness (`swebench` 5.0.2, extra `grading`), imported only when a patch is graded.

Why lazily: any `swebench.harness` module imports the whole harness package, which pulls in docker,
datasets (pyarrow, pandas) and modal — about 1,700 modules and one to two seconds — and the package
with its dependencies weighs some 350 MB. Solving, replaying and viewing never grade, so none of that
is a dependency of the runner itself (README, "Dependencies and why").

What this module hands out is the field's own code, used unchanged: the test spec built from a row
(`make_test_spec`, which also makes the eval script record the test command's exit code), the chain
of patch-apply commands, the log parsers and the report (`get_eval_report`: markers, exit-code
cross-check, per-repository parser, FAIL_TO_PASS/PASS_TO_PASS rules, skipped and truncated ids).
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import structlog

log = structlog.get_logger()

REQUIRED_VERSION = "5.0.2"
INSTALL_HINT = f"pip install 'cwm-runner[grading]' (the official harness, swebench=={REQUIRED_VERSION})"


class GradingUnavailable(RuntimeError):
    """The official harness is not installed; the message says how to install it."""


@functools.lru_cache(maxsize=1)
def harness() -> SimpleNamespace:
    """The parts of swebench the grader uses, imported once (see the module docstring for why late)."""
    try:
        import swebench
        from swebench.harness import constants, grading, infra_failure, run_evaluation, utils
        from swebench.harness.log_parsers import PARSER_REGISTRY
    except ImportError as error:
        raise GradingUnavailable(f"grading needs the official SWE-bench harness ({error}); {INSTALL_HINT}") from None
    if swebench.__version__ != REQUIRED_VERSION:
        log.warning("grading.swebench_version", found=swebench.__version__, expected=REQUIRED_VERSION)
    return SimpleNamespace(
        version=swebench.__version__, constants=constants, grading=grading, utils=utils, infra=infra_failure,
        apply_commands=list(run_evaluation.GIT_APPLY_CMDS), parsers=PARSER_REGISTRY,
    )


def test_spec(row: dict[str, Any]) -> Any:
    """swebench's TestSpec for a v5-shaped row (its eval script records the test command's exit code)."""
    return harness().utils.make_test_spec(row)


def check_parser(name: str) -> None:
    """Refuse a log parser the harness does not have, before any sandbox starts."""
    if name not in harness().parsers:
        raise ValueError(f"log_parser {name!r} is not one of swebench's parsers")


def eval_report(spec: Any, instance_id: str, model_name: str, patch: str, test_output: Path) -> dict[str, Any]:
    """The official per-instance report (the content of report.json) for a finished test run."""
    prediction = {"instance_id": instance_id, "model_name_or_path": model_name, "model_patch": patch}
    return harness().grading.get_eval_report(spec, prediction, str(test_output), include_tests_status=True)


def status_map(spec: Any, test_output: Path) -> tuple[dict[str, str], bool]:
    """(test -> status, whether the log is a valid run) as the official grader reads it."""
    return harness().grading.get_logs_eval(spec, str(test_output))


def test_passed(test_id: str, statuses: dict[str, str]) -> bool:
    """The official rule for a FAIL_TO_PASS test (PASSED or XFAIL; truncated parametrised ids tolerated)."""
    return bool(harness().grading.test_passed(test_id, statuses))


def exit_code_in(test_output: str) -> int | None:
    """The test command's exit code as the eval script recorded it (None: not recorded)."""
    return harness().grading.parse_test_exit_code(test_output)


def markers() -> SimpleNamespace:
    """The log markers the official eval scripts print and the official grader looks for."""
    c = harness().constants
    return SimpleNamespace(start=c.START_TEST_OUTPUT, end=c.END_TEST_OUTPUT, apply_fail=c.APPLY_PATCH_FAIL,
                           apply_pass=c.APPLY_PATCH_PASS, patch_file=c.CONTAINER_PATCH_FILE,
                           non_test_exts=list(c.NON_TEST_EXTS), report=c.LOG_REPORT, test_output=c.LOG_TEST_OUTPUT)


def classify_failure(*logs: Path) -> tuple[str, str] | None:
    """swebench's post-hoc (reason, tier) for a run that did not resolve, from its log files."""
    return harness().infra.classify_logs(*logs)


def environment_tier() -> str:
    return harness().infra.TIER_ENVIRONMENT

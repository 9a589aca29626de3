"""The repository's existing tests before and after a candidate patch: what `--select regression` ranks by.

Agentless (and CWM's test-time scaling after it) prefers candidates that break none of the tests that
already pass: run the repository's test suite at the base commit, keep the tests that pass, and count
how many of them each candidate patch makes fail. Nothing here reads the hidden tests: no test patch is
applied, and the command is the suite's own without the directives a grading run takes from the test
patch (the 4.x specification's `test_cmd`, or an environment spec's command with no test targets).
The runs use the grading sandbox path (agent.grading.sandboxed) and the instance's official log parser.
"""

from __future__ import annotations

import structlog
from pydantic import BaseModel, Field

from agent.grading import official
from agent.grading.sandboxed import SandboxFactory, run_prediction
from agent.grading.specs import DEFAULT_NAMESPACE, END_MARKER, START_MARKER, GradingSpec, SpecError, grading_spec
from agent.instances.envs import EnvRegistry, ensure_env_image, load_registry
from agent.instances.records import Instance

log = structlog.get_logger()

PASSING = ("PASSED", "XFAIL")


class SuiteRun(BaseModel):
    """Which of the repository's tests passed in one run (empty and `error` set when it could not run)."""

    passing: list[str] = Field(default_factory=list)
    error: str | None = None


def _spec(instance: Instance, registry: EnvRegistry | None, namespace: str) -> GradingSpec:
    spec = grading_spec(instance, registry or load_registry(), namespace)
    if spec.suite is None:
        raise SpecError(f"{instance.instance_id}: no command for the repository's existing tests is known for "
                        f"{instance.repo} {instance.version}; use --select majority")
    return spec


def run_suite(instance: Instance, patch: str, *, image: str | None = None, registry: EnvRegistry | None = None,
              namespace: str = DEFAULT_NAMESPACE, open_sandbox: SandboxFactory | None = None) -> SuiteRun:
    """The existing tests with `patch` applied ("" for the base commit)."""
    try:
        spec = _spec(instance, registry, namespace)
        assert spec.suite is not None
        image = image or spec.image or ensure_env_image(spec.env)  # type: ignore[arg-type]
        script = spec.suite.script(instance.base_commit or "HEAD")
        run = run_prediction(instance, patch, spec, image, script, open_sandbox)
    except Exception as error:  # noqa: BLE001 - reported per candidate; a failed run ranks last
        return SuiteRun(error=f"{error.__class__.__name__}: {error}")
    if run.error or not run.patch_applied:
        return SuiteRun(error=run.error or "the patch does not apply")
    inside = run.test_output.split(START_MARKER, 1)[-1].split(END_MARKER, 1)[0]
    statuses = official.harness().parsers[spec.log_parser](inside, None)
    return SuiteRun(passing=sorted(t for t, s in statuses.items() if s in PASSING))


def regressions(baseline: SuiteRun, candidate: SuiteRun) -> int | None:
    """How many tests that pass at the base commit do not pass with the candidate (None: not known)."""
    if baseline.error or candidate.error:
        return None
    return len(set(baseline.passing) - set(candidate.passing))

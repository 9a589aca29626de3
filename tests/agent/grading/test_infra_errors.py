"""A grading whose sandbox dies is an infrastructure error: no verdict, out of pass@k, said apart.

The sandbox is a real Docker container, killed (`docker kill`) right after it starts, as a daemon
restart or an OOM kill of the container would: the grading's first command finds its shell gone and
its container stopped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.grading.evaluate import GradingInterrupted, grade
from agent.grading.runs import run_eval
from agent.instances.records import Instance
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.agent.grading.test_evaluate import MAJORITY, PYPI, _preds, env_image, fixtures  # noqa: F401

pytestmark = pytest.mark.docker


def killed_at_start(which: int) -> Callable[[SandboxConfig], DockerSandbox]:
    """A sandbox factory whose `which`-th sandbox (1-based) has its container killed once started."""
    opened: list[DockerSandbox] = []

    def open_sandbox(config: SandboxConfig) -> DockerSandbox:
        sandbox = DockerSandbox(config)
        opened.append(sandbox)
        if len(opened) == which:
            subprocess.run(["docker", "kill", sandbox.container_id or ""], check=True, capture_output=True)
        return sandbox

    return open_sandbox


def test_a_killed_grading_sandbox_is_not_a_verdict(fixtures: dict[str, Instance], env_image: str,  # noqa: F811
                                                   tmp_path: Path) -> None:
    six = fixtures["six-1.14.0"]
    preds = _preds(tmp_path / "preds.jsonl", [(six.instance_id, six.patch), (six.instance_id, six.patch)])
    report = run_eval(preds, PYPI / "instances.jsonl", workers=1, report_path=tmp_path / "r.json",
                      open_sandbox=killed_at_start(2), select=MAJORITY)
    first, second = report.results
    assert first.resolved and first.error is None and first.error_kind is None
    assert not second.resolved and second.error_kind == "infra" and "was stopped under its session" in (second.error or "")
    assert second.line().startswith("INFRA")
    assert report.errors == report.infra_errors == 1
    scores = report.scores
    assert scores is not None and scores.samples_per_instance[six.instance_id] == 1  # the killed one is no sample
    assert scores.pass_at_1 == pytest.approx(1 / 4)  # six resolved once out of one graded; three unpredicted
    summary = report.summary()
    assert "errors 1 (1 infrastructure)" in summary and "1 predictions were not graded" in summary

    # For `agent batch --evaluate` the same failure raises: the episode is redone, not graded unresolved.
    with pytest.raises(GradingInterrupted, match="was stopped under its session"):
        grade(six, six.patch, env_image, open_sandbox=killed_at_start(1))

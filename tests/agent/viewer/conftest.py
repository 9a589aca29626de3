"""A real `agent solve --trace-tests` output for the trace panel's tests: Docker, tracer and replay model.

Why a real run rather than hand-written trace files: the panel must show what the tracer really
writes (its `..` locals, its frames over two files, its output), and the route must serve the files
where `solve` really puts them. The repository is the bundled example plus one test whose locals hold
HTML, so the same run also feeds the escaping checks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.episode.solve import SolveRequest, solve
from agent.models.factory import make_model
from sandbox.base import SandboxConfig, SandboxError
from tests.helpers import REPO_ROOT
from traces.schema import Ending

ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"
FAILING = "tests/test_core.py::test_touching_intervals_merge"
MARKUP = "tests/test_markup.py::test_label_is_text"
MISSING = "tests/test_core.py::test_missing"
SCRIPT_TAG = "<script>alert(1)</script>"
MARKUP_TEST = f'''\
from intervals import merge


def test_label_is_text():
    label = "{SCRIPT_TAG}"
    html = "<img src=x onerror=alert(2)>" + label
    assert merge([(1, 3), (3, 5)]) == [(1, 5)], html
'''


@dataclass
class TracedRun:
    output: Path  # the run directory: intervals.traj.jsonl and intervals.traces/
    ending: Ending

    @property
    def trajectory(self) -> str:
        return "intervals.traj.jsonl"

    def position(self, node_id: str, phase: str) -> int:
        """The record's position in `test_traces` (what `/api/trace?index=` takes)."""
        return next(i for i, t in enumerate(self.ending.test_traces) if t.node_id == node_id and t.phase == phase)


@pytest.fixture(scope="session")
def traced_run(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> TracedRun:
    from sandbox.docker import DockerSandbox, connect

    try:
        connect().close()
    except SandboxError as error:
        pytest.skip(str(error))
    work = tmp_path_factory.mktemp("traced-run")
    repo = work / "repo"
    shutil.copytree(EXAMPLE / "repo", repo)
    (repo / "tests" / "test_markup.py").write_text(MARKUP_TEST)
    request = SolveRequest(
        repo=str(repo), issue=(EXAMPLE / "issue.md").read_text(), image=base_image, output=work / "run",
        instance_id="intervals", sandbox=SandboxConfig(image=base_image, run_id="pytest-trace-panel"),
        trace_tests=[FAILING, MARKUP, MISSING],
    )
    result = solve(request, lambda: make_model(f"replay:{EXAMPLE / 'trajectory.jsonl'}"), DockerSandbox)
    assert result.ending.status == "submitted", result.ending.reason
    return TracedRun(output=work / "run", ending=result.ending)

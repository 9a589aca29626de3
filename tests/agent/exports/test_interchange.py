"""Interchange with other tools, checked by those tools' own loaders where they can be installed.

- mini-swe-agent (`mini-swe-agent` on PyPI, a dev dependency): exports load in its trajectory
  inspector (`minisweagent.run.utilities.inspector.TrajectoryInspector`, which reads the file and
  splits it into the steps it shows), and every message renders through its `get_content_string`.
- SWE-agent: the current SWE-agent is not on PyPI; the `sweagent` package there is its 0.0.1 release,
  whose trajectory inspector (`inspector/server.py`, `load_content`) is SWE-agent's own `.traj` reader.
  It is unpacked from the wheel (pip download, no dependencies) and loads our export.
- SWE-bench predictions carry one model name (sb-cli refuses a file that names several).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.exports.common import ConvertError
from agent.exports.files import export_files
from agent.exports.mini_swe_agent import to_mini_swe_agent
from tests.helpers import REPO_ROOT
from traces.recorder import read_trajectory, write_trajectory
from traces.schema import Ending, Trajectory

EXAMPLE = REPO_ROOT / "traces" / "examples" / "intervals" / "trajectory.jsonl"
SWEAGENT_WHEEL = "sweagent==0.0.1"


@pytest.fixture()
def example() -> Trajectory:
    return read_trajectory(EXAMPLE)


def _written(trajectory: Trajectory, folder: Path, name: str) -> Path:
    return write_trajectory(trajectory, folder / f"{name}.traj.jsonl")


def test_swebench_export_names_one_model(example: Trajectory, tmp_path: Path) -> None:
    other = example.model_copy(deep=True)
    other.header.instance_id, other.header.model.name = "other", "another-model"
    paths = [_written(example, tmp_path, "a"), _written(other, tmp_path, "b")]
    with pytest.raises(ConvertError, match=r"come from 2 models .*pass --model-name"):
        export_files(paths, "swebench", tmp_path / "preds.jsonl")
    export_files(paths, "swebench", tmp_path / "preds.jsonl", model_name="cwm-32b")
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert {line["model_name_or_path"] for line in lines} == {"cwm-32b"} and len(lines) == 2
    export_files(paths[:1], "swebench", tmp_path / "one.jsonl")  # one model: its own name
    assert json.loads((tmp_path / "one.jsonl").read_text())["model_name_or_path"] == example.header.model.name


def test_mini_swe_agent_export_loads_in_its_inspector(example: Trajectory, tmp_path: Path) -> None:
    from minisweagent.models.utils.content_string import get_content_string
    from minisweagent.run.utilities import inspector

    [path] = export_files([_written(example, tmp_path, "a")], "mini-swe-agent", tmp_path / "out")
    assert path == tmp_path / "out" / "intervals" / "intervals.traj.json"
    app = inspector.TrajectoryInspector([path])
    data = json.loads(path.read_text())
    assert app.messages == data["messages"]  # its loader accepted the file (it clears them on any error)
    assert app.n_steps == 1 + len(example.steps)  # the task page, then one page per model reply
    for page, step in zip(app.steps[1:], example.steps):
        reply = page[0]
        assert reply["role"] == "assistant" and reply["content"] == step.raw_reply
        if step.tool_call is not None and step.tool_call.name == "bash":
            assert reply["extra"]["actions"] == [{"command": step.tool_call.body, "tool": "bash"}]
        if step.observation is not None:
            assert page[1]["content"] == step.observation
    assert all(isinstance(get_content_string(m), str) for m in app.messages)
    exit_message = app.messages[-1]
    assert exit_message["role"] == "exit"
    assert exit_message["extra"] == {"exit_status": "Submitted", "submission": example.ending.submission}
    assert data["info"]["submission"] == example.ending.submission and data["instance_id"] == "intervals"


def test_mini_swe_agent_exit_statuses(example: Trajectory) -> None:
    for status, expected in (("max_turns", "LimitsExceeded"), ("context_exceeded", "ContextWindowExceeded"),
                             ("wall_clock", "TimeExceeded"), ("error", "error")):
        ended = example.model_copy(deep=True)
        ended.ending = Ending(status=status, reason="why")
        assert to_mini_swe_agent(ended)["info"]["exit_status"] == expected
    unfinished = example.model_copy(deep=True)
    unfinished.ending = None
    assert to_mini_swe_agent(unfinished)["messages"][-1]["extra"] == {"exit_status": "Unfinished", "submission": ""}


@pytest.fixture(scope="session")
def sweagent_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SWE-agent 0.0.1 unpacked (its inspector needs only the standard library and PyYAML)."""
    root = tmp_path_factory.mktemp("sweagent")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", SWEAGENT_WHEEL, "-d", str(root)],
                   check=True, timeout=300)
    with zipfile.ZipFile(next(root.glob("sweagent-*.whl"))) as wheel:
        wheel.extractall(root / "pkg")
    return root / "pkg"


def _load_content(root: Path) -> Any:
    spec = importlib.util.spec_from_file_location("sweagent_inspector", root / "inspector" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_content


def test_swe_agent_export_loads_in_its_inspector(example: Trajectory, tmp_path: Path, sweagent_root: Path) -> None:
    # The inspector names results files relative to its own checkout, so trajectories live under it, as
    # SWE-agent's trajectories/ folder does.
    out = sweagent_root / "trajectories" / tmp_path.name
    [path] = export_files([_written(example, tmp_path, "a")], "swe-agent", out)
    content = _load_content(sweagent_root)(str(path), {}, {})
    history = content["history"]
    assert history[0]["role"] == history[-1]["role"] == "Evaluation Report"  # its own additions
    assert "API Calls: " + f"{len(example.steps):,}" in history[0]["content"]
    assert history[-2] == {"role": "model_patch", "content": example.ending.submission}  # from info.submission
    ours = json.loads(path.read_text())["history"]
    assert history[1:-2] == ours
    assert [m["role"] for m in ours[:2]] == ["system", "user"]

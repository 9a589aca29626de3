"""Files in, files out: what `agent export` and `agent import-cwm` call."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from agent.exports.common import ConvertError
from agent.exports.cwm import read_cwm, write_cwm
from agent.exports.cwm_traces import export_cwm_traces
from agent.exports.mini_swe_agent import write_mini_swe_agent
from agent.exports.swe_agent import write_swe_agent
from agent.exports.swebench import write_swebench
from traces.recorder import TrajectoryFormatError, read_trajectory, write_trajectory

__all__ = ["ConvertError", "EXPORT_FORMATS", "export_files", "import_cwm_file"]

EXPORT_FORMATS = ("swebench", "swe-agent", "mini-swe-agent", "cwm", "cwm-traces")
# One file per trajectory, laid out as each tool's runner does: OUTPUT/<id>/<id><suffix>.
PER_TRAJECTORY = {"swe-agent": (".traj", write_swe_agent), "mini-swe-agent": (".traj.json", write_mini_swe_agent)}


def _file_name(instance_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", instance_id).strip("-.") or "episode"


def export_files(
    trajectory_paths: Iterable[Path], to: str, output: Path, *, model_name: str | None = None,
    layout: Literal["rollouts", "transitions"] = "rollouts",
) -> list[Path]:
    """`agent export`: read our trajectories and write them in format `to`; returns the files written.

    swebench and cwm write one file (`output`) for all trajectories; swe-agent and mini-swe-agent write
    one file per trajectory as those tools lay them out, `output/<instance_id>/<instance_id>.traj` and
    `output/<instance_id>/<instance_id>.traj.json`.
    """
    if to not in EXPORT_FORMATS:
        raise ConvertError(f"unknown export format {to!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if to == "cwm-traces":  # run directories or trajectories in, their test traces out (+ a manifest)
        return export_cwm_traces(trajectory_paths, output)
    trajectories = []
    for path in trajectory_paths:
        try:
            trajectories.append(read_trajectory(Path(path)))
        except TrajectoryFormatError as error:
            raise ConvertError(str(error)) from None
    if not trajectories:
        raise ConvertError("no trajectory to export")
    output = Path(output)
    if to in PER_TRAJECTORY:
        suffix, write = PER_TRAJECTORY[to]
        written = []
        for trajectory in trajectories:
            name = _file_name(trajectory.header.instance_id)
            target = output / name / f"{name}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            write(trajectory, target)
            written.append(target)
        return written
    output.parent.mkdir(parents=True, exist_ok=True)
    if to == "swebench":
        write_swebench(trajectories, output, model_name=model_name)
    else:
        write_cwm(trajectories, output, layout=layout)
    return [output]


def import_cwm_file(source: Path, output_dir: Path) -> list[Path]:
    """`agent import-cwm`: every episode of a CWM file as `<instance_id>.traj.jsonl` in `output_dir`
    (a second episode of the same instance gets `.2`, `.3`, ...); returns the files written."""
    trajectories = read_cwm(source)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    written = []
    for trajectory in trajectories:
        name = _file_name(trajectory.header.instance_id)
        seen[name] = seen.get(name, 0) + 1
        suffix = "" if seen[name] == 1 else f".{seen[name]}"
        written.append(write_trajectory(trajectory, output_dir / f"{name}{suffix}.traj.jsonl"))
    return written

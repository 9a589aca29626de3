"""SWE-bench predictions: one JSON line per trajectory: ``{"instance_id", "model_name_or_path", "model_patch"}``, the
shape SWE-bench's harness reads. `model_patch` is the ending's submission (what gets graded);
an episode without one gets ``""`` (graded as unresolved) unless `include_empty=False` drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from traces.schema import Trajectory


class SWEBenchPrediction(BaseModel):
    instance_id: str
    model_name_or_path: str
    model_patch: str


def to_swebench(trajectory: Trajectory, model_name: str | None = None) -> SWEBenchPrediction:
    """The prediction SWE-bench grades: the ending's submission ('' without one)."""
    ending = trajectory.ending
    patch = ending.submission if ending is not None and ending.submission is not None else ""
    name = model_name or trajectory.header.model.name or "cwm-runner"
    return SWEBenchPrediction(instance_id=trajectory.header.instance_id, model_name_or_path=name, model_patch=patch)


def write_swebench(trajectories: Iterable[Trajectory], path: Path, model_name: str | None = None,
                   include_empty: bool = True) -> int:
    """Write predictions as JSON Lines; returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for trajectory in trajectories:
            prediction = to_swebench(trajectory, model_name)
            if not prediction.model_patch and not include_empty:
                continue
            handle.write(prediction.model_dump_json() + "\n")
            count += 1
    return count

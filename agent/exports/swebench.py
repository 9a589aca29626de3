"""SWE-bench predictions: one JSON line per trajectory: ``{"instance_id", "model_name_or_path", "model_patch"}``, the
shape SWE-bench's harness reads. `model_patch` is the ending's submission (what gets graded);
an episode without one gets ``""`` (graded as unresolved) unless `include_empty=False` drops it.

A file holds one model name: sb-cli refuses a submission whose lines name several, and the official
harness files each line's logs under its own name. The name is the one given, else the one every
trajectory's header agrees on; trajectories of several models need an explicit name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from agent.exports.common import ConvertError
from traces.schema import Trajectory

DEFAULT_MODEL_NAME = "cwm-runner"


class SWEBenchPrediction(BaseModel):
    instance_id: str
    model_name_or_path: str
    model_patch: str


def to_swebench(trajectory: Trajectory, model_name: str | None = None) -> SWEBenchPrediction:
    """The prediction SWE-bench grades: the ending's submission ('' without one)."""
    ending = trajectory.ending
    patch = ending.submission if ending is not None and ending.submission is not None else ""
    name = model_name or trajectory.header.model.name or DEFAULT_MODEL_NAME
    return SWEBenchPrediction(instance_id=trajectory.header.instance_id, model_name_or_path=name, model_patch=patch)


def write_swebench(trajectories: Iterable[Trajectory], path: Path, model_name: str | None = None,
                   include_empty: bool = True) -> int:
    """Write predictions as JSON Lines under one model name; returns how many were written."""
    trajectories = list(trajectories)
    model_name = model_name or one_model_name(trajectories)
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for trajectory in trajectories:
            prediction = to_swebench(trajectory, model_name)
            if not prediction.model_patch and not include_empty:
                continue
            handle.write(prediction.model_dump_json() + "\n")
            count += 1
    return count


def one_model_name(trajectories: list[Trajectory]) -> str:
    """The model name all trajectories share; refuses a mix (sb-cli would)."""
    names = sorted({t.header.model.name or DEFAULT_MODEL_NAME for t in trajectories})
    if len(names) > 1:
        raise ConvertError(f"the trajectories come from {len(names)} models ({', '.join(names)}); a SWE-bench "
                           "predictions file names one (sb-cli refuses a mix): pass --model-name")
    return names[0] if names else DEFAULT_MODEL_NAME

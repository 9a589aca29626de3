"""Small builders shared by tests: replay trajectories holding scripted model replies."""

from __future__ import annotations

from pathlib import Path

from traces.recorder import Recorder
from traces.schema import Header, ModelInfo, Step

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "traces" / "examples"


def write_replies(path: Path, replies: list[str], **step_fields: object) -> Path:
    """A minimal trajectory whose steps carry `replies`: the input of the replay model."""
    recorder = Recorder(path, Header(run_id="test", instance_id="scripted", model=ModelInfo(kind="replay")))
    for index, reply in enumerate(replies, start=1):
        recorder.step(Step(index=index, raw_reply=reply, finish_reason="stop", **step_fields))
    recorder.close()
    return path


def bash(command: str, thought: str = "Next step.") -> str:
    return f"{thought}\n</think>\n\n<tool: bash>\n{command}\n</tool>"

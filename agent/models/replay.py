"""Replays the model side of a recorded trajectory: `replay:PATH`.

Each call to `complete` returns the next recorded reply (`Step.raw_reply`) with its recorded
`finish_reason`, token counts and latency, so a replayed episode hits the same turn and context
limits as the original (the loop takes prompt and completion counts from the reply when present).
The conversation passed in is not checked against the recording: replay is for re-running the
runner's side (tools, sandbox, parsing, viewer) against fixed model output, and a diverging
environment is exactly what it should let you see.

Token counting: `count_tokens` is `HeuristicTokenCounter`, deterministic and offline. That is exact
for trajectories recorded with the heuristic (offline runs, tests, servers without `/tokenize`). The
trajectory header does not yet record which counter a run used; when it does (a `token_counter`
field on `ModelInfo` is the natural place), a run counted by a real tokenizer can only be reproduced
with that tokenizer, and this class should refuse rather than silently estimate.
"""

from __future__ import annotations

from pathlib import Path

from agent.models.base import Model, ModelError, ModelReply
from agent.models.tokens import HeuristicTokenCounter
from agent.protocol.render import Message
from traces.recorder import TrajectoryFormatError, read_trajectory
from traces.schema import ModelInfo, Trajectory


class ReplayModel(Model):
    """Re-issues the replies of one trajectory, in order, then refuses with a clear error."""

    def __init__(self, source: Path | str | Trajectory) -> None:
        if isinstance(source, Trajectory):
            self.trajectory = source
            self.source = f"run {source.header.run_id}"
        else:
            try:
                self.trajectory = read_trajectory(Path(source))
            except TrajectoryFormatError as error:
                raise ModelError(f"cannot replay: {error}") from None
            self.source = str(source)
        recorded = self.trajectory.header.model
        self.info = ModelInfo(
            kind="replay",
            name=recorded.name,
            url=f"replay:{self.source}",
            temperature=recorded.temperature,
            top_p=recorded.top_p,
            max_tokens=recorded.max_tokens,
            constrained=recorded.constrained,
        )
        self._counter = HeuristicTokenCounter()
        self._next = 0

    @property
    def replies_left(self) -> int:
        return len(self.trajectory.steps) - self._next

    def complete(self, messages: list[Message]) -> ModelReply:
        steps = self.trajectory.steps
        if self._next >= len(steps):
            raise ModelError(
                f"trajectory {self.source} has only {len(steps)} replies; the replay asked for reply "
                f"{self._next + 1} (the run diverged from the recording, or it ended early)"
            )
        step = steps[self._next]
        self._next += 1
        return ModelReply(
            text=step.raw_reply,
            finish_reason=step.finish_reason,
            prompt_tokens=step.prompt_tokens,
            completion_tokens=step.completion_tokens,
            cached_tokens=step.cached_tokens,
            latency_s=step.model_latency_s or 0.0,
        )

    def count_tokens(self, text: str) -> int:
        return self._counter.count(text)

"""The neural debugger's navigation: step, next, out and back through one real trace, with teacher forcing.

A `DebugSession` holds one real trace and, at every move, asks a predictor for the next frame given
the prompt of the frames visited so far, then scores the answer (`agent.worldmodel.scoring`). Whatever
was predicted, the REAL frame joins the prompt, so one error does not compound into the rest. Kept
apart from `agent.worldmodel.debug` (the command, the report over many calls, the terminal loop)
because this is the state machine both of them drive, and the part whose prompts must stay byte for
byte what the model was trained on (replay files look completions up by the prompt's hash).
"""

from __future__ import annotations

import hashlib

from agent.worldmodel.frames import (
    END_OF_TEXT,
    EVENT_TOKENS,
    FRAME_SEP,
    Frame,
    Trace,
    context_prompt,
    parse_frame_text,
    render_frame,
    resolved_locals,
)
from agent.worldmodel.predictors import PredictionRequest, Predictor
from agent.worldmodel.scoring import FrameComparison, compare_frame


class DebugSession:
    """Step / next / out / back through a real trace with a predictor, scoring every prediction."""

    def __init__(self, trace: Trace, predictor: Predictor) -> None:
        if not trace.frames:
            raise ValueError("the trace has no frames: the entry was never called")
        self.trace = trace
        self.frames = trace.frames
        self.predictor = predictor
        self.context = context_prompt(trace.header.source, trace.header.entry_line)
        self.rendered = [render_frame(frame) + FRAME_SEP for frame in self.frames]
        self.full = resolved_locals(self.frames)
        self.previous = _previous_in_scope(self.frames, self.full)
        self.end_position = len(self.frames) if trace.finished else None
        self.visited: list[int] = [0]
        self.history: list[list[FrameComparison]] = [[]]
        first = hashlib.sha256(self.context.encode("utf-8"))
        first.update(self.rendered[0].encode("utf-8"))
        self._hashes = [first]

    # -- state --

    @property
    def position(self) -> int:
        return self.visited[-1]

    @property
    def done(self) -> bool:
        return self._after(self.position) is None

    @property
    def comparisons(self) -> list[FrameComparison]:
        return [c for move in self.history for c in move]

    def current_frame(self) -> Frame | None:
        return self.frames[self.position] if self.position < len(self.frames) else None

    def current_locals(self) -> dict[str, str]:
        """The real locals here, resolved (for a return or exception: those of the frame before)."""
        here = min(self.position, len(self.frames) - 1)
        scope = self.frames[here].scope
        for index in range(here, -1, -1):
            values = self.full[index]
            if self.frames[index].scope == scope and values is not None:
                return dict(values)
        return {}

    def _after(self, index: int) -> int | None:
        if index + 1 < len(self.frames):
            return index + 1
        if index + 1 == len(self.frames) and self.end_position is not None:
            return self.end_position
        return None

    def _depth_here(self) -> int:
        frame = self.frames[min(self.position, len(self.frames) - 1)]
        return frame.depth - (1 if frame.event == "return" else 0)

    # -- predicting --

    def _predict(self, position: int, forced_event: str | None = None) -> FrameComparison:
        token = EVENT_TOKENS[forced_event] if forced_event else ""
        digest = self._hashes[-1].copy()
        digest.update(token.encode("utf-8"))
        parts = (self.context, *(self.rendered[i] for i in self.visited), token)
        if position < len(self.frames):
            expected = self.rendered[position][: -len(FRAME_SEP)][len(token):]
        else:
            expected = END_OF_TEXT
        request = PredictionRequest(parts, forced_event, position, expected, digest.hexdigest())
        completion = self.predictor.predict(request)
        parsed = parse_frame_text(completion, forced_event)
        real = self.frames[position] if position < len(self.frames) else None
        return compare_frame(real, parsed, real_locals=self.full[position] if real else None,
                             previous=self.previous[position] if real else {},
                             max_chars=self.trace.max_chars, position=position,
                             forced_event=forced_event, completion=completion)

    def _visit(self, position: int, comparisons: list[FrameComparison]) -> None:
        """Teacher forcing: the REAL frame at `position` joins the prompt, whatever was predicted."""
        self.visited.append(position)
        self.history.append(comparisons)
        digest = self._hashes[-1].copy()
        if position < len(self.frames):
            digest.update(self.rendered[position].encode("utf-8"))
        self._hashes.append(digest)

    # -- the demo's commands --

    def step(self) -> list[FrameComparison]:
        """Predict the next frame, stepping into calls."""
        target = self._after(self.position)
        if target is None:
            return []
        comparison = self._predict(target)
        self._visit(target, [comparison])
        return [comparison]

    def next(self) -> list[FrameComparison]:
        """Predict the next frame; if it is a call into a deeper scope, predict its return (the
        event token forced, the callee's frames left out of the prompt) and the frame after."""
        depth = self._depth_here()
        made = self.step()
        here = self.position
        if not made or here >= len(self.frames):
            return made
        frame = self.frames[here]
        if frame.event != "call" or frame.depth <= depth:
            return made
        back = _matching_return(self.frames, here)
        if back is None:  # truncated trace: the callee never returns within it
            return made
        comparison = self._predict(back, "return")
        self._visit(back, [comparison])
        return made + [comparison] + self.step()

    def out(self) -> list[FrameComparison]:
        """Run (with `next`) to the return of the current scope, then one step into the caller."""
        depth = self._depth_here()
        made: list[FrameComparison] = []
        while not self.done:
            made += self.next()
            here = self.position
            if here < len(self.frames) and self.frames[here].event == "return" and self.frames[here].depth == depth:
                return made + self.step()
        return made

    def back(self) -> bool:
        """Forget the last visited frame and its predictions (the start cannot be undone)."""
        if len(self.visited) == 1:
            return False
        self.visited.pop()
        self.history.pop()
        self._hashes.pop()
        return True

    def run(self) -> list[FrameComparison]:
        """Step to the end: one prediction per real frame after the first (what a report scores)."""
        while not self.done:
            self.step()
        return self.comparisons


def _previous_in_scope(frames: list[Frame], full: list[dict[str, str] | None]) -> list[dict[str, str]]:
    """For each frame, the resolved locals of the latest earlier call/line frame of its scope."""
    memory: dict[int, dict[str, str]] = {}
    out: list[dict[str, str]] = []
    for frame, values in zip(frames, full):
        out.append(memory.get(frame.scope, {}))
        if values is not None:
            memory[frame.scope] = values
    return out


def _matching_return(frames: list[Frame], call: int) -> int | None:
    scope = frames[call].scope
    for index in range(call + 1, len(frames)):
        if frames[index].scope == scope and frames[index].event == "return":
            return index
    return None

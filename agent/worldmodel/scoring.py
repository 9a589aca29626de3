"""Scoring the neural debugger: one predicted frame against the real one, and the figures over many.

`compare_frame` says how far a prediction agrees with the real frame (event kind, source line, each
local, the returned or raised value, after the tracer's normalisation); `Score` adds comparisons up
into per-step accuracies and the first divergence; `Report` and `format_report` are what
`agent debug --report` prints. Kept apart from the session (`agent.worldmodel.debug_session`) and the
predictors (`agent.worldmodel.predictors`): these are pure functions of frames and text, with no
model, sandbox or navigation in them, so the rules of agreement can be read and tested on their own.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field

from agent.worldmodel.frames import END, Frame, ParsedFrame, normalize_source, normalize_value
from agent.worldmodel.tracer import UNCHANGED


class FrameComparison(BaseModel):
    """Agreement of one predicted frame with the real one (after the tracer's normalisation)."""

    position: int = Field(description="index of the real frame predicted; the trace's length for its end")
    forced_event: str | None = None
    real_event: str
    predicted_event: str | None = None
    event_ok: bool | None = Field(None, description="None where the event token was given (forced)")
    real_source: str | None = None
    predicted_source: str | None = None
    line_ok: bool | None = None
    locals_compared: int = 0
    locals_ok: int = 0
    local_errors: dict[str, list[str | None]] = Field(default_factory=dict, description="name: [real, predicted]")
    value_ok: bool | None = None
    real_value: str | None = None
    predicted_value: str | None = None
    parse_error: str | None = None
    completion: str = ""

    @property
    def exact(self) -> bool:
        return (self.parse_error is None and self.event_ok is not False and self.line_ok is not False
                and self.locals_ok == self.locals_compared and self.value_ok is not False)


def compare_frame(real: Frame | None, parsed: ParsedFrame, *, real_locals: dict[str, str] | None,
                  previous: dict[str, str], max_chars: int, position: int, forced_event: str | None = None,
                  completion: str = "") -> FrameComparison:
    """Score `parsed` against `real` (None: the real next step is the end of the trace).

    `real_locals` are the real frame's locals with `..` resolved; `previous` the real locals of the
    scope's previous frame, against which a predicted `..` is resolved (teacher forcing makes that
    frame the one in the prompt). Values match when equal after `normalize_value`.
    """
    real_event = END if real is None else real.event
    result = FrameComparison(position=position, forced_event=forced_event, real_event=real_event,
                             predicted_event=parsed.event, parse_error=parsed.error, completion=completion)
    result.event_ok = None if forced_event else parsed.event == real_event
    if real is None:
        return result
    result.real_source, result.predicted_source = real.source, parsed.source
    result.line_ok = normalize_source(parsed.source) == normalize_source(real.source)
    if real.event in ("call", "line"):
        predicted = {name: previous.get(name, value) if value == UNCHANGED else value
                     for name, value in (parsed.locals or {}).items()}
        truth = real_locals or {}
        for name in list(truth) + [n for n in predicted if n not in truth]:
            result.locals_compared += 1
            want, got = truth.get(name), predicted.get(name)
            if want is not None and got is not None and normalize_value(got, max_chars) == want:
                result.locals_ok += 1
            else:
                result.local_errors[name] = [want, got]
    else:
        result.real_value, result.predicted_value = real.arg, parsed.arg
        result.value_ok = parsed.arg is not None and normalize_value(parsed.arg, max_chars) == real.arg
    return result


class Score(BaseModel):
    """Agreement figures over some predictions (one trace, or all of a report)."""

    name: str
    status: str = ""
    frames: int = 0
    event_ok: int = 0
    event_total: int = 0
    line_ok: int = 0
    line_total: int = 0
    locals_ok: int = 0
    locals_total: int = 0
    value_ok: int = 0
    value_total: int = 0
    exact: int = 0
    parse_errors: int = 0
    first_divergence: int | None = Field(None, description="position of the first inexact prediction")
    error: str | None = None

    def add(self, comparison: FrameComparison) -> None:
        self.frames += 1
        if comparison.event_ok is not None:
            self.event_total += 1
            self.event_ok += comparison.event_ok
        if comparison.line_ok is not None:
            self.line_total += 1
            self.line_ok += comparison.line_ok
        self.locals_total += comparison.locals_compared
        self.locals_ok += comparison.locals_ok
        if comparison.value_ok is not None:
            self.value_total += 1
            self.value_ok += comparison.value_ok
        self.exact += comparison.exact
        self.parse_errors += comparison.parse_error is not None
        if not comparison.exact and self.first_divergence is None:
            self.first_divergence = comparison.position

    def merge(self, other: Score) -> None:
        for field in ("frames", "event_ok", "event_total", "line_ok", "line_total", "locals_ok",
                      "locals_total", "value_ok", "value_total", "exact", "parse_errors"):
            setattr(self, field, getattr(self, field) + getattr(other, field))

    @staticmethod
    def ratio(ok: int, total: int) -> float | None:
        return ok / total if total else None

    def accuracies(self) -> dict[str, float | None]:
        return {
            "event": self.ratio(self.event_ok, self.event_total),
            "line": self.ratio(self.line_ok, self.line_total),
            "locals": self.ratio(self.locals_ok, self.locals_total),
            "value": self.ratio(self.value_ok, self.value_total),
            "exact": self.ratio(self.exact, self.frames),
        }


class Report(BaseModel):
    """`agent debug --report`: agreement figures per traced call and in total."""

    model: str
    file: str
    scores: list[Score] = Field(default_factory=list)
    total: Score = Field(default_factory=lambda: Score(name="total"))
    first_divergences: list[int] = Field(default_factory=list)
    diverged: int = 0

    def add(self, score: Score) -> None:
        self.scores.append(score)
        self.total.merge(score)
        if score.first_divergence is not None:
            self.diverged += 1
            self.first_divergences.append(score.first_divergence)


def _percent(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def format_report(report: Report) -> str:
    """The figures as a plain-text table (one row per call, then the total)."""
    head = f"{'call':<44} {'status':<10} {'frames':>6} {'event':>7} {'line':>7} {'locals':>7} {'value':>7} " \
           f"{'exact':>7} {'1st div':>7}"
    rows = [f"world-model agreement: {report.file}  (model: {report.model}, teacher-forced)", head, "-" * len(head)]
    for score in [*report.scores, report.total]:
        if score is report.total:
            rows.append("-" * len(head))
        acc = score.accuracies()
        divergence = "-" if score.first_divergence is None else str(score.first_divergence)
        if score.error:
            rows.append(f"{score.name[:44]:<44} {score.status:<10} {score.error[:60]}")
            continue
        rows.append(f"{score.name[:44]:<44} {score.status:<10} {score.frames:>6} {_percent(acc['event']):>7} "
                    f"{_percent(acc['line']):>7} {_percent(acc['locals']):>7} {_percent(acc['value']):>7} "
                    f"{_percent(acc['exact']):>7} {divergence:>7}")
    traced = len([s for s in report.scores if not s.error])
    if report.first_divergences:
        positions = sorted(report.first_divergences)
        rows.append(f"first divergence: {report.diverged}/{traced} traces diverge; positions {positions[:20]}"
                    f"{' ...' if len(positions) > 20 else ''}; median {statistics.median(positions):g}")
    else:
        rows.append(f"first divergence: none of {traced} traces diverges")
    rows.append(f"locals compared: {report.total.locals_total}; parse errors: {report.total.parse_errors}")
    return "\n".join(rows)

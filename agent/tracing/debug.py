"""The neural debugger: CWM predicts each next frame, the tracer says what really happened.

A `DebugSession` holds one real trace (made by the tracer in a sandbox) and walks it with the
commands of CWM's demo debugger: step, next (skip over calls into deeper scopes), out, back. Every
move asks a `Predictor` for the next frame, given the prompt of the frames visited so far, and
compares the prediction with the real frame: event kind, source line, each local, the returned or
raised value. Teacher forcing: whatever the model predicted, the REAL frame is what is appended to
the prompt, so one error does not compound into the rest; a report therefore measures per-step
accuracy, the way the CWM paper measures its trace prediction (docs/trace-format.md).

Frame 0, the entry's call frame, carries the real arguments and is given, not predicted (the
arguments are not in the source; the demo lets the model invent them, a benchmark cannot).

Predictors (`make_predictor(spec)`), all real features usable from the command line:
  http(s)://HOST:PORT/v1   CWM over raw /v1/completions, stopping at `<|frame_sep|>`
  replay:PATH              completions recorded earlier (`--record PATH`), looked up by prompt hash
  oracle                   the real frame itself (checks the harness: every figure must be 100%)
  perturbed:K              the real frame, with every K-th prediction altered in a known way
"""

from __future__ import annotations

import ast
import hashlib
import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.models.base import ModelError
from agent.models.completions import CompletionsModel
from agent.tracing.frames import (
    ACTION_SEP,
    ARG_SEP,
    END,
    END_OF_TEXT,
    EVENT_TOKENS,
    FRAME_SEP,
    Frame,
    ParsedFrame,
    Trace,
    context_prompt,
    normalize_source,
    normalize_value,
    parse_frame_text,
    render_frame,
    resolved_locals,
)
from agent.tracing.tracer import UNCHANGED

FRAME_SEP_ID = 128100
END_OF_TEXT_ID = 128001
DEFAULT_MAX_TOKENS = 2048  # one frame; the demo's cap


# --- predictors -----------------------------------------------------------------------------------


@dataclass
class PredictionRequest:
    """One question to the model: the prompt (built lazily), and the real answer for oracles."""

    parts: tuple[str, ...]
    forced_event: str | None
    position: int
    expected: str
    key: str

    @property
    def prompt(self) -> str:
        return "".join(self.parts)


class Predictor(ABC):
    """Answers a `PredictionRequest` with the model's text after the prompt, up to `<|frame_sep|>`."""

    name: str = "predictor"

    @abstractmethod
    def predict(self, request: PredictionRequest) -> str:
        """The completion (without the closing `<|frame_sep|>`); `<|end_of_text|>` ends the trace."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""


class OraclePredictor(Predictor):
    """Replays the real frames: a perfect model, to check the harness end to end."""

    name = "oracle"

    def predict(self, request: PredictionRequest) -> str:
        return request.expected


class PerturbedPredictor(Predictor):
    """The real frames with every `every`-th prediction wrong in one field, cycling value/line/event.

    Deterministic, so tests and demos know exactly which figures a report must print.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ModelError("perturbed:K needs K >= 1")
        self.every = every
        self.name = f"perturbed:{every}"
        self.count = 0

    def predict(self, request: PredictionRequest) -> str:
        self.count += 1
        if self.count % self.every:
            return request.expected
        return perturb(request.expected, request.forced_event, (self.count // self.every - 1) % 3)


def perturb(text: str, forced_event: str | None, variant: int) -> str:
    """`text` (a rendered frame) wrong in one way: 0 a value, 1 the source line, 2 the event."""
    parsed = parse_frame_text(text, forced_event)
    if parsed.event == END:
        return render_parsed(ParsedFrame(event="line", locals={}, source="    pass\n"), None)
    if variant == 2 and forced_event is None:
        swapped = {"call": "line", "line": "return", "return": "line", "exception": "line"}[parsed.event or "line"]
        parsed.event = swapped
        if swapped == "line":
            parsed.locals, parsed.arg = parsed.locals or {}, None
        else:
            parsed.locals, parsed.arg = None, parsed.arg or "None"
    elif variant == 0 and (parsed.locals or parsed.arg is not None):
        if parsed.locals:
            name = list(parsed.locals)[-1]
            parsed.locals[name] = "'<perturbed>'"
        else:
            parsed.arg = "'<perturbed>'"
    else:
        parsed.source = "    pass  # perturbed\n"
    return render_parsed(parsed, forced_event)


def render_parsed(parsed: ParsedFrame, forced_event: str | None) -> str:
    """A parsed frame back to text (without the forced event token, which is in the prompt)."""
    token = "" if forced_event else EVENT_TOKENS[parsed.event or "line"]
    if parsed.event in ("call", "line"):
        return f"{token}{json.dumps(parsed.locals or {})}{ACTION_SEP}{parsed.source or ''}"
    return f"{token}{ACTION_SEP}{parsed.source or ''}{ARG_SEP}{json.dumps(parsed.arg)}"


class ReplayRecord(BaseModel):
    """One line of a replay file: what a model answered to the prompt whose SHA-256 is `key`."""

    model_config = ConfigDict(extra="ignore")
    key: str
    completion: str
    position: int | None = None
    forced_event: str | None = None
    model: str = ""


class ReplayPredictor(Predictor):
    """Answers from a replay file (JSON Lines of ReplayRecord), by the hash of the exact prompt."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"replay:{path}"
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ModelError(f"cannot read replay file {path}: {error.strerror}") from None
        self.records: dict[str, ReplayRecord] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = ReplayRecord.model_validate_json(line)
            except ValueError:
                raise ModelError(f"{path}:{number} is not a replay record") from None
            self.records[record.key] = record

    def predict(self, request: PredictionRequest) -> str:
        record = self.records.get(request.key)
        if record is None:
            raise ModelError(
                f"{self.path} has no completion for the prompt of frame {request.position} "
                f"(sha256 {request.key[:16]}); record one with --model URL --record {self.path}"
            )
        return record.completion


class RecordingPredictor(Predictor):
    """Wraps a predictor and appends every answer to a replay file (flushed per answer)."""

    def __init__(self, inner: Predictor, path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def predict(self, request: PredictionRequest) -> str:
        completion = self.inner.predict(request)
        record = ReplayRecord(key=request.key, completion=completion, position=request.position,
                              forced_event=request.forced_event, model=self.inner.name)
        self._handle.write(record.model_dump_json() + "\n")
        self._handle.flush()
        return completion

    def close(self) -> None:
        self._handle.close()
        self.inner.close()


class _TraceCompletion(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class _TraceCompletionResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    choices: list[_TraceCompletion] = Field(default_factory=list)


class TraceCompletionsModel(CompletionsModel):
    """CWM's raw completions endpoint asked for one trace frame at a time.

    vLLM fields: `stop` and `stop_token_ids` end the reply at `<|frame_sep|>` (a special token, so
    the id catches it before detokenisation) or `<|end_of_text|>`; `stop_reason` says which one;
    `skip_special_tokens: false` keeps the trace tokens in the text; `add_special_tokens: false`
    because the prompt carries its own `<|begin_of_text|>`.
    """

    def complete_frame(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt,
            "max_tokens": max_tokens,
            **self.sampling_fields(),
            "stop": [FRAME_SEP, END_OF_TEXT],
            "stop_token_ids": [FRAME_SEP_ID, END_OF_TEXT_ID],
            "skip_special_tokens": False,
            "add_special_tokens": False,
        }
        body.update(self.options.extra_body)
        data = self._client.post("/completions", body)
        response = _TraceCompletionResponse.model_validate(data)
        if not response.choices:
            raise ModelError(f"model server at {self.api_base} returned a completion with no choices")
        choice = response.choices[0]
        text = choice.text
        for marker in (FRAME_SEP, END_OF_TEXT):  # servers that leave the stop string in
            if text.endswith(marker):
                return text if marker == END_OF_TEXT else text[: -len(marker)]
        if choice.stop_reason in (END_OF_TEXT_ID, END_OF_TEXT) or (
            choice.finish_reason == "stop" and choice.stop_reason is None and not text.strip()
        ):
            return text + END_OF_TEXT
        return text


class CompletionsPredictor(Predictor):
    def __init__(self, url: str, *, temperature: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS,
                 model: str | None = None, **options: Any) -> None:
        top_p = 0.95 if temperature > 0 else None
        self.model = TraceCompletionsModel(url, temperature=temperature, top_p=top_p, model=model, **options)
        self.max_tokens = max_tokens
        self.name = url

    def predict(self, request: PredictionRequest) -> str:
        return self.model.complete_frame(request.prompt, self.max_tokens)

    def close(self) -> None:
        self.model.close()


def make_predictor(spec: str, *, record: Path | None = None, temperature: float = 0.0,
                   max_tokens: int = DEFAULT_MAX_TOKENS, model: str | None = None) -> Predictor:
    """`oracle`, `perturbed:K`, `replay:PATH` or a server URL (see the module docstring)."""
    text = spec.strip()
    predictor: Predictor
    if text == "oracle":
        predictor = OraclePredictor()
    elif text.startswith("perturbed:"):
        try:
            predictor = PerturbedPredictor(int(text.split(":", 1)[1]))
        except ValueError:
            raise ModelError(f"'{spec}': use perturbed:K with K a whole number, e.g. perturbed:5") from None
    elif text.startswith("replay:"):
        predictor = ReplayPredictor(Path(text.split(":", 1)[1]))
    elif text.startswith(("http://", "https://", "completions:")):
        url = text.split(":", 1)[1] if text.startswith("completions:") else text
        predictor = CompletionsPredictor(url, temperature=temperature, max_tokens=max_tokens, model=model)
    else:
        raise ModelError(f"unknown model '{spec}': use oracle, perturbed:K, replay:PATH or http(s)://HOST:PORT/v1")
    return RecordingPredictor(predictor, record) if record is not None else predictor


# --- comparing a predicted frame with the real one ------------------------------------------------


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


# --- the session ----------------------------------------------------------------------------------


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


# --- reports ----------------------------------------------------------------------------------------


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


def score_trace(trace: Trace, predictor: Predictor, name: str) -> tuple[Score, list[FrameComparison]]:
    session = DebugSession(trace, predictor)
    comparisons = session.run()
    score = Score(name=name, status=trace.end.status)
    for comparison in comparisons:
        score.add(comparison)
    return score, comparisons


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


class CallSpec(BaseModel):
    """One call to trace: `function(*args, **kwargs)`, or positional args as a Python literal."""

    model_config = ConfigDict(extra="forbid")
    function: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    args_literal: str | None = None

    def label(self) -> str:
        if self.args_literal:
            literal = self.args_literal.strip()
            text = self.function + (literal if literal.startswith("(") else f"(*{literal})")
        else:
            shown = [json.dumps(a) for a in self.args] + [f"{k}={json.dumps(v)}" for k, v in self.kwargs.items()]
            text = f"{self.function}({', '.join(shown)})"
        return text if len(text) <= 60 else text[:57] + "..."


def load_calls(path: Path) -> list[CallSpec]:
    """A JSON list, or JSON Lines, of CallSpec objects."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.strip()
    items = json.loads(stripped) if stripped.startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                  if line.strip()]
    return [CallSpec.model_validate(item) for item in items]


def discover_calls(source: str) -> list[CallSpec]:
    """Every top-level function of a file that can be called without arguments (a whole-file run)."""
    calls = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            arguments = node.args
            required = len(arguments.posonlyargs) + len(arguments.args) - len(arguments.defaults)
            required += sum(default is None for default in arguments.kw_defaults)
            if required == 0:
                calls.append(CallSpec(function=node.name))
    return calls


TraceMaker = Callable[[CallSpec], Trace]


def build_report(calls: Iterable[CallSpec], make_trace: TraceMaker, predictor: Predictor, *,
                 file: str) -> tuple[Report, dict[str, list[FrameComparison]]]:
    """Trace each call (`make_trace`, normally the sandbox tracer), then score the predictor on it."""
    report = Report(model=predictor.name, file=file)
    details: dict[str, list[FrameComparison]] = {}
    for call in calls:
        label = call.label()
        try:
            trace = make_trace(call)
        except Exception as error:  # noqa: BLE001 - one failing call must not end the report
            report.scores.append(Score(name=label, status="error", error=str(error)))
            continue
        if not trace.frames:
            report.scores.append(Score(name=label, status=trace.end.status, error="the entry was never called"))
            continue
        score, comparisons = score_trace(trace, predictor, label)
        report.add(score)
        details[label] = comparisons
    return report, details


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


# --- interactive ------------------------------------------------------------------------------------

HELP = """commands:
  s, step     predict the next frame (into calls)
  n, next     next frame; a call is skipped (its return predicted directly)
  o, out      run to the return of the current function, then one step
  b, back     forget the last frame
  p [NAME]    real locals here (or one of them)
  w, where    the predictions of the last move, in detail
  q, quit     leave"""


def describe(comparison: FrameComparison) -> str:
    """One prediction as a line (and a line per disagreement)."""
    mark = "ok" if comparison.exact else "DIFF"
    source = (comparison.real_source or "").rstrip("\n")
    event = comparison.real_event
    if comparison.event_ok is False:
        event += f" (predicted {comparison.predicted_event})"
    lines = [f"[{mark:>4}] #{comparison.position} {event}: {source.strip() or '<end of trace>'}"]
    if comparison.line_ok is False:
        lines.append(f"        line predicted: {(comparison.predicted_source or '').rstrip()}")
    for name, (real, predicted) in comparison.local_errors.items():
        lines.append(f"        {name}: real {real}  predicted {predicted}")
    if comparison.value_ok is False:
        lines.append(f"        value: real {comparison.real_value}  predicted {comparison.predicted_value}")
    if comparison.parse_error:
        lines.append(f"        unparsable prediction: {comparison.parse_error}")
    return "\n".join(lines)


def interactive(session: DebugSession, read: Callable[[str], str], write: Callable[[str], None]) -> None:
    """A pdb-like loop over `session`; `read`/`write` are input() and print() in a terminal."""
    frame = session.current_frame()
    write(f"-> #0 call: {frame.source.strip() if frame else ''}   (given: {json.dumps(frame.locals) if frame else ''})")
    last: list[FrameComparison] = []
    while True:
        try:
            command = read(">> ").strip()
        except EOFError:
            return
        word, _, argument = command.partition(" ")
        moves = {"s": session.step, "step": session.step, "n": session.next, "next": session.next,
                 "o": session.out, "out": session.out}
        if word in moves:
            if session.done:
                write("the trace has ended")
                continue
            last = moves[word]()
            write("\n".join(describe(c) for c in last) if last else "the trace has ended")
        elif word in ("b", "back"):
            write("back" if session.back() else "at the start")
        elif word in ("p", "print"):
            values = session.current_locals()
            write(values.get(argument.strip(), f"no local {argument.strip()}") if argument.strip() else
                  json.dumps(values, indent=1))
        elif word in ("w", "where"):
            write("\n".join(c.model_dump_json(indent=1) for c in last) or "nothing predicted yet")
        elif word in ("q", "quit", "exit"):
            return
        elif word:
            write(HELP)


# --- `agent debug` ----------------------------------------------------------------------------------


def collect_calls(*, source: str, function: str | None, args: str | None, args_py: str | None,
                  calls_file: Path | None, all_functions: bool) -> list[CallSpec]:
    """The calls a debug run covers: --function/--args, a --calls file, and/or --all."""
    from agent.tracing.run import parse_call_args

    calls: list[CallSpec] = []
    if function:
        positional, keywords = parse_call_args(args)
        calls.append(CallSpec(function=function, args=positional, kwargs=keywords, args_literal=args_py))
    if calls_file is not None:
        calls += load_calls(calls_file)
    if all_functions:
        calls += discover_calls(source)
    return calls


def debug_command(*, file: Path, function: str | None = None, args: str | None = None,
                  args_py: str | None = None, calls_file: Path | None = None, all_functions: bool = False,
                  repo: Path | None = None, model: str = "oracle", record: Path | None = None,
                  report: bool = False, report_json: Path | None = None, temperature: float = 0.0,
                  max_tokens: int = DEFAULT_MAX_TOKENS, served_model: str | None = None,
                  limits: Any = None, image: str | None = None,
                  read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> int:
    """What `agent debug` does; returns the exit code (0 ok, 1 some prediction diverged in a report)."""
    from agent.tracing.run import TraceError, open_sandbox, stage_inputs, trace_function

    host_file = Path(file)
    if not host_file.is_file() and repo is not None and (Path(repo) / host_file).is_file():
        host_file = Path(repo) / host_file
    try:
        source = host_file.read_text(encoding="utf-8")
    except OSError as error:
        raise TraceError(f"cannot read {file}: {error.strerror}") from None
    calls = collect_calls(source=source, function=function, args=args, args_py=args_py, calls_file=calls_file,
                          all_functions=all_functions)
    if not calls:
        raise TraceError("nothing to run: give --function NAME [--args JSON], --calls FILE or --all")
    if not report and len(calls) != 1:
        raise TraceError("the interactive debugger takes one call; add --report to score several")
    predictor = make_predictor(model, record=record, temperature=temperature, max_tokens=max_tokens,
                               model=served_model)
    sandbox = open_sandbox(image, run_id="agent-debug")
    try:
        entry, root = stage_inputs(sandbox, file, repo)
        assert entry is not None
        includes = [root] if repo else None

        def make_trace(call: CallSpec) -> Trace:
            result = trace_function(sandbox, entry, call.function, call.args, call.kwargs,
                                    args_literal=call.args_literal, include=includes, root=root, limits=limits)
            return result.trace

        if report:
            built, details = build_report(calls, make_trace, predictor, file=str(file))
            write(format_report(built))
            if report_json is not None:
                report_json.parent.mkdir(parents=True, exist_ok=True)
                report_json.write_text(json.dumps({
                    "report": built.model_dump(mode="json"),
                    "comparisons": {k: [c.model_dump(mode="json") for c in v] for k, v in details.items()},
                }, indent=1), encoding="utf-8")
                write(f"report: {report_json}")
            return 1 if built.diverged else 0
        trace = make_trace(calls[0])
        if not trace.frames:
            raise TraceError(f"{calls[0].label()} was never called ({trace.end.status}: {trace.end.error})")
        write(f"{calls[0].label()}: {len(trace.frames)} real frames ({trace.end.status}); model: {predictor.name}")
        interactive(DebugSession(trace, predictor), read, write)
        return 0
    finally:
        sandbox.close()
        predictor.close()

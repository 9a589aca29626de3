"""Predictors for the neural debugger: what answers "which frame comes next?" for a prompt.

A `Predictor` gets a `PredictionRequest` (the prompt of the frames visited so far, and the real
answer for the back-ends that replay it) and returns the model's text for the next frame. Kept apart
from the debugger (`agent.worldmodel.debug`) and its scoring (`agent.worldmodel.scoring`) because
this is the only part that talks to a model server or a replay file: the session and the figures
do not care where a prediction came from, and a new back-end touches only this module.

Predictors (`make_predictor(spec)`), all real features usable from the command line:
  http(s)://HOST:PORT/v1   CWM over raw /v1/completions, stopping at `<|frame_sep|>`
  replay:PATH              completions recorded earlier (`--record PATH`), looked up by prompt hash
  oracle                   the real frame itself (checks the harness: every figure must be 100%)
  perturbed:K              the real frame, with every K-th prediction altered in a known way
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.models.base import ModelError
from agent.models.completions import CompletionsModel
from agent.worldmodel.frames import (
    ACTION_SEP,
    ARG_SEP,
    END,
    END_OF_TEXT,
    EVENT_TOKENS,
    FRAME_SEP,
    ParsedFrame,
    parse_frame_text,
)

FRAME_SEP_ID = 128100
END_OF_TEXT_ID = 128001
DEFAULT_MAX_TOKENS = 2048  # one frame; the demo's cap


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

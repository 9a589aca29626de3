"""Trace records (pydantic), their JSON Lines file, and CWM's trace prompt text.

The tracer (agent/worldmodel/tracer.py, stdlib only, inside the sandbox) writes the JSON Lines; this
module is the boundary where they are validated. The prompt layout is cwm-protocol.md section 7 and
CWM's PROMPTING_GUIDE: `<|begin_of_text|><|trace_context_start|>` + source with the entry's `def`
line marked + `<|frame_sep|>`, then one `<event>{locals}<|action_sep|>{line}[<|arg_sep|>{value}]
<|frame_sep|>` per frame, then `<|end_of_text|>` once the entry scope is left. Each rule is
documented in docs/trace-format.md; tests/agent/worldmodel/test_trace_prompt.py spells the exact text out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

from agent.protocol.render import BEGIN_OF_TEXT, END_OF_TEXT
from agent.worldmodel.tracer import FINISHED, MARKER_TAIL, UNCHANGED, mark_source, normalize_text

FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"

Event = Literal["call", "line", "return", "exception"]
EVENT_TOKENS: dict[str, str] = {"call": CALL_SEP, "line": LINE_SEP, "return": RETURN_SEP, "exception": EXCEPTION_SEP}
TOKEN_EVENTS: dict[str, str] = {token: event for event, token in EVENT_TOKENS.items()}
END = "end"  # the pseudo-event of `<|end_of_text|>`: leaving the entry scope


class TraceHeader(BaseModel):
    """What was traced and how; `source` is the entry file, the context of the prompt."""

    type: Literal["header"] = "header"
    format_version: int = 1
    mode: Literal["function", "script", "pytest"]
    file: str
    function: str | None = None
    entry_line: int
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    args_literal: str | None = None
    argv: list[str] = Field(default_factory=list)
    pytest_args: list[str] = Field(default_factory=list)
    root: str
    include: list[str] = Field(default_factory=list)
    python: str = ""
    hash_seed: str | None = None
    limits: dict[str, int | float] = Field(default_factory=dict)
    traced: bool = True
    source: str


class Frame(BaseModel):
    """One execution step. `locals` only on call and line frames, `arg` only on return/exception."""

    type: Literal["frame"] = "frame"
    index: int
    event: Event
    scope: int = Field(description="activation id: one per call event (a generator resume is a new one)")
    depth: int = Field(description="traced activations below this one on the stack (entry: 0)")
    function: str
    file: str
    lineno: int
    source: str = Field(description="the source line, indentation and newline included")
    locals: dict[str, str] | None = None
    arg: str | None = Field(None, description="repr of the returned value or raised exception")
    unwinding: bool = Field(False, description="a return event of a scope left by an exception")


class TraceEnd(BaseModel):
    """How the trace ended: `returned`/`raised` (complete), a bound, `not_called`, `error`, `untraced`."""

    type: Literal["end"] = "end"
    status: Literal["returned", "raised", "max_frames", "max_seconds", "max_bytes", "not_called", "error",
                    "untraced"]
    frames: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    entry_elapsed_s: float | None = Field(None, description="the traced entry call, call to return")
    run_elapsed_s: float | None = Field(None, description="the whole run: function call, script or pytest.main")
    result: str | None = None
    error: str | None = None
    exit_code: int | None = None


Record = Annotated[Union[TraceHeader, Frame, TraceEnd], Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter[TraceHeader | Frame | TraceEnd] = TypeAdapter(Record)


class TraceFormatError(ValueError):
    """A trace file that is not in this format; the message says which line."""


class Trace(BaseModel):
    header: TraceHeader
    frames: list[Frame] = Field(default_factory=list)
    end: TraceEnd

    @property
    def finished(self) -> bool:
        """The entry scope was left (returned or raised): the prompt ends with `<|end_of_text|>`."""
        return self.end.status in FINISHED

    @property
    def max_chars(self) -> int:
        return int(self.header.limits.get("max_repr_chars", 500))


# --- JSON Lines -----------------------------------------------------------------------------------


def parse_trace(text: str, where: str = "trace") -> Trace:
    """Validate the tracer's JSON Lines: one header, frames in order, one ending."""
    header: TraceHeader | None = None
    frames: list[Frame] = []
    end: TraceEnd | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = RECORD_ADAPTER.validate_json(line)
        except ValueError as error:
            raise TraceFormatError(f"{where}:{number}: not a trace record ({str(error).splitlines()[0]})") from None
        if isinstance(record, TraceHeader):
            header = record
        elif isinstance(record, Frame):
            if record.index != len(frames):
                raise TraceFormatError(f"{where}:{number}: frame {record.index} out of order")
            frames.append(record)
        else:
            end = record
    if end is not None and end.status == "error":
        raise TraceFormatError(f"{where}: the tracer could not run: {end.error}")
    if header is None or end is None:
        raise TraceFormatError(f"{where}: missing the {'header' if header is None else 'ending'} record")
    return Trace(header=header, frames=frames, end=end)


def read_trace(path: Path) -> Trace:
    return parse_trace(Path(path).read_text(encoding="utf-8"), str(path))


def dump_trace(trace: Trace) -> str:
    """The JSON Lines text of a trace, laid out as the tracer writes it (every field present)."""
    records: list[BaseModel] = [trace.header, *trace.frames, trace.end]
    return "".join(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n" for record in records)


# --- the prompt -----------------------------------------------------------------------------------


def mark_entry(source: str, line: int) -> str:
    """The context: `source` with one `  # << START_OF_TRACE`, on line `line` (1-based).

    Markers the program already carries (CWM's demos write one) are removed first, so the text
    has exactly one, on the real entry; line endings are kept (`tracer.mark_source`).
    """
    return mark_source(source, line)


def context_prompt(source: str, entry_line: int) -> str:
    """The part before any frame: `<|begin_of_text|><|trace_context_start|>{source}<|frame_sep|>`."""
    return BEGIN_OF_TEXT + TRACE_CONTEXT_START + mark_entry(source, entry_line) + FRAME_SEP


def render_frame(frame: Frame) -> str:
    """One frame without its closing `<|frame_sep|>`; JSON as `json.dumps` writes it by default."""
    token = EVENT_TOKENS[frame.event]
    if frame.event in ("call", "line"):
        return f"{token}{json.dumps(frame.locals or {})}{ACTION_SEP}{frame.source}"
    return f"{token}{ACTION_SEP}{frame.source}{ARG_SEP}{json.dumps(frame.arg)}"


def render_prompt(trace: Trace, frames: int | None = None) -> str:
    """The whole trace as CWM text; `frames` cuts it after that many frames (no end marker then)."""
    shown = trace.frames if frames is None else trace.frames[:frames]
    body = "".join(render_frame(frame) + FRAME_SEP for frame in shown)
    complete = frames is None or frames >= len(trace.frames)
    return context_prompt(trace.header.source, trace.header.entry_line) + body + (
        END_OF_TEXT if complete and trace.finished else "")


# --- predicted frames -----------------------------------------------------------------------------


class ParsedFrame(BaseModel):
    """A frame as a model wrote it; `event == "end"` for `<|end_of_text|>`; `error` if malformed."""

    event: str | None = None
    locals: dict[str, str] | None = None
    source: str | None = None
    arg: str | None = None
    error: str | None = None


def parse_frame_text(text: str, forced_event: str | None = None) -> ParsedFrame:
    """Parse one predicted frame (the text up to its `<|frame_sep|>`, which is not included).

    `forced_event` is the event whose token ended the prompt (the model's text starts after it).
    Lenient where the demo is lenient: bad locals JSON is reported, not fatal, so the line and
    value can still be scored.
    """
    rest = text
    if forced_event is None:
        stripped = text.lstrip()
        if stripped.startswith(END_OF_TEXT):
            return ParsedFrame(event=END)
        for token, event in TOKEN_EVENTS.items():
            if stripped.startswith(token):
                forced_event, rest = event, stripped[len(token):]
                break
        else:
            return ParsedFrame(error=f"does not start with an event token: {text[:80]!r}")
    parsed = ParsedFrame(event=forced_event)
    head, found, tail = rest.partition(ACTION_SEP)
    if not found:
        parsed.error = "no <|action_sep|>"
        return parsed
    if forced_event in ("call", "line"):
        try:
            values = json.loads(head) if head.strip() else {}
            if not isinstance(values, dict):
                raise ValueError("not an object")
            parsed.locals = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        except ValueError as error:
            parsed.error = f"locals are not a JSON object: {error}"
    source, found, value = tail.partition(ARG_SEP)
    parsed.source = source
    if found:
        try:
            decoded = json.loads(value)
            parsed.arg = decoded if isinstance(decoded, str) else json.dumps(decoded)
        except ValueError:
            parsed.arg = value
    elif forced_event in ("return", "exception"):
        parsed.error = parsed.error or "no <|arg_sep|> value"
    return parsed


def normalize_source(line: str | None) -> str | None:
    """A source line as compared: no newline, no START_OF_TRACE marker, no trailing blanks."""
    if line is None:
        return None
    text = line.rstrip("\r\n")
    marker = MARKER_TAIL.search(text)
    if marker is not None:
        text = text[: marker.start()]
    return text.rstrip()


def normalize_value(text: str, max_chars: int) -> str:
    """A value as compared: the tracer's own rules (addresses normalised, cut at max_chars)."""
    return normalize_text(text, max_chars) if text != UNCHANGED else text


def resolved_locals(frames: list[Frame]) -> list[dict[str, str] | None]:
    """Every call/line frame's locals with `..` replaced by the value it stands for (per scope)."""
    memory: dict[int, dict[str, str]] = {}
    out: list[dict[str, str] | None] = []
    for frame in frames:
        if frame.locals is None:
            out.append(None)
            continue
        previous = memory.get(frame.scope, {})
        full = {name: previous.get(name, value) if value == UNCHANGED else value
                for name, value in frame.locals.items()}
        memory[frame.scope] = full
        out.append(full)
    return out

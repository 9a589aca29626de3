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

This module is `agent debug` itself: which calls to trace, the report over them, and the interactive
loop. The parts it drives live beside it:
  agent.worldmodel.predictors     the predictor back-ends (`make_predictor(spec)`: a CWM server URL,
                                  replay:PATH, oracle, perturbed:K)
  agent.worldmodel.debug_session  `DebugSession`: step / next / out / back with teacher forcing
  agent.worldmodel.scoring        comparing a predicted frame with the real one, scores, the report
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.worldmodel.debug_session import DebugSession
from agent.worldmodel.frames import Trace
from agent.worldmodel.predictors import DEFAULT_MAX_TOKENS, Predictor, make_predictor
from agent.worldmodel.scoring import FrameComparison, Report, Score, format_report

# --- which calls to trace ---------------------------------------------------------------------------


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


# --- reports ----------------------------------------------------------------------------------------


def score_trace(trace: Trace, predictor: Predictor, name: str) -> tuple[Score, list[FrameComparison]]:
    session = DebugSession(trace, predictor)
    comparisons = session.run()
    score = Score(name=name, status=trace.end.status)
    for comparison in comparisons:
        score.add(comparison)
    return score, comparisons


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
    from agent.worldmodel.run import parse_call_args

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
    from agent.worldmodel.run import TraceError, open_sandbox, stage_inputs, trace_function
    from agent.worldmodel.tracer import decode_source

    host_file = Path(file)
    if not host_file.is_file() and repo is not None and (Path(repo) / host_file).is_file():
        host_file = Path(repo) / host_file
    try:
        source = decode_source(host_file.read_bytes())  # PEP 263: a latin-1 module is valid Python
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

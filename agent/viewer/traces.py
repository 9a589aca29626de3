"""The trace stepper's data: one test trace of `agent solve --trace-tests`, ready for the page.

Why the server prepares it rather than the page: the `..` of the trace format ("unchanged since
the previous frame of this scope") is resolved by the same code the debugger uses
(`agent.tracing.frames.resolved_locals`), so the page never re-implements the format's rules.
Why a value table: resolving `..` repeats every unchanged value in every frame; values are sent
once and frames refer to them by number, so the document stays about the size of the trace file.

Source text comes only from the trace: the entry file's whole source (the header's `source`, the
prompt's context) and, for every other file, the lines its frames carry. The host's checkout is
never read: it may not exist where the viewer runs, and it is not what the sandbox ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.trace_tests import OUTPUT_FILE, TRACE_FILE
from agent.tracing.frames import Trace, read_trace, resolved_locals
from agent.tracing.tracer import UNCHANGED
from traces.schema import TracedTest

OUTPUT_LIMIT = 64 * 1024


def source_files(trace: Trace) -> dict[str, dict[str, Any]]:
    """file -> {"complete": whole file or only the lines seen, "lines": [[lineno, text], ...]}."""
    files: dict[str, dict[int, str]] = {}
    complete = {trace.header.file}
    files[trace.header.file] = {n: text for n, text in enumerate(_lines(trace.header.source), start=1)}
    for frame in trace.frames:
        if frame.file not in complete:
            files.setdefault(frame.file, {})[frame.lineno] = frame.source.rstrip("\r\n")
    return {name: {"complete": name in complete, "lines": [[n, lines[n]] for n in sorted(lines)]}
            for name, lines in files.items()}


def _lines(source: str) -> list[str]:
    return [line.rstrip("\r\n") for line in source.splitlines(keepends=True)]


def trace_document(directory: Path, record: TracedTest) -> dict[str, Any]:
    """The JSON document of `/api/trace`: the record, header facts, ending, sources and frames."""
    trace = read_trace(directory / TRACE_FILE)
    values: list[str] = []
    index: dict[str, int] = {}

    def ref(text: str) -> int:
        if text not in index:
            index[text] = len(values)
            values.append(text)
        return index[text]

    frames = []
    for frame, full in zip(trace.frames, resolved_locals(trace.frames)):
        frames.append({
            "index": frame.index, "event": frame.event, "scope": frame.scope, "depth": frame.depth,
            "function": frame.function, "file": frame.file, "lineno": frame.lineno,
            # [name, value number, changed]: changed = shown in full in this frame (not `..`).
            "locals": None if full is None else [
                [name, ref(value), (frame.locals or {}).get(name) != UNCHANGED] for name, value in full.items()],
            "arg": frame.arg, "unwinding": frame.unwinding,
        })
    header = trace.header
    output_path = directory / OUTPUT_FILE
    output = ""
    if output_path.is_file():
        with output_path.open("rb") as handle:
            output = handle.read(OUTPUT_LIMIT).decode("utf-8", errors="replace")
    return {
        "record": record.model_dump(mode="json"),
        "header": {"mode": header.mode, "file": header.file, "function": header.function,
                   "entry_line": header.entry_line, "python": header.python, "limits": header.limits},
        "end": trace.end.model_dump(mode="json"),
        "files": source_files(trace),
        "values": values,
        "frames": frames,
        "output": output,
    }

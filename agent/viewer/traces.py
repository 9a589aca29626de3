"""The trace stepper's data: one test trace of `agent solve --trace-tests`, ready for the page.

Why the server prepares it rather than the page: the `..` of the trace format ("unchanged since
the previous frame of this scope") is resolved by the same code the debugger uses
(`agent.worldmodel.frames.resolved_locals`), so the page never re-implements the format's rules.
Why a value table: resolving `..` repeats every unchanged value in every frame; values are sent
once and frames refer to them by number, so the document stays about the size of the trace file.

Source text comes only from the trace's folder: the entry file's whole source (the header's
`source`, the prompt's context), every other traced file as the sandbox held it when the test ran
(`sources.json`), and, for a file missing there, the lines its frames carry. The host's checkout is
never read: it may not exist where the viewer runs, and it is not what the sandbox ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.worldmodel.frames import Trace, read_trace, resolved_locals
from agent.worldmodel.traced_tests import OUTPUT_FILE, SOURCES_FILE, TRACE_FILE
from agent.worldmodel.tracer import UNCHANGED, physical_lines
from traces.schema import TracedTest

OUTPUT_LIMIT = 64 * 1024


def source_files(trace: Trace, sources: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """file -> {"complete": whole file or only the lines seen, "lines": [[lineno, text], ...]}."""
    whole = {**(sources or {}), trace.header.file: trace.header.source}
    files = {name: {n: text for n, text in enumerate(_lines(source), start=1)} for name, source in whole.items()
             if any(frame.file == name for frame in trace.frames) or name == trace.header.file}
    complete = set(files)
    for frame in trace.frames:
        if frame.file not in complete:
            files.setdefault(frame.file, {})[frame.lineno] = frame.source.rstrip("\r\n")
    return {name: {"complete": name in complete, "lines": [[n, lines[n]] for n in sorted(lines)]}
            for name, lines in files.items()}


def contained_file(directory: Path, name: str) -> Path | None:
    """`directory/name` if it is a regular file that resolves (links followed) inside `directory`.

    Why: a trace folder comes from a run directory anyone could have written; a link named
    `output.txt` must not make the viewer send a file from elsewhere on the host.
    """
    path = (directory / name).resolve()
    return path if path.is_relative_to(directory.resolve()) and path.is_file() else None


def read_sources(directory: Path) -> dict[str, str]:
    """The trace's `sources.json` ({} when absent or unreadable: traces made before it existed)."""
    path = contained_file(directory, SOURCES_FILE)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {str(name): text for name, text in loaded.items() if isinstance(text, str)}


def _lines(source: str) -> list[str]:
    """Lines numbered as Python numbers them (a form feed does not end a line), endings dropped."""
    return [line.rstrip("\r\n") for line in physical_lines(source)]


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
    output_path = contained_file(directory, OUTPUT_FILE)
    output = ""
    if output_path is not None:
        with output_path.open("rb") as handle:
            output = handle.read(OUTPUT_LIMIT).decode("utf-8", errors="replace")
    return {
        "record": record.model_dump(mode="json"),
        "header": {"mode": header.mode, "file": header.file, "function": header.function,
                   "entry_line": header.entry_line, "python": header.python, "limits": header.limits},
        "end": trace.end.model_dump(mode="json"),
        "files": source_files(trace, read_sources(directory)),
        "values": values,
        "frames": frames,
        "output": output,
    }

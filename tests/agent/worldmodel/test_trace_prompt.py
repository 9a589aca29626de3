"""The CWM trace prompt: exact token layout (spelled out here by hand), JSONL, parsing predictions.

Layout (cwm-protocol.md section 7, CWM's PROMPTING_GUIDE and demo debugger):
`<|begin_of_text|><|trace_context_start|>` + source with the entry's def line marked
`  # << START_OF_TRACE` + `<|frame_sep|>`, then per frame
`<|call_sep|>{locals}<|action_sep|>{line}<|frame_sep|>` (and line_sep alike),
`<|return_sep|><|action_sep|>{line}<|arg_sep|>{json value}<|frame_sep|>` (and exception_sep alike),
then `<|end_of_text|>` once the entry returns or raises out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.worldmodel.frames import (
    END,
    Frame,
    Trace,
    TraceEnd,
    TraceFormatError,
    TraceHeader,
    dump_trace,
    mark_entry,
    normalize_source,
    parse_frame_text,
    parse_trace,
    read_trace,
    render_frame,
    render_prompt,
)
from agent.worldmodel.run import stage, trace_function
from agent.worldmodel.tracer import (
    decode_source,
    def_lines,
    definition_line,
    marker_columns,
    marker_line,
    physical_lines,
)
from sandbox.base import Sandbox, SandboxConfig, SandboxError
from tests.helpers import REPO_ROOT

PROGRAMS = Path(__file__).resolve().parent / "programs"
EXAMPLE = REPO_ROOT / "traces" / "examples" / "trace"

SOURCE = "def f(a):\n    b = a + 1\n    return b\n"


def hand_trace(status: str = "returned") -> Trace:
    frames = [
        Frame(index=0, event="call", scope=0, depth=0, function="f", file="m.py", lineno=1,
              source="def f(a):\n", locals={"a": "1"}),
        Frame(index=1, event="line", scope=0, depth=0, function="f", file="m.py", lineno=2,
              source="    b = a + 1\n", locals={"a": ".."}),
        Frame(index=2, event="line", scope=0, depth=0, function="f", file="m.py", lineno=3,
              source="    return b\n", locals={"a": "..", "b": "2"}),
        Frame(index=3, event="exception", scope=0, depth=0, function="f", file="m.py", lineno=3,
              source="    return b\n", arg="KeyError('é')"),
        Frame(index=4, event="return", scope=0, depth=0, function="f", file="m.py", lineno=3,
              source="    return b\n", arg="'2'"),
    ]
    header = TraceHeader(mode="function", file="m.py", function="f", entry_line=1, root="/x", source=SOURCE)
    end = TraceEnd(status=status, frames=len(frames))  # type: ignore[arg-type]
    return Trace(header=header, frames=frames, end=end)


EXPECTED = (
    "<|begin_of_text|><|trace_context_start|>"
    "def f(a):  # << START_OF_TRACE\n"
    "    b = a + 1\n"
    "    return b\n"
    "<|frame_sep|>"
    '<|call_sep|>{"a": "1"}<|action_sep|>def f(a):\n<|frame_sep|>'
    '<|line_sep|>{"a": ".."}<|action_sep|>    b = a + 1\n<|frame_sep|>'
    '<|line_sep|>{"a": "..", "b": "2"}<|action_sep|>    return b\n<|frame_sep|>'
    '<|exception_sep|><|action_sep|>    return b\n<|arg_sep|>"KeyError(\'\\u00e9\')"<|frame_sep|>'
    "<|return_sep|><|action_sep|>    return b\n<|arg_sep|>\"'2'\"<|frame_sep|>"
    "<|end_of_text|>"
)


def test_prompt_layout_is_exact() -> None:
    assert render_prompt(hand_trace()) == EXPECTED


def test_raised_trace_also_ends_with_end_of_text() -> None:
    assert render_prompt(hand_trace("raised")).endswith("<|frame_sep|><|end_of_text|>")


@pytest.mark.parametrize("status", ["max_frames", "max_seconds", "max_bytes"])
def test_trace_cut_by_a_bound_has_no_end_of_text(status: str) -> None:
    text = render_prompt(hand_trace(status))
    assert text == EXPECTED[: -len("<|end_of_text|>")]


def test_prompt_prefix_for_a_number_of_frames() -> None:
    trace = hand_trace()
    assert render_prompt(trace, 0) == EXPECTED.split("<|call_sep|>")[0]
    assert render_prompt(trace, 2).endswith('<|action_sep|>    b = a + 1\n<|frame_sep|>')
    assert render_prompt(trace, 5) == EXPECTED


def test_entry_marker() -> None:
    assert mark_entry("a\nb\n", 2) == "a\nb  # << START_OF_TRACE\n"


# --- source shapes: one marker, on the entry, whatever the file looks like --------------------------

MARKED = "def f(x):  # << START_OF_TRACE\n    return x + 1\n"


def test_a_program_that_already_carries_the_marker_gets_it_once() -> None:
    """CWM's demos write the marker in the program (issue 14: it was doubled)."""
    assert mark_entry(MARKED, 1) == MARKED
    assert mark_entry("def f(x):    #<< START_OF_TRACE  \n    pass\n", 1) == "def f(x):  # << START_OF_TRACE\n    pass\n"
    assert mark_entry("def f(x):\t# << START_OF_TRACE\n", 1) == "def f(x):  # << START_OF_TRACE\n"


def test_a_marker_on_another_line_moves_to_the_entry() -> None:
    source = "def g():  # << START_OF_TRACE\n    pass\n\ndef f(x):  # keep me  # << START_OF_TRACE\n    pass\n"
    assert mark_entry(source, 1) == "def g():  # << START_OF_TRACE\n    pass\n\ndef f(x):  # keep me\n    pass\n"
    assert mark_entry(source, 4) == "def g():\n    pass\n\ndef f(x):  # keep me  # << START_OF_TRACE\n    pass\n"


def test_the_marker_text_inside_a_string_is_code_not_a_marker() -> None:
    source = 'TEXT = """\ndef g():  # << START_OF_TRACE\n"""\nS = "# << START_OF_TRACE"\ndef f(x):\n    pass\n'
    assert mark_entry(source, 5) == source.replace("def f(x):\n", "def f(x):  # << START_OF_TRACE\n")
    assert marker_columns(source) == {}


def test_comments_trailing_blanks_and_tabs_on_the_entry_line() -> None:
    assert mark_entry("def f(x):  # note\n", 1) == "def f(x):  # note  # << START_OF_TRACE\n"
    # Trailing blanks go on the marked line only (the marker is two spaces after the code, as CWM writes it).
    assert mark_entry("def f(x):   \t\n    y = 1   \n", 1) == "def f(x):  # << START_OF_TRACE\n    y = 1   \n"
    assert mark_entry("class C:\n\tdef m(self):\n\t\tpass\n", 2) == \
        "class C:\n\tdef m(self):  # << START_OF_TRACE\n\t\tpass\n"


def test_line_numbers_are_pythons_not_splitlines() -> None:
    """A form feed, U+2028 or \\x1c does not end a line for Python (str.splitlines says it does)."""
    source = "\x0c\nX = 'a\u2028b'  # \x1c\ndef f(x):\n    return x\n"
    assert physical_lines(source) == ["\x0c\n", "X = 'a\u2028b'  # \x1c\n", "def f(x):\n", "    return x\n"]
    assert mark_entry(source, 3) == source.replace("def f(x):", "def f(x):  # << START_OF_TRACE")
    assert physical_lines("a\r\nb\rc") == ["a\r\n", "b\r", "c"]


def test_crlf_and_cr_endings_are_kept() -> None:
    assert mark_entry("a\r\nb", 2) == "a\r\nb  # << START_OF_TRACE"
    assert mark_entry("def f():  # << START_OF_TRACE\r\n    pass\r\n", 1) == \
        "def f():  # << START_OF_TRACE\r\n    pass\r\n"
    with pytest.raises(ValueError, match="outside the source"):
        mark_entry("a\n", 3)


@pytest.mark.parametrize(("source", "def_line", "marked"), [
    ("def f(\n    x,\n    y=1,\n):\n    pass\n", 1, 1),  # inside brackets a comment may end a line
    ("def f(x, \\\n      y=1):\n    pass\n", 1, 2),  # a backslash line cannot take a comment
    ('def f(x, doc="""a\nb"""):\n    pass\n', 1, 2),  # the def line ends inside a string
    ("@deco(\n    1,\n\n    2)\ndef f(x): return x\n", 5, 5),
])
def test_the_marker_goes_where_a_comment_can_end_the_signature(source: str, def_line: int, marked: int) -> None:
    assert definition_line(source, "f") == def_line
    assert marker_line(source, def_line) == marked
    text = mark_entry(source, marked)
    assert physical_lines(text)[marked - 1].rstrip("\n").endswith("  # << START_OF_TRACE")
    compile(text, "marked.py", "exec")  # still the same program


def test_decorators_map_to_their_def_line() -> None:
    source = "import functools\n\n@functools.lru_cache(\n    maxsize=None,\n\n    # why\n)\n@staticmethod\ndef f(x):\n    pass\n"
    assert def_lines(source) == {3: 9}


def test_sources_decode_as_python_reads_them() -> None:
    latin = "# -*- coding: latin-1 -*-\r\nS = 'café'\r\n".encode("latin-1")
    assert decode_source(latin) == "# -*- coding: latin-1 -*-\nS = 'café'\n"
    assert decode_source("\ufeffx = 1\r".encode("utf-8")) == "x = 1\n"
    assert decode_source(b"x = '\xff'\n") == "x = '\ufffd'\n"  # not Python: shown, not fatal


def test_predicted_lines_compare_without_the_marker() -> None:
    assert normalize_source("def f(x):  # << START_OF_TRACE\n") == "def f(x):"
    assert normalize_source("def f(x):  # note  #<< START_OF_TRACE  \n") == "def f(x):  # note"
    assert normalize_source("    return A\n") == "    return A"  # not a character-set strip (CWM's demo is)


def test_render_frame_json_uses_default_json_dumps_spacing() -> None:
    frame = hand_trace().frames[2]
    assert render_frame(frame) == '<|line_sep|>{"a": "..", "b": "2"}<|action_sep|>    return b\n'


def test_jsonl_round_trip() -> None:
    trace = hand_trace()
    text = dump_trace(trace)
    assert parse_trace(text) == trace
    assert text.splitlines()[1].startswith('{"type": "frame", "index": 0, "event": "call"')


@pytest.mark.parametrize(("text", "message"), [
    ("not json\n", "not a trace record"),
    ('{"type": "end", "status": "returned"}\n', "missing the header"),
    ('{"type": "end", "status": "error", "error": "no such file"}\n', "could not run: no such file"),
])
def test_jsonl_errors(text: str, message: str) -> None:
    with pytest.raises(TraceFormatError, match=message):
        parse_trace(text)


def test_jsonl_frames_must_be_in_order() -> None:
    lines = dump_trace(hand_trace()).splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    with pytest.raises(TraceFormatError, match="out of order"):
        parse_trace("\n".join(lines))


# --- parsing what a model predicts ---------------------------------------------------------------


def test_parse_each_kind_of_predicted_frame() -> None:
    for frame in hand_trace().frames:
        parsed = parse_frame_text(render_frame(frame))
        assert parsed.error is None and parsed.event == frame.event and parsed.source == frame.source
        assert parsed.locals == frame.locals and parsed.arg == frame.arg
    assert parse_frame_text("<|end_of_text|>").event == END


def test_parse_forced_event_and_malformed_text() -> None:
    parsed = parse_frame_text('<|action_sep|>    return b\n<|arg_sep|>"3"', forced_event="return")
    assert (parsed.event, parsed.source, parsed.arg, parsed.error) == ("return", "    return b\n", "3", None)
    assert parse_frame_text("hello").error is not None
    bad = parse_frame_text("<|line_sep|>{oops<|action_sep|>    x\n")
    assert bad.event == "line" and bad.source == "    x\n" and "JSON" in (bad.error or "")
    assert parse_frame_text("<|line_sep|>{}").error == "no <|action_sep|>"
    assert parse_frame_text('<|line_sep|>{"n": 3}<|action_sep|>x\n').locals == {"n": "3"}
    assert parse_frame_text('<|return_sep|><|action_sep|>x\n<|arg_sep|>not json').arg == "not json"


# --- the committed example, and real traces ------------------------------------------------------


def test_committed_example_is_consistent() -> None:
    trace = read_trace(EXAMPLE / "trace.jsonl")
    assert trace.header.source == (EXAMPLE / "program.py").read_text()
    assert (EXAMPLE / "prompt.txt").read_text() == render_prompt(trace)
    assert trace.finished and trace.frames[-1].arg == "'3 scores, best 12'"


@pytest.fixture(scope="module")
def sandbox(base_image: str) -> Iterator[Sandbox]:
    from sandbox.docker import DockerSandbox, connect

    try:
        connect().close()
    except SandboxError as error:
        pytest.skip(str(error))
    box = DockerSandbox(SandboxConfig(image=base_image, run_id=f"pytest-trace-prompt-{os.getpid()}"))
    yield box
    box.close()


STRAIGHT_PROMPT = (
    "<|begin_of_text|><|trace_context_start|>"
    '"""Straight-line code and a call: the smallest trace worth reading."""\n'
    "\n"
    "\n"
    "def add(a, b):\n"
    "    total = a + b\n"
    "    return total\n"
    "\n"
    "\n"
    "def main(x):  # << START_OF_TRACE\n"
    "    y = x * 2\n"
    "    z = add(y, 1)\n"
    "    return z\n"
    "<|frame_sep|>"
    '<|call_sep|>{"x": "3"}<|action_sep|>def main(x):\n<|frame_sep|>'
    '<|line_sep|>{"x": ".."}<|action_sep|>    y = x * 2\n<|frame_sep|>'
    '<|line_sep|>{"x": "..", "y": "6"}<|action_sep|>    z = add(y, 1)\n<|frame_sep|>'
    '<|call_sep|>{"a": "6", "b": "1"}<|action_sep|>def add(a, b):\n<|frame_sep|>'
    '<|line_sep|>{"a": "..", "b": ".."}<|action_sep|>    total = a + b\n<|frame_sep|>'
    '<|line_sep|>{"a": "..", "b": "..", "total": "7"}<|action_sep|>    return total\n<|frame_sep|>'
    '<|return_sep|><|action_sep|>    return total\n<|arg_sep|>"7"<|frame_sep|>'
    '<|line_sep|>{"x": "..", "y": "..", "z": "7"}<|action_sep|>    return z\n<|frame_sep|>'
    '<|return_sep|><|action_sep|>    return z\n<|arg_sep|>"7"<|frame_sep|>'
    "<|end_of_text|>"
)


@pytest.mark.docker
def test_real_trace_prompt_is_exact(sandbox: Sandbox) -> None:
    copied = stage(sandbox, PROGRAMS / "straight.py")
    assert trace_function(sandbox, copied, "main", [3]).prompt() == STRAIGHT_PROMPT


@pytest.mark.docker
def test_example_regenerates_identically(sandbox: Sandbox) -> None:
    """The committed example is what the tracer produces today (and tracing is deterministic)."""
    copied = stage(sandbox, EXAMPLE / "program.py")
    result = trace_function(sandbox, copied, "summarize", ["7,x,12"])
    committed = read_trace(EXAMPLE / "trace.jsonl")
    assert result.trace.frames == committed.frames
    assert result.prompt() == (EXAMPLE / "prompt.txt").read_text()

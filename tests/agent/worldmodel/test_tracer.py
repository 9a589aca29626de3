"""The in-sandbox tracer: real programs traced in a real Docker sandbox, and its value rules.

Programs live in tests/agent/worldmodel/programs/ (copied into the sandbox once per module). The value
rendering checks at the bottom run on the host: `bounded_repr` must give exactly a prefix of repr().
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.worldmodel.frames import Frame, Trace, dump_trace, render_prompt
from agent.worldmodel.run import (
    TraceError,
    TraceLimits,
    TraceResult,
    stage,
    trace_function,
    trace_script,
    trace_test,
)
from agent.worldmodel.tracer import (
    START_MARKER,
    TRUNCATION_MARKER,
    UNCHANGED,
    bounded_repr,
    definition_line,
    marker_columns,
    module_entry_line,
    normalize_text,
    physical_lines,
    render_value,
    strip_markers,
)
from sandbox.base import Sandbox, SandboxConfig, SandboxError

PROGRAMS = Path(__file__).resolve().parent / "programs"


@pytest.fixture(scope="module")
def sandbox(base_image: str) -> Iterator[Sandbox]:
    from sandbox.docker import DockerSandbox, connect

    try:
        connect().close()
    except SandboxError as error:
        pytest.skip(str(error))
    box = DockerSandbox(SandboxConfig(image=base_image, run_id=f"pytest-tracer-{os.getpid()}"))
    yield box
    box.close()


@pytest.fixture(scope="module")
def programs(sandbox: Sandbox) -> str:
    return stage(sandbox, PROGRAMS)


def run(sandbox: Sandbox, programs: str, file: str, function: str, *args: object, **limits: float) -> TraceResult:
    return trace_function(sandbox, f"{programs}/{file}", function, list(args),
                          limits=TraceLimits(**limits) if limits else None)


def steps(trace: Trace) -> list[tuple[str, int, str]]:
    """(event, line, function) per frame: the shape of a trace."""
    return [(f.event, f.lineno, f.function) for f in trace.frames]


# --- programs ------------------------------------------------------------------------------------


@pytest.mark.docker
def test_straight_line_code(sandbox: Sandbox, programs: str) -> None:
    result = run(sandbox, programs, "straight.py", "main", 3)
    trace = result.trace
    assert trace.end.status == "returned" and trace.finished and result.exit_code == 0
    assert steps(trace) == [("call", 9, "main"), ("line", 10, "main"), ("line", 11, "main"),
                            ("call", 4, "add"), ("line", 5, "add"), ("line", 6, "add"), ("return", 6, "add"),
                            ("line", 12, "main"), ("return", 12, "main")]
    assert [f.locals for f in trace.frames] == [
        {"x": "3"}, {"x": ".."}, {"x": "..", "y": "6"},
        {"a": "6", "b": "1"}, {"a": "..", "b": ".."}, {"a": "..", "b": "..", "total": "7"}, None,
        {"x": "..", "y": "..", "z": "7"}, None]
    assert [f.arg for f in trace.frames if f.event == "return"] == ["7", "7"]
    assert [f.depth for f in trace.frames] == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert trace.frames[0].source == "def main(x):\n" and trace.frames[1].source == "    y = x * 2\n"
    assert trace.header.entry_line == 9 and trace.header.file == "straight.py" and trace.header.hash_seed == "0"


@pytest.mark.docker
def test_loops_show_each_iteration_and_unchanged_values(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "loops.py", "count_letters", "aba", "a").trace
    lines = [(f.lineno, f.locals) for f in trace.frames if f.event == "line"]
    assert lines == [
        (5, {"s": "..", "letter": ".."}),
        (6, {"s": "..", "letter": "..", "n": "0"}),
        (7, {"s": "..", "letter": "..", "n": "..", "c": "'a'"}),
        (6, {"s": "..", "letter": "..", "n": "1", "c": ".."}),
        (7, {"s": "..", "letter": "..", "n": "..", "c": "'b'"}),
        (6, {"s": "..", "letter": "..", "n": "..", "c": ".."}),
        (7, {"s": "..", "letter": "..", "n": "..", "c": "'a'"}),
        (6, {"s": "..", "letter": "..", "n": "2", "c": ".."}),
        (8, {"s": "..", "letter": "..", "n": "..", "c": ".."}),
    ]
    assert trace.frames[-1].arg == "2"
    steps_of_while = run(sandbox, programs, "loops.py", "collatz_steps", 6).trace
    assert steps_of_while.frames[-1].arg == "2" and steps_of_while.end.status == "returned"


@pytest.mark.docker
def test_recursion_gives_every_activation_its_own_scope(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "recursion.py", "fact", 3).trace
    calls = [f for f in trace.frames if f.event == "call"]
    assert [(f.depth, f.locals) for f in calls] == [(0, {"n": "3"}), (1, {"n": "2"}), (2, {"n": "1"})]
    assert len({f.scope for f in calls}) == 3
    returns = [(f.depth, f.arg) for f in trace.frames if f.event == "return"]
    assert returns == [(2, "1"), (1, "2"), (0, "6")]
    # Back in the caller after the recursive call: `n` unchanged in ITS scope, `rest` new.
    after = [f for f in trace.frames if f.event == "line" and f.lineno == 8]
    assert [f.locals for f in after] == [{"n": "..", "rest": "1"}, {"n": "..", "rest": "2"}]


@pytest.mark.docker
def test_exception_caught_by_the_caller(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "exceptions.py", "safe_parse", "x").trace
    error = "ValueError(\"invalid literal for int() with base 10: 'x'\")"
    assert [(f.event, f.function, f.lineno) for f in trace.frames[3:9]] == [
        ("call", "parse", 4), ("line", "parse", 5), ("exception", "parse", 5), ("return", "parse", 5),
        ("exception", "safe_parse", 11), ("line", "safe_parse", 12)]
    raised, unwound = trace.frames[5], trace.frames[6]
    assert raised.arg == error and raised.locals is None
    assert unwound.unwinding and unwound.arg == "None"
    assert trace.frames[9].locals == {"text": "..", "error": error}
    assert trace.end.status == "returned" and trace.frames[-1].arg == "-1" and not trace.frames[-1].unwinding


@pytest.mark.docker
def test_uncaught_exception_ends_the_trace(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "exceptions.py", "uncaught", "x").trace
    assert trace.end.status == "raised" and trace.finished
    assert trace.end.error == "ValueError: invalid literal for int() with base 10: 'x'"
    assert [(f.event, f.depth) for f in trace.frames[-4:]] == [
        ("exception", 1), ("return", 1), ("exception", 0), ("return", 0)]
    assert trace.frames[-1].unwinding and render_prompt(trace).endswith("<|end_of_text|>")
    finally_trace = run(sandbox, programs, "exceptions.py", "cleanup", "4").trace
    assert [f.lineno for f in finally_trace.frames][-3:] == [26, 28, 28]  # return waits for `finally`
    assert finally_trace.frames[-1].arg == "4"


@pytest.mark.docker
@pytest.mark.parametrize("function", ["reraise", "cleanup_on_error"])
def test_an_exception_that_fires_no_event_where_it_leaves_still_raises(sandbox: Sandbox, programs: str,
                                                                       function: str) -> None:
    """A bare `raise` and a `finally` passed by an exception: settrace reports no exception event in
    the frame the exception leaves, only its return (None); the trace still ends `raised`."""
    trace = run(sandbox, programs, "exceptions.py", function, "x").trace
    assert trace.end.status == "raised" and trace.end.error is not None
    last = trace.frames[-1]
    assert (last.event, last.arg, last.unwinding, last.depth) == ("return", "None", True, 0)
    assert trace.frames[-2].event == "line"  # no exception frame at the re-raise


@pytest.mark.docker
def test_a_loop_over_a_python_iterator_returns_normally(sandbox: Sandbox, programs: str) -> None:
    """The iterator's StopIteration arrives in the loop as an exception frame; the scope then returns."""
    trace = run(sandbox, programs, "exceptions.py", "drain", 2).trace
    assert [(f.event, f.function) for f in trace.frames[-2:]] == [("exception", "drain"), ("return", "drain")]
    assert trace.frames[-2].arg == "StopIteration()"
    assert trace.end.status == "returned" and not trace.frames[-1].unwinding and trace.end.result == "None"


@pytest.mark.docker
def test_generators_resume_as_calls_and_yield_as_returns(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "generators.py", "total_of_countdown", 2).trace
    inner = [(f.event, f.lineno, f.arg) for f in trace.frames if f.function == "countdown"]
    assert inner == [
        ("call", 4, None), ("line", 5, None), ("line", 6, None), ("return", 6, "2"),  # first start, yield 2
        ("call", 6, None), ("line", 7, None), ("line", 5, None), ("line", 6, None), ("return", 6, "1"),  # resume
        ("call", 6, None), ("line", 7, None), ("line", 5, None), ("return", 5, "None"),  # exhausted
    ]
    resumes = [f for f in trace.frames if f.function == "countdown" and f.event == "call"]
    assert [f.locals for f in resumes] == [{"n": "2"}, {"n": "2"}, {"n": "1"}]  # a call shows full values
    assert len({f.scope for f in resumes}) == 3
    assert trace.frames[-1].arg == "3"
    # A generator as the entry: driven to its end; the trace ends only when it finishes.
    entry = run(sandbox, programs, "generators.py", "squares", 2).trace
    assert [(f.event, f.arg) for f in entry.frames if f.event in ("call", "return")] == [
        ("call", None), ("return", "0"), ("call", None), ("return", "1"), ("call", None), ("return", "None")]
    assert entry.end.status == "returned" and entry.end.result == "[0, 1]"


@pytest.mark.docker
def test_class_methods_and_normalised_addresses(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "classes.py", "use_counter", 2).trace
    adds = [f for f in trace.frames if f.function == "Counter.add" and f.event == "call"]
    assert [f.locals for f in adds] == [{"self": "Counter(0)", "amount": "0"}, {"self": "Counter(0)", "amount": "1"}]
    init = next(f for f in trace.frames if f.function == "Counter.__init__" and f.event == "line")
    assert init.locals == {"self": "Counter(0)", "start": ".."} or init.locals["start"] == ".."
    assert trace.frames[-1].arg == "Counter(1)"
    opaque = run(sandbox, programs, "classes.py", "make_opaque").trace
    assert opaque.frames[-2].locals == {"thing": "<classes.Opaque object at 0x...>"}
    assert not any(re.search(r"0x[0-9a-f]{4,}", line) for line in dump_trace(opaque).splitlines()[1:])


@pytest.mark.docker
def test_decorated_function_starts_on_its_def_line(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "classes.py", "decorated", 1).trace
    assert [f.function for f in trace.frames] == ["decorated"] * 3  # the wrapper is not the entry
    assert trace.frames[0].source == "def decorated(x):\n"
    assert trace.header.entry_line == trace.frames[0].lineno


@pytest.mark.docker
def test_comprehensions_are_one_line_of_their_scope(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "comprehensions.py", "comprehend", 2).trace
    assert {f.function for f in trace.frames} == {"comprehend", "double"}
    assert [(f.event, f.lineno, f.function, f.depth) for f in trace.frames] == [
        ("call", 8, "comprehend", 0), ("line", 9, "comprehend", 0), ("line", 10, "comprehend", 0),
        ("call", 4, "double", 1), ("line", 5, "double", 1), ("return", 5, "double", 1),
        ("call", 4, "double", 1), ("line", 5, "double", 1), ("return", 5, "double", 1),
        ("line", 11, "comprehend", 0), ("line", 12, "comprehend", 0), ("return", 12, "comprehend", 0)]
    assert trace.frames[2].locals == {"n": "..", "squares": "[0, 1]"}  # no `.0` iterator local


@pytest.mark.docker
def test_large_values_are_truncated_exactly(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "objects.py", "huge", max_repr_chars=40).trace
    last = trace.frames[-2].locals or {}
    assert trace.frames[2].locals == {"big": repr(list(range(1000)))[:40] + TRUNCATION_MARKER}
    assert trace.frames[3].locals["text"] == repr("ab'c" * 100_000)[:40] + TRUNCATION_MARKER  # type: ignore[index]
    assert trace.frames[4].locals["data"] == repr(bytes(range(256)))[:40] + TRUNCATION_MARKER  # type: ignore[index]
    assert last["nested"] == repr({"k": list(range(100))})[:40] + TRUNCATION_MARKER
    assert trace.end.elapsed_s < 5  # bounded rendering: a million-element list is not repr'd per line
    assert trace.frames[-1].arg == "1000000"


@pytest.mark.docker
def test_unprintable_values_get_placeholders(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "objects.py", "unprintable").trace
    final = trace.frames[-2].locals
    assert final == {"broken": "..", "wrong": "..", "loop": "[1, 2, [...]]"}
    assert trace.frames[2].locals == {"broken": "<repr of Broken raised RuntimeError>"}
    assert trace.frames[3].locals["wrong"] == "<repr of NotAString raised TypeError>"  # type: ignore[index]


@pytest.mark.docker
def test_infinite_loop_stops_cleanly_at_max_frames(sandbox: Sandbox, programs: str) -> None:
    result = run(sandbox, programs, "infinite.py", "spin", max_frames=200)
    trace = result.trace
    assert trace.end.status == "max_frames" and len(trace.frames) == 200 and result.exit_code == 3
    assert not trace.finished and not render_prompt(trace).endswith("<|end_of_text|>")
    assert render_prompt(trace).endswith("<|frame_sep|>")
    assert trace.frames[-1].locals is not None  # the last frame is whole


@pytest.mark.docker
def test_blocked_program_stops_at_max_seconds(sandbox: Sandbox, programs: str) -> None:
    result = run(sandbox, programs, "infinite.py", "sleeper", max_seconds=1)
    assert result.trace.end.status == "max_seconds" and result.exit_code == 3
    assert 1.0 <= result.trace.end.elapsed_s < 3
    assert [f.lineno for f in result.trace.frames] == [11, 12]


@pytest.mark.docker
def test_max_bytes_bound(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "infinite.py", "spin", max_bytes=4096).trace
    assert trace.end.status == "max_bytes" and 0 < trace.end.bytes <= 4096
    assert sum(len(f.model_dump_json()) for f in trace.frames) > 0


@pytest.mark.docker
def test_same_program_traced_twice_is_identical(sandbox: Sandbox, programs: str) -> None:
    for function in ("string_set", "unprintable"):
        first = run(sandbox, programs, "objects.py", function).trace
        second = run(sandbox, programs, "objects.py", function).trace
        assert [f.model_dump() for f in first.frames] == [f.model_dump() for f in second.frames]
        assert render_prompt(first) == render_prompt(second)
    words = run(sandbox, programs, "objects.py", "string_set").trace
    seeded = subprocess.run([sys.executable, "-c", 'print(",".join({"pear", "apple", "fig", "plum", "kiwi", "lime"}))'],
                            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True)
    assert words.frames[-1].arg == repr(seeded.stdout.strip())  # the set's order under PYTHONHASHSEED=0


@pytest.mark.docker
def test_only_the_main_thread_is_traced(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "threads.py", "run_thread").trace
    assert {f.function for f in trace.frames} == {"run_thread"}
    assert trace.frames[-1].arg == "[45]"


@pytest.mark.docker
def test_script_mode_traces_module_code(sandbox: Sandbox, programs: str) -> None:
    result = trace_script(sandbox, f"{programs}/script.py", ["to", "be"])
    trace = result.trace
    assert result.stdout == "TO BE\n"
    assert trace.frames[0].event == "call" and trace.frames[0].function == "<module>"
    assert trace.header.entry_line == module_entry_line(trace.header.source) == trace.frames[0].lineno
    module_lines = [f.locals for f in trace.frames if f.function == "<module>" and f.event == "line"]
    assert all("__name__" not in (values or {}) for values in module_lines)  # dunders hidden
    assert ("call", "main") in [(f.event, f.function) for f in trace.frames]
    only_main = trace_script(sandbox, f"{programs}/script.py", ["x"], function="main").trace
    assert only_main.frames[0].locals == {"argv": "['x']"} and only_main.frames[-1].arg == "1"


@pytest.mark.docker
def test_one_pytest_test_of_a_repository(sandbox: Sandbox, programs: str) -> None:
    result = trace_test(sandbox, programs, "mini_suite.py::test_add_fails")
    trace = result.trace
    assert trace.end.status == "raised" and trace.end.exit_code == 1
    assert "1 failed" in result.stdout
    assert {f.file for f in trace.frames} == {"mini_suite.py", "straight.py"}  # nothing of pytest's
    assert [(f.event, f.function) for f in trace.frames][:3] == [
        ("call", "test_add_fails"), ("line", "test_add_fails"), ("call", "add")]
    assert trace.frames[-2].event == "exception" and trace.frames[-2].arg == "AssertionError('assert 4 == 5')"
    assert all(not name.startswith("@") for f in trace.frames for name in (f.locals or {}))
    skipped = trace_test(sandbox, programs, "mini_suite.py::test_skipped")
    assert skipped.trace.end.status == "not_called" and skipped.trace.frames == []
    with pytest.raises(TraceError, match="no definition of 'test_nothing_here'"):
        trace_test(sandbox, programs, "mini_suite.py::test_nothing_here")


@pytest.mark.docker
def test_setup_errors_are_reported(sandbox: Sandbox, programs: str) -> None:
    with pytest.raises(TraceError, match="no definition of 'nope'"):
        run(sandbox, programs, "straight.py", "nope")
    with pytest.raises(TraceError, match="no such file|cannot read|cannot import"):
        trace_function(sandbox, f"{programs}/missing.py", "f")


# --- source shapes: the START_OF_TRACE marker (issue 14) -----------------------------------------


def context_of(trace: Trace) -> str:
    """The prompt's context: the text between `<|trace_context_start|>` and the first `<|frame_sep|>`."""
    return render_prompt(trace).split("<|trace_context_start|>", 1)[1].split("<|frame_sep|>", 1)[0]


def check_marker_rules(trace: Trace) -> list[str]:
    """What holds for every trace: one marker, on the entry line; frames are the file's lines less it."""
    context = context_of(trace)
    lines = physical_lines(context)
    assert list(marker_columns(context)) == [trace.header.entry_line]
    assert lines[trace.header.entry_line - 1].endswith(START_MARKER + "\n")
    file_lines = physical_lines(strip_markers(trace.header.source))
    assert len(lines) == len(file_lines)
    assert [t for n, t in enumerate(lines, 1) if n != trace.header.entry_line] == \
        [t for n, t in enumerate(file_lines, 1) if n != trace.header.entry_line]  # nothing else changed
    for frame in trace.frames:
        assert "START_OF_TRACE" not in frame.source
        if frame.file == trace.header.file:
            assert frame.source == file_lines[frame.lineno - 1]
    return lines


@pytest.mark.docker
def test_source_shapes_a_program_that_carries_the_marker(sandbox: Sandbox, programs: str) -> None:
    trace = run(sandbox, programs, "shapes.py", "count_letters", "strawberry", "r").trace
    lines = check_marker_rules(trace)
    assert lines[11] == "def count_letters(s, letter):  # << START_OF_TRACE\n"  # once, as in the file
    assert trace.frames[0].source == "def count_letters(s, letter):\n" and trace.frames[0].lineno == 12
    assert lines[8] == 'MARKER_IN_A_STRING = "def nowhere():  # << START_OF_TRACE"\n'  # code, untouched
    other = run(sandbox, programs, "shapes.py", "commented", 1).trace
    lines = check_marker_rules(other)
    assert lines[11] == "def count_letters(s, letter):\n"  # the program's marker is not the entry
    assert lines[18] == "def commented(x):  # add one  # << START_OF_TRACE\n"
    assert other.frames[0].source == "def commented(x):  # add one\n"


@pytest.mark.docker
def test_source_shapes_blanks_tabs_decorators_and_form_feeds(sandbox: Sandbox, programs: str) -> None:
    blanks = run(sandbox, programs, "shapes.py", "trailing_blanks", 1).trace
    assert check_marker_rules(blanks)[22] == "def trailing_blanks(x):  # << START_OF_TRACE\n"
    assert blanks.frames[0].source == "def trailing_blanks(x):   \t\n"  # frames: the line as in the file
    cached = run(sandbox, programs, "shapes.py", "cached", 5).trace
    check_marker_rules(cached)
    assert (cached.header.entry_line, cached.frames[0].lineno, cached.frames[0].source) == (32, 32, "def cached(x):\n")
    fed = run(sandbox, programs, "shapes.py", "after_form_feed", 2).trace
    lines = check_marker_rules(fed)
    assert lines[fed.header.entry_line - 2:fed.header.entry_line] == [
        "\x0c\n", "def after_form_feed(x):  # << START_OF_TRACE\n"]
    tabbed = run(sandbox, programs, "shapes.py", "Tabbed.twice", 4).trace
    lines = check_marker_rules(tabbed)
    assert lines[tabbed.header.entry_line - 1] == "\tdef twice(x):  # << START_OF_TRACE\n"
    assert [f.source for f in tabbed.frames[:2]] == ["\tdef twice(x):\n", "\t\treturn x * 2\n"]


@pytest.mark.docker
@pytest.mark.parametrize(("function", "def_line", "marked"), [
    ("spread", 36, 36),  # `def spread(  # << START_OF_TRACE`: a comment may end a line inside brackets
    ("continued", 43, 44),  # a backslash-continued def line cannot take a comment
    ("with_doc_default", 48, 49),  # nor one that ends inside a string
])
def test_source_shapes_multi_line_signatures(sandbox: Sandbox, programs: str, function: str, def_line: int,
                                             marked: int) -> None:
    trace = run(sandbox, programs, "shapes.py", function, 1).trace
    lines = check_marker_rules(trace)
    assert lines[marked - 1].endswith(START_MARKER + "\n")
    assert trace.header.entry_line == marked and trace.frames[0].lineno == def_line
    assert trace.frames[0].source.startswith(f"def {function}(") and trace.finished
    compile(context_of(trace), "context.py", "exec")  # the marked context is still the program


@pytest.mark.docker
def test_source_shapes_crlf_and_latin_1(sandbox: Sandbox, tmp_path: Path) -> None:
    """A latin-1 file with CRLF endings: context and frames are the text Python read (as CWM's demo
    reads its input with `open().read()`: decoded, universal newlines)."""
    program = tmp_path / "greet.py"
    program.write_bytes("# -*- coding: latin-1 -*-\r\n\r\ndef greet(name):  # << START_OF_TRACE\r\n"
                        "    word = 'café'\r\n    return word + ' ' + name\r\n".encode("latin-1"))
    trace = trace_function(sandbox, stage(sandbox, program), "greet", ["x"]).trace
    lines = check_marker_rules(trace)
    assert lines == ["# -*- coding: latin-1 -*-\n", "\n", "def greet(name):  # << START_OF_TRACE\n",
                     "    word = 'café'\n", "    return word + ' ' + name\n"]
    assert [f.source for f in trace.frames] == ["def greet(name):\n", "    word = 'café'\n",
                                                "    return word + ' ' + name\n", "    return word + ' ' + name\n"]
    assert trace.frames[-1].arg == "'café x'"
    assert '{"name": "..", "word": "\'caf\\u00e9\'"}' in render_prompt(trace)  # json.dumps escapes, as the demo


# --- value rules (host) --------------------------------------------------------------------------


def _nested() -> list[object]:
    shared = [1, "two", 3.0]
    cases: list[object] = [
        list(range(100)), tuple(range(50)), {i: str(i) * 3 for i in range(40)}, set(range(30)),
        frozenset(range(30)), [shared] * 20, [list(range(30)), {"a": (1,)}] * 10, [(i,) for i in range(20)],
        ["x" * 1000] * 20, [b"\x00'\"" * 50] * 20, [None, True, 1.5, -2j] * 10, [[], {}, (), set()] * 5,
    ]
    looped: list[object] = list(range(20))
    looped.append(looped)
    cases.append(looped)
    mapping: dict[str, object] = {str(i): i for i in range(20)}
    mapping["self"] = mapping
    cases.append(mapping)
    return cases


@pytest.mark.parametrize("budget", [1, 7, 50, 333, 100_000])
def test_bounded_repr_is_exactly_a_prefix_of_repr(budget: int) -> None:
    for value in _nested():
        text, complete = bounded_repr(value, budget)
        full = repr(value)
        if complete:
            assert text == full
        else:
            assert text == full[:budget] and len(full) > len(text) >= budget


@pytest.mark.parametrize("text", ["plain" * 100, "it's" * 100, "it's \"q\"" * 100, "x" * 200 + "'" + "y" * 200,
                                  "x" * 200 + "'\"", "é\n\t\x00\ud800" * 100])
def test_long_strings_keep_repr_quoting(text: str) -> None:
    for value in (text, text.encode("utf-8", "surrogatepass")):
        for budget in (5, 150, 250):
            got, complete = bounded_repr(value, budget)
            assert got == (repr(value) if complete else repr(value)[:budget])
            assert complete == (len(value) <= budget)


def test_render_value_rules() -> None:
    assert render_value("abc", 10) == "'abc'"
    assert render_value(list(range(100)), 10) == "[0, 1, 2, " + TRUNCATION_MARKER
    assert render_value(object(), 500) == "<object object at 0x...>"
    assert normalize_text("<f at 0x7f00aa> and 0x10", 100) == "<f at 0x...> and 0x10"
    assert render_value(10**5000, 50).startswith("<repr of int raised ValueError>")
    assert UNCHANGED == ".."


def test_definition_lines() -> None:
    source = (PROGRAMS / "classes.py").read_text()
    assert definition_line(source, "Counter.add") == 8
    assert definition_line(source, "decorated") == source.splitlines().index("def decorated(x):") + 1
    assert definition_line(source, "missing") is None
    assert module_entry_line('"""doc\nmore"""\nx = 1\n') == 2
    assert module_entry_line("import os\n") == 1


def test_frames_validate_the_tracer_output() -> None:
    record = {"type": "frame", "index": 0, "event": "line", "scope": 0, "depth": 0, "function": "f",
              "file": "f.py", "lineno": 2, "source": "    x = 1\n", "locals": {"x": "1"}, "arg": None}
    assert Frame.model_validate_json(json.dumps(record)).locals == {"x": "1"}

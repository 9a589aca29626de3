"""The neural debugger: comparison rules, navigation with teacher forcing, predictors, reports.

Host-only tests use the committed example trace (traces/examples/trace/). The report test traces a
real open-source module, the standard library's pure-Python `textwrap`, in a Docker sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models.base import ModelError
from agent.worldmodel.debug import (
    CallSpec,
    build_report,
    debug_command,
    discover_calls,
    interactive,
    load_calls,
    score_trace,
)
from agent.worldmodel.debug_session import DebugSession
from agent.worldmodel.frames import END_OF_TEXT, Frame, ParsedFrame, Trace, read_trace, render_prompt
from agent.worldmodel.predictors import (
    OraclePredictor,
    RecordingPredictor,
    ReplayPredictor,
    ReplayRecord,
    make_predictor,
)
from agent.worldmodel.run import stage, trace_function
from agent.worldmodel.scoring import compare_frame, format_report
from sandbox.base import Sandbox, SandboxConfig, SandboxError
from tests.helpers import REPO_ROOT

try:  # `python -m pytest` puts the repo root on sys.path; bare `pytest` only tests/
    from tests.fakes.openai_server import COMPLETIONS, FakeOpenAIServer
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fakes.openai_server import COMPLETIONS, FakeOpenAIServer  # type: ignore[no-redef]

EXAMPLE = REPO_ROOT / "traces" / "examples" / "trace"
TEXTWRAP_CALLS = [
    CallSpec(function="dedent", args=["    hello\n      world\n"]),
    CallSpec(function="indent", args=["a\nb\n", "> "]),
    CallSpec(function="shorten", args=["Hello  world, this is a long line", 12]),
    CallSpec(function="wrap", args=["The quick brown fox jumps over the lazy dog", 15]),
    CallSpec(function="fill", args_literal="('a b c d e f', 5)"),
]


@pytest.fixture
def example() -> Trace:
    return read_trace(EXAMPLE / "trace.jsonl")


def line_frame(locals_: dict[str, str], scope: int = 0) -> Frame:
    return Frame(index=1, event="line", scope=scope, depth=0, function="f", file="m.py", lineno=2,
                 source="    x = g(y)\n", locals=locals_)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- comparing one frame -------------------------------------------------------------------------


def test_compare_resolves_unchanged_on_both_sides() -> None:
    real = line_frame({"y": "..", "x": "[1]"})
    parsed = ParsedFrame(event="line", source="    x = g(y)\n", locals={"y": "3", "x": ".."})
    result = compare_frame(real, parsed, real_locals={"y": "3", "x": "[1]"}, previous={"y": "3", "x": "[0]"},
                           max_chars=500, position=1)
    assert result.event_ok and result.line_ok and not result.exact
    assert (result.locals_compared, result.locals_ok) == (2, 1)  # `y` right (".." = 3); `x` stale
    assert result.local_errors == {"x": ["[1]", "[0]"]}


def test_compare_normalises_predicted_values_like_the_tracer() -> None:
    real = line_frame({"o": "<C object at 0x...>"})
    parsed = ParsedFrame(event="line", source="    x = g(y)  # << START_OF_TRACE\n",
                         locals={"o": "<C object at 0x7f3a9c>", "extra": "1"})
    result = compare_frame(real, parsed, real_locals=real.locals, previous={}, max_chars=500, position=1)
    assert result.line_ok  # the marker and newline are not part of the comparison
    assert (result.locals_compared, result.locals_ok) == (2, 1)
    assert result.local_errors == {"extra": [None, "1"]}
    cut = line_frame({"s": "'abcd...<truncated>"})
    long = ParsedFrame(event="line", source="    x = g(y)\n", locals={"s": "'abcdefgh'"})
    assert compare_frame(cut, long, real_locals=cut.locals, previous={}, max_chars=5, position=1).exact


def test_compare_values_events_and_the_end() -> None:
    ret = Frame(index=4, event="return", scope=0, depth=0, function="f", file="m.py", lineno=3,
                source="    return x\n", arg="[1]")
    good = compare_frame(ret, ParsedFrame(event="return", source="    return x\n", arg="[1]"), real_locals=None,
                         previous={}, max_chars=500, position=4, forced_event="return")
    assert good.exact and good.event_ok is None and good.value_ok  # forced: event not scored
    wrong = compare_frame(ret, ParsedFrame(event="line", source="    return x\n", locals={}), real_locals=None,
                          previous={}, max_chars=500, position=4)
    assert wrong.event_ok is False and wrong.value_ok is False and not wrong.exact
    end = compare_frame(None, ParsedFrame(event="end"), real_locals=None, previous={}, max_chars=500, position=5)
    assert end.exact and end.line_ok is None
    missed = compare_frame(None, ParsedFrame(event="line", locals={}), real_locals=None, previous={},
                           max_chars=500, position=5)
    assert missed.event_ok is False


# --- navigation and teacher forcing --------------------------------------------------------------


def test_step_to_the_end_with_teacher_forcing(example: Trace, tmp_path: Path) -> None:
    replay = tmp_path / "oracle.jsonl"
    recorder = RecordingPredictor(OraclePredictor(), replay)
    session = DebugSession(example, recorder)
    comparisons = session.run()
    recorder.close()
    assert [c.position for c in comparisons] == list(range(1, 23)) and all(c.exact for c in comparisons)
    assert session.done and comparisons[-1].real_event == "end"
    records = [ReplayRecord.model_validate_json(line) for line in replay.read_text().splitlines()]
    # Every prompt is the real trace so far, whatever was predicted before.
    for record in records[:-1]:
        assert record.key == sha(render_prompt(example, record.position))
    assert records[-1].key == sha(render_prompt(example)[: -len(END_OF_TEXT)])
    assert records[-1].completion == END_OF_TEXT


def test_next_skips_a_call_out_returns_back_forgets(example: Trace, tmp_path: Path) -> None:
    replay = tmp_path / "moves.jsonl"
    recorder = RecordingPredictor(OraclePredictor(), replay)
    session = DebugSession(example, recorder)
    assert [c.position for c in session.step()] == [1]
    moved = session.next()  # line 15 calls parse_scores: predict the call, its return, the next line
    assert [(c.position, c.forced_event) for c in moved] == [(2, None), (18, "return"), (19, None)]
    assert session.visited == [0, 1, 2, 18, 19]
    forced = [ReplayRecord.model_validate_json(line) for line in replay.read_text().splitlines()][2]
    assert forced.key == sha(render_prompt(example, 3) + "<|return_sep|>")  # callee frames left out
    assert forced.completion == '<|action_sep|>    return scores\n<|arg_sep|>"[7, 0, 12]"'
    assert session.back() and session.back() and session.visited == [0, 1, 2]
    assert session.current_locals() == {"text": "'7,x,12'"}
    moved = session.out()  # inside parse_scores: to its return, then one step into the caller
    assert [c.position for c in moved] == list(range(3, 20)) and session.position == 19
    assert session.current_locals() == {"text": "'7,x,12'", "scores": "[7, 0, 12]"}
    assert [c.position for c in session.out()] == [20, 21, 22] and session.done
    assert session.step() == [] and session.next() == []
    while session.back():
        pass
    assert session.visited == [0] and not session.back()
    recorder.close()


def test_oracle_scores_perfectly(example: Trace) -> None:
    score, _ = score_trace(example, make_predictor("oracle"), "example")
    assert score.accuracies() == {"event": 1.0, "line": 1.0, "locals": 1.0, "value": 1.0, "exact": 1.0}
    assert score.frames == 22 and score.first_divergence is None


def test_perturbed_predictor_figures_are_known(example: Trace) -> None:
    score, comparisons = score_trace(example, make_predictor("perturbed:5"), "example")
    # Predictions 5, 10, 15, 20 are wrong: a local (pos 5), the line (pos 10, an exception frame),
    # the event (pos 15: line predicted as return, so its 3 locals are missing), a local (pos 20).
    wrong = {c.position: c for c in comparisons if not c.exact}
    assert sorted(wrong) == [5, 10, 15, 20]
    assert wrong[5].local_errors == {"token": ["'7'", "'<perturbed>'"]}
    assert wrong[10].line_ok is False and wrong[10].value_ok
    assert wrong[15].event_ok is False and len(wrong[15].local_errors) == 3
    assert list(wrong[20].local_errors) == ["best"]
    locals_total = sum(len(f.locals) for f in example.frames[1:] if f.locals is not None)
    assert (score.frames, score.exact, score.first_divergence) == (22, 18, 5)
    assert (score.event_ok, score.event_total, score.line_ok, score.line_total) == (21, 22, 20, 21)
    assert (score.locals_ok, score.locals_total) == (locals_total - 5, locals_total)
    assert (score.value_ok, score.value_total) == (3, 3)


def test_replay_file_edited_by_hand(example: Trace, tmp_path: Path) -> None:
    """A recorded replay file with two completions changed: exactly those frames diverge."""
    replay = tmp_path / "replay.jsonl"
    recorder = RecordingPredictor(OraclePredictor(), replay)
    score_trace(example, recorder, "record")
    recorder.close()
    records = [json.loads(line) for line in replay.read_text().splitlines()]
    records[6]["completion"] = records[6]["completion"].replace('"[7]"', '"[7, 7]"')  # position 7
    records[11]["completion"] = records[11]["completion"].replace("scores.append(0)", "scores.append(1)")
    replay.write_text("".join(json.dumps(r) + "\n" for r in records))
    score, comparisons = score_trace(example, make_predictor(f"replay:{replay}"), "replayed")
    assert [c.position for c in comparisons if not c.exact] == [7, 12]
    assert score.first_divergence == 7 and score.exact == 20
    assert comparisons[6].local_errors == {"scores": ["[7]", "[7, 7]"]}
    with pytest.raises(ModelError, match="has no completion for the prompt of frame 1"):
        DebugSession(read_trace(EXAMPLE / "trace.jsonl").model_copy(
            update={"header": example.header.model_copy(update={"source": "# changed\n" + example.header.source,
                                                                 "entry_line": 15})}),
            ReplayPredictor(replay)).step()


def test_predictor_specs() -> None:
    assert make_predictor("oracle").name == "oracle"
    assert make_predictor("perturbed:3").name == "perturbed:3"
    for bad in ("perturbed:x", "perturbed:0", "gpt", "replay:/no/such/file"):
        with pytest.raises(ModelError):
            make_predictor(bad)


def test_completions_predictor_asks_for_one_frame(example: Trace) -> None:
    with FakeOpenAIServer() as server:
        frame = '<|line_sep|>{"text": ".."}<|action_sep|>    scores = parse_scores(text)\n'
        server.reply("", raw={"choices": [{"text": frame, "finish_reason": "stop", "stop_reason": "<|frame_sep|>"}]})
        for _ in range(20):  # frames 2..21: garbage, which teacher forcing must not let spread
            server.reply("not a frame")
        server.reply("", raw={"choices": [{"text": "", "finish_reason": "stop", "stop_reason": 128001}]})
        predictor = make_predictor(server.url, max_tokens=300)
        comparisons = DebugSession(example, predictor).run()
        predictor.close()
        bodies = server.bodies(COMPLETIONS)
    assert comparisons[0].exact and comparisons[0].completion == frame
    assert all(c.parse_error for c in comparisons[1:-1])
    assert comparisons[-1].real_event == "end" and comparisons[-1].exact
    assert [b["prompt"] for b in bodies[:-1]] == [render_prompt(example, k) for k in range(1, 22)]
    body = bodies[0]
    assert body["stop"] == ["<|frame_sep|>", "<|end_of_text|>"] and body["stop_token_ids"] == [128100, 128001]
    assert body["skip_special_tokens"] is False and body["add_special_tokens"] is False
    assert body["max_tokens"] == 300 and body["temperature"] == 0.0


def test_interactive_commands(example: Trace) -> None:
    commands = iter(["n", "s", "p scores", "p", "b", "o", "w", "zzz", "q"])
    shown: list[str] = []
    interactive(DebugSession(example, make_predictor("perturbed:2")), lambda _: next(commands), shown.append)
    text = "\n".join(shown)
    assert text.startswith("-> #0 call: def summarize(text):")
    assert "[  ok] #1 line: scores = parse_scores(text)" in text
    assert "[DIFF] #2 call: def parse_scores(text):" in text and "line predicted:     pass  # perturbed" in text
    assert "no local scores" in text and '"text": "\'7,x,12\'"' in text
    assert "commands:" in text  # help for an unknown command


def test_calls_from_files_and_discovery(tmp_path: Path) -> None:
    listing = tmp_path / "calls.jsonl"
    listing.write_text('{"function": "f", "args": [1]}\n{"function": "g", "kwargs": {"x": "y"}}\n')
    assert [c.label() for c in load_calls(listing)] == ["f(1)", 'g(x="y")']
    source = "def a():\n    pass\ndef b(x=1, *, y=2):\n    pass\ndef c(x):\n    pass\ndef _d():\n    pass\n"
    assert [c.function for c in discover_calls(source)] == ["a", "b"]


def test_report_keeps_going_past_a_failing_call(example: Trace) -> None:
    def make(call: CallSpec) -> Trace:
        if call.function == "bad":
            raise RuntimeError("no such function")
        return example

    report, details = build_report([CallSpec(function="good"), CallSpec(function="bad")], make,
                                   make_predictor("oracle"), file="x.py")
    assert [s.status for s in report.scores] == ["returned", "error"] and report.total.frames == 22
    assert "no such function" in format_report(report) and list(details) == ["good()"]


# --- a report on a real open-source module, in a Docker sandbox ----------------------------------


@pytest.fixture(scope="module")
def sandbox(base_image: str) -> Iterator[Sandbox]:
    from sandbox.docker import DockerSandbox, connect

    try:
        connect().close()
    except SandboxError as error:
        pytest.skip(str(error))
    box = DockerSandbox(SandboxConfig(image=base_image, run_id=f"pytest-debug-{os.getpid()}"))
    yield box
    box.close()


@pytest.mark.docker
def test_report_on_textwrap_with_replayed_predictions(sandbox: Sandbox, tmp_path: Path) -> None:
    """textwrap (the standard library's, not written here): oracle, then a recorded perturbed run
    replayed offline, which must reproduce the recorded run's figures exactly."""
    source = Path(textwrap.__file__)
    copied = stage(sandbox, source)
    traces = {c.label(): trace_function(sandbox, copied, c.function, c.args, c.kwargs,
                                        args_literal=c.args_literal).trace for c in TEXTWRAP_CALLS}

    def make(call: CallSpec) -> Trace:
        return traces[call.label()]

    perfect, _ = build_report(TEXTWRAP_CALLS, make, make_predictor("oracle"), file=str(source))
    assert perfect.total.accuracies() == {"event": 1.0, "line": 1.0, "locals": 1.0, "value": 1.0, "exact": 1.0}
    assert perfect.total.frames > 300 and perfect.diverged == 0
    assert all(s.status == "returned" for s in perfect.scores)
    assert {f.file for t in traces.values() for f in t.frames} == {"textwrap.py"}  # `re` is not traced

    replay = tmp_path / "textwrap.replay.jsonl"
    recorded, _ = build_report(TEXTWRAP_CALLS, make, make_predictor("perturbed:7", record=replay), file=str(source))
    replayed, _ = build_report(TEXTWRAP_CALLS, make, make_predictor(f"replay:{replay}"), file=str(source))
    assert replayed.total == recorded.total.model_copy(update={}) and replayed.first_divergences == \
        recorded.first_divergences
    figures = replayed.total.accuracies()
    assert figures["exact"] == pytest.approx(1 - (replayed.total.frames // 7) / replayed.total.frames)
    assert replayed.diverged == len(TEXTWRAP_CALLS)
    table = format_report(replayed)
    print("\n" + table)
    assert "world-model agreement" in table and "first divergence: 5/5 traces diverge" in table


@pytest.mark.docker
def test_debug_command_end_to_end(tmp_path: Path, base_image: str) -> None:
    """What `agent debug --report` runs: its own sandbox, a calls file, a recorded then replayed
    model, a JSON report; then the interactive debugger on one call."""
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps([c.model_dump() for c in TEXTWRAP_CALLS[:3]]))
    replay, shown = tmp_path / "answers.jsonl", []
    code = debug_command(file=Path(textwrap.__file__), calls_file=calls, model="perturbed:6", record=replay,
                         report=True, image=base_image, write=shown.append)
    assert code == 1 and "3/3 traces diverge" in shown[0]  # some prediction diverged
    code = debug_command(file=Path(textwrap.__file__), calls_file=calls, model=f"replay:{replay}", report=True,
                         report_json=tmp_path / "report.json", image=base_image, write=shown.append)
    recorded, replayed = shown[0].splitlines(), shown[1].splitlines()
    assert code == 1 and replayed[1:] == recorded[1:]  # the same figures, offline
    print("\n" + shown[1])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["report"]["total"]["frames"] == sum(len(v) for v in saved["comparisons"].values()) > 100
    answers = iter(["o", "q"])
    code = debug_command(file=EXAMPLE / "program.py", function="summarize", args='["1,2"]', model="oracle",
                         image=base_image, read=lambda _: next(answers), write=shown.append)
    assert code == 0 and shown[-1].endswith("[  ok] #16 end: <end of trace>")

"""ReplayModel over trajectories written by traces.recorder.Recorder, and the heuristic counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.models.base import ModelError
from agent.models.factory import make_model
from agent.models.replay import ReplayModel
from agent.models.tokens import CachedTokenCounter, HeuristicTokenCounter
from agent.protocol.render import Message, render_message, render_prompt
from traces.recorder import Recorder, read_trajectory
from traces.schema import Ending, Header, ModelInfo, Step

ASK = [Message(role="system", content="sys"), Message(role="user", content="fix it")]
REPLIES = [
    ("a\n</think>\n<tool: bash>\nls\n</tool>", "stop", 1000, 20, None, 1.5),
    ("b\n</think>\n<tool: submit>\np.diff\n</tool>", "stop", 1100, 25, 1000, 0.5),
    ("cut off while thinking", "length", 1200, 65536, 1100, None),
]


def record(path: Path, replies=REPLIES, end: bool = True) -> Path:
    header = Header(run_id="r1", instance_id="demo__demo-1",
                    model=ModelInfo(kind="completions", name="cwm", url="http://gpu:8000/v1",
                                    temperature=1.0, top_p=0.95, max_tokens=65536))
    recorder = Recorder(path, header)
    for index, (text, finish, prompt, completion, cached, latency) in enumerate(replies, start=1):
        recorder.step(Step(index=index, raw_reply=text, finish_reason=finish, prompt_tokens=prompt,
                           completion_tokens=completion, cached_tokens=cached, model_latency_s=latency))
    if end:
        recorder.end(Ending(status="max_turns", steps=len(replies)))
    else:
        recorder.close()
    return path


def test_replays_recorded_replies_in_order_then_refuses(tmp_path: Path) -> None:
    path = record(tmp_path / "run.jsonl")
    model = ReplayModel(path)
    assert model.replies_left == 3
    for text, finish, prompt, completion, cached, latency in REPLIES:
        reply = model.complete(ASK)
        assert reply.text == text
        assert reply.finish_reason == finish
        assert (reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens) == (prompt, completion, cached)
        assert reply.latency_s == (latency or 0.0)
    with pytest.raises(ModelError) as error:
        model.complete(ASK)
    assert str(error.value).startswith(f"trajectory {path} has only 3 replies; the replay asked for reply 4")


def test_info_describes_the_recording(tmp_path: Path) -> None:
    path = record(tmp_path / "run.jsonl")
    info = ReplayModel(path).info
    assert (info.kind, info.name, info.url) == ("replay", "cwm", f"replay:{path}")
    assert (info.temperature, info.top_p, info.max_tokens) == (1.0, 0.95, 65536)


def test_accepts_a_loaded_trajectory_and_a_killed_run(tmp_path: Path) -> None:
    path = record(tmp_path / "killed.jsonl", end=False)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"type": "step", "index": 4, "raw_re')  # torn last line of a killed run
    trajectory = read_trajectory(path)
    assert trajectory.torn_tail
    model = ReplayModel(trajectory)
    assert [model.complete(ASK).text for _ in range(3)] == [r[0] for r in REPLIES]
    with pytest.raises(ModelError, match="trajectory run r1 has only 3 replies"):
        model.complete(ASK)


def test_empty_and_unreadable_trajectories(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has only 0 replies"):
        ReplayModel(record(tmp_path / "empty.jsonl", replies=[])).complete(ASK)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "step", "index": 1, "raw_reply": "x"}\n', encoding="utf-8")
    with pytest.raises(ModelError, match=r"^cannot replay: .*bad.jsonl: no header line"):
        ReplayModel(bad)


def test_factory_replay_spec(tmp_path: Path) -> None:
    path = record(tmp_path / "run.jsonl")
    model = make_model(f"replay:{path}")
    assert isinstance(model, ReplayModel)
    assert model.complete(ASK).text == REPLIES[0][0]
    assert isinstance(make_model(str(path), kind="replay"), ReplayModel)


def test_replay_counts_tokens_with_the_heuristic(tmp_path: Path) -> None:
    model = ReplayModel(record(tmp_path / "run.jsonl"))
    heuristic = HeuristicTokenCounter()
    for text in ("", "abc", render_prompt(ASK), "naïve <|eot_id|>\n"):
        assert model.count_tokens(text) == heuristic.count(text)


# --- the heuristic itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("<|eot_id|>", 1),
        ("ab<|eot_id|>cd", 3),  # ceil(2/4) + 1 + ceil(2/4)
        ("é" * 4, 2),  # 8 UTF-8 bytes
        ("<|begin_of_text|><|start_header_id|>", 2),
        ("<| not special |>", 5),  # 17 bytes of plain text
    ],
)
def test_heuristic_values(text: str, expected: int) -> None:
    assert HeuristicTokenCounter().count(text) == expected


def test_heuristic_is_additive_over_rendered_messages() -> None:
    counter = HeuristicTokenCounter()
    messages = [*ASK, Message(role="tool: bash", content="<output>\nx y z\n</output>")]
    whole = counter.count(render_prompt(messages))
    parts = counter.count("<|begin_of_text|>") + sum(counter.count(render_message(m)) for m in messages)
    parts += counter.count("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert whole == parts


def test_cached_counter_switches_to_the_heuristic_once() -> None:
    calls: list[str] = []

    def missing(text: str) -> int | None:
        calls.append(text)
        return None

    counter = CachedTokenCounter(missing)
    assert counter.count("abcdefgh") == 2 and counter.approximate
    assert counter.count("abcdefghi") == 3
    assert calls == ["abcdefgh"]

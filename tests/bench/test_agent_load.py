"""bench/agent_load.py against the real local fake server (tests/fakes/openai_server.py, in toy
tokens: one per character, one per special token): the prompts grow exactly as the agent loop builds
them, lengths follow the drawn or replayed counts, and the cache share, preemptions and KV usage the
report shows are the server's."""

from __future__ import annotations

import importlib.util
import math
import random
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from agent.episode.loop import initial_messages
from agent.protocol import prompts
from agent.protocol.render import (
    BEGIN_OF_TEXT,
    EOT,
    STOP_STRINGS,
    STOP_TOKEN_IDS,
    Message,
    assistant_prefix,
    render_message,
    render_prompt,
)
from bench.agentload.episode import TurnRecord
from bench.agentload.lengths import EpisodePlan, LogNormal, Shape, fit_trajectories, simulate
from bench.agentload.metrics import Snapshot, deltas, parse_prometheus
from bench.agentload.report import cache_share, ttft_by_bucket
from tests.fakes.load import BLOCK, letters
from tests.fakes.openai_server import FakeOpenAIServer, toy_count
from tests.helpers import EXAMPLES, REPO_ROOT
from traces.recorder import Recorder, read_trajectory
from traces.schema import Header, ModelInfo, Step

SPEC = importlib.util.spec_from_file_location("agent_load", REPO_ROOT / "bench" / "agent_load.py")
assert SPEC is not None and SPEC.loader is not None
agent_load = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(agent_load)

MAX_CONTEXT = 12000
TURNS = 6
OBSERVATION = re.compile(r"<output>\n(.*)\n</output>\n\n<budget>\n\* Remaining turns: (\d+)\n"
                         r"\* Remaining tokens: (\d+)\n</budget>", re.DOTALL)


def bench(server: FakeOpenAIServer, *args: str) -> dict[str, Any]:
    return agent_load.run(agent_load.parse_args(["--url", server.url, "--max-context", str(MAX_CONTEXT),
                                                 "--warmup-max", "5", *args]))


@pytest.fixture(scope="module")
def staggered() -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """One run of 1 then 2 staggered episodes on a server with a prefix cache and scripted metrics."""
    with FakeOpenAIServer(prefix_cache=True, max_model_len=MAX_CONTEXT) as server:
        server.set_load(preemptions_per_request=2, kv_cache_usage=0.25)
        report = bench(server, "--levels", "1,2", "--duration", "2", "--scale-to", f"{TURNS}:9000")
        bodies = server.bodies()
        preemptions = server.counter("preemptions")
    return report, bodies, preemptions


def chains(bodies: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The requests grouped into episodes: each one's predecessor is the longest earlier prompt it extends."""
    successor: dict[int, int] = {}
    for index, body in enumerate(bodies):
        parents = [i for i, other in enumerate(bodies) if i != index and body["prompt"].startswith(other["prompt"])]
        if parents:
            successor[max(parents, key=lambda i: len(bodies[i]["prompt"]))] = index
    starts = set(range(len(bodies))) - set(successor.values())
    result = []
    for start in starts:
        chain, at = [bodies[start]], start
        while at in successor:
            at = successor[at]
            chain.append(bodies[at])
        result.append(chain)
    return result


def test_each_prompt_is_the_previous_one_plus_the_reply_and_the_loops_observation(staggered) -> None:
    report, bodies, _ = staggered
    episodes = [chain for chain in chains(bodies) if len(chain) > 1]
    assert episodes  # (a fake answers in milliseconds: a 2-second window holds dozens of turns)
    for chain in episodes:
        for earlier, later in zip(chain, chain[1:], strict=False):
            reply = letters(earlier["max_tokens"])  # what the fake generated
            delta = later["prompt"][len(earlier["prompt"]):]
            assert delta.startswith(reply + EOT) and delta.endswith(assistant_prefix())
            content = delta[len(reply + EOT):-len(assistant_prefix())]
            header = render_message(Message(role="tool: bash", content=""))[:-len(EOT)]
            assert content.startswith(header) and content.endswith(EOT)
            content = content[len(header):-len(EOT)]
            match = OBSERVATION.fullmatch(content)
            assert match is not None, content[:200]
            so_far = toy_count(earlier["prompt"]) + earlier["max_tokens"]
            # The budget block is the loop's: context - tokens so far - this message's own tokens.
            assert int(match.group(3)) == MAX_CONTEXT - so_far - toy_count(content)
            turn = TURNS - int(match.group(2))
            assert content == prompts.tool_observation(match.group(1), TURNS - turn, so_far, MAX_CONTEXT, toy_count)
    system = BEGIN_OF_TEXT + render_message(Message(role="system", content=prompts.system_prompt(
        context=MAX_CONTEXT, turns=TURNS)))
    assert all(body["prompt"].startswith(system) for body in bodies)


def test_request_bodies_are_the_clients_with_exact_lengths(staggered) -> None:
    report, bodies, _ = staggered
    for body in bodies:
        assert body["stop"] == list(STOP_STRINGS) and body["stop_token_ids"] == list(STOP_TOKEN_IDS)
        assert body["skip_special_tokens"] is False and body["add_special_tokens"] is False
        assert body["ignore_eos"] is True and body["min_tokens"] == body["max_tokens"]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert (body["temperature"], body["top_p"]) == (1.0, 0.95)
    done = [r for r in report["records"] if r["completion_tokens"] is not None]
    assert done and all(r["completion_tokens"] == r["requested_tokens"] for r in done)
    assert all(r["prompt_tokens"] == r["counted_prompt_tokens"] for r in done)  # /tokenize agrees with usage
    observed = [r for r in done if r["observation_tokens"] is not None]
    assert observed
    for record in observed:
        assert abs(record["observation_tokens"] - record["drawn_observation_tokens"]) <= 3


def test_staggered_episodes_start_mid_life_and_only_later_turns_count_for_the_cache(staggered) -> None:
    report, _, _ = staggered
    records = [TurnRecord(**r) for r in report["records"]]
    warm = [r for r in records if r.warm_start]
    assert warm and all(r.turn > 1 and r.ideal_cached_tokens is None for r in warm)
    for record in records:
        if record.ideal_cached_tokens is not None and record.cached_tokens is not None:
            # The fake caches prompts: the previous one is all that can be hit, in whole blocks.
            assert record.cached_tokens == record.ideal_cached_tokens // BLOCK * BLOCK
    level = report["levels"][-1]
    start, end = level["window"]
    inside = [r for r in records if r.ended is not None and start <= r.ended <= end and r.error is None]
    assert level["cache"] == cache_share(inside)
    assert 0.99 < level["cache"]["of_ideal"] <= 1.0


def test_preemptions_and_kv_usage_come_from_the_servers_metrics(staggered) -> None:
    report, bodies, preemptions = staggered
    assert preemptions == 2 * len(bodies)
    assert report["run_counters"]["preemptions"] == preemptions
    assert report["run_counters"]["generation_tokens"] == sum(b["max_tokens"] for b in bodies)
    for level in report["levels"]:
        assert level["generated_tokens_source"] == "server /metrics"
        assert level["preemptions"] % 2 == 0 and level["preemptions"] > 0
        assert level["gauges"]["kv_cache_usage"] == {"mean": 0.25, "max": 0.25}
        assert level["ttft"] and all(row["p50_s"] <= row["p95_s"] for row in level["ttft"])
    assert report["metrics_available"] is True


def test_a_small_cache_shows_as_a_low_share(tmp_path: Path) -> None:
    with FakeOpenAIServer(prefix_cache=True, cache_capacity=6000, max_model_len=MAX_CONTEXT) as server:
        report = bench(server, "--levels", "3", "--duration", "1", "--scale-to", f"{TURNS}:9000", "--no-stagger")
    cache = report["levels"][0]["cache"]
    assert cache["requests"] > 0 and cache["of_ideal"] < 0.5


def test_replayed_counts_are_sent_turn_by_turn(tmp_path: Path) -> None:
    opening = initial_messages(prompts.system_prompt(context=MAX_CONTEXT, turns=3), prompts.issue_prompt(""))
    template = toy_count(render_prompt(opening)) + 400  # room for a 400-token issue
    path = tmp_path / "recorded.traj.jsonl"
    recorder = Recorder(path, Header(run_id="t", instance_id="i", model=ModelInfo(kind="replay")))
    for index, (prompt, completion, observation) in enumerate(
            [(template, 5, 300), (template + 305, 9, 200), (template + 514, 3, None)], start=1):
        recorder.step(Step(index=index, raw_reply="x", prompt_tokens=prompt, completion_tokens=completion,
                           observation_tokens=observation))
    recorder.close()
    with FakeOpenAIServer(max_model_len=MAX_CONTEXT) as server:
        report = bench(server, "--levels", "1", "--duration", "0.5", "--replay-counts", str(path))
    episodes: dict[int, list[dict[str, Any]]] = {}
    for record in report["records"]:
        episodes.setdefault(record["episode"], []).append(record)
    complete = [turns for turns in episodes.values() if len(turns) == 3 and turns[-1]["completion_tokens"]]
    assert complete
    for turns in complete:
        assert [t["requested_tokens"] for t in turns] == [5, 9, 3]
        assert abs(turns[0]["prompt_tokens"] - template) <= 0.02 * template
        assert [abs(t["observation_tokens"] - d) <= 3 for t, d in zip(turns, [300, 200], strict=False)] == [True] * 2
    assert report["expected_turns"] == 3 and report["expected_generated_tokens"] == 17


# The parts, one by one


def test_lognormal_draws_follow_their_parameters() -> None:
    shape = LogNormal(median=400, sigma=0.55, low=1, high=10**6)
    rng = random.Random(7)
    logs = [math.log(shape.draw(rng)) for _ in range(4000)]
    assert math.exp(statistics.fmean(logs)) == pytest.approx(400, rel=0.03)
    assert statistics.pstdev(logs) == pytest.approx(0.55, rel=0.05)
    clipped = LogNormal(median=400, sigma=2.0, low=100, high=500)
    assert all(100 <= clipped.draw(rng) <= 500 for _ in range(500))


def test_the_fitted_shape_is_the_recorded_trajectories_and_scaling_keeps_it() -> None:
    paths = sorted(EXAMPLES.glob("*/trajectory.jsonl"))
    shape = fit_trajectories(paths)
    replies = [s.completion_tokens for p in paths for s in read_trajectory(p).steps if s.completion_tokens]
    assert shape.reply.median == pytest.approx(math.exp(statistics.fmean(math.log(v) for v in replies)))
    scaled = shape.scaled(64, 65536)
    assert scaled.first_prompt_tokens + 64 * scaled.per_turn_mean() == pytest.approx(65536)
    assert scaled.reply.sigma == shape.reply.sigma
    assert scaled.reply.median / scaled.observation.median == pytest.approx(shape.reply.median / shape.observation.median)
    with pytest.raises(ValueError):
        shape.scaled(10, 100)


def test_simulated_episodes_end_where_the_player_ends_them() -> None:
    plan = EpisodePlan(name="p", first_prompt_tokens=100, replies=[50, 50, 50], observations=[100, 100])
    assert simulate(plan, 300) == (2, 100)  # turn 2 fills the context: no room for turn 3
    assert simulate(plan, 10_000) == (3, 150)
    assert simulate(plan, 120) == (1, 20)  # the reply is cut to the room left
    shape = Shape(source="s", first_prompt_tokens=10, turns=4, reply=LogNormal(median=20, sigma=0),
                  observation=LogNormal(median=30, sigma=0))
    assert shape.plan(random.Random(0), "x").replies == [20] * 4


def test_prometheus_text_as_vllm_writes_it() -> None:
    text = (
        "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
        "# TYPE vllm:num_preemptions_total counter\n"
        'vllm:num_preemptions_total{engine="0",model_name="cwm"} 7.0\n'
        'vllm:num_preemptions_total{engine="1",model_name="cwm"} 3.0\n'
        'vllm:num_preemptions_created{engine="0",model_name="cwm"} 1.7e+09\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="cwm"} 0.875\n'
        'vllm:generation_tokens_total{engine="0",model_name="cwm"} 1.2e+06\n'
        "vllm:num_requests_waiting 4\n"
        "garbage line {\n"
    )
    values = parse_prometheus(text)
    assert values["vllm:num_preemptions_total"] == 10.0 and values["vllm:generation_tokens_total"] == 1.2e6
    snap = Snapshot.of(text, at=1.0)
    assert snap.gauges == {"kv_cache_usage": 0.875, "running": None, "waiting": 4.0}
    old = Snapshot.of('vllm:gpu_cache_usage_perc{model_name="cwm"} 0.5\nvllm:num_preemptions 2\n', at=0.0)
    assert old.gauges["kv_cache_usage"] == 0.5 and old.counters["preemptions"] == 2.0
    assert deltas(old, snap)["preemptions"] == 8.0 and deltas(old, snap)["generation_tokens"] is None
    assert deltas(None, snap)["preemptions"] is None


def test_cache_share_and_ttft_buckets() -> None:
    def record(prompt: int, cached: int | None, ideal: int | None, ttft: float, warm: bool = False) -> TurnRecord:
        return TurnRecord(episode=1, plan="p", turn=2, warm_start=warm, requested_tokens=1, counted_prompt_tokens=prompt,
                          prompt_tokens=prompt, cached_tokens=cached, ideal_cached_tokens=ideal, started=0.0,
                          first_token=ttft, ended=1.0)

    records = [record(1000, 896, 900, 0.1), record(2000, 1792, 1800, 0.3), record(5000, 0, 4000, 2.0),
               record(3000, 0, None, 0.2), record(9000, 100, 8000, 5.0, warm=True)]
    share = cache_share(records)
    assert (share["requests"], share["cached_tokens"], share["ideal_cached_tokens"]) == (3, 2688, 6700)
    assert share["of_ideal"] == round(2688 / 6700, 4) and share["share"] == round(2688 / 8000, 4)
    rows = ttft_by_bucket(records)
    assert [(r["bucket"], r["n"], r["p50_s"], r["p95_s"]) for r in rows] == [
        ("0-4k", 3, 0.2, 0.3), ("4-8k", 1, 2.0, 2.0), ("8-16k", 1, 5.0, 5.0)]


def test_round_trip_token_ids_leave_out_fillers_and_special_tokens(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    import subprocess
    import sys

    from bench.agentload.text import round_trip_token_ids

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"vocab_size": 128256, "max_position_embeddings": 4096}')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n" * 200)
    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu" / "mktokenizer.py"), str(model),
                    "--bpe-vocab-size", "300", "--corpus", str(corpus)], check=True, capture_output=True)
    from tokenizers import Tokenizer

    allowed = round_trip_token_ids(model)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert allowed and max(allowed) < 300  # learned tokens only: no fillers, no special tokens
    assert tokenizer.token_to_id("def") in allowed or tokenizer.token_to_id("Ġreturn") in allowed
    assert all("<|" not in tokenizer.decode([i]) for i in allowed)


def test_levels_share_the_time_left_before_the_deadline() -> None:
    import time

    args = agent_load.parse_args(["--duration", "60", "--warmup-max", "40"])
    assert agent_load.level_budget(args, 3) == (40, 60)  # no deadline: as asked
    args.stop_at = time.time() + 8 + 3 * 50  # 50 s each for three levels
    warm, window = agent_load.level_budget(args, 3)
    assert warm == pytest.approx(0.45 * 50, abs=0.5) and window == pytest.approx(50 - warm, abs=0.5)
    args.stop_at = time.time() + 8 + 15  # too little for a window of 10 s after warming up
    assert agent_load.level_budget(args, 1)[1] == 0.0


def test_admission_holds_new_episodes_while_the_kv_cache_is_full() -> None:
    """With --admission, the batch's controller decides how many episodes run: a server whose KV cache
    is full with requests waiting keeps the window at its start or below it, and the episodes beyond it
    wait (held) instead of running; requests of more episodes than the window never overlap."""
    with FakeOpenAIServer(prefix_cache=True, kv_capacity=1, max_model_len=MAX_CONTEXT) as server:
        report = bench(server, "--levels", "6", "--duration", "2", "--scale-to", f"{TURNS}:9000",
                       "--admission", "--admission-start", "2")
    gate = report["levels"][0]["admission"]
    assert gate["enabled"] and gate["max_window"] <= 2 and gate["window"] >= 1
    assert gate["peak_held"] >= 4  # six players, at most two running: the others were held
    assert 1 <= gate["peak_active"] <= 2
    spans = [(r["started"], r["ended"], r["episode"]) for r in report["records"] if r["ended"] is not None]
    assert spans
    for started, ended, _ in spans:  # episodes with a request in flight at each request's start
        overlapping = {episode for s, e, episode in spans if s <= started < e}
        assert len(overlapping) <= 2
    assert "admission at 6: window" in agent_load.table(report)

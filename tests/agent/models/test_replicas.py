"""Several replicas of one model (`--model URL1,URL2`), against real HTTP servers on 127.0.0.1 (tests/fakes).

Each test episode's prompt carries its own tag (`episode N`), so the requests a server recorded say which
episodes it served. A replica is killed with FakeOpenAIServer.stop(): the listener closes and open
connections are cut, as when vLLM dies.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.outages import OutageGate, model_server
from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, run_batch
from agent.batch.status_log import RunConfig
from agent.models import health
from agent.models.base import ModelError
from agent.models.factory import make_model, parse_replicas, same_model
from agent.models.http import ServerError, ServerUnavailable
from agent.models.replicas import ReplicaSet, pinned_counts
from agent.protocol.render import Message
from tests.agent.batch.test_run import expected_preds, make_instances, read_manifest
from tests.fakes.openai_server import COMPLETIONS, FakeOpenAIServer
from tests.faults.helpers import STEPS, check_run, count, cwm_server, events
from traces.recorder import read_trajectory

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0}


def conversation(episode: int, turn: int) -> list[Message]:
    """Episode `episode` at `turn`: its prompts share the prefix that names it."""
    messages = [Message(role="system", content="You are CWM."), Message(role="user", content=f"episode {episode}")]
    for n in range(turn):
        messages += [Message(role="assistant", content=f"turn {n}\n</think>\nok"),
                     Message(role="tool: bash", content=f"<output>\n{n}\n</output>")]
    return messages


def episodes_of(server: FakeOpenAIServer, since: int = 0) -> list[int]:
    """The episode of every completion request `server` got (from its `since`-th on)."""
    return [int(str(r.body["prompt"]).split("episode ")[1].split("<")[0])
            for r in server.requests_to(COMPLETIONS)[since:]]


@pytest.fixture
def pair() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    first, second = FakeOpenAIServer().start(), FakeOpenAIServer().start()
    urls = (first.url, second.url)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()
        for url in urls:
            health.mark_up(url)  # leave no outage behind for the next test


def replicas(pair: tuple[FakeOpenAIServer, FakeOpenAIServer], affinity: str | None = None, **options: object) -> ReplicaSet:
    model = make_model(f"{pair[0].url},{pair[1].url}", affinity=affinity, **{**FAST, **options})
    assert isinstance(model, ReplicaSet)
    return model


# -- the spec -------------------------------------------------------------------------------------------


def test_a_comma_list_is_one_kind_of_replicas() -> None:
    assert parse_replicas("http://a:1/v1, http://b:2") == ("completions", ["http://a:1/v1", "http://b:2"])
    assert parse_replicas("chat:http://a:1,http://b:2") == ("chat", ["http://a:1", "http://b:2"])
    assert parse_replicas("chat:http://a:1,chat:http://b:2") == ("chat", ["http://a:1", "http://b:2"])
    with pytest.raises(ModelError, match=r"mixes kinds \(chat, completions\); replicas must all be one kind"):
        parse_replicas("http://a:1,chat:http://b:2")
    with pytest.raises(ModelError, match="says chat but kind=completions"):
        parse_replicas("chat:http://a:1,http://b:2", kind="completions")
    with pytest.raises(ModelError, match="has an empty entry"):
        parse_replicas("http://a:1,")
    with pytest.raises(ModelError, match="several replay files"):
        parse_replicas("replay:a.jsonl,replay:b.jsonl")
    with pytest.raises(ModelError, match="name a server twice"):
        make_model("http://a:1,http://a:1/v1")
    with pytest.raises(ModelError, match="unknown option 'nope' for the completions model"):
        make_model("http://a:1,http://b:2", nope=1)
    for error in ("http://a:1,http://b:2,", "http://a:1,chat:http://b:2"):
        with pytest.raises(ModelError) as raised:
            make_model(error)
        assert "\n" not in str(raised.value)


def test_the_replica_list_is_a_deployment_detail_on_resume() -> None:
    one, two, three = "http://a:1/v1", "http://b:2/v1", "http://c:3/v1"
    assert same_model(f"{one},{two}", f"{two},{one}")  # reordered
    assert same_model(f"{one},{two}", f"{one},{two},{three}")  # a replica added
    assert same_model(f"{one},{two}", one) and same_model("http://a:1", f"{one},{two}")  # one removed
    assert not same_model(f"{one},{two}", three)  # other servers altogether
    assert not same_model(f"{one},{two}", f"chat:{one},{two}")  # another kind
    assert not same_model("replay:a.jsonl", "replay:b.jsonl")
    config = RunConfig(model=f"{one},{two}", samples=2)
    assert config.differences(RunConfig(model=f"{two},{three}", samples=2)) == []
    assert config.differences(RunConfig(model=three, samples=1)) == ["model", "samples"]


# -- pinning ----------------------------------------------------------------------------------------------


def test_episodes_spread_over_replicas_and_each_stays_on_one(pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    models = [replicas(pair, affinity=f"instance-{n}#0") for n in range(6)]
    assert pinned_counts()[first.url] == pinned_counts()[second.url] == 3
    for turn in range(3):
        for episode, model in enumerate(models):
            model.complete(conversation(episode, turn))
    served = {episode: model.info.url for episode, model in enumerate(models)}
    for model in models:
        model.close()
    on_first, on_second = episodes_of(first), episodes_of(second)
    assert len(on_first) == len(on_second) == 9  # three episodes of three turns each
    assert not set(on_first) & set(on_second)  # no episode on both
    assert {e: first.url for e in on_first} | {e: second.url for e in on_second} == served  # the header's url
    # Token counts are asked of the episode's own replica too.
    assert first.requests_to("/tokenize") and second.requests_to("/tokenize")
    assert not pinned_counts().get(first.url) and not pinned_counts().get(second.url)


def test_new_episodes_avoid_a_dead_replica_until_it_is_back(pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    dead, port = first.url, first.port
    spec = f"{dead},{second.url}"
    first.stop()
    health.mark_down(dead)  # as an episode's client finds it
    models = [make_model(spec, affinity=f"instance-{n}#0", **FAST) for n in range(3)]
    assert {model.replica.api_base for model in models} == {second.url}  # type: ignore[attr-defined]
    first.start(port=port)  # restarted: a later episode's client asks it again (with backoff) and pins there
    for _ in range(100):
        models.append(make_model(spec, affinity="instance-late#0", **FAST))
        if models[-1].replica.api_base == dead:  # type: ignore[attr-defined]
            break
        time.sleep(0.05)
    assert models[-1].replica.api_base == dead and dead  # type: ignore[attr-defined] not in health.down_servers()
    for model in models:
        model.close()


# -- failing over -----------------------------------------------------------------------------------------


def test_a_replica_killed_mid_episode_hands_its_episodes_to_the_other(
        pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    dead = first.url
    models = [replicas(pair, affinity=f"instance-{n}#0") for n in range(4)]
    for episode, model in enumerate(models):
        model.complete(conversation(episode, 0))
    moved = sorted(set(episodes_of(first)))
    assert len(moved) == 2
    # Kill the first replica while one of its episodes waits for a reply (its request is cut).
    first.hang(1)
    replies: list[str] = []
    waiting = threading.Thread(target=lambda: replies.append(models[moved[0]].complete(conversation(moved[0], 1)).text))
    waiting.start()
    while len(first.requests_to(COMPLETIONS)) < 3:
        time.sleep(0.01)
    first.stop()
    waiting.join(timeout=10)
    assert replies == ["default scripted reply\n</think>\nnothing scripted"]
    before = len(second.requests_to(COMPLETIONS))
    for episode, model in enumerate(models):
        for turn in (1, 2) if episode != moved[0] else (2,):
            model.complete(conversation(episode, turn))
    assert dead in health.down_servers()
    after_kill = episodes_of(second, since=before - 1)  # the cut request, sent again, then the rest
    assert episodes_of(second)[before - 1] == moved[0]
    assert sorted(after_kill) == sorted([moved[0], moved[0], *[e for e in range(4) if e != moved[0] for _ in (1, 2)]])
    # The cut request was re-sent whole to the live replica: the same prompt, so it prefills there.
    cut = first.requests_to(COMPLETIONS)[2].body["prompt"]
    assert second.requests_to(COMPLETIONS)[before - 1].body["prompt"] == cut
    for episode in moved:
        assert models[episode].served == [dead, second.url]
        assert models[episode].info.url == second.url
    for model in models:
        model.close()


def test_every_replica_down_is_waited_out_then_unavailable(pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    model = replicas(pair, outage_s=0.5)
    model.complete(conversation(0, 0))
    urls = {first.url, second.url}
    first.stop()
    second.stop()
    with pytest.raises(ServerUnavailable, match=r"every replica of the model \(.*\) went away and none came back "
                       r"within \d+ s \(outage bound 0.5 s\); restart one, then rerun with --resume") as raised:
        model.complete(conversation(0, 1))
    assert raised.value.down_since is not None
    assert urls <= set(health.down_servers())
    model.close()


def test_every_replica_down_waits_for_the_first_back(pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    model = replicas(pair, affinity="instance-0#0")
    model.complete(conversation(0, 0))
    pinned = first if first.requests_to(COMPLETIONS) else second
    other = second if pinned is first else first
    port = other.port
    first.stop()
    second.stop()
    restart = threading.Timer(0.3, lambda: other.start(port=port))
    restart.start()
    assert model.complete(conversation(0, 1)).text.endswith("nothing scripted")
    restart.join()
    assert episodes_of(other) == [0] and model.info.url == other.url
    assert other.url not in health.down_servers()
    model.close()


def test_replicas_that_never_answered_fail_at_once() -> None:
    servers = [FakeOpenAIServer().start() for _ in range(2)]
    urls = [server.url for server in servers]
    for server in servers:
        server.stop()  # free ports nothing listens on: a wrong URL list
    model = make_model(",".join(urls), **{**FAST, "outage_s": 2})  # bounded, should a port have answered before
    with pytest.raises(ServerError, match="is not reachable") as raised:
        model.complete(conversation(0, 0))
    assert not isinstance(raised.value, ServerUnavailable)
    model.close()
    for url in urls:
        health.mark_up(url)


def test_a_request_error_is_not_failed_over(pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    model = replicas(pair)
    model.complete(conversation(0, 0))
    pinned = first if first.requests_to(COMPLETIONS) else second
    pinned.fail(1, status=400, message="bad request")
    with pytest.raises(ServerError, match="rejected the request"):
        model.complete(conversation(0, 1))
    assert len(episodes_of(first)) + len(episodes_of(second)) == 2  # the 400 was not sent elsewhere
    model.close()


# -- the batch ------------------------------------------------------------------------------------------


def test_the_batch_holds_episodes_only_while_every_replica_is_down(
        pair: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    first, second = pair
    spec = f"{first.url},{second.url}"
    assert model_server(spec) == spec
    label = f"every model server of {first.url}, {second.url}"
    changes: list[tuple[str, float | None]] = []
    gate = OutageGate(60, [spec], "/nowhere", docker=False, on_change=lambda what, since: changes.append((what, since)))
    health.mark_up(first.url)
    health.mark_up(second.url)  # both answered this process
    health.mark_down(first.url)
    assert not gate.holding()
    health.mark_down(second.url)
    port = second.port
    second.stop()
    first.stop()
    assert gate.holding()
    assert changes and changes[0][0] == label
    second.start(port=port)  # one replica is enough
    for _ in range(100):  # the gate asks again after its backoff (0.5 s first)
        if not gate.holding():
            break
        time.sleep(0.05)
    assert not gate.holding()
    assert changes[-1] == (label, None)


@pytest.mark.docker
@pytest.mark.parametrize("kill", [False, True], ids=["both-up", "one-killed"])
def test_a_batch_over_two_replicas_writes_the_predictions_of_one_server(tmp_path: Path, base_image: str,
                                                                       kill: bool) -> None:
    instances = make_instances(6, prefix="rep")
    first, second = cwm_server(), cwm_server()
    urls, sink = (first.url, second.url), io.StringIO()
    try:
        if kill:
            def stop_first() -> None:
                while len(first.requests_to(COMPLETIONS)) < 6:
                    time.sleep(0.01)
                first.stop()

            killer = threading.Thread(target=stop_first, daemon=True)
            killer.start()
        result = run_batch(BatchRequest(instances=instances, output=tmp_path / "run", model=",".join(urls),
                                        workers=3, image=base_image, outage_s=30),
                           progress=LogProgress(Console(file=sink, width=300)))
        served = (len(first.requests_to(COMPLETIONS)), len(second.requests_to(COMPLETIONS)))
    finally:
        first.stop()
        second.stop()
        for url in urls:
            health.mark_up(url)
    assert (result.done, result.errored, result.exit_code, result.stopped) == (6, 0, 0, None), sink.getvalue()
    check_run(tmp_path / "run", instances)  # whole status log, complete trajectories, the undisturbed predictions
    assert (tmp_path / "run" / "preds.jsonl").read_text() == expected_preds(instances)
    assert all(served), served  # both replicas served episodes
    if kill:  # the killed replica served only part of its episodes; the other one finished them
        assert served[0] < 3 * STEPS <= served[1] and sum(served) >= 6 * STEPS, served
    headers = [read_trajectory(path).header.model.url for path in (tmp_path / "run").rglob("*.traj.jsonl")]
    assert len(headers) == 6 and set(headers) <= set(urls)  # each header names the replica it started on
    # Nobody failed or ran twice: a killed replica's episodes went on on the other one.
    assert set(count(events(tmp_path / "run"), "start").values()) == {1}
    assert all(s.attempts == 1 for r in read_manifest(tmp_path / "run").instances for s in r.samples)
    assert not result.outages

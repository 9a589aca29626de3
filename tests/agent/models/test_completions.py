"""CompletionsModel and the factory, against a real HTTP server on 127.0.0.1 (tests/fakes)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.models import health
from agent.models.base import ContextExceededError, ModelError
from agent.models.chat import ChatModel
from agent.models.completions import CompletionsModel
from agent.models.factory import make_model, parse_spec
from agent.models.http import ServerUnavailable, normalize_base_url
from agent.models.replay import ReplayModel
from agent.models.tokens import HeuristicTokenCounter
from agent.protocol.render import Message, assistant_content, render_prompt

try:  # `python -m pytest` puts the repo root on sys.path; bare `pytest` only tests/
    from tests.fakes.openai_server import COMPLETIONS, TOKENIZE, FakeOpenAIServer, toy_count
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fakes.openai_server import COMPLETIONS, TOKENIZE, FakeOpenAIServer, toy_count  # type: ignore[no-redef]

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.02, "timeout_s": 5.0}

OBSERVATION = (
    "<output>\na.py\nb.py\n</output>\n\n<budget>\n* Remaining turns: 127\n* Remaining tokens: 1000\n</budget>"
)
CONVERSATION = [
    Message(role="system", content="  You are CWM.\n"),
    Message(role="user", content="Fix the bug.\n\n"),
    Message(role="assistant", content=assistant_content("look first\n</think>\n<tool: bash>\nls\n</tool>")),
    Message(role="tool: bash", content=OBSERVATION),
]
# Pinned by hand (not computed by render_prompt): what CWM must receive for CONVERSATION.
EXPECTED_PROMPT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are CWM.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nFix the bug.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "<think>\nlook first\n</think>\n<tool: bash>\nls\n</tool><|eot_id|>"
    "<|start_header_id|>tool: bash<|end_header_id|>\n\n" + OBSERVATION + "<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def header(recorded_headers: dict[str, str], name: str) -> str | None:
    return {k.lower(): v for k, v in recorded_headers.items()}.get(name.lower())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what is sent ---------------------------------------------------------------------------------


def test_sends_the_exact_rendered_prompt_for_a_multi_turn_conversation(server: FakeOpenAIServer) -> None:
    server.reply("ok\n</think>\ndone")
    model = CompletionsModel(server.url, **FAST)
    reply = model.complete(CONVERSATION)
    (body,) = server.bodies(COMPLETIONS)
    assert isinstance(body["prompt"], str)
    assert body["prompt"] == EXPECTED_PROMPT
    assert body["prompt"] == render_prompt(CONVERSATION)
    assert reply.text == "ok\n</think>\ndone"


def test_body_has_sampling_stops_and_cap(server: FakeOpenAIServer) -> None:
    model = CompletionsModel(server.url, **FAST)
    model.complete(CONVERSATION)
    (body,) = server.bodies(COMPLETIONS)
    assert body["model"] == "cwm"
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.95
    assert body["stop_token_ids"] == [128001, 128008, 128009]
    assert set(body["stop"]) == {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}
    assert body["skip_special_tokens"] is False
    assert body["add_special_tokens"] is False  # the prompt carries its own <|begin_of_text|>
    assert body["max_tokens"] == 65536
    assert "structured_outputs" not in body and "guided_regex" not in body


def test_reply_cap_is_the_context_left_counted_exactly_by_the_server() -> None:
    with FakeOpenAIServer(max_model_len=5000) as server:
        model = CompletionsModel(server.url, **FAST)
        model.complete(CONVERSATION)
        (body,) = server.bodies(COMPLETIONS)
        # Counting message by message equals the server's count of the whole prompt.
        assert model.prompt_tokens(CONVERSATION) == toy_count(EXPECTED_PROMPT)
        assert body["max_tokens"] == 5000 - toy_count(EXPECTED_PROMPT)
        model.complete([*CONVERSATION, Message(role="user", content="more")])
        # The history was counted once: only the new message (and nothing else) was tokenized again.
        prompts = [b["prompt"] for b in server.bodies(TOKENIZE)]
        assert len(prompts) == len(set(prompts)) == len(CONVERSATION) + 3


def test_context_already_full_fails_before_sending() -> None:
    with FakeOpenAIServer(max_model_len=50) as server:
        model = CompletionsModel(server.url, **FAST)
        with pytest.raises(ContextExceededError, match="no room is left for a reply"):
            model.complete(CONVERSATION)
        assert server.bodies(COMPLETIONS) == []


def test_constraint_options_and_extra_body(server: FakeOpenAIServer) -> None:
    model = CompletionsModel(server.url, constraint=r"[a-z]+", extra_body={"seed": 7}, temperature=None, **FAST)
    model.complete(CONVERSATION)
    assert model.info.constrained is True
    old = CompletionsModel(server.url, constraint="x+", constraint_format="guided_regex", **FAST)
    old.complete(CONVERSATION)
    first, second = server.bodies(COMPLETIONS)
    assert first["structured_outputs"] == {"regex": "[a-z]+"}
    assert first["seed"] == 7
    assert "temperature" not in first
    assert second["guided_regex"] == "x+" and "structured_outputs" not in second


def test_api_key_from_environment(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    assert header(server.requests_to(COMPLETIONS)[0].headers, "Authorization") == "Bearer sk-test"


# --- what is read back ----------------------------------------------------------------------------


def test_usage_with_cached_tokens_and_finish_reason(server: FakeOpenAIServer) -> None:
    server.reply("partial", finish_reason="length", prompt_tokens=1200, completion_tokens=65536, cached_tokens=1024)
    reply = CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    assert (reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens) == (1200, 65536, 1024)
    assert reply.finish_reason == "length"
    assert reply.latency_s > 0


def test_usage_absent_and_trailing_stop_string(server: FakeOpenAIServer) -> None:
    server.reply("", raw={"choices": [{"text": "done<|eot_id|>", "finish_reason": "stop"}]})
    reply = CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    assert reply.text == "done"
    assert reply.prompt_tokens is None and reply.cached_tokens is None


def test_malformed_answer_is_a_model_error(server: FakeOpenAIServer) -> None:
    server.reply("", raw={"choices": "nope"})
    with pytest.raises(ModelError, match=r"malformed completion \(choices"):
        CompletionsModel(server.url, **FAST).complete(CONVERSATION)


# --- model discovery ------------------------------------------------------------------------------


def test_discovers_the_single_served_model(server: FakeOpenAIServer) -> None:
    model = CompletionsModel(server.url, **FAST)
    assert model.info.name == "cwm"
    assert (model.info.kind, model.info.url) == ("completions", server.url)
    assert (model.info.temperature, model.info.top_p, model.info.max_tokens) == (1.0, 0.95, 65536)


def test_several_models_need_a_name() -> None:
    with FakeOpenAIServer(models=["cwm", "cwm-sft"]) as server:
        with pytest.raises(ModelError) as error:
            CompletionsModel(server.url, **FAST).complete(CONVERSATION)
        assert str(error.value) == (
            f"model server at {server.url} serves several models (cwm, cwm-sft); name one with the `model` option"
        )
        CompletionsModel(server.url, model="cwm-sft", **FAST).complete(CONVERSATION)
        assert server.bodies(COMPLETIONS)[0]["model"] == "cwm-sft"


def test_wrong_model_name(server: FakeOpenAIServer) -> None:
    with pytest.raises(ModelError) as error:
        CompletionsModel(server.url, model="x", **FAST).complete(CONVERSATION)
    assert str(error.value) == f"model 'x' is not served at {server.url} (served: cwm)"
    assert server.bodies(COMPLETIONS) == []


def test_server_without_model_list() -> None:
    with FakeOpenAIServer(list_models=False) as server:
        CompletionsModel(server.url, model="cwm", **FAST).complete(CONVERSATION)
        with pytest.raises(ModelError, match=r"cannot find out which model .* name it with the `model` option"):
            CompletionsModel(server.url, **FAST).complete(CONVERSATION)


def test_base_url_forms(server: FakeOpenAIServer) -> None:
    assert normalize_base_url(server.root) == (server.url, server.root)
    assert normalize_base_url(server.url + "/completions/") == (server.url, server.root)
    assert normalize_base_url("https://h.example/v1/chat/completions") == ("https://h.example/v1", "https://h.example")
    CompletionsModel(server.root, **FAST).complete(CONVERSATION)
    with pytest.raises(ModelError, match="is not a model server URL"):
        CompletionsModel("localhost:8000")


# --- failures and retries -------------------------------------------------------------------------


def test_two_failures_then_an_answer(server: FakeOpenAIServer) -> None:
    server.fail(2, status=500)
    server.reply("third time")
    reply = CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    assert reply.text == "third time"
    assert len(server.requests_to(COMPLETIONS)) == 3


def test_persistent_5xx_gives_up_after_the_configured_attempts(server: FakeOpenAIServer) -> None:
    server.fail(10, status=503, message="engine dead")
    with pytest.raises(ModelError) as error:
        CompletionsModel(server.url, attempts=3, outage_s=0, **FAST).complete(CONVERSATION)  # no outage waiting
    assert str(error.value) == (
        f"model server at {server.url} failed with HTTP 503, 3 attempts: engine dead; check the server's log"
    )
    assert len(server.requests_to(COMPLETIONS)) == 3


def test_retries_stop_at_the_total_time_bound(server: FakeOpenAIServer) -> None:
    server.fail(100, status=500)
    model = CompletionsModel(server.url, attempts=50, backoff_s=0.05, max_backoff_s=0.05, max_total_s=0.3)
    started = time.monotonic()
    with pytest.raises(ModelError, match="failed with HTTP 500"):
        model.complete(CONVERSATION)
    assert time.monotonic() - started < 2
    assert 2 <= len(server.requests_to(COMPLETIONS)) < 50


def test_a_server_that_never_answers_fails_in_bounded_time(server: FakeOpenAIServer) -> None:
    server.hang(10)
    model = CompletionsModel(server.url, attempts=2, backoff_s=0.01, timeout_s=0.3)
    model.connect()
    model.prompt_tokens(CONVERSATION)  # warm the count cache so only the hung call is timed
    started = time.monotonic()
    with pytest.raises(ModelError) as error:
        model.complete(CONVERSATION)
    assert time.monotonic() - started < 3
    assert str(error.value).startswith(f"model server at {server.url} did not answer within 0.3 s (2 attempts)")
    assert len(server.requests_to(COMPLETIONS)) == 2


def test_a_dropped_connection_is_retried_then_reported(server: FakeOpenAIServer) -> None:
    server.drop(1)
    server.reply("after the drop")
    assert CompletionsModel(server.url, **FAST).complete(CONVERSATION).text == "after the drop"
    server.drop(5)
    with pytest.raises(ModelError, match=r"closed the connection without answering \(2 attempts\)"):
        CompletionsModel(server.url, attempts=2, outage_s=0, **FAST).complete(CONVERSATION)  # no outage waiting


def test_dead_port_says_how_to_start_the_server() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError) as error:
        CompletionsModel(url, attempts=2, **FAST).complete(CONVERSATION)
    assert str(error.value) == (
        f"model server at {url} is not reachable (connection refused); start it with `agent serve` or pass --model URL"
    )


def test_4xx_is_not_retried_and_carries_the_server_message(server: FakeOpenAIServer) -> None:
    server.fail(1, status=400, message="This model's maximum context length is 131072 tokens.")
    with pytest.raises(ModelError) as error:
        CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    assert str(error.value) == (
        f"model server at {server.url} rejected the request (HTTP 400): "
        "This model's maximum context length is 131072 tokens."
    )
    assert len(server.requests_to(COMPLETIONS)) == 1


def test_older_error_bodies_and_missing_endpoint(server: FakeOpenAIServer) -> None:
    server.fail(1, status=400, body={"object": "error", "message": "old\nstyle", "type": "BadRequestError"})
    with pytest.raises(ModelError, match=r"\(HTTP 400\): old style$"):
        CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    server.fail(1, status=404, body={"detail": "Not Found"})
    with pytest.raises(ModelError, match=r"HTTP 404 \(Not Found\); if the server only speaks chat, use chat:URL"):
        CompletionsModel(server.url, **FAST).complete(CONVERSATION)
    server.fail(1, status=401, message="bad key", path="/v1/models")
    with pytest.raises(ModelError, match=r"refused the credentials \(HTTP 401\): bad key; set OPENAI_API_KEY"):
        CompletionsModel(server.url, **FAST).complete(CONVERSATION)


# --- token counting -------------------------------------------------------------------------------


def test_count_tokens_uses_tokenize_and_caches(server: FakeOpenAIServer) -> None:
    model = CompletionsModel(server.url, **FAST)
    text = "hello <|eot_id|> world"
    assert model.count_tokens(text) == toy_count(text)
    assert model.count_tokens(text) == toy_count(text)
    assert model.count_tokens("") == 0
    (body,) = server.bodies(TOKENIZE)
    assert body == {"model": "cwm", "prompt": text, "add_special_tokens": False}
    assert model.approximate_counts is False


def test_count_tokens_falls_back_to_the_heuristic_without_tokenize() -> None:
    with FakeOpenAIServer(tokenize=False) as server:
        model = CompletionsModel(server.url, **FAST)
        heuristic = HeuristicTokenCounter()
        for text in ("abcdefgh", "x<|eot_id|>y", "é" * 9):
            assert model.count_tokens(text) == heuristic.count(text)
        assert model.approximate_counts is True
        assert len(server.requests_to(TOKENIZE)) == 1  # asked once, then never again


# --- factory --------------------------------------------------------------------------------------


def test_factory_spec_syntax(tmp_path) -> None:
    assert parse_spec("http://h:8000/v1") == ("completions", "http://h:8000/v1")
    assert parse_spec("completions:https://h/v1") == ("completions", "https://h/v1")
    assert parse_spec("chat:http://h:8000") == ("chat", "http://h:8000")
    assert parse_spec("http://h:8000", kind="chat") == ("chat", "http://h:8000")
    assert parse_spec("replay:runs/a.jsonl") == ("replay", "runs/a.jsonl")
    assert parse_spec("runs/a.jsonl", kind="replay") == ("replay", "runs/a.jsonl")
    assert isinstance(make_model("http://127.0.0.1:1/v1"), CompletionsModel)
    assert isinstance(make_model("chat:http://127.0.0.1:1/v1", model=None), ChatModel)
    assert isinstance(make_model("http://127.0.0.1:1", kind="chat"), ChatModel)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("localhost:8000", {}, "cannot understand model spec 'localhost:8000'; use http(s)://"),
        ("chat:", {}, "empty model spec 'chat:'"),
        ("chat:http://h", {"kind": "replay"}, "says chat but kind=replay was asked for"),
        ("http://h", {"kind": "bogus"}, "unknown model kind 'bogus'"),
        ("replay:/nonexistent/t.jsonl", {}, "cannot replay: /nonexistent/t.jsonl: no such trajectory file"),
        ("replay:/x.jsonl", {"temperature": 0.5}, "a replay model takes no options (got temperature)"),
        ("http://h", {"temprature": 0.5}, "unknown option 'temprature' for the completions model (known: model,"),
        ("chat:http://h", {"attempts": 0}, "bad option 'attempts' for the chat model: Input should be greater"),
    ],
)
def test_factory_errors_are_one_clear_line(spec: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ModelError) as error:
        make_model(spec, **kwargs)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_factory_builds_a_working_client(server: FakeOpenAIServer) -> None:
    server.reply("via factory")
    model = make_model(server.url, backoff_s=0.01)
    assert not isinstance(model, ReplayModel)
    assert model.complete(CONVERSATION).text == "via factory"
    model.close()


# -- outages: a server that answered, then went away -------------------------------------------------


def test_a_server_that_goes_away_and_comes_back_is_waited_for(server: FakeOpenAIServer) -> None:
    """Killed and restarted on its port mid-episode: the same request goes through once it is back,
    whatever `attempts` says, and the outage is visible in agent.models.health while it lasts."""
    server.reply("after the restart")
    model = CompletionsModel(server.url, attempts=2, **FAST)
    model.connect()  # it has answered once
    port = server.port
    server.stop()
    seen_down: list[dict[str, float]] = []

    def restart() -> None:
        time.sleep(0.5)
        seen_down.append(health.down_servers())
        server.start(port=port)

    thread = threading.Thread(target=restart)
    thread.start()
    reply = model.complete(CONVERSATION)
    thread.join()
    assert reply.text == "after the restart"
    assert model.api_base in seen_down[0]
    assert model.api_base not in health.down_servers()
    assert len(server.requests_to(COMPLETIONS)) == 1  # only the try that reached the restarted server


def test_gone_statuses_are_waited_out_beyond_the_attempts(server: FakeOpenAIServer) -> None:
    server.fail(4, status=503, message="restarting")
    server.reply("served again")
    model = CompletionsModel(server.url, attempts=2, **FAST)
    assert model.complete(CONVERSATION).text == "served again"
    assert len(server.requests_to(COMPLETIONS)) == 5


def test_an_outage_past_its_bound_is_an_infrastructure_failure(server: FakeOpenAIServer) -> None:
    model = CompletionsModel(server.url, outage_s=0.4, **FAST)
    model.connect()
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"went away and did not come back within \d+ s \(outage bound "
                       r"0.4 s\); restart it, then rerun with --resume"):
        model.complete(CONVERSATION)
    assert 0.4 <= time.monotonic() - started < 5
    assert model.api_base in health.down_servers()

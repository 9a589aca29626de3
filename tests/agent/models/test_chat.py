"""ChatModel against a real HTTP server on 127.0.0.1 (tests/fakes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.models.base import ModelError
from agent.models.chat import ChatModel, chat_messages, reply_text
from agent.models.factory import make_model
from agent.protocol.render import Message, assistant_content, render_prompt

try:  # `python -m pytest` puts the repo root on sys.path; bare `pytest` only tests/
    from tests.fakes.openai_server import CHAT, FakeOpenAIServer, toy_count
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from fakes.openai_server import CHAT, FakeOpenAIServer, toy_count  # type: ignore[no-redef]

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.02, "timeout_s": 5.0}

CONVERSATION = [
    Message(role="system", content="You are CWM."),
    Message(role="user", content="Fix the bug."),
    Message(role="assistant", content=assistant_content("look\n</think>\n<tool: bash>\nls\n</tool>")),
    Message(role="tool: bash", content="<output>\na.py\n</output>\n\n<budget>\n* Remaining turns: 127\n</budget>"),
]


@pytest.fixture
def cwm_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=["facebook/cwm"]) as running:
        yield running


@pytest.fixture
def other_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=["gpt-x"]) as running:
        yield running


def test_cwm_like_server_gets_verbatim_roles_and_template_kwargs(cwm_server: FakeOpenAIServer) -> None:
    cwm_server.chat_reply("thinking\n</think>\n<tool: bash>\npwd\n</tool>")
    model = ChatModel(cwm_server.url, **FAST)
    reply = model.complete(CONVERSATION)
    (body,) = cwm_server.bodies(CHAT)
    assert body["model"] == "facebook/cwm"
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in CONVERSATION]
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "preserve_previous_think": True}
    assert body["stop_token_ids"] == [128001, 128008, 128009]
    assert (body["temperature"], body["top_p"]) == (1.0, 0.95)
    assert body["max_tokens"] == 65536
    assert reply.text == "thinking\n</think>\n<tool: bash>\npwd\n</tool>"
    assert model.info.kind == "chat" and model.info.name == "facebook/cwm"
    assert model.prompt_tokens(CONVERSATION) == toy_count(render_prompt(CONVERSATION))


def test_other_servers_get_tool_results_as_user_messages(other_server: FakeOpenAIServer) -> None:
    ChatModel(other_server.url, **FAST).complete(CONVERSATION)
    (body,) = other_server.bodies(CHAT)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert body["messages"][3]["content"] == CONVERSATION[3].content  # no prefix, unchanged
    assert "chat_template_kwargs" not in body and "stop_token_ids" not in body
    assert "max_tokens" not in body  # hosted models have their own caps; only sent when configured


def test_explicit_options_override_the_guess(other_server: FakeOpenAIServer) -> None:
    ChatModel(other_server.url, cwm=True, tool_role="user", max_tokens=100, **FAST).complete(CONVERSATION)
    ChatModel(other_server.url, tool_role="verbatim", max_tokens=100, **FAST).complete(CONVERSATION)
    first, second = other_server.bodies(CHAT)
    assert first["chat_template_kwargs"]["enable_thinking"] is True
    assert first["messages"][3]["role"] == "user"
    assert first["max_tokens"] == 100
    assert second["messages"][3]["role"] == "tool: bash"
    assert second["max_tokens"] == 100


def test_message_mapping_function() -> None:
    messages = [Message(role="tool: edit", content="  kept as is \n")]
    assert chat_messages(messages, tool_role_verbatim=False) == [{"role": "user", "content": "  kept as is \n"}]
    assert chat_messages(messages, tool_role_verbatim=True) == [{"role": "tool: edit", "content": "  kept as is \n"}]


@pytest.mark.parametrize(
    ("content", "reasoning", "expected"),
    [
        ("\n<tool: bash>\nls\n</tool>", "I should look.\n", "I should look.\n</think>\n<tool: bash>\nls\n</tool>"),
        ("<tool: bash>\nls\n</tool>", "I should look.", "I should look.\n</think>\n<tool: bash>\nls\n</tool>"),
        (None, "ran out of tokens while thinking", "ran out of tokens while thinking"),
        ("a\n</think>\nb", None, "a\n</think>\nb"),
        ("<think>\na\n</think>\nb", None, "a\n</think>\nb"),
        (None, None, ""),
    ],
)
def test_reply_text_reconstruction(content: str | None, reasoning: str | None, expected: str) -> None:
    assert reply_text(content, reasoning) == expected


def test_reasoning_content_from_the_server_is_rebuilt(cwm_server: FakeOpenAIServer) -> None:
    cwm_server.chat_reply("\n<tool: bash>\nls\n</tool>", reasoning_content="Look first.\n",
                          prompt_tokens=900, completion_tokens=40, cached_tokens=512)
    cwm_server.chat_reply("answer", reasoning="newer vLLM field")
    model = ChatModel(cwm_server.url, **FAST)
    first = model.complete(CONVERSATION)
    assert first.text == "Look first.\n</think>\n<tool: bash>\nls\n</tool>"
    assert (first.prompt_tokens, first.completion_tokens, first.cached_tokens) == (900, 40, 512)
    assert first.finish_reason == "stop"
    assert model.complete(CONVERSATION).text == "newer vLLM field\n</think>\nanswer"


def test_api_key_is_sent(other_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    ChatModel(other_server.url, **FAST).complete(CONVERSATION)
    ChatModel(other_server.url, api_key="sk-option", **FAST).complete(CONVERSATION)
    first, second = (
        {k.lower(): v for k, v in r.headers.items()}["authorization"] for r in other_server.requests_to(CHAT)
    )
    assert (first, second) == ("Bearer sk-env", "Bearer sk-option")


def test_chat_errors_and_retries(other_server: FakeOpenAIServer) -> None:
    other_server.fail(1, status=500, path=CHAT)
    other_server.chat_reply("fine")
    assert ChatModel(other_server.url, **FAST).complete(CONVERSATION).text == "fine"
    other_server.fail(1, status=400, message="'tool: bash' is not a valid role", path=CHAT)
    with pytest.raises(ModelError) as error:
        ChatModel(other_server.url, tool_role="verbatim", **FAST).complete(CONVERSATION)
    assert str(error.value) == (
        f"model server at {other_server.url} rejected the request (HTTP 400): 'tool: bash' is not a valid role"
    )
    with pytest.raises(ModelError, match=r"model 'cwm' is not served at .* \(served: gpt-x\)"):
        ChatModel(other_server.url, model="cwm", **FAST).complete(CONVERSATION)


def test_factory_makes_chat_models(cwm_server: FakeOpenAIServer) -> None:
    cwm_server.chat_reply("from chat:URL")
    model = make_model(f"chat:{cwm_server.url}", backoff_s=0.01)
    assert isinstance(model, ChatModel)
    assert model.complete(CONVERSATION).text == "from chat:URL"

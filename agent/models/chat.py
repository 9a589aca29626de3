"""Any OpenAI-compatible `/v1/chat/completions` endpoint (chosen explicitly: `chat:URL`).

The server applies its own chat template, so the prompt is only as exact as that template; for CWM
the raw completions client is preferred. This client exists for other models, hosted endpoints, and
CWM behind a chat-only gateway.

Two mappings are judgement calls, documented here because they shape what the model sees:

* Tool results. Our role `tool: {name}` (for example `tool: bash`) is CWM's own role. OpenAI's `tool`
  role needs a `tool_call_id` from native function calling, which this protocol does not use. So:
  to a CWM-like server the role is sent verbatim (vLLM accepts custom roles and CWM's template writes
  the role into the header, reproducing the trained layout); to any other server a tool result is
  sent as a `user` message with its content unchanged: no prefix, because the content already opens
  with `<output>` and closes with the `<budget>` block, which says what it is. `tool_role` overrides.
* Reasoning. The reply text returned is what follows the reasoning prefix `<think>\\n`, as with the
  completions client, so the loop parses both the same way. A server with a reasoning parser returns
  the reasoning separately (`reasoning_content`, or `reasoning` in newer vLLM); we rebuild
  `reasoning\\n</think>\\ncontent` without doubling the newlines the parser may have kept. When the
  content is null the model never closed its reasoning (usually `finish_reason: length`), and we
  return the reasoning alone rather than invent a `</think>` the model did not write.

"CWM-like" is decided by the `cwm` option, or when unset by the served model name containing "cwm".
For such servers the body also carries `chat_template_kwargs: {"enable_thinking": true,
"preserve_previous_think": true}` (cwm-protocol.md section 1), the stop token ids, and a reply cap
computed from the rendered CWM prompt (the template produces that same layout). For other servers
`max_tokens` is sent only when configured, since hosted models have their own, smaller, caps.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.models.base import ModelError, ModelReply
from agent.models.http import ServerModel, ServerOptions, Usage, build_options, parse_response
from agent.protocol.render import STOP_TOKEN_IDS, THINK_PREFIX, Message
from tools.syntax import THINK_END

log = structlog.get_logger("agent.models.chat")

CWM_TEMPLATE_KWARGS = {"enable_thinking": True, "preserve_previous_think": True}


class ChatOptions(ServerOptions):
    cwm: bool | None = Field(None, description="CWM-like server; None: guess from the model name")
    tool_role: Literal["auto", "verbatim", "user"] = Field(
        "auto", description="how `tool: NAME` messages are sent; auto: verbatim to CWM, else user"
    )


class ChatMessageOut(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: ChatMessageOut = Field(default_factory=ChatMessageOut)
    finish_reason: str | None = None


class ChatResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    choices: list[ChatChoice] = Field(default_factory=list)
    usage: Usage | None = None


def chat_messages(messages: list[Message], tool_role_verbatim: bool) -> list[dict[str, str]]:
    """Our messages as OpenAI chat messages (see the module docstring for the tool-role choice)."""
    out = []
    for message in messages:
        role = message.role
        if role.startswith("tool: ") and not tool_role_verbatim:
            role = "user"
        out.append({"role": role, "content": message.content})
    return out


def reply_text(content: str | None, reasoning: str | None) -> str:
    """The raw reply as it follows `<think>\\n`, rebuilt when the server split off the reasoning."""
    if not reasoning:
        text = content or ""
        # A server whose template did not put `<think>\n` in the prompt lets the model write it.
        return text[len(THINK_PREFIX):] if text.startswith(THINK_PREFIX) else text
    if content is None:
        return reasoning
    head = reasoning if reasoning.endswith("\n") else reasoning + "\n"
    tail = content if content.startswith("\n") else "\n" + content
    return head + THINK_END + tail


class ChatModel(ServerModel):
    """OpenAI-compatible chat client; CWM-aware when the server is CWM-like."""

    kind = "chat"
    options: ChatOptions

    def __init__(self, url: str, options: ChatOptions | None = None, **overrides: Any) -> None:
        super().__init__(url, options or build_options(ChatOptions, overrides, "chat"))

    @property
    def cwm_like(self) -> bool:
        if self.options.cwm is not None:
            return self.options.cwm
        return "cwm" in self.model_name.lower()

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        """The exact JSON body for the next turn."""
        cwm = self.cwm_like
        verbatim = self.options.tool_role == "verbatim" or (self.options.tool_role == "auto" and cwm)
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": chat_messages(messages, verbatim),
            **self.sampling_fields(),
        }
        if cwm:
            body["max_tokens"] = self.reply_cap(self.prompt_tokens(messages))
            body["stop_token_ids"] = list(STOP_TOKEN_IDS)
            body["chat_template_kwargs"] = dict(CWM_TEMPLATE_KWARGS)
        elif self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        body.update(self.options.extra_body)
        return body

    def complete(self, messages: list[Message]) -> ModelReply:
        started = time.monotonic()
        data = self._client.post("/chat/completions", self.request_body(messages))
        response: ChatResponse = parse_response(ChatResponse, data, "chat completion", self.api_base)
        if not response.choices:
            raise ModelError(f"model server at {self.api_base} returned a chat completion with no choices")
        choice = response.choices[0]
        message = choice.message
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
        usage = response.usage or Usage()
        latency = time.monotonic() - started
        log.debug("model.reply", finish_reason=choice.finish_reason, prompt_tokens=usage.prompt_tokens,
                  completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
                  latency_s=round(latency, 3), split_reasoning=reasoning is not None)
        return ModelReply(
            text=reply_text(message.content, reasoning),
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            latency_s=latency,
        )

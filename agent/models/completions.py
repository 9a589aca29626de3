"""CWM over a raw `/v1/completions` endpoint: the runner renders the prompt text itself.

This is the preferred way to drive CWM (cwm-protocol.md section 1): the prompt is exactly the layout
the model was trained on, byte for byte, including the `<think>\\n` reasoning prefix and every
earlier reasoning block, and because the history is never rewritten the server's prefix cache reuses
every earlier token (`cached_tokens` in the usage shows it).

vLLM extensions used: `stop_token_ids` (the end-of-turn tokens, which are special tokens that plain
`stop` strings only catch after detokenization), `skip_special_tokens: false` (so any special token
the model does emit survives into the text we parse and record), and `structured_outputs` (or the
older `guided_regex`) when a constraint regex is configured.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.models.base import ModelError, ModelReply
from agent.models.http import ServerError, ServerModel, ServerOptions, Usage, build_options, parse_response
from agent.protocol.render import STOP_STRINGS, STOP_TOKEN_IDS, Message, render_prompt

log = structlog.get_logger("agent.models.completions")


class CompletionsOptions(ServerOptions):
    """Options of the raw completions client (all of ServerOptions; nothing chat-specific)."""


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = ""
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None


def strip_stop_string(text: str) -> str:
    """Drop one trailing end-of-turn marker if the server left it in the text.

    vLLM leaves the stop token out of the text, but servers differ; the reply we record must be what
    the model wrote *before* ending its turn, or the next prompt would carry the marker twice.
    """
    for stop in STOP_STRINGS:
        if text.endswith(stop):
            return text[: -len(stop)]
    return text


class CompletionsModel(ServerModel):
    """Sends `render_prompt(messages)` as a string prompt; see the module docstring for why."""

    kind = "completions"

    def __init__(self, url: str, options: CompletionsOptions | None = None, **overrides: Any) -> None:
        super().__init__(url, options or build_options(CompletionsOptions, overrides, "completions"))

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        """The exact JSON body for the next turn (public so `agent` commands can show it)."""
        prompt = render_prompt(messages)
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt,
            "max_tokens": self.reply_cap(self.prompt_tokens(messages)),
            **self.sampling_fields(),
            "stop": list(STOP_STRINGS),
            "stop_token_ids": list(STOP_TOKEN_IDS),
            "skip_special_tokens": False,
            # The rendered prompt already starts with <|begin_of_text|>: the server must not add another.
            "add_special_tokens": False,
        }
        body.update(self.options.extra_body)
        return body

    def complete(self, messages: list[Message]) -> ModelReply:
        started = time.monotonic()
        body = self.request_body(messages)
        try:
            data = self._client.post("/completions", body)
        except ServerError as error:
            if error.status == 404:
                raise ModelError(
                    f"{self.api_base}/completions answered HTTP 404 ({error.detail}); if the server only "
                    "speaks chat, use chat:URL"
                ) from None
            raise
        response: CompletionResponse = parse_response(CompletionResponse, data, "completion", self.api_base)
        if not response.choices:
            raise ModelError(f"model server at {self.api_base} returned a completion with no choices")
        choice = response.choices[0]
        usage = response.usage or Usage()
        latency = time.monotonic() - started
        log.debug("model.reply", finish_reason=choice.finish_reason, prompt_tokens=usage.prompt_tokens,
                  completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
                  latency_s=round(latency, 3))
        return ModelReply(
            text=strip_stop_string(choice.text),
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            latency_s=latency,
        )

"""Turn the model's raw reply into one tool call or the exact error message the model expects.

Rules and messages are those of docs/cwm-protocol.md, section 4, checked in its order.
The reply is the text the model produced after the prompt's `<think>\\n`; only what follows
`</think>` is searched, so a tool call written while thinking is never executed.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, model_validator

from tools import messages
from tools.syntax import CLOSING_TAG, DEFAULT_TOOL_NAMES, OPENING_TAG, THINK_END, TOOL_CALL_RE
from traces.schema import ToolCall

__all__ = ["ParsedReply", "ToolCall", "parse_reply"]


class ParsedReply(BaseModel):
    """Exactly one of `call` and `error`.

    `answer` is the text after `</think>` (the whole reply when the count is wrong): after a
    successful submission a reply without a valid call is the final response, and this is it.
    """

    call: ToolCall | None = None
    error: str | None = None
    answer: str = ""

    @model_validator(mode="after")
    def _one_of(self) -> ParsedReply:
        if (self.call is None) == (self.error is None):
            raise ValueError("a parsed reply holds either a tool call or an error")
        return self


def parse_reply(reply: str, known_tools: Collection[str] = DEFAULT_TOOL_NAMES) -> ParsedReply:
    """Parse one reply; `known_tools` are the names the system prompt announced."""
    think_ends = reply.count(THINK_END)
    if think_ends != 1:
        return ParsedReply(error=messages.THINK_END_ERROR.format(n=think_ends), answer=reply)
    answer = reply.split(THINK_END, 1)[1]
    outcome = _parse_answer(answer, known_tools)
    if isinstance(outcome, ToolCall):
        return ParsedReply(call=outcome, answer=answer)
    return ParsedReply(error=outcome, answer=answer)


def _parse_answer(answer: str, known_tools: Collection[str]) -> ToolCall | str:
    """The call, or the first error in the protocol's order, for the text after `</think>`."""
    matches = TOOL_CALL_RE.findall(answer)
    if len(matches) > 1:
        names = ", ".join(name for name, _ in matches)
        return messages.MULTIPLE_CALLS_ERROR.format(n=len(matches), names=names)
    opening, closing = answer.count(OPENING_TAG), answer.count(CLOSING_TAG)
    if len(matches) != opening or len(matches) != closing:
        return messages.TAG_MISMATCH_ERROR.format(n=len(matches), o=opening, c=closing)
    if not matches:
        return messages.NO_CALL_ERROR
    name, body = matches[0]
    if not body.strip():
        return messages.EMPTY_ARGS_ERROR.format(name=name)
    if name not in known_tools:
        return messages.NO_SUCH_TOOL_ERROR.format(name=name)
    return ToolCall(name=name, body=body)

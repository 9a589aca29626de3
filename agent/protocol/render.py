"""CWM's chat layout, rendered to the exact prompt text sent to a raw completions endpoint.

See docs/cwm-protocol.md, section 1. System, user and assistant contents are stripped of
surrounding whitespace; tool-result contents are kept exactly. A turn's prompt ends with the
assistant header and the reasoning prefix `<think>\\n`, which belongs to the prompt, not the reply.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
THINK_PREFIX = "<think>\n"


class Message(BaseModel):
    """One chat message. `role` is `system`, `user`, `assistant` or `tool: {name}`."""

    role: str
    content: str


# Token ids of the stop tokens (the guide and the code disagree on eot vs eom: accept both).
BEGIN_OF_TEXT_ID = 128000
STOP_TOKEN_IDS = (128001, 128008, 128009)
STOP_STRINGS = (EOT, EOM, END_OF_TEXT)


def render_message(message: Message) -> str:
    """One message in CWM's layout: header, blank line, content, end-of-turn token."""
    content = message.content if message.role.startswith("tool: ") else message.content.strip()
    return f"{START_HEADER}{message.role}{END_HEADER}\n\n{content}{EOT}"


def assistant_prefix() -> str:
    """What follows the history on every turn: the assistant header and the reasoning prefix."""
    return f"{START_HEADER}assistant{END_HEADER}\n\n{THINK_PREFIX}"


def render_prompt(messages: Iterable[Message]) -> str:
    """The whole prompt for the next assistant turn, history kept verbatim (prefix-cache friendly)."""
    return BEGIN_OF_TEXT + "".join(render_message(m) for m in messages) + assistant_prefix()


def assistant_content(reply_text: str) -> str:
    """The assistant message stored in history: the prompt's `<think>\\n` plus the raw reply."""
    return THINK_PREFIX + reply_text

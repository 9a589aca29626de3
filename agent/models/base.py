"""The model interface the agent loop drives, and the typed values that cross it.

Every model client (CWM over raw completions, an OpenAI-compatible chat model, the replay model)
implements `Model`. The loop hands over the whole conversation each turn; the client decides how to
send it (rendered text for CWM, a message list for chat endpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pydantic import BaseModel

from agent.protocol.render import Message
from traces.schema import ModelInfo


class ModelReply(BaseModel):
    """The model's raw text for one turn plus the server's own accounting of it."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    latency_s: float = 0.0


class ModelError(RuntimeError):
    """The model could not be reached or refused the request; the message says what to do."""


class ContextExceededError(ModelError):
    """The prompt already fills the context: there is no room left for a reply (the loop ends the
    episode as the protocol's "Context size exceeded", whichever client found out)."""


class Model(ABC):
    info: ModelInfo

    @abstractmethod
    def complete(self, messages: list[Message]) -> ModelReply:
        """Return the model's reply to the conversation (which ends with a user or tool message)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the model's context, for the budget block and the context limit."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

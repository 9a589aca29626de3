"""Token counting: a deterministic offline approximation, and an exact counter backed by the server.

The agent needs token counts for two things the model sees or is bound by: the `Remaining tokens`
line of every budget block and the 131072-token context limit. Against a vLLM server the counts are
exact (its `/tokenize` endpoint uses the served model's tokenizer). Offline (tests, replay, servers
without `/tokenize`) we use `HeuristicTokenCounter`, whose result depends only on the text, so a
replay reproduces the budgets of a run that was recorded with it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable

import structlog

log = structlog.get_logger("agent.models.tokens")

# A special token as written in prompt text, e.g. `<|eot_id|>` or `<|frame_sep|>`.
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
BYTES_PER_TOKEN = 4


class HeuristicTokenCounter:
    """Approximate token count: one per special token, plus ceil(UTF-8 bytes / 4) per run of text.

    Why this shape: Llama-3-style BPE averages a little under 4 bytes per token on English and code,
    and special tokens such as `<|eot_id|>` are single tokens that also split the text around them.
    Rounding up per run between special tokens (not over the whole string) makes the count additive
    at special-token boundaries, as a real tokenizer is: counting a rendered prompt message by
    message gives the same total as counting it whole.
    """

    approximate = True

    def __call__(self, text: str) -> int:
        return self.count(text)

    def count(self, text: str) -> int:
        specials = 0
        total = 0
        position = 0
        for match in SPECIAL_TOKEN.finditer(text):
            total += _ceil_tokens(text[position : match.start()])
            specials += 1
            position = match.end()
        total += _ceil_tokens(text[position:])
        return total + specials


def _ceil_tokens(run: str) -> int:
    return math.ceil(len(run.encode("utf-8")) / BYTES_PER_TOKEN) if run else 0


def text_key(text: str) -> str:
    """Cache key for a text: a digest, so the cache holds no copies of long prompts."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class CachedTokenCounter:
    """Counts with `exact` (usually a server call) and caches by text digest.

    If `exact` returns None the endpoint does not exist: from then on every count comes from the
    heuristic and `approximate` is True, so callers (and the trajectory) can say the budgets shown
    to the model were estimates. The switch is one-way (normally on the first count), so one run
    never mixes exact and estimated counts.
    """

    def __init__(self, exact: Callable[[str], int | None], max_entries: int = 8192) -> None:
        self._exact = exact
        self._heuristic = HeuristicTokenCounter()
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._max_entries = max_entries
        self.approximate = False

    def __call__(self, text: str) -> int:
        return self.count(text)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.approximate:
            return self._heuristic.count(text)
        key = text_key(text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        value = self._exact(text)
        if value is None:
            self.approximate = True
            log.warning("tokens.approximate", reason="the server has no tokenize endpoint; using the heuristic")
            return self._heuristic.count(text)
        self._cache[key] = value
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return value

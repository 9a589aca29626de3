"""What tests/fakes/openai_server.py does for load tests (bench/agent_load.py), in toy tokens: the
simulated prefix cache, vLLM's Prometheus counters, generated text and server-sent events.

The prefix cache answers as vLLM's does in the figures a client can see: `cached_tokens` is the
longest prefix shared with an earlier prompt, in whole 16-token blocks, never the whole prompt (the
last token is always computed). It holds prompts only (vLLM also keeps generated tokens' blocks) and
drops the oldest beyond `cache_capacity` tokens, which is how a test makes eviction happen.

With `kv_capacity` (tokens) the KV gauges follow the episodes instead of a scripted value (what the
batch's KV-aware admission reads): every episode holds its context (its latest prompt and reply) from
its first request until its last (a reply marked `last`), as vLLM holds the blocks of the requests it
serves; a request whose prompt extends a held context is that episode's next turn. Held contexts are
served oldest first while they fit the capacity; the rest count as waiting; `vllm:kv_cache_usage_perc`
is the held share, at most 1. `peak_sessions` is the most episodes ever held at once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BLOCK = 16  # vLLM's prefix cache holds whole blocks of tokens


@dataclass
class LoadState:
    """The simulated prefix cache and the counters /metrics shows; the caller holds the fake's lock."""

    prefix_cache: bool = False
    cache_capacity: int | None = None
    preemptions_per_request: int = 0
    kv_cache_usage: float = 0.0
    cached_prompts: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    running: float = 0.0  # scripted gauges (without kv_capacity)
    waiting: float = 0.0
    kv_capacity: int | None = None
    sessions: list[tuple[str, int]] = field(default_factory=list)  # (prompt, tokens held), oldest first
    peak_sessions: int = 0

    def hold(self, prompt: str, tokens: int, last: bool) -> None:
        """One episode's turn: its context replaces the one its prompt extends; the last turn frees it."""
        earlier = next((i for i, (held, _) in enumerate(self.sessions) if prompt.startswith(held)), None)
        if earlier is not None:
            self.sessions.pop(earlier)
        if not last:
            self.sessions.append((prompt, tokens))
        self.peak_sessions = max(self.peak_sessions, len(self.sessions))

    def kv_gauges(self) -> tuple[float, float, float]:
        """(KV usage share, running, waiting) now."""
        if self.kv_capacity is None:
            return self.kv_cache_usage, self.running, self.waiting
        held = fitting = 0
        for _, tokens in self.sessions:
            if held + tokens > self.kv_capacity:
                break
            held += tokens
            fitting += 1
        demand = sum(tokens for _, tokens in self.sessions)
        return min(1.0, demand / self.kv_capacity), fitting, len(self.sessions) - fitting

    def cached_tokens(self, prompt: str, count: Callable[[str], int]) -> int:
        """Tokens of the longest prefix shared with a cached prompt, in whole blocks; caches `prompt`."""
        best = max((common_prefix(prompt, earlier) for earlier in self.cached_prompts), default=0)
        tokens = count(prompt[:best])
        self.cached_prompts.append(prompt)
        while self.cache_capacity is not None and sum(map(count, self.cached_prompts)) > self.cache_capacity:
            self.cached_prompts.pop(0)
        return max(0, min(tokens, count(prompt) - 1)) // BLOCK * BLOCK

    def account(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> None:
        """One answered completion request, as vLLM's counters would see it."""
        self.counters["preemptions"] += self.preemptions_per_request
        self.counters["generation"] += completion_tokens
        self.counters["prompt"] += prompt_tokens
        self.counters["cached"] += cached_tokens

    def metrics_text(self) -> str:
        """Prometheus exposition text under vLLM 0.26's names (counters get `_total`)."""
        lines = []
        kv_usage, running, waiting = self.kv_gauges()
        for name, kind, value in (
            ("vllm:num_preemptions_total", "counter", self.counters["preemptions"]),
            ("vllm:generation_tokens_total", "counter", self.counters["generation"]),
            ("vllm:prompt_tokens_total", "counter", self.counters["prompt"]),
            ("vllm:prompt_tokens_cached_total", "counter", self.counters["cached"]),
            ("vllm:kv_cache_usage_perc", "gauge", kv_usage),
            ("vllm:num_requests_running", "gauge", running),
            ("vllm:num_requests_waiting", "gauge", waiting),
        ):
            lines += [f"# TYPE {name.removesuffix('_total')} {kind}",
                      f'{name}{{engine="0",model_name="cwm"}} {float(value)}']
        return "\n".join(lines) + "\n"


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search over slice comparisons, which run in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def letters(tokens: int) -> str:
    """`tokens` toy tokens of generated text (one letter each)."""
    return "".join("abcdefghij"[i % 10] for i in range(tokens))


def sse_events(payload: dict[str, Any], include_usage: bool, split: Callable[[str], list[str]]) -> bytes:
    """A completion answer as vLLM streams it: one chunk per token (`split`), the finish reason on the
    last, then the usage chunk when asked for, then `[DONE]`."""
    choice = payload["choices"][0]
    pieces = split(choice["text"]) or [""]
    events: list[dict[str, Any]] = [
        {"id": payload["id"], "object": "text_completion", "model": payload["model"],
         "choices": [{"index": 0, "text": piece, "finish_reason": None}]} for piece in pieces]
    events[-1]["choices"][0]["finish_reason"] = choice["finish_reason"]
    if include_usage:
        events.append({"id": payload["id"], "choices": [], "usage": payload["usage"]})
    return b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events) + b"data: [DONE]\n\n"

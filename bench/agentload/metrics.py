"""vLLM's Prometheus /metrics, read before and after each measured window and sampled during it.

Names as vLLM 0.26 exposes them (vllm/v1/metrics/loggers.py; a Prometheus counter gets `_total`):
counters `vllm:num_preemptions_total`, `vllm:generation_tokens_total`, `vllm:prompt_tokens_total`,
`vllm:prompt_tokens_cached_total`, `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`;
gauges `vllm:kv_cache_usage_perc` (0..1), `vllm:num_requests_running`, `vllm:num_requests_waiting`.
Older vLLM named the KV gauge `vllm:gpu_cache_usage_perc`; it is read when the new name is absent.
A metric with several label sets (engines, sources) is summed. The parser is the runner's own
(agent/models/metrics.py, which the batch's admission reads with), re-exported here.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
from pydantic import BaseModel, Field

from agent.models.metrics import parse_prometheus, pick

COUNTERS = {
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "prompt_tokens_cached": ("vllm:prompt_tokens_cached_total",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
}
GAUGES = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
}
__all__ = ["COUNTERS", "GAUGES", "MetricsReader", "Snapshot", "deltas", "gauge_summary", "parse_prometheus", "pick"]


class Snapshot(BaseModel):
    """The counters and gauges at one moment (None: the server does not expose that one)."""

    at: float
    counters: dict[str, float | None] = Field(default_factory=dict)
    gauges: dict[str, float | None] = Field(default_factory=dict)

    @classmethod
    def of(cls, text: str, at: float) -> Snapshot:
        values = parse_prometheus(text)
        return cls(at=at, counters={k: pick(values, n) for k, n in COUNTERS.items()},
                   gauges={k: pick(values, n) for k, n in GAUGES.items()})


def deltas(before: Snapshot | None, after: Snapshot | None) -> dict[str, float | None]:
    """Each counter's increase between two snapshots (None where either lacks it)."""
    if before is None or after is None:
        return {name: None for name in COUNTERS}
    result: dict[str, float | None] = {}
    for name in COUNTERS:
        a, b = before.counters.get(name), after.counters.get(name)
        result[name] = None if a is None or b is None else b - a
    return result


def gauge_summary(samples: list[Snapshot], start: float, end: float) -> dict[str, dict[str, float] | None]:
    """Mean and max of each gauge over the samples taken in [start, end]."""
    inside = [s for s in samples if start <= s.at <= end]
    summary: dict[str, dict[str, float] | None] = {}
    for name in GAUGES:
        seen = [v for s in inside if (v := s.gauges.get(name)) is not None]
        summary[name] = {"mean": round(statistics.fmean(seen), 4), "max": round(max(seen), 4)} if seen else None
    return summary


class MetricsReader:
    """GETs the server's /metrics; keeps a sample a second while `sample_forever` runs."""

    def __init__(self, client: httpx.AsyncClient, url: str, every_s: float = 1.0) -> None:
        self.client = client
        self.url = url
        self.every_s = every_s
        self.samples: list[Snapshot] = []
        self.available = True

    async def snapshot(self) -> Snapshot | None:
        if not self.available:
            return None
        try:
            response = await self.client.get(self.url)
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            self.available = False  # a server without metrics: the report says so
            return None
        if response.status_code != 200:
            return None
        return Snapshot.of(response.text, time.monotonic())

    async def sample_forever(self) -> None:
        while self.available:
            snap = await self.snapshot()
            if snap is not None:
                self.samples.append(snap)
            await asyncio.sleep(self.every_s)

"""A model server's Prometheus /metrics: the parser, and the load figures the batch admits episodes by.

Why here: both the batch's admission (agent.batch.admission) and the load benchmark
(bench/agentload/metrics.py) read vLLM's /metrics; one parser keeps their readings the same.

Names as vLLM 0.26 exposes them (vllm/v1/metrics/loggers.py; a Prometheus counter gets `_total`):
gauges `vllm:kv_cache_usage_perc` (0..1: the share of KV blocks held by requests being served),
`vllm:num_requests_running`, `vllm:num_requests_waiting`; counter `vllm:num_preemptions_total`.
Older vLLM named the KV gauge `vllm:gpu_cache_usage_perc`; it is read when the new name is absent.
"""

from __future__ import annotations

import re

import httpx
from pydantic import BaseModel

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")


def parse_samples(text: str) -> dict[str, list[float]]:
    """Metric name -> its value under each label set (comments and unparsable values skipped)."""
    values: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values.setdefault(match.group(1), []).append(value)
    return values


def parse_prometheus(text: str) -> dict[str, float]:
    """Metric name -> value summed over its label sets (engines, sources)."""
    return {name: sum(seen) for name, seen in parse_samples(text).items()}


def pick(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The first of `names` the server exposes."""
    for name in names:
        if name in values:
            return values[name]
    return None


class ServerLoad(BaseModel):
    """One reading of a server's load. Counts are summed over engines; the KV share is the fullest
    engine's (a data-parallel server is as full as its fullest engine, and a sum would pass 1)."""

    kv_usage: float
    running: float = 0.0
    waiting: float = 0.0
    preemptions: float = 0.0

    @classmethod
    def of(cls, text: str) -> ServerLoad | None:
        """The reading in an exposition text; None when it has no KV gauge (not a vLLM server)."""
        samples = parse_samples(text)
        kv = next((max(samples[name]) for name in KV_USAGE if name in samples), None)
        if kv is None:
            return None
        sums = {name: sum(seen) for name, seen in samples.items()}
        return cls(kv_usage=kv, running=pick(sums, RUNNING) or 0.0, waiting=pick(sums, WAITING) or 0.0,
                   preemptions=pick(sums, PREEMPTIONS) or 0.0)


class NoMetrics(Exception):
    """The server answers but serves no vLLM metrics (HTTP 404, or no KV gauge): asking again cannot help."""


def metrics_url(api_base: str) -> str:
    """The /metrics URL of a server whose OpenAI API base is `api_base` (vLLM serves it at the root)."""
    base = api_base.rstrip("/")
    return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/metrics"


def read_load(url: str, timeout_s: float) -> ServerLoad | None:
    """GET `url` once: the reading, None when the server did not answer usefully this time (down, slow,
    5xx), NoMetrics when it never will."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code in (404, 405):
        raise NoMetrics(f"{url} answered HTTP {response.status_code}")
    if response.status_code != 200:
        return None
    load = ServerLoad.of(response.text)
    if load is None:
        raise NoMetrics(f"{url} has no KV cache gauge ({KV_USAGE[0]})")
    return load

"""What one measured window of a concurrency level comes to, and the printed table.

Definitions (docs/benchmarks.md repeats them next to the figures):
- generated tokens/s: the server's `vllm:generation_tokens_total` increase over the window (every
  token decoded, also of requests still running at its end), or, without /metrics, the completion
  tokens of the requests that ended inside it.
- episodes/hour: generated tokens/s x 3600 / the generated tokens one episode needs on average
  (`lengths.expected_per_episode`: the plans' replies under the context limit). The window holds
  episodes at every stage (staggered starts), so its rate stands for whole episodes; the turn-based
  figure (turns/s x 3600 / turns per episode) is reported beside it as a check.
- cache share vs ideal: over requests that have a previous request in the same episode, the server's
  `cached_tokens` summed, against the ideal: the previous request's whole prompt (everything but the
  previous reply and the new observation). First requests and warm starts are left out: nothing of
  theirs was sent before. vLLM caches whole 16-token blocks, so the ideal is at most 15 tokens a turn
  too generous.
- TTFT: from sending to the first streamed token, by the prompt's size (context buckets).
"""

from __future__ import annotations

import math
from typing import Any

from bench.agentload.episode import EpisodeEnd, TurnRecord
from bench.agentload.metrics import Snapshot, deltas, gauge_summary

BUCKETS = (4096, 8192, 16384, 24576, 32768, 65536, 131072)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def bucket_label(tokens: int, edges: tuple[int, ...] = BUCKETS) -> str:
    low = 0
    for edge in edges:
        if tokens < edge:
            return f"{low // 1024}-{edge // 1024}k"
        low = edge
    return f">={low // 1024}k"


def ttft_by_bucket(records: list[TurnRecord]) -> list[dict[str, Any]]:
    """TTFT p50/p95 (seconds) per context bucket, in the order of the buckets."""
    groups: dict[str, list[float]] = {}
    for record in records:
        if record.first_token is None or record.prompt_tokens is None:
            continue
        label = bucket_label(record.prompt_tokens)
        groups.setdefault(label, []).append(record.first_token - record.started)
    rows = []
    for label in sorted(groups, key=lambda name: _bucket_start(name)):
        values = groups[label]
        rows.append({"bucket": label, "n": len(values), "p50_s": _round(percentile(values, 50)),
                     "p95_s": _round(percentile(values, 95))})
    return rows


def _bucket_start(label: str) -> int:
    return int(label.lstrip(">=").split("-")[0].rstrip("k"))


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def cache_share(records: list[TurnRecord]) -> dict[str, Any]:
    """Cached prompt tokens against the ideal, over requests that had a predecessor (module doc)."""
    due = [r for r in records if r.ideal_cached_tokens is not None and r.cached_tokens is not None
           and r.prompt_tokens is not None and not r.warm_start]
    cached = sum(r.cached_tokens or 0 for r in due)
    ideal = sum(r.ideal_cached_tokens or 0 for r in due)
    prompt = sum(r.prompt_tokens or 0 for r in due)
    return {
        "requests": len(due), "prompt_tokens": prompt, "cached_tokens": cached, "ideal_cached_tokens": ideal,
        "share": _round(cached / prompt, 4) if prompt else None,
        "ideal_share": _round(ideal / prompt, 4) if prompt else None,
        "of_ideal": _round(cached / ideal, 4) if ideal else None,
    }


def level_report(level: int, records: list[TurnRecord], ends: list[EpisodeEnd], window: tuple[float, float],
                 snapshots: tuple[Snapshot | None, Snapshot | None], samples: list[Snapshot],
                 expected: tuple[float, float], gpus: int, synthetic_tps: float | None) -> dict[str, Any]:
    """The figures of one concurrency level (see the module docstring for each definition)."""
    start, end = window
    seconds = end - start
    ended = [r for r in records if r.ended is not None and start <= r.ended <= end]
    done = [r for r in ended if r.error is None]
    counted = deltas(*snapshots)
    client_tokens = sum(r.completion_tokens or 0 for r in done)
    generated = counted["generation_tokens"] if counted["generation_tokens"] is not None else client_tokens
    tps = generated / seconds if seconds > 0 else 0.0
    turns_per_episode, tokens_per_episode = expected
    per_hour = 3600 * tps / tokens_per_episode if tokens_per_episode else None
    by_turns = 3600 * len(done) / seconds / turns_per_episode if seconds > 0 and turns_per_episode else None
    finished = [e for e in ends if start <= e.ended <= end and e.ending != "error"]
    return {
        "concurrency": level, "window_s": round(seconds, 1), "window": [start, end],
        "generated_tokens": generated,
        "generated_tokens_source": "server /metrics" if counted["generation_tokens"] is not None else "client",
        "generated_tps": round(tps, 1),
        "synthetic_tps": synthetic_tps,
        "of_synthetic": round(tps / synthetic_tps, 3) if synthetic_tps else None,
        "episodes_per_hour": _round(per_hour, 1),
        "episodes_per_gpu_hour": _round(per_hour / gpus, 1) if per_hour is not None else None,
        "episodes_per_hour_by_turns": _round(by_turns, 1),
        "turns_done": len(done), "episodes_finished": len(finished),
        "errors": [r.error for r in ended if r.error is not None][:5],
        "error_count": len(ended) - len(done),
        "cache": cache_share(done),
        "preemptions": counted["preemptions"],
        "server_counters": counted,
        "gauges": gauge_summary(samples, start, end),
        "ttft": ttft_by_bucket([r for r in done if not r.warm_start]),
        "mean_prompt_tokens": round(sum(r.prompt_tokens or 0 for r in done) / len(done)) if done else None,
    }


def _fmt(value: Any, spec: str = "", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(report: dict[str, Any]) -> str:
    """The levels as a fixed-width table, then TTFT per context bucket."""
    head = (f"agent load: {report['label']} at {report['url']} (GPU {report.get('gpu') or 'unknown'}, "
            f"{report['gpus']} GPU(s)); {report['expected_turns']:.1f} turns, "
            f"{report['expected_generated_tokens']:.0f} generated tokens per episode")
    lines = [head, f"  {'eps':>4} {'eps/GPU-h':>9} {'gen tok/s':>9} {'vs synth':>8} {'cache/ideal':>11} "
             f"{'share':>6} {'ideal':>6} {'preempt':>7} {'KV mean/max':>11} {'turns':>5} {'errors':>6}"]
    for level in report["levels"]:
        cache, kv = level["cache"], level["gauges"].get("kv_cache_usage")
        kv_text = f"{kv['mean']:.2f}/{kv['max']:.2f}" if kv else "-"
        lines.append(
            f"  {level['concurrency']:>4} {_fmt(level['episodes_per_gpu_hour'], '.1f'):>9} "
            f"{level['generated_tps']:>9.1f} {_fmt(level['of_synthetic'], '.0%'):>8} "
            f"{_fmt(cache['of_ideal'], '.1%'):>11} {_fmt(cache['share'], '.0%'):>6} "
            f"{_fmt(cache['ideal_share'], '.0%'):>6} {_fmt(level['preemptions'], '.0f'):>7} {kv_text:>11} "
            f"{level['turns_done']:>5} {level['error_count']:>6}")
    for level in report["levels"]:
        cells = [f"{row['bucket']}: {_fmt(row['p50_s'], '.2f')}/{_fmt(row['p95_s'], '.2f')} s (n={row['n']})"
                 for row in level["ttft"]]
        lines.append(f"  TTFT p50/p95 at {level['concurrency']}: " + ("; ".join(cells) or "no requests"))
    for level in report["levels"]:
        if "admission" in level:
            gate = level["admission"]
            lines.append(f"  admission at {level['concurrency']}: window {gate['window']} (min {gate['min_window']}, "
                         f"max {gate['max_window']}), at most {gate['peak_active']} running and {gate['peak_held']} "
                         f"held" + ("" if gate["enabled"] else " (off: no KV metrics)"))
    return "\n".join(lines)

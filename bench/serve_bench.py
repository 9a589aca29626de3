"""Benchmark a running vLLM server the way the CWM agent loads it. Standard library only.

Runs ON the GPU machine against `--url` (the lent machines carry vLLM's wheels, not ours, so this
uses urllib and threads). Prompts are token ids (random, in [1000, 100000), fixed seed) because the
stand-in tokenizer only serves those; `ignore_eos` with a fixed `max_tokens` makes every request
produce exactly that many tokens. Sampling is the agent's (temperature 1.0, top_p 0.95).

Measures:
  single stream     1k-token prompt, 256 out: time to first token (streamed) and the decode rate
                    after it, against the HBM bandwidth limit (bandwidth x TP / weight bytes)
  concurrency       16 and 64 sessions at once: total tokens/s and per-session rates
  prefix cache      16k-token prompt cold, then warm (its first 15k tokens sent before), and an agent
                    turn: 15k cached + 1k new + 256 out
  start-up          from vLLM's log (--startup-log) and/or a start timestamp (--started-at)

Prints a table and, with --json PATH, writes every number. Example:
    python3 bench/serve_bench.py --tp 2 --startup-log /tmp/vllm.log --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ID_LOW, ID_HIGH = 1000, 100000
# Peak HBM bandwidth, TB/s, by the name nvidia-smi reports (most specific first).
HBM_TBPS = (("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35))
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


@dataclass
class Result:
    """One streamed request: times from sending it, and the server's own token accounting."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    ttft_s: float
    total_s: float

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, per second after the first (prefill excluded)."""
        decode_s = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_s if self.completion_tokens > 1 and decode_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tps": round(self.decode_tps, 2)}


class Client:
    def __init__(self, base: str, model: str, timeout_s: float, temperature: float, top_p: float) -> None:
        self.base, self.model, self.timeout_s = base.rstrip("/"), model, timeout_s
        self.temperature, self.top_p = temperature, top_p

    def complete(self, prompt: list[int], max_tokens: int) -> Result:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": self.temperature, "top_p": self.top_p,
            "stream": True, "stream_options": {"include_usage": True},
        }
        request = urllib.request.Request(self.base + "/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] = {}
        with OPENER.open(request, timeout=self.timeout_s) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if first is None and event.get("choices"):
                    first = time.perf_counter()
                usage = event.get("usage") or usage
        ended = time.perf_counter()
        details = usage.get("prompt_tokens_details") or {}
        return Result(prompt_tokens=usage.get("prompt_tokens", len(prompt)),
                      completion_tokens=usage.get("completion_tokens", 0),
                      cached_tokens=details.get("cached_tokens"),
                      ttft_s=(first or ended) - started, total_s=ended - started)


def served_model(base: str, timeout_s: float) -> str:
    with OPENER.open(base.rstrip("/") + "/models", timeout=timeout_s) as response:
        return json.load(response)["data"][0]["id"]


def token_ids(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(ID_LOW, ID_HIGH) for _ in range(count)]


# The measurements


def single_stream(client: Client, rng: random.Random, prompt_tokens: int, output_tokens: int,
                  repeats: int) -> dict[str, Any]:
    runs = [client.complete(token_ids(rng, prompt_tokens), output_tokens) for _ in range(repeats)]
    return {
        "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "runs": [r.summary() for r in runs],
        "decode_tps": round(statistics.median(r.decode_tps for r in runs), 2),
        "ttft_s": round(statistics.median(r.ttft_s for r in runs), 4),
    }


def concurrent(client: Client, rng: random.Random, sessions: int, prompt_tokens: int,
               output_tokens: int) -> dict[str, Any]:
    prompts = [token_ids(rng, prompt_tokens) for _ in range(sessions)]
    results: list[Result | BaseException] = [RuntimeError("not run")] * sessions
    barrier = threading.Barrier(sessions)

    def session(index: int) -> None:
        barrier.wait()
        try:
            results[index] = client.complete(prompts[index], output_tokens)
        except BaseException as error:  # reported below, with the others' numbers
            results[index] = error

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = [r for r in results if isinstance(r, Result)]
    failed = [repr(r) for r in results if not isinstance(r, Result)]
    tokens = sum(r.completion_tokens for r in done)
    return {
        "sessions": sessions, "failed": failed, "wall_s": round(wall, 3), "completion_tokens": tokens,
        "total_tps": round(tokens / wall, 1) if wall > 0 else 0.0,
        "per_session_decode_tps": round(statistics.mean(r.decode_tps for r in done), 2) if done else 0.0,
        "ttft_p50_s": round(statistics.median(r.ttft_s for r in done), 4) if done else None,
        "ttft_max_s": round(max(r.ttft_s for r in done), 4) if done else None,
    }


def prefix_cache(client: Client, rng: random.Random, long_tokens: int, prefix_tokens: int,
                 output_tokens: int, repeats: int) -> dict[str, Any]:
    """Cold: a never-seen prompt. Warm: its prefix was sent first. Agent turn: warm, plus decoding."""
    new_tokens = long_tokens - prefix_tokens
    cold, warm, turn = [], [], []
    for _ in range(repeats):
        cold.append(client.complete(token_ids(rng, long_tokens), 1))
        prefix = token_ids(rng, prefix_tokens)
        client.complete(prefix, 1)  # the previous turn
        warm.append(client.complete(prefix + token_ids(rng, new_tokens), 1))
        turn.append(client.complete(prefix + token_ids(rng, new_tokens), output_tokens))

    def med(results: list[Result], field: str) -> float:
        return round(statistics.median(getattr(r, field) for r in results), 4)

    return {
        "long_tokens": long_tokens, "prefix_tokens": prefix_tokens, "output_tokens": output_tokens,
        "cold_ttft_s": med(cold, "ttft_s"), "warm_ttft_s": med(warm, "ttft_s"),
        "warm_cached_tokens": [r.cached_tokens for r in warm],
        "cold_cached_tokens": [r.cached_tokens for r in cold],
        "agent_turn_ttft_s": med(turn, "ttft_s"), "agent_turn_decode_tps": med(turn, "decode_tps"),
        "agent_turn_cached_tokens": [r.cached_tokens for r in turn],
        "runs": {"cold": [r.summary() for r in cold], "warm": [r.summary() for r in warm],
                 "agent_turn": [r.summary() for r in turn]},
    }


# Hardware and start-up


def gpu_name() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = done.stdout.strip().splitlines()
    return names[0].strip() if done.returncode == 0 and names else None


def hbm_tbps_for(name: str | None) -> float | None:
    for key, tbps in HBM_TBPS:
        if name and key in name:
            return tbps
    return None


def bandwidth_limit(hbm_tbps: float, tp: int, weights_gb: float) -> float:
    """Decode tokens/s if every step only had to stream the weights once from HBM."""
    return hbm_tbps * 1e12 * tp / (weights_gb * 1e9)


LOG_TIME = re.compile(r"\b(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\b")
READY = ("Application startup complete", "Starting vLLM API server")
FACTS = re.compile(r"(Model loading took .*|Available KV cache memory.*|GPU KV cache size.*|"
                   r"Maximum concurrency for .*|init engine .* took .*|torch\.compile takes .*|"
                   r"Graph capturing finished in .*)")


def startup(log_path: Path | None, started_at: float | None) -> dict[str, Any]:
    """Seconds from start (or the log's first timestamp) to the API server coming up, and key facts.

    vLLM stamps its lines `MM-DD HH:MM:SS` in local time without a year; uvicorn's "Application
    startup complete" has no stamp, so the last stamp before it counts.
    """
    if log_path is None:
        return {"startup_s": None}
    lines = log_path.read_text(errors="replace").splitlines()
    year = datetime.now().year
    first = ready = None
    for line in lines:
        match = LOG_TIME.search(line)
        if match:
            month, day, hour, minute, second = map(int, match.groups())
            stamp = datetime(year, month, day, hour, minute, second).timestamp()
            first = stamp if first is None else first
            last = stamp
        if any(marker in line for marker in READY) and first is not None:
            ready = last
    facts = [m.group(1).strip() for line in lines if (m := FACTS.search(line))]
    if ready is None:
        return {"startup_s": None, "note": f"no start-up completion found in {log_path}", "log_facts": facts}
    origin, since = (started_at, "--started-at") if started_at is not None else (first, "first log line")
    assert origin is not None  # `ready` implies a stamped line, so `first` is set
    return {"startup_s": round(ready - origin, 1), "measured_from": since, "log_facts": facts}


# Report


def table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    up = report["startup"]
    if up.get("startup_s") is not None:
        rows.append(("start-up to serving", f"{up['startup_s']:.0f} s (from {up['measured_from']})"))
    single = report["single_stream"]
    if single:
        rows.append((f"single stream {single['prompt_tokens']}+{single['output_tokens']}",
                     f"{single['decode_tps']:.1f} tok/s decode, TTFT {single['ttft_s'] * 1000:.0f} ms "
                     f"(median of {len(single['runs'])})"))
    limit = report["bandwidth"]
    if limit:
        rows.append(("bandwidth limit", f"{limit['limit_tps']:.1f} tok/s ({limit['hbm_tbps']} TB/s x {report['tp']}"
                     f" / {limit['weights_gb']} GB): {limit['achieved_ratio'] * 100:.0f}% achieved"))
    for level in report["concurrency"]:
        failed = f", {len(level['failed'])} FAILED" if level["failed"] else ""
        rows.append((f"{level['sessions']} concurrent sessions",
                     f"{level['total_tps']:.0f} tok/s total, {level['per_session_decode_tps']:.1f} tok/s each, "
                     f"TTFT p50 {level['ttft_p50_s'] * 1000:.0f} ms{failed}"))
    cache = report["prefix_cache"]
    new_tokens = cache["long_tokens"] - cache["prefix_tokens"] if cache else 0
    rows += [] if not cache else [
        (f"{cache['long_tokens']}-token prompt, cold", f"TTFT {cache['cold_ttft_s']:.3f} s"),
        (f"same, first {cache['prefix_tokens']} sent before",
         f"TTFT {cache['warm_ttft_s']:.3f} s (cached tokens {cache['warm_cached_tokens']})"),
        (f"agent turn {cache['prefix_tokens']}+{new_tokens}+{cache['output_tokens']}",
         f"TTFT {cache['agent_turn_ttft_s']:.3f} s, {cache['agent_turn_decode_tps']:.1f} tok/s"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    head = (f"vLLM serving benchmark: {report['url']} (model {report['model']}, TP {report['tp']}, "
            f"GPU {report['gpu'] or 'unknown'})")
    return "\n".join([head, *(f"  {label:<{width}}{value}" for label, value in rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="served model name (default: the first in /v1/models)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size the server runs with")
    parser.add_argument("--weights-gb", type=float, default=64.0, help="weight bytes / 1e9 (CWM bf16: 64)")
    parser.add_argument("--hbm-tbps", type=float, help="HBM bandwidth per GPU (H100 3.35, H200 4.8); "
                        "default: from nvidia-smi's GPU name")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--concurrency", default="16,64", help="comma-separated session counts")
    parser.add_argument("--long-tokens", type=int, default=16000)
    parser.add_argument("--prefix-tokens", type=int, default=15000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--startup-log", type=Path, help="vLLM's log (serve.sh writes /tmp/vllm.log)")
    parser.add_argument("--started-at", type=float, help="UNIX time the server was started (date +%%s)")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--sections", default="single,concurrency,prefix",
                        help="which measurements to run (e.g. only `concurrency`, beside bench/agent_load.py)")
    args = parser.parse_args(argv)
    args.sections = {part.strip() for part in args.sections.split(",") if part.strip()}
    if not 0 < args.prefix_tokens < args.long_tokens:
        parser.error("--prefix-tokens must be between 0 and --long-tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    model = args.model or served_model(args.url, args.timeout)
    client = Client(args.url, model, args.timeout, args.temperature, args.top_p)
    client.complete(token_ids(rng, 32), 8)  # warm-up: first-request costs are not what we measure
    name = gpu_name()
    report: dict[str, Any] = {"url": args.url, "model": model, "tp": args.tp, "gpu": name,
                              "sampling": {"temperature": args.temperature, "top_p": args.top_p},
                              "seed": args.seed, "when": datetime.now().isoformat(timespec="seconds")}
    report["startup"] = startup(args.startup_log, args.started_at)
    report["single_stream"] = report["bandwidth"] = report["prefix_cache"] = None
    if "single" in args.sections:
        report["single_stream"] = single_stream(client, rng, args.prompt_tokens, args.output_tokens, args.repeats)
    hbm = args.hbm_tbps or hbm_tbps_for(name)
    if hbm and report["single_stream"]:
        limit = bandwidth_limit(hbm, args.tp, args.weights_gb)
        report["bandwidth"] = {"hbm_tbps": hbm, "weights_gb": args.weights_gb, "limit_tps": round(limit, 1),
                               "achieved_ratio": round(report["single_stream"]["decode_tps"] / limit, 3)}
    levels = [int(n) for n in args.concurrency.split(",") if n.strip()] if "concurrency" in args.sections else []
    # One unmeasured round first: the first batched requests after start-up pay one-off costs (seen
    # on 2xH200: 16 sessions at 432 tok/s and 3.3 s TTFT when measured cold, before this warm-up).
    if levels:
        concurrent(client, rng, max(levels), 64, 16)
    report["concurrency"] = [concurrent(client, rng, n, args.prompt_tokens, args.output_tokens) for n in levels]
    if "prefix" in args.sections:
        report["prefix_cache"] = prefix_cache(client, rng, args.long_tokens, args.prefix_tokens,
                                              args.output_tokens, args.repeats)
    print(table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(level["failed"] for level in report["concurrency"]) else 0


if __name__ == "__main__":
    sys.exit(main())

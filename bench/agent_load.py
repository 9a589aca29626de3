"""Play N concurrent CWM-shaped episodes against a running server and measure what an agent run gets.

Why: a SWE-bench run is many long episodes at once, each turn re-sending a context that grows by
the last reply and a new observation. Whether the server keeps every episode's prefix cached, or
evicts and preempts, decides episodes per GPU-hour; bench/serve_bench.py sends fixed prompts and
cannot see it. This benchmark drives the server through the runner's own client and renderer
(bench/agentload/episode.py says exactly what is the runner's and what is made up).

How: for each concurrency level (cumulative: the episodes of a lower level keep running), start
the new episodes, staggered over their lifetimes (an episode may start at any turn, its history sent
as one prompt), wait until each has had its first reply (at most --warmup-max seconds), then measure
a window of --duration seconds: /metrics before and after it and once a second inside it, every
request's times and usage. A finished episode is followed at once by a new one from turn 1.
Per-turn lengths come from a log-normal shape fitted to recorded trajectories (optionally scaled
with --scale-to TURNS:CONTEXT) or from --replay-counts FILE... (bench/agentload/lengths.py).

Reports, per level: episodes per GPU-hour, generated tokens/s (and against --synthetic-json, a
bench/serve_bench.py result, at the same concurrency), the share of prompt tokens served from cache
against the ideal, preemptions, KV-cache usage, TTFT p50/p95 by context size (definitions in
bench/agentload/report.py). Prints a table; --json writes everything, after every level.

    python3 bench/agent_load.py --url http://127.0.0.1:8000/v1 --levels 8,32,64 --duration 60 \\
        --scale-to 32:32768 --max-context 32768 --json /tmp/agent-load.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a program: the runner's packages and bench's helpers
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from agent.batch.admission import AdmissionSettings  # noqa: E402
from agent.logs import configure_logging  # noqa: E402
from agent.models.completions import CompletionsModel  # noqa: E402
from agent.models.factory import make_model  # noqa: E402
from bench.agentload.episode import Player  # noqa: E402
from bench.agentload.gate import AdmissionGate  # noqa: E402
from bench.agentload.lengths import (  # noqa: E402
    EpisodePlan,
    default_trajectories,
    expected_per_episode,
    fit_trajectories,
    replay_plan,
)
from bench.agentload.metrics import MetricsReader, deltas  # noqa: E402
from bench.agentload.report import level_report, table  # noqa: E402
from bench.agentload.text import TextPool, round_trip_token_ids  # noqa: E402
from bench.serve_bench import gpu_name  # noqa: E402

EXPECTATION_SAMPLES = 4000
STOP_MARGIN_S = 8.0  # left before --stop-at for the last snapshot and writing the report
WARMUP_SHARE = 0.45  # of a level's share of the time left, at most, for its warm-up
MIN_WINDOW_S = 10.0


class Plans:
    """Where each new episode's plan comes from: drawn from the shape, or the replayed files in turn."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.replayed = [replay_plan(path) for path in args.replay_counts or []]
        self.shape = None
        if not self.replayed:
            self.shape = fit_trajectories(args.fit_from or default_trajectories(REPO))
            if args.scale_to:
                turns, context = (int(part) for part in args.scale_to.split(":"))
                self.shape = self.shape.scaled(turns, context)
        self._cycle = itertools.cycle(self.replayed)
        self._count = itertools.count(1)

    def next(self, rng: random.Random) -> EpisodePlan:
        if self.replayed:
            return next(self._cycle)
        assert self.shape is not None
        return self.shape.plan(rng, f"drawn-{next(self._count)}")

    def expected(self, max_context: int, seed: int) -> tuple[float, float]:
        if self.replayed:
            return expected_per_episode(self.replayed, max_context)
        assert self.shape is not None
        rng = random.Random(seed)
        return expected_per_episode([self.shape.plan(rng, "x") for _ in range(EXPECTATION_SAMPLES)], max_context)

    def describe(self) -> dict[str, Any]:
        if self.replayed:
            return {"replayed": [p.model_dump() for p in self.replayed]}
        assert self.shape is not None
        return {"shape": self.shape.model_dump()}


def new_model(args: argparse.Namespace) -> CompletionsModel:
    model = make_model(args.url, model=args.model, temperature=args.temperature, top_p=args.top_p,
                       context_size=args.max_context, timeout_s=args.timeout)
    if not isinstance(model, CompletionsModel):
        raise SystemExit(f"--url must name a completions server (http(s)://HOST:PORT/v1), not {args.url}")
    return model


async def worker(player: Player, plans: Plans, stagger: bool, gate: AdmissionGate | None = None) -> None:
    """Episodes back to back; the first may start mid-life (see the module docstring). With a gate,
    each episode waits for admission before it starts (bench/agentload/gate.py)."""
    first = True
    while True:
        plan = plans.next(player.rng)
        start = player.rng.randrange(plan.turns) if stagger and first else 0
        first = False
        if gate is not None:
            await gate.enter()
        try:
            end = await player.play(plan, start)
        finally:
            if gate is not None:
                gate.leave()
        if end.ending == "error":
            await asyncio.sleep(0.5)  # a failing server is not hammered


async def warm_up(players: list[Player], limit_s: float) -> float:
    """Wait until every new player had its first reply, or `limit_s`; the seconds waited."""
    started = time.monotonic()
    waits = [asyncio.create_task(p.first_reply.wait()) for p in players]
    if waits:
        done, pending = await asyncio.wait(waits, timeout=limit_s)
        for task in pending:
            task.cancel()
    return round(time.monotonic() - started, 1)


def level_budget(args: argparse.Namespace, levels_left: int) -> tuple[float, float]:
    """(warm-up limit, window) for the next level: --warmup-max and --duration, shrunk so the levels
    still to run share what is left before --stop-at equally; a window under MIN_WINDOW_S is 0 (skip)."""
    if args.stop_at is None:
        return args.warmup_max, args.duration
    share = (args.stop_at - time.time() - STOP_MARGIN_S) / levels_left
    warm = min(args.warmup_max, WARMUP_SHARE * share)
    window = min(args.duration, share - warm)
    return warm, (window if window >= MIN_WINDOW_S else 0.0)


def synthetic_tps(path: Path | None) -> dict[int, float]:
    """Total tokens/s by session count from a bench/serve_bench.py --json file."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {level["sessions"]: level["total_tps"] for level in data.get("concurrency", [])}


async def measure(args: argparse.Namespace, report: dict[str, Any], plans: Plans, pool: TextPool,
                  extra_body: dict[str, Any], write: Callable[[], None]) -> None:
    """Run the levels one after another, filling `report["levels"]` (see the module docstring)."""
    expected = (report["expected_turns"], report["expected_generated_tokens"])
    synthetic = synthetic_tps(args.synthetic_json)
    probe = new_model(args)
    limits = httpx.Limits(max_connections=max(args.levels) + 8, max_keepalive_connections=max(args.levels) + 8)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(base_url=probe.api_base, timeout=timeout, limits=limits) as client:
        metrics = MetricsReader(client, probe.root + "/metrics")
        gate = AdmissionGate(probe.root + "/metrics", max(args.levels),
                             AdmissionSettings(start=args.admission_start)) if args.admission else None
        first = await metrics.snapshot()
        sampler = asyncio.create_task(metrics.sample_forever())
        players: list[Player] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for index, level in enumerate(args.levels):
                warm_s, window_s = level_budget(args, len(args.levels) - index)
                if window_s <= 0:
                    report["skipped_levels"] = args.levels[index:]
                    break
                new = [Player(i, new_model(args), client, pool, extra_body, args.max_context, args.seed + i,
                              args.tool_seconds) for i in range(len(players), level)]
                players += new
                if gate is not None:
                    gate.new_level()
                tasks += [asyncio.create_task(worker(p, plans, not args.no_stagger, gate)) for p in new]
                waited = await warm_up(new, warm_s)
                before, start = await metrics.snapshot(), time.monotonic()
                await asyncio.sleep(window_s)
                after, end = await metrics.snapshot(), time.monotonic()
                records = [r for p in players for r in p.records]
                ends = [e for p in players for e in p.ends]
                result = level_report(level, records, ends, (start, end), (before, after), metrics.samples,
                                      expected, args.gpus, synthetic.get(level))
                result["warmup_s"] = waited
                if gate is not None:
                    result["admission"] = gate.level_figures()
                report["levels"].append(result)
                write()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        report["run_counters"] = deltas(first, await metrics.snapshot())
        report["metrics_available"] = metrics.available
        report["records"] = [r.model_dump() for p in players for r in p.records]
        report["episodes"] = [e.model_dump() for p in players for e in p.ends]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the report (also written to --json as it grows)."""
    plans = Plans(args)
    turns, tokens = plans.expected(args.max_context, args.seed)
    pool = TextPool.from_folder(args.corpus)
    probe = new_model(args)
    pool.calibrate(probe.count_tokens)
    extra_body: dict[str, Any] = {"ignore_eos": True}
    if args.allowed_tokens_from:
        extra_body["allowed_token_ids"] = round_trip_token_ids(args.allowed_tokens_from)
    report: dict[str, Any] = {
        "label": args.label, "url": args.url, "model": probe.model_name, "gpu": gpu_name(), "gpus": args.gpus,
        "when": datetime.now().isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("replay_counts", "fit_from")},
        **plans.describe(), "expected_turns": round(turns, 2), "expected_generated_tokens": round(tokens, 1),
        "chars_per_token": round(pool.chars_per_token, 3),
        "allowed_token_ids": len(extra_body.get("allowed_token_ids", [])) or None, "levels": [],
    }
    probe.close()

    def write() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    loop = asyncio.new_event_loop()
    # The client is synchronous: its token counts run in threads, one or two per episode at a time.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2 * max(args.levels) + 8))
    try:
        loop.run_until_complete(measure(args, report, plans, pool, extra_body, write))
    finally:
        loop.close()
    write()
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="served model name (default: the one the server lists)")
    parser.add_argument("--label", default="server", help="name of the configuration, for the report")
    parser.add_argument("--levels", default="8,32,64", help="concurrent episodes, ascending, comma-separated")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per level")
    parser.add_argument("--warmup-max", type=float, default=60.0, help="most seconds to wait for first replies")
    parser.add_argument("--max-context", type=int, default=32768, help="prompt + reply limit of an episode")
    parser.add_argument("--scale-to", help="TURNS:CONTEXT: stretch the fitted shape to reach CONTEXT in TURNS")
    parser.add_argument("--fit-from", type=Path, nargs="+", help="trajectories to fit the shape to "
                        "(default: traces/examples/*/trajectory.jsonl)")
    parser.add_argument("--replay-counts", type=Path, nargs="+", help="replay these trajectories' per-step counts")
    parser.add_argument("--no-stagger", action="store_true", help="start every episode at turn 1")
    parser.add_argument("--tool-seconds", type=float, default=0.0, help="pause between a reply and the next turn")
    parser.add_argument("--allowed-tokens-from", type=Path, help="model folder: sample only tokens that read back "
                        "as text (random weights with bench/gpu/mktokenizer.py's tokenizer)")
    parser.add_argument("--corpus", type=Path, help="folder of *.py for the text (default: the standard library)")
    parser.add_argument("--synthetic-json", type=Path, help="bench/serve_bench.py --json result to compare with")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the server uses (for per-GPU-hour figures)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the report here (after every level)")
    parser.add_argument("--admission", action="store_true", help="hold new episodes back as `agent batch "
                        "--admission kv` does (agent/batch/admission.py); each level's episodes are the ceiling")
    parser.add_argument("--admission-start", type=int, default=AdmissionSettings().start,
                        help="with --admission: episodes allowed in flight before the first reading")
    parser.add_argument("--stop-at", type=float, help="UNIX time to be done by: later levels get shorter "
                        "windows, or are skipped (a device lease ends at a fixed time)")
    args = parser.parse_args(argv)
    args.levels = sorted({int(n) for n in args.levels.split(",") if n.strip()})
    if not args.levels or args.levels[0] < 1:
        parser.error("--levels needs positive numbers")
    if args.scale_to and args.replay_counts:
        parser.error("--scale-to applies to the fitted shape, not to --replay-counts")
    return args


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    report = run(args)
    print(table(report), flush=True)
    return 1 if any(level["turns_done"] == 0 for level in report["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tracing overhead benchmark: the same program in the same sandbox, untraced and traced.

Run: python3 bench/trace_bench.py [--image IMAGE] [--repeat 3]

Cases: a loop-heavy function (tests/agent/worldmodel/programs/loops.py:busy), a call-heavy one (recursion.py:
fib), and one pytest test run in-process (mini_suite.py::test_add). The tracer itself runs each case
both ways (`"trace": false` is the same code path without `sys.settrace`), so the numbers compare
like with like: `run` is the wall time of the traced call inside the sandbox (for pytest: the whole
`pytest.main`, where the tracer's call hook also sees pytest's own calls before the test starts),
`process` the tracer process from start to written output, `host` the round trip seen by the runner
(writing the request, running, reading the JSONL back and validating it). frames/s = frames / run
time. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.worldmodel.run import TraceLimits, TraceResult, open_sandbox, stage, trace_function, trace_test  # noqa: E402

PROGRAMS = Path(__file__).resolve().parents[1] / "tests" / "agent" / "worldmodel" / "programs"
LIMITS = TraceLimits(max_frames=5_000_000, max_seconds=300, max_bytes=2_000_000_000)


def median_run(run: Callable[[], TraceResult], repeat: int) -> tuple[TraceResult, float, float, float]:
    """(last result, median entry s, median process s, median host round trip s)."""
    entry, process, host = [], [], []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        host.append(time.perf_counter() - started)
        entry.append(result.trace.end.run_elapsed_s or 0.0)
        process.append(result.trace.end.elapsed_s)
    assert result is not None
    return result, statistics.median(entry), statistics.median(process), statistics.median(host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    sandbox = open_sandbox(options.image, run_id="trace-bench")
    try:
        root = stage(sandbox, PROGRAMS)
        cases: list[tuple[str, Callable[[bool], TraceResult]]] = [
            ("loops.busy(4000)", lambda traced: trace_function(
                sandbox, f"{root}/loops.py", "busy", [4000], limits=LIMITS, trace=traced)),
            ("recursion.fib(17)", lambda traced: trace_function(
                sandbox, f"{root}/recursion.py", "fib", [17], limits=LIMITS, trace=traced)),
            ("pytest mini_suite.py::test_add", lambda traced: trace_test(
                sandbox, root, "mini_suite.py::test_add", limits=LIMITS, trace=traced)),
        ]
        print(f"sandbox: {sandbox!r}; medians of {options.repeat} runs; times in ms")
        print(f"{'case':<32} {'frames':>8} {'run off':>10} {'run on':>10} {'x':>6} {'frames/s':>10} "
              f"{'proc off':>9} {'proc on':>9} {'host on':>9} {'MB':>6}")
        for name, run in cases:
            _, off_entry, off_process, _ = median_run(lambda: run(False), options.repeat)
            traced, on_entry, on_process, on_host = median_run(lambda: run(True), options.repeat)
            frames = len(traced.trace.frames)
            factor = on_entry / off_entry if off_entry else float("nan")
            rate = frames / on_entry if on_entry else float("nan")
            print(f"{name:<32} {frames:>8} {off_entry * 1000:>10.1f} {on_entry * 1000:>10.1f} {factor:>6.1f} "
                  f"{rate:>10.0f} {off_process * 1000:>9.1f} {on_process * 1000:>9.1f} {on_host * 1000:>9.1f} "
                  f"{traced.trace.end.bytes / 1e6:>6.1f}")
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()

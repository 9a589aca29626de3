"""The cost of `agent batch --trace-tests`: episodes per minute with and without tracing.

Episodes are the PyPI fixture instances (tests/fixtures/pypi: six, idna, more-itertools; real
libraries, real failing tests), each repeated under several ids, solved by the scripted model of
tests/agent/traced_batch.py (look, apply the gold patch, submit; no model server). The same batch
runs once untraced and once per `--trace-tests` selection; each traced episode traces its tests
before and after, in its own sandbox, with the instance's test patch applied for the traces and the
traces carried back to the driver as data. Per row: wall time, episodes/min, mean episode time, and
what the traces amount to (tests traced, frames, bytes written under `<k>.traces/`).

Run: python3 bench/trace_batch_bench.py [--copies 4] [--workers 2] [--select failing all] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.batch.progress import LogProgress  # noqa: E402
from agent.batch.run import BatchRequest, run_batch  # noqa: E402
from agent.batch.state import Manifest  # noqa: E402
from agent.batch.tracing import TraceTests  # noqa: E402
from agent.instances.envs import ensure_env_image, load_registry  # noqa: E402
from agent.instances.records import Instance  # noqa: E402
from agent.instances.sources import load_instances  # noqa: E402
from tests.agent.traced_batch import PYPI, TRACED, gold_replies  # noqa: E402
from tests.helpers import write_replies  # noqa: E402
from traces.recorder import read_trajectory  # noqa: E402


def episodes(copies: int) -> list[Instance]:
    """Each fixture instance `copies` times, under its own ids (`six-1.14.0~2`)."""
    found = [i for i in load_instances(PYPI / "instances.jsonl") if i.instance_id in TRACED]
    return [i.model_copy(update={"instance_id": f"{i.instance_id}~{n}"}) for n in range(copies) for i in found]


def one_batch(batch: list[Instance], select: str | None, workers: int, image: str, tmp: Path) -> dict[str, object]:
    replies = tmp / "replies"
    replies.mkdir(exist_ok=True)
    for instance in batch:
        write_replies(replies / f"{instance.instance_id}.jsonl", gold_replies(instance))
    out = tmp / f"run-{select or 'off'}"
    option = TraceTests.from_words([select]) if select else None
    started = time.perf_counter()
    result = run_batch(BatchRequest(instances=batch, output=out, model=f"replay:{replies}/{{instance_id}}.jsonl",
                                    workers=workers, image=image, trace_tests=option),
                       progress=LogProgress(Console(file=io.StringIO())))
    wall = time.perf_counter() - started
    assert result.done == len(batch), f"{result.errored} episodes errored: see {out}/manifest.json"
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    elapsed = [s.summary.elapsed_s for r in manifest.instances for s in r.samples if s.summary is not None]
    traced = [t for f in sorted(out.glob("trajectories/*/0.traj.jsonl"))
              for t in (read_trajectory(f).ending.test_traces or [])]  # type: ignore[union-attr]
    size = sum(p.stat().st_size for p in out.glob("trajectories/*/0.traces/**/*") if p.is_file())
    return {"select": select or "off", "wall": wall, "per_minute": len(batch) / wall * 60,
            "episode": statistics.mean(elapsed), "tests": len(traced), "frames": sum(t.frames for t in traced),
            "trace_s": sum(t.wall_s for t in traced) / len(batch), "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each fixture instance (3 fixtures)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--select", nargs="*", default=["failing"], help="--trace-tests selections to measure")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the rows, alternating (a busy machine)")
    args = parser.parse_args()
    image = ensure_env_image(load_registry().envs["pypi-pure"])
    batch = episodes(args.copies)
    print(f"{len(batch)} episodes, {args.workers} workers, image {image}")
    print(f"{'trace-tests':<12} {'wall s':>8} {'episodes/min':>13} {'episode s':>10} {'tests':>6} {'frames':>8} "
          f"{'trace s/ep':>10} {'MB':>6}")
    for select in [None, *args.select] * args.rounds:
        with tempfile.TemporaryDirectory(prefix="cwm-trace-batch-bench-") as tmp:
            row = one_batch(batch, select, args.workers, image, Path(tmp))
        print(f"{row['select']:<12} {row['wall']:>8.1f} {row['per_minute']:>13.1f} {row['episode']:>10.2f} "
              f"{row['tests']:>6} {row['frames']:>8} {row['trace_s']:>10.2f} {row['mb']:>6.1f}", flush=True)


if __name__ == "__main__":
    main()

"""The Ray executor on a local Ray instance: the same batch gives the same results as the local one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, run_batch
from tests.agent.batch.test_run import containers_of, expected_preds, make_instances, make_replays, quiet, read_manifest

ray = pytest.importorskip("ray", reason="the Ray executor needs the optional 'ray' extra")
pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_gives_the_same_results_as_local(tmp_path: Path, base_image: str, local_ray: None) -> None:
    instances = make_instances(20, prefix="ray")  # the size of the kill-and-resume batch
    spec = make_replays(tmp_path / "replays", instances)
    local = run_batch(BatchRequest(instances=instances, output=tmp_path / "local", model=spec, workers=2, image=base_image),
        progress=quiet())
    sink = io.StringIO()
    remote = run_batch(BatchRequest(instances=instances, output=tmp_path / "ray", model=spec, workers=2, image=base_image, executor="ray"),
        progress=LogProgress(Console(file=sink, width=200), verbose=True))
    assert (local.done, remote.done, remote.errored, remote.exit_code) == (20, 20, 0, 0)
    preds = (tmp_path / "ray" / "preds.jsonl").read_text()
    assert preds == (tmp_path / "local" / "preds.jsonl").read_text() == expected_preds(instances)
    mine, theirs = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert [s["executor"] for s in theirs.sessions] == ["ray"]
    for a, b in zip(mine.instances, theirs.instances):
        (x,), (y,) = a.samples, b.samples
        assert x.summary is not None and y.summary is not None
        assert (x.status, x.attempts, x.summary.ending, x.summary.steps, x.summary.prompt_tokens) == (
            y.status, y.attempts, y.summary.ending, y.summary.steps, y.summary.prompt_tokens)
        assert a.vote == b.vote
        for name in ("0.patch", "0.sandbox.diff"):
            folder = Path("trajectories") / a.instance_id / name
            assert (tmp_path / "ray" / folder).read_text() == (tmp_path / "local" / folder).read_text()
    # Steps streamed back from the Ray workers while they ran (the live display's per-worker lines).
    assert "ray-00 #0 step 7" in sink.getvalue()
    assert containers_of(remote.run_id) == []

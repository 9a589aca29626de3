"""Batches of local repositories: samples share one copy of the repository, and warm sandboxes start
from the next instances' repository images.

Real Docker, real git, real images, the replay model. Copies are counted through the runner's log
lines (`repo.image_built`, `repo.copied`) and each sample's trajectory header (`repo_from`).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from structlog.testing import capture_logs

from agent.batch.executors import EpisodeJob, run_job, warm_config
from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, run_batch
from agent.batch.warm import LookaheadPools
from agent.instances.records import Instance
from tests.helpers import bash, write_replies
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker



def replies(path: Path) -> Path:
    return write_replies(path, [
        bash("git rev-parse HEAD"),
        bash("echo more >> empty && git diff > /tmp/p.patch"),
        "Submitting.\n</think>\n\n<tool: submit>\n/tmp/p.patch\n</tool>",
        "Done.\n</think>\n\nDone.",
    ])


def instance(instance_id: str, repo: Path, commit: str) -> Instance:
    return Instance(instance_id=instance_id, repo="example/calc", repo_path=str(repo), base_commit=commit,
                    problem_statement="add() subtracts")


def test_twenty_samples_of_one_instance_cost_one_copy(repository: tuple[Path, str, str], tmp_path: Path,
                                                      base_image: str) -> None:
    repo, base, _ = repository
    request = BatchRequest(instances=[instance("calc-1", repo, base)], output=tmp_path / "run",
                           model=f"replay:{replies(tmp_path / 'replies.jsonl')}", workers=2, samples=20,
                           image=base_image)
    with capture_logs() as logs:
        result = run_batch(request, progress=LogProgress(Console(file=io.StringIO())))
    assert result.done == 20 and result.errored == 0
    events = Counter(entry["event"] for entry in logs)
    assert events["repo.image_built"] == 1 and events["repo.copied"] == 0
    headers = [read_trajectory(path).header for path in (tmp_path / "run").rglob("*.traj.jsonl")]
    assert len(headers) == 20
    assert Counter(h.repo_from for h in headers) == {"image-build": 1, "image-cache": 19}
    assert len({h.repo_image for h in headers}) == 1 and all(h.commit == base for h in headers)


def test_warm_sandboxes_start_from_the_next_instances_repository_images(
        repository: tuple[Path, str, str], tmp_path: Path, base_image: str) -> None:
    repo, base, fix = repository
    spec = f"replay:{replies(tmp_path / 'replies.jsonl')}"
    jobs = [EpisodeJob(instance=instance(name, repo, commit), sample=0, attempt=1, run_id="pytest-warm",
                       model_spec=spec, image=base_image) for name, commit in (("at-base", base), ("at-fix", fix))]
    pools = LookaheadPools(2, warm_config)
    try:
        with capture_logs() as logs:
            pools.plan(jobs)  # the pool makes both repository images and starts a sandbox of each
            assert pools.wait_ready(2, timeout=240)
        assert sum(1 for entry in logs if entry["event"] == "repo.image_built") == 2
        images = {warm_config(job).image for job in jobs}
        assert len(images) == 2 and all(image.startswith("cwm-runner/repo-") for image in images)
        outcomes = []
        for job in jobs:
            pools.handed(job)
            outcomes.append(run_job(job.model_copy(update={"live_dir": str(tmp_path / job.instance.instance_id)}),
                                    open_sandbox=pools.open))
            pools.finished(job)
        assert pools.hits == 2 and pools.misses == 0
        assert all(outcome.ok for outcome in outcomes), [outcome.error for outcome in outcomes]
        for job, commit in zip(jobs, (base, fix)):
            trajectory = read_trajectory(tmp_path / job.instance.instance_id / f"{job.instance.instance_id}.traj.jsonl")
            assert trajectory.header.repo_from == "image-cache"  # the warm pool had made it
            assert trajectory.steps[0].output == f"{commit}\n"
    finally:
        pools.close()

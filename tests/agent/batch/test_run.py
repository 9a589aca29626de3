"""`agent batch` with real Docker and the replay model: parallel runs, layout, errors, votes, progress.

Every instance is the bundled example (traces/examples/intervals) under its own id, replayed from
its own copy of the recorded trajectory (`replay:DIR/{instance_id}.jsonl`), so an episode is ~7
steps and about a second. The builders here are shared with the kill/resume and Ray tests.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.progress import LiveProgress, LogProgress, make_progress
from agent.batch.run import BatchRequest, BatchResult, run_batch
from agent.batch.state import Manifest
from agent.batch.status_log import BatchRefused
from agent.instances.records import Instance, Prediction
from tests.helpers import REPO_ROOT
from traces.recorder import read_trajectory

ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"
RECORDED = read_trajectory(EXAMPLE / "trajectory.jsonl")


# -- builders shared by the batch tests ---------------------------------------------------------------


def make_instances(count: int, prefix: str = "intervals") -> list[Instance]:
    issue = (EXAMPLE / "issue.md").read_text()
    return [Instance(instance_id=f"{prefix}-{n:02d}", repo=str(EXAMPLE / "repo"), repo_path=str(EXAMPLE / "repo"),
                     problem_statement=issue) for n in range(count)]


def write_instances(path: Path, instances: list[Instance]) -> Path:
    path.write_text("".join(i.model_dump_json() + "\n" for i in instances))
    return path


def make_replays(folder: Path, instances: list[Instance], truncated: tuple[str, ...] = (),
                 missing: tuple[str, ...] = ()) -> str:
    """One replay file per instance; returns the model spec template that picks them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (EXAMPLE / "trajectory.jsonl").read_text().splitlines(keepends=True)
    for instance in instances:
        if instance.instance_id in missing:
            continue
        kept = lines[:4] if instance.instance_id in truncated else lines  # header + 3 replies: runs out
        (folder / f"{instance.instance_id}.jsonl").write_text("".join(kept))
    return f"replay:{folder}/{{instance_id}}.jsonl"


def expected_preds(instances: list[Instance]) -> str:
    """What a complete run must write: the recorded fix for every instance, in instance order."""
    patch = RECORDED.ending.submission if RECORDED.ending else None
    assert patch
    return "".join(Prediction(instance_id=i.instance_id, model_name_or_path=RECORDED.header.model.name,
                              model_patch=patch).model_dump_json() + "\n" for i in instances)


def containers_of(run_id: str) -> list[str]:
    done = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=cwm-runner.run-id={run_id}"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def read_manifest(output: Path) -> Manifest:
    return Manifest.model_validate_json((output / "manifest.json").read_text())


def status_events(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "status.log").read_text().splitlines() if line.strip()]


def quiet() -> LogProgress:
    return LogProgress(Console(file=io.StringIO(), width=200))


TESTS = [f"tests/test_core.py::test_{name}" for name in (
    "touching_intervals_merge", "disjoint_intervals_stay_apart", "overlapping_intervals_merge",
    "total_length_counts_shared_points_once", "reversed_interval_is_rejected")]


# -- tests --------------------------------------------------------------------------------------------

docker = pytest.mark.docker


@docker
def test_batch_of_twenty_with_two_workers(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(20)
    spec = make_replays(tmp_path / "replays", instances)
    out = tmp_path / "run"
    sink = io.StringIO()
    result = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=2, image=base_image),
        progress=LogProgress(Console(file=sink, width=200)))
    assert isinstance(result, BatchResult)
    assert (result.done, result.errored, result.pending, result.ran, result.exit_code) == (20, 0, 0, 20, 0)
    assert (out / "preds.jsonl").read_text() == expected_preds(instances)
    manifest = read_manifest(out)
    assert manifest.run_id == result.run_id and manifest.instance_count == 20 and manifest.totals.done == 20
    assert manifest.totals.prompt_tokens > 0 and manifest.model_name == RECORDED.header.model.name
    for record in manifest.instances:
        (sample,) = record.samples
        assert sample.status == "done" and sample.attempts == 1 and sample.summary is not None
        assert sample.summary.ending == "submitted" and sample.summary.steps == 7 and sample.summary.has_patch
        assert record.vote is not None and record.vote["chosen_sample"] == 0
        folder = out / "trajectories" / record.instance_id
        assert sorted(p.name for p in folder.iterdir()) == ["0.patch", "0.sandbox.diff", "0.traj.jsonl"]
        trajectory = read_trajectory(folder / "0.traj.jsonl")
        assert trajectory.header.instance_id == record.instance_id and trajectory.header.run_id == result.run_id
        assert trajectory.ending is not None and trajectory.ending.status == "submitted"
    # Both workers were used, and the plain (non-TTY) progress wrote one line per episode.
    assert {e["slot"] for e in status_events(out) if e["event"] == "start"} == {0, 1}
    lines = sink.getvalue().splitlines()
    assert len([line for line in lines if line.startswith("[")]) == 20 and "[20/20] done" in lines[-1]
    assert containers_of(result.run_id) == []


@docker
def test_errors_are_kept_until_redo_errors(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(3, prefix="err")
    replays = tmp_path / "replays"
    spec = make_replays(replays, instances, truncated=("err-01",), missing=("err-02",))
    out = tmp_path / "run"
    first = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=2, image=base_image),
        progress=quiet())
    assert (first.done, first.errored, first.exit_code) == (1, 2, 1)
    manifest = read_manifest(out)
    runs_out, no_file = (manifest.instances[n].samples[0] for n in (1, 2))
    assert runs_out.status == "error" and "only 3 replies" in (runs_out.error or "")
    assert no_file.status == "error" and "no such trajectory file" in (no_file.error or "")
    # The errored attempt's trajectory is kept aside, never under the final name.
    folder = out / "trajectories" / "err-01"
    assert sorted(p.name for p in folder.iterdir()) == ["0.attempt1.error.jsonl"]
    assert read_trajectory(folder / "0.attempt1.error.jsonl").ending.status == "error"  # type: ignore[union-attr]
    # Every instance finished, so each has a prediction; the errored ones predict no change.
    preds = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    assert [p["model_patch"] != "" for p in preds] == [True, False, False]

    make_replays(replays, instances)  # fix the cause
    again = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=2, image=base_image, resume=True),
        progress=quiet())
    assert (again.ran, again.errored, again.exit_code) == (0, 2, 1)  # errors are not retried by default
    redone = run_batch(BatchRequest(instances=instances, output=out, model=spec, workers=2, image=base_image, resume=True,
                       redo_errors=True, warm=1), progress=quiet())  # from warm sandboxes this time
    assert (redone.ran, redone.done, redone.errored, redone.exit_code) == (2, 3, 0, 0)
    assert containers_of(redone.run_id) == []  # the pool's idle sandbox was removed too
    assert [s.samples[0].attempts for s in read_manifest(out).instances] == [1, 2, 2]
    assert (out / "preds.jsonl").read_text() == expected_preds(instances)
    assert (folder / "0.attempt1.error.jsonl").exists() and (folder / "0.traj.jsonl").exists()


def test_refusals_are_one_line(tmp_path: Path) -> None:
    instances = make_instances(2)
    listing = write_instances(tmp_path / "instances.jsonl", instances)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("something else\n")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "batch", str(listing), "--output", str(out),
                           "--model", "replay:/nonexistent"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--resume" in done.stderr and "--output" in done.stderr
    with pytest.raises(BatchRefused, match="holds no batch run"):
        run_batch(BatchRequest(instances=instances, output=out, model="replay:/x", resume=True), progress=quiet())
    with pytest.raises(BatchRefused, match="appears twice"):
        run_batch(BatchRequest(instances=instances + instances[:1], output=tmp_path / "dup", model="replay:/x"),
            progress=quiet())


def test_resume_refuses_other_instances_or_settings(tmp_path: Path) -> None:
    from agent.batch.state import BatchState
    from agent.batch.status_log import RunConfig

    instances = make_instances(3)
    config = RunConfig(model="replay:/x")
    BatchState.open(tmp_path / "run", instances, config, resume=False).close()
    with pytest.raises(BatchRefused, match="instances differ"):
        BatchState.open(tmp_path / "run", instances[:2], config, resume=True)
    with pytest.raises(BatchRefused, match="samples differ"):
        BatchState.open(tmp_path / "run", instances, config.model_copy(update={"samples": 2}), resume=True)
    with pytest.raises(BatchRefused, match="pass --resume"):
        BatchState.open(tmp_path / "run", instances, config, resume=False)
    with pytest.raises(BatchRefused, match="image_prefix differ"):  # arm64 images are other images
        BatchState.open(tmp_path / "run", instances,
                        config.model_copy(update={"image_prefix": "swebench/sweb.eval.arm64."}), resume=True)
    with pytest.raises(BatchRefused, match="platform differ"):
        BatchState.open(tmp_path / "run", instances, config.model_copy(update={"platform": "linux/arm64"}),
                        resume=True)
    state = BatchState.open(tmp_path / "run", instances, config, resume=True)
    assert len(state.todo()) == 3 and len(state.sessions) == 2
    state.close()


def test_the_run_config_keeps_what_names_the_images_and_not_the_mirror(tmp_path: Path) -> None:
    from agent.batch.run import BatchRequest, _config
    from agent.instances.images import ImageOptions
    from images.registry import PullOptions

    def config(**images: object) -> object:
        return _config(BatchRequest(instances=make_instances(1), output=tmp_path, model="replay:/x",
                                    images=ImageOptions(**images)))

    assert config(registry="mirror.example:5000").differences(config()) == []
    assert config(prefix="swebench/sweb.eval.arm64.").differences(config()) == ["image_prefix"]
    assert config(pull=PullOptions(platform="linux/arm64")).differences(config()) == ["platform"]


def test_a_torn_status_line_is_cut_off(tmp_path: Path) -> None:
    from agent.batch.state import BatchState
    from agent.batch.status_log import RunConfig

    instances = make_instances(2)
    config = RunConfig(model="replay:/x")
    state = BatchState.open(tmp_path / "run", instances, config, resume=False)
    state.start("intervals-00", 0)
    state.close()
    with (tmp_path / "run" / "status.log").open("a") as log:
        log.write('{"event": "done", "instance_id": "interv')  # killed mid-write
    state = BatchState.open(tmp_path / "run", instances, config, resume=True)
    assert state.abandoned == [("intervals-00", 0, 1)]
    assert [i.instance_id for i, _ in state.todo()] == ["intervals-00", "intervals-01"]
    state.close()
    assert all(line.endswith("}") for line in (tmp_path / "run" / "status.log").read_text().splitlines())


def test_bad_model_template_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    with pytest.raises(BatchRefused, match="instance_id"):
        run_batch(BatchRequest(instances=make_instances(1), output=tmp_path / "run", model="replay:/x/{name}.jsonl"),
            progress=quiet())
    assert not (tmp_path / "run").exists()


def test_live_display_on_a_terminal_and_plain_lines_otherwise() -> None:
    assert isinstance(make_progress(Console(file=io.StringIO())), LogProgress)
    screen = io.StringIO()
    live = make_progress(Console(file=screen, force_terminal=True, width=120))
    assert isinstance(live, LiveProgress)
    live.begin(total=4, finished=1, errored=0, resolved=1, workers=2, evaluating=True)
    live.started(0, "django__django-1", 0, 1)
    live.started(1, "astropy__astropy-2", 1, 2)
    live.step(0, 5)
    text = Console(file=io.StringIO(), width=120)
    text.print(live)
    rendered = text.file.getvalue()  # type: ignore[attr-defined]
    assert "django__django-1 #0" in rendered and "step 5" in rendered and "(attempt 2)" in rendered
    assert "1/4" in rendered and "resolved 1" in rendered and "eta" in rendered
    live.finished(0, "django__django-1", 0, False, "SandboxError: [boom]", None)
    live.close()
    assert "SandboxError: [boom]" in screen.getvalue()


def test_cli_without_docker_needs_no_daemon_for_usage_errors(tmp_path: Path) -> None:
    listing = write_instances(tmp_path / "instances.jsonl", make_instances(1))
    done = subprocess.run([sys.executable, "-m", "agent.cli", "batch", str(listing), "--output", str(tmp_path / "o"),
                           "--redo-errors"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "--resume" in done.stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_pull_lines_say_the_bytes_and_the_end() -> None:
    from agent.batch.progress import pull_line
    from images.registry import PullProgress

    progress = PullProgress(image="swebench/x:latest", status="Downloading",
                            layers={"a": (1_500_000, 2_000_000), "b": (0, 1_000_000_000)})
    assert pull_line(progress) == "pulling swebench/x:latest: 1.5 MB of 1.0 GB"
    assert pull_line(PullProgress(image="i", status="Pulling fs layer")) == "pulling i"
    assert pull_line(progress.model_copy(update={"status": "done"})) == "pulled swebench/x:latest (1.0 GB)"
    assert pull_line(PullProgress(image="i", status="failed")) == "pull of i failed"


def test_the_live_display_shows_a_pull_while_it_runs() -> None:
    from agent.batch.progress import LiveProgress
    from images.registry import PullProgress

    sink = io.StringIO()
    live = LiveProgress(Console(file=sink, force_terminal=True, width=200))
    early = PullProgress(image="first:latest", status="Downloading", layers={"a": (10, 100)})
    live.pull(early)  # before the display starts: a plain line
    live.pull(early.model_copy(update={"status": "done"}))
    live.begin(total=2, finished=0, errored=0, resolved=0, workers=1, evaluating=False)
    try:
        live.pull(PullProgress(image="second:latest", status="Downloading", layers={"a": (5_000, 10_000)}))
        shown = Console(file=io.StringIO(), width=200)
        shown.print(live)
        assert "pulling second:latest: 5.0 KB of 10.0 KB" in shown.file.getvalue()
        live.pull(PullProgress(image="second:latest", status="done", layers={"a": (10_000, 10_000)}))
        shown = Console(file=io.StringIO(), width=200)
        shown.print(live)
        assert "second:latest" not in shown.file.getvalue()
    finally:
        live.close()
    text = sink.getvalue()
    assert "pulling first:latest: 10 B of 100 B" in text and "pulled first:latest (100 B)" in text
    assert "pulled second:latest (10.0 KB)" in text

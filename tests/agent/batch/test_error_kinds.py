"""Infrastructure errors apart from the model's and the episodes' own: classification, the run's state,
the progress display, and a batch that stops instead of burning its queue on a server never seen."""

from __future__ import annotations

import errno
import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.executors import GradingError
from agent.batch.progress import LiveProgress, LogProgress
from agent.batch.run import BatchRequest, run_batch
from agent.batch.state import BatchState
from agent.batch.status_log import EpisodeSummary, RunConfig
from agent.episode.failures import Failure, classify
from agent.grading.evaluate import GradingInterrupted
from agent.models.base import ModelError
from agent.models.http import ServerError, ServerUnavailable
from sandbox.base import SandboxError
from tests.agent.batch.test_run import make_instances, quiet, status_events


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """`error` as it arrives after `raise error from cause`."""
    try:
        raise error from cause
    except BaseException as caught:  # noqa: BLE001
        return caught


@pytest.mark.parametrize(("error", "expected"), [
    (ServerUnavailable("went away"), Failure(kind="infra", cause="model_server")),
    (ServerError("model server at X is not reachable (connection refused)"), Failure(kind="infra", cause="model_server")),
    (ServerError("model server rejected the request (HTTP 400)", status=400), Failure(kind="model")),
    (ModelError("trajectory t has only 3 replies"), Failure(kind="model")),
    (SandboxError("lost the Docker daemon"), Failure(kind="infra", cause="docker")),
    (OSError(errno.ENOSPC, "No space left on device", "/run/x"), Failure(kind="infra", cause="disk")),
    (raised(GradingError("grading failed: no verdict"), GradingInterrupted("sandbox died")),
     Failure(kind="infra", cause="docker")),
    (raised(RuntimeError("wrapped"), OSError(errno.EDQUOT, "Disk quota exceeded")), Failure(kind="infra", cause="disk")),
    (ValueError("the repository cannot be prepared"), Failure(kind="episode")),
    (OSError(errno.EACCES, "Permission denied"), Failure(kind="episode")),
])
def test_whose_failure_it_was(error: BaseException, expected: Failure) -> None:
    assert classify(error) == expected


def open_state(root: Path, samples: int = 1, resume: bool = False) -> BatchState:
    return BatchState.open(root, make_instances(2, prefix="kind"), RunConfig(model="replay:x", samples=samples),
                           resume=resume)


def test_infrastructure_errors_are_redone_by_resume_and_never_voted(tmp_path: Path) -> None:
    state = open_state(tmp_path / "run", samples=2)
    for instance_id in ("kind-00", "kind-01"):
        for sample in (0, 1):
            state.start(instance_id, sample)
    summary = EpisodeSummary(ending="submitted", has_patch=False)
    state.done("kind-00", 0, 1, summary)
    state.error("kind-00", 1, 1, "SandboxError: lost the Docker daemon", failure=Failure(kind="infra", cause="docker"))
    state.done("kind-01", 0, 1, summary)
    state.error("kind-01", 1, 1, "ModelError: the server rejected the request", failure=Failure(kind="model"))
    totals = state.totals()
    assert (totals.error, totals.infra_errors, totals.model_errors, totals.episode_errors) == (2, 1, 1, 0)
    # kind-00 waits for its infrastructure error to be redone: no prediction yet; kind-01 is final.
    assert [json.loads(line)["instance_id"] for line in (tmp_path / "run" / "preds.jsonl").read_text().splitlines()] \
        == ["kind-01"]
    state.close()
    resumed = open_state(tmp_path / "run", samples=2, resume=True)
    assert [(i.instance_id, k) for i, k in resumed.todo()] == [("kind-00", 1)]
    assert [(i.instance_id, k) for i, k in resumed.todo(redo_errors=True)] == [("kind-00", 1), ("kind-01", 1)]
    record = resumed.sample("kind-00", 1)
    assert (record.status, record.error_kind, record.error_cause) == ("error", "infra", "docker")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["totals"]["infra_errors"] == 1
    assert manifest["instances"][0]["samples"][1]["error_kind"] == "infra"
    resumed.close()


def test_an_error_logged_before_kinds_existed_reads_as_the_episodes_own(tmp_path: Path) -> None:
    state = open_state(tmp_path / "run")
    state.start("kind-00", 0)
    state.close()
    log = tmp_path / "run" / "status.log"
    old = {"event": "error", "at": "2026-11-30T10:00:00Z", "instance_id": "kind-00", "sample": 0, "attempt": 1,
           "error": "SandboxError: gone", "summary": {}}
    log.write_text(log.read_text() + json.dumps(old) + "\n")
    resumed = open_state(tmp_path / "run", resume=True)
    assert resumed.sample("kind-00", 0).error_kind == "episode" and resumed.todo() == [(resumed.instances[1], 0)]
    resumed.close()


def test_the_displays_say_what_is_down_and_count_infrastructure_errors_apart() -> None:
    sink = io.StringIO()
    plain = LogProgress(Console(file=sink, width=300))
    plain.begin(3, 0, 0, 0, 2, False)
    since = time.time() - 42
    plain.started(0, "a", 0, 1)
    plain.finished(0, "a", 0, False, "SandboxError: lost the Docker daemon", None, kind="infra", retry=True)
    plain.outage("Docker daemon", since)
    plain.outage("Docker daemon", None)
    plain.started(0, "a", 0, 2)
    plain.finished(0, "a", 0, False, "SandboxError: lost it again", None, kind="infra")
    lines = sink.getvalue().splitlines()
    at = time.strftime("%H:%M:%S", time.gmtime(since))
    assert "INFRA a #0  SandboxError: lost the Docker daemon" in lines[1] and lines[1].endswith("(retried)")
    assert lines[2] == f"Docker daemon down since {at} UTC: new episodes wait for it"
    assert lines[3] == "Docker daemon is back: episodes continue"
    assert lines[4].startswith("[1/3] INFRA a #0") and "errored 1 (1 infrastructure)" in lines[4]

    screen = io.StringIO()
    live = LiveProgress(Console(file=screen, width=200, force_terminal=True))
    live.begin(3, 0, 0, 0, 2, False)
    live.outage("model server at http://h:8000/v1", since)
    live._live.refresh()
    live.close()
    assert f"model server at http://h:8000/v1 down since {at} UTC: new episodes wait for it (0:42)" in screen.getvalue()


@pytest.mark.docker
def test_a_model_server_never_seen_stops_the_batch_instead_of_failing_every_episode(tmp_path: Path,
                                                                                   base_image: str) -> None:
    instances = make_instances(4, prefix="nosrv")
    result = run_batch(BatchRequest(instances=instances, output=tmp_path / "run", model="http://127.0.0.1:9/v1",
                                    model_options={"attempts": 1}, workers=1, image=base_image), progress=quiet())
    assert result.stopped == ("model server at http://127.0.0.1:9/v1 is not reachable: start it (`agent serve`) or fix "
                              "--model, then rerun with --resume")
    assert (result.errored, result.infra_errors, result.pending, result.exit_code) == (1, 1, 3, 1)
    errors = [e for e in status_events(tmp_path / "run") if e["event"] == "error"]
    assert [(e["instance_id"], e["kind"], e["cause"]) for e in errors] == [("nosrv-00", "infra", "model_server")]

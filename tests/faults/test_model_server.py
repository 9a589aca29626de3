"""The model server goes away mid-batch: episodes wait and go on, or end as infrastructure errors.

A real batch (Docker sandboxes, two workers) drives the recorded CWM episode through a real HTTP
server (tests/faults/helpers.py), which the test stops like a killed vLLM (listener closed, open
connections cut) after a number of completion requests and starts again on the same port.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, run_batch
from tests.agent.batch.test_run import containers_of, make_instances, read_manifest
from tests.fakes.openai_server import COMPLETIONS, FakeOpenAIServer
from tests.faults.helpers import STEPS, check_run, count, cwm_server, events, kept_steps, turn_of

pytestmark = pytest.mark.docker


def stop_after(server: FakeOpenAIServer, requests: int, down_s: float | None) -> threading.Thread:
    """Stop the server once it has seen `requests` completion requests; start it again on its port
    `down_s` later (None: leave it down)."""
    port = server.port

    def run() -> None:
        while len(server.requests_to(COMPLETIONS)) < requests:
            time.sleep(0.01)
        server.stop()
        if down_s is not None:
            time.sleep(down_s)
            server.start(port=port)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_episodes_wait_for_a_restarted_server_and_go_on(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(6, prefix="srv")
    server = cwm_server()
    url, sink = server.url, io.StringIO()
    try:
        restart = stop_after(server, 10, down_s=3.0)
        result = run_batch(BatchRequest(instances=instances, output=tmp_path / "run", model=server.url, workers=2,
                                        image=base_image), progress=LogProgress(Console(file=sink, width=300)))
        restart.join(timeout=5)
        turns = Counter(turn_of(r.body) for r in server.requests_to(COMPLETIONS))
    finally:
        server.stop()
    assert (result.done, result.errored, result.exit_code, result.stopped) == (6, 0, 0, None), sink.getvalue()
    check_run(tmp_path / "run", instances)
    # Nobody ran twice: the episodes in flight waited and went on where they were.
    assert set(count(events(tmp_path / "run"), "start").values()) == {1}
    assert all(s.attempts == 1 for r in read_manifest(tmp_path / "run").instances for s in r.samples)
    # Every turn asked for once per episode; a request cut by the kill was sent again, the same one.
    assert set(turns) == set(range(STEPS)) and all(6 <= n <= 6 + 2 for n in turns.values()), turns
    shown = sink.getvalue()
    assert f"model server at {url} down since " in shown and f"model server at {url} is back" in shown
    assert result.outages == {url: 1}
    assert containers_of(result.run_id) == []


def test_a_server_gone_past_the_bound_stops_the_batch_and_resume_finishes(tmp_path: Path, base_image: str) -> None:
    instances = make_instances(6, prefix="gone")
    out = tmp_path / "run"
    server = cwm_server()
    port, url = server.port, server.url
    try:
        stop_after(server, 10, down_s=None)
        first = run_batch(BatchRequest(instances=instances, output=out, model=url, workers=2,
                                       image=base_image, outage_s=2), progress=LogProgress(Console(file=io.StringIO())))
        assert first.stopped is not None and first.exit_code == 1
        assert f"model server at {url} has been down for " in first.stopped
        assert first.stopped.endswith("bring it back, then rerun with --resume")
        before = events(out)
        errors = [e for e in before if e["event"] == "error"]
        assert errors and all((e["kind"], e["cause"]) == ("infra", "model_server") for e in errors)
        assert all("went away and did not come back" in e["error"] for e in errors)
        assert max(kept_steps(out, e) for e in errors) >= 1  # an episode in flight kept its steps
        manifest = read_manifest(out)
        assert manifest.totals.infra_errors == len({(e["instance_id"], e["sample"]) for e in errors})
        done_before = set(count(before, "done"))
        assert first.errored == first.infra_errors and first.model_errors == first.episode_errors == 0

        server.start(port=port)  # back; the same command with --resume and no --redo-errors
        second = run_batch(BatchRequest(instances=instances, output=out, model=url, workers=2,
                                        image=base_image, resume=True), progress=LogProgress(Console(file=io.StringIO())))
    finally:
        server.stop()
    assert (second.done, second.errored, second.exit_code) == (6, 0, 0)
    check_run(out, instances, done_before)
    assert containers_of(second.run_id) == []

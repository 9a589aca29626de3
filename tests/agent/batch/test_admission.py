"""KV-aware admission: the window follows a real HTTP server's /metrics, and a real batch obeys it.

The servers are tests/fakes/openai_server.py over real HTTP. The controller's own tests script the
server's gauges (`set_load`); the batch tests let the fake hold each episode's context in a KV cache of
a capacity the test sets (tests/fakes/load.py), so KV usage and waiting requests follow the episodes
the batch keeps in flight, and the fake counts how many it held at once.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from structlog.testing import capture_logs

from agent.batch.admission import AdmissionSettings, KvAdmission, make_admission, metrics_urls
from agent.batch.progress import LiveProgress, LogProgress
from agent.batch.run import BatchRequest, run_batch
from agent.instances.records import Instance
from agent.models.metrics import ServerLoad, metrics_url, read_load
from tests.agent.batch.test_run import RECORDED, expected_preds, make_instances
from tests.fakes.openai_server import COMPLETIONS, FakeOpenAIServer, Reply, toy_count
from tests.faults.helpers import STEPS, turn_of

FAST = AdmissionSettings(start=4, poll_s=0.01, increase_every_s=0)  # every poll() may move the window


def read(admission: KvAdmission, in_flight: int) -> int:
    """One reading of the server now: the window it leaves."""
    reading = admission.poll(in_flight)
    assert reading is not None and reading.allowed == admission.window
    return reading.allowed


def controller(server: FakeOpenAIServer, workers: int = 8, settings: AdmissionSettings = FAST) -> KvAdmission:
    return KvAdmission(workers, metrics_urls([server.url]), settings)


# -- the controller against a server's real /metrics ------------------------------------------------


def test_the_window_shrinks_when_the_kv_cache_is_full_and_requests_wait_and_grows_back() -> None:
    with FakeOpenAIServer() as server:
        admission = controller(server)
        assert admission.urls == [f"{server.root}/metrics"] and admission.allowed(0) == 4
        server.set_load(kv_cache_usage=0.95, running=35, waiting=28)
        seen = [read(admission, admission.window) for _ in range(4)]
        assert seen == [3, 2, 1, 1]  # x0.75 each time, never below 1
        assert admission.kv_usage == 0.95
        server.set_load(kv_cache_usage=0.95, waiting=0)  # full but nothing waiting: the sweet spot, kept
        assert read(admission, 1) == 1
        server.set_load(kv_cache_usage=0.40)
        grown = [read(admission, admission.window) for _ in range(10)]
        assert grown == [2, 3, 4, 5, 6, 7, 8, 8, 8, 8]  # +1 each time, never past the workers
        assert admission.peak == 8


def test_preemptions_shrink_the_window_and_an_unused_window_does_not_grow() -> None:
    with FakeOpenAIServer() as server:
        admission = controller(server)
        server.set_load(kv_cache_usage=0.30)
        assert read(admission, 1) == 4  # 1 of 4 in use: no growth
        server.set_load(preemptions_per_request=3)
        assert read(admission, 4) == 5  # counter unchanged: room
        httpx.post(f"{server.url}/completions", json={"model": "cwm", "prompt": "hello"}, timeout=10)
        assert server.counter("preemptions") == 3
        assert read(admission, 5) == 3  # preempted: 5 x 0.75
        # More episodes run than the window allows: the last decrease has not taken effect yet.
        httpx.post(f"{server.url}/completions", json={"model": "cwm", "prompt": "again"}, timeout=10)
        assert read(admission, 5) == 3


def test_the_window_grows_only_after_being_in_use_a_while_and_readings_are_spaced() -> None:
    with FakeOpenAIServer() as server:
        server.set_load(kv_cache_usage=0.10)
        admission = controller(server, settings=AdmissionSettings(start=2, increase_every_s=3600, poll_s=3600))
        assert admission.allowed(2) == 2  # the first reading is due at once: room, but the window just filled
        assert admission.allowed(2) == 2  # no reading for an hour
        assert read(admission, 2) == 2  # read: in use for < 1 hour
        assert len(server.requests_to("/metrics")) == 2
        assert admission.allowed(1) == 2 and admission.peak == 2


def test_a_server_without_metrics_leaves_the_workers_in_charge() -> None:
    with FakeOpenAIServer(metrics=False) as server, capture_logs() as logs:
        admission = controller(server, workers=6)
        assert admission.allowed(0) == 6 and admission.allowed(5) == 6 and not admission.active
    warnings = [e for e in logs if e["event"] == "batch.admission_off"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning" and "404" in warnings[0]["reason"]
    assert len(server.requests_to("/metrics")) == 1  # asked once, never again


def test_which_runs_have_admission() -> None:
    assert make_admission(AdmissionSettings(), 4, ["replay:/some/file.jsonl"]) is None
    assert make_admission(AdmissionSettings(mode="off"), 4, ["http://127.0.0.1:1/v1"]) is None
    kv = make_admission(AdmissionSettings(), 4, ["http://h:8000/v1", "chat:http://h:8000", "http://g:9/v1/completions"])
    assert kv is not None and kv.urls == ["http://g:9/metrics", "http://h:8000/metrics"] and kv.window == 4
    assert metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    replicas = make_admission(AdmissionSettings(start=2), 16, ["chat:http://a:1/v1,http://b:2"])
    assert replicas is not None and replicas.urls == ["http://a:1/metrics", "http://b:2/metrics"]
    assert replicas.window == 4  # `start` episodes per server


def test_the_reading_of_a_data_parallel_server() -> None:
    text = ('vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} 0.9\n'
            'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 3\n'
            "vllm:num_preemptions_total 7\n# HELP x\n")
    assert ServerLoad.of(text) == ServerLoad(kv_usage=0.9, waiting=5, preemptions=7)
    assert ServerLoad.of("vllm:num_requests_waiting 1\n") is None  # no KV gauge: not a reading
    assert read_load("http://127.0.0.1:9/metrics", 0.5) is None  # nobody there: no reading, not "no metrics"


def test_metrics_never_read_leave_the_workers_in_charge() -> None:
    with FakeOpenAIServer() as server:
        url = server.url
    admission = KvAdmission(6, metrics_urls([url]), AdmissionSettings(start=2, unread_polls=3))
    assert [admission.poll(2) for _ in range(2)] == [None, None] and admission.window == 2  # maybe starting
    assert admission.poll(2) is None and not admission.active and admission.allowed(6) == 6


def test_the_live_display_says_what_admission_allows() -> None:
    live = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
    live.begin(total=4, finished=0, errored=0, resolved=0, workers=8, evaluating=False)
    live.admission(3, 8, 0.95)
    shown = Console(file=io.StringIO(), width=120)
    shown.print(live)
    assert "admitting 3 of 8 (KV 95%)" in shown.file.getvalue()  # type: ignore[attr-defined]
    live.admission(8, 8, 0.40)
    shown = Console(file=io.StringIO(), width=120)
    shown.print(live)
    assert "admitting" not in shown.file.getvalue()  # type: ignore[attr-defined]
    live.close()


# -- a real batch (Docker sandboxes) against a server whose KV cache holds about two episodes ---------

SLEEP = "The tests take a while to start.\n</think>\n\n<tool: bash>\nsleep 1\n</tool>"


class Episodes:
    """The recorded CWM episode with a `sleep 1` as its second turn, so an episode's context stays
    held a while; the second turns wait until `gather` episodes are held at once (once per run), so
    that many are certainly in flight together when the batch lets them be."""

    def __init__(self, gather: int) -> None:
        self.gather = gather
        self.server: FakeOpenAIServer | None = None
        self._gathered = threading.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        turn = turn_of(body)
        if turn == 1:
            self._wait()
            return Reply(text=SLEEP)
        step = RECORDED.steps[turn if turn == 0 else turn - 1]
        return Reply(text=step.raw_reply, finish_reason=step.finish_reason or "stop", last=turn == STEPS)

    def _wait(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + 60  # a guard against a hang only: the test fails if it is reached
        while not self._gathered.is_set() and self.server.sessions() < self.gather and time.monotonic() < deadline:
            time.sleep(0.02)
        self._gathered.set()


class Recorder(LogProgress):
    """The plain display, keeping what admission allowed over the run."""

    def __init__(self) -> None:
        super().__init__(Console(file=io.StringIO(), width=200))
        self.allowed: list[int] = []

    def admission(self, allowed: int, workers: int, kv_usage: float | None) -> None:
        self.allowed.append(allowed)


def distinct(count: int) -> list[Instance]:
    """The bundled example under `count` ids, each issue told apart so the server can tell the episodes'
    prompts apart (the patch is the recorded one all the same)."""
    return [i.model_copy(update={"problem_statement": f"{i.problem_statement}\n(copy {n})"})
            for n, i in enumerate(make_instances(count, prefix="kv"))]


def run(tmp_path: Path, name: str, instances: list[Instance], workers: int, gather: int,
        settings: AdmissionSettings, kv_capacity: int | None, base_image: str) -> tuple[Any, FakeOpenAIServer, Recorder]:
    episodes = Episodes(gather)
    server = FakeOpenAIServer(models=(RECORDED.header.model.name,), respond=episodes, kv_capacity=kv_capacity)
    episodes.server = server.start()
    progress = Recorder()
    try:
        result = run_batch(BatchRequest(instances=instances, output=tmp_path / name, model=server.url,
                                        workers=workers, image=base_image, admission=settings), progress=progress)
    finally:
        server.stop()
    assert (result.done, result.errored, result.exit_code) == (5, 0, 0)
    assert (tmp_path / name / "preds.jsonl").read_text() == expected_preds(instances)
    return result, server, progress


@pytest.mark.docker
def test_a_batch_keeps_in_flight_what_the_kv_cache_holds(tmp_path: Path, base_image: str) -> None:
    instances = distinct(5)
    # Without admission every worker's episode is held at once, however full the cache.
    _, free_run, shown = run(tmp_path, "off", instances, 5, 5, AdmissionSettings(mode="off"), 10**9, base_image)
    assert free_run.peak_sessions == 5 and shown.allowed == []
    # Size the cache from what the episodes sent: 2.5 first turns, so three episodes overflow it.
    first = next(r.body for r in free_run.requests_to(COMPLETIONS) if turn_of(r.body) == 0)
    capacity = int(2.5 * (toy_count(first["prompt"]) + toy_count(RECORDED.steps[0].raw_reply)))
    settings = AdmissionSettings(start=3, poll_s=0.1, increase_every_s=10)
    with capture_logs() as logs:
        _, kv_run, shown = run(tmp_path, "kv", instances, 5, 3, settings, capacity, base_image)
    # Three episodes filled the cache with one waiting: the window shrank, and the server never held
    # more episodes than admission allowed at its most, which stayed under the workers.
    assert shown.allowed and min(shown.allowed) < 3
    peak = max([settings.start, *shown.allowed])
    assert kv_run.peak_sessions == 3 and kv_run.peak_sessions <= peak < 5
    changes = [e for e in logs if e["event"] == "batch.admission"]
    assert [e["allowed"] for e in changes] == shown.allowed
    assert any(e["reason"] == "kv_full_and_waiting" for e in changes)

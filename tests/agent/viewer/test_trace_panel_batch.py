"""The trace stepper on a batch run (`agent batch --trace-tests failing`, tests/agent/traced_batch.py): the run
table counts each episode's traced tests and links to its Traces tab; the trajectory page lists them; the
stepper steps through a trace that the driver wrote from a worker's archive; in a real browser too."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from agent.viewer.server import ViewerServer, serve
from agent.worldmodel.frames import read_trace
from tests.agent.traced_batch import TracedBatch
from tests.agent.viewer.fixtures import chromium_missing, open_page, press, wait
from traces.recorder import read_trajectory

pytestmark = pytest.mark.docker
SIX = "trajectories/six-1.14.0/0.traj.jsonl"
BROWSER = chromium_missing()


@pytest.fixture(scope="module")
def server(traced_batch: TracedBatch) -> Iterator[ViewerServer]:
    running = serve(traced_batch.output)
    yield running
    running.shutdown()


def get(server: ViewerServer, path: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_run_table_counts_each_episodes_traced_tests(server: ViewerServer, traced_batch: TracedBatch) -> None:
    rows = {row["file"]: row for row in get(server, "/api/runs")["rows"]}
    assert set(rows) == {f"trajectories/{i}/0.traj.jsonl" for i in traced_batch.instances}
    six = rows[SIX]
    assert (six["traces"], six["traces_listed"]) == (4, 4)
    assert six["trace_summary"] == "before: 2 failed · after: 2 passed"
    assert rows["trajectories/more-itertools-11.0.1/0.traj.jsonl"]["trace_summary"] == \
        "before: 1 unknown · after: 1 unknown"


def test_the_instance_page_lists_and_serves_its_traces(server: ViewerServer, traced_batch: TracedBatch) -> None:
    ending = get(server, f"/api/trajectory?file={SIX}")["ending"]
    trajectory = read_trajectory(traced_batch.output / SIX)
    assert trajectory.ending is not None
    assert ending["test_traces"] == [t.model_dump(mode="json") for t in trajectory.ending.test_traces]
    for index, record in enumerate(trajectory.ending.test_traces):
        doc = get(server, f"/api/trace?file={SIX}&index={index}")
        assert doc["record"] == record.model_dump(mode="json")
        trace = read_trace(traced_batch.output / "trajectories" / "six-1.14.0" / str(record.path) / "trace.jsonl")
        assert [(f["event"], f["lineno"], f["file"]) for f in doc["frames"]] == \
            [(f.event, f.lineno, f.file) for f in trace.frames]
        assert doc["header"]["file"] == "test_six.py"
        assert set(doc["files"]) == {f.file for f in trace.frames} | {"test_six.py"}
        assert all(f["complete"] for f in doc["files"].values())  # whole files: sources.json came along
        assert doc["end"]["status"] == ("raised" if record.phase == "before" else "returned")


@pytest.mark.skipif(BROWSER is not None, reason=f"browser tests need headless Chromium: {BROWSER}")
def test_from_the_run_table_to_a_frame(driver: Any, server: ViewerServer) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server.url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-file='{SIX}'] td.cell-traces a"))
    cell = driver.find_element(By.CSS_SELECTOR, f"tr[data-file='{SIX}'] td.cell-traces a")
    assert cell.text == "4" and cell.get_attribute("title") == "before: 2 failed · after: 2 passed"
    cell.click()
    wait(driver, lambda d: d.find_element(By.ID, "trace-position").text.startswith("frame 1 /"))
    assert driver.find_element(By.ID, "panel-traces").is_displayed()
    assert driver.execute_script("return document.getElementById('trace-outcome').textContent") == "failed"
    press(driver, "j")
    wait(driver, lambda d: d.find_element(By.ID, "trace-position").text.startswith("frame 2 /"))

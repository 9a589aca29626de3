"""The trace panel in a real browser (headless Debian Chromium, Selenium) over a real traced solve.

Set CWM_UPDATE_SCREENSHOTS=1 to rewrite docs/viewer-trace.png.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.agent.viewer.conftest import FAILING, MARKUP, MISSING, SCRIPT_TAG, TracedRun
from tests.agent.viewer.fixtures import chromium_missing, no_alert, open_page, press, wait

MISSING_BROWSER = chromium_missing()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(
    MISSING_BROWSER is not None, reason=f"browser tests need headless Chromium: {MISSING_BROWSER}")]

if MISSING_BROWSER is None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

from agent.viewer.server import ViewerServer, serve  # noqa: E402
from tests.helpers import REPO_ROOT

DOCS = REPO_ROOT / "docs"


@pytest.fixture(scope="module")
def server(traced_run: TracedRun) -> Iterator[ViewerServer]:
    running = serve(traced_run.output)
    yield running
    running.shutdown()


def text(driver: Any, selector: str) -> str:
    return str(driver.execute_script(f"return document.querySelector({selector!r})?.textContent ?? null"))


def shown(driver: Any) -> tuple[str, str, dict[str, str]]:
    """(position, highlighted source line, locals by name) as the panel shows them, read in one call."""
    position, line, names, values = driver.execute_script("""
        const rows = [...document.querySelectorAll('#trace-locals tr')];
        return [document.getElementById('trace-position').textContent,
                document.querySelector('#trace-code .line.cur .src')?.textContent ?? null,
                rows.map(r => r.dataset.name), rows.map(r => r.querySelector('td').textContent)];""")
    return position, line, dict(zip(names, values))


def source_lines(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#trace-code .line .src')].map(e => e.textContent)"))


def document(server: ViewerServer, index: int) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{server.port}/api/trace?file=intervals.traj.jsonl&index={index}",
                     timeout=10).json()


def expected(doc: dict[str, Any], position: int) -> tuple[str, str, dict[str, str]]:
    """What the panel must show at a frame, from the route's own document."""
    frame = doc["frames"][position]
    lines = dict((n, t) for n, t in doc["files"][frame["file"]]["lines"])
    local_values = {name: doc["values"][v] for name, v, _ in frame["locals"] or []}
    return f"frame {position + 1} / {len(doc['frames'])}", lines[frame["lineno"]], local_values


def open_traces(driver: Any, server: ViewerServer) -> None:
    open_page(driver, f"{server.url}view?file=intervals.traj.jsonl")
    tab = driver.find_element(By.ID, "tab-traces")
    assert tab.is_displayed()
    press(driver, "4")
    wait(driver, lambda d: d.find_element(By.ID, "trace-position").text.startswith("frame 1 /"))


def test_no_traces_tab_without_traces(driver: Any, tmp_path: Path) -> None:
    from tests.agent.viewer.fixtures import write_trajectory

    write_trajectory(tmp_path / "plain.traj.jsonl", 3)
    running = serve(tmp_path)
    try:
        open_page(driver, f"{running.url}view?file=plain.traj.jsonl")
        assert not driver.find_element(By.ID, "tab-traces").is_displayed()
        press(driver, "4")
        assert driver.find_element(By.ID, "panel-step").is_displayed()
    finally:
        running.shutdown()


def test_stepping_through_the_failing_test(driver: Any, server: ViewerServer, traced_run: TracedRun) -> None:
    before = traced_run.position(FAILING, "before")
    doc = document(server, before)
    open_traces(driver, server)
    assert driver.find_element(By.ID, "panel-traces").is_displayed()
    assert Select(driver.find_element(By.ID, "trace-test")).first_selected_option.text == FAILING
    assert driver.find_element(By.CSS_SELECTOR, "[data-phase=before]").get_attribute("aria-pressed") == "true"
    assert text(driver, "#trace-outcome") == "failed"
    assert shown(driver) == expected(doc, 0)
    assert text(driver, "#trace-event") == "call" and text(driver, "#trace-file") == "tests/test_core.py"

    # A frame where `merged` changes and the next line differs: step onto it, past it, and back.
    position = next(i for i in range(1, len(doc["frames"]) - 1)
                    if expected(doc, i)[2].get("merged") not in (None, expected(doc, i + 1)[2].get("merged"))
                    and expected(doc, i)[1] != expected(doc, i + 1)[1])
    for _ in range(position):
        press(driver, "j")
    at = shown(driver)
    assert at == expected(doc, position)
    assert at[1].strip() and text(driver, "#trace-file") == "intervals/core.py"
    press(driver, Keys.ARROW_RIGHT)
    after = shown(driver)
    assert after == expected(doc, position + 1)
    assert after[1] != at[1] and after[2]["merged"] != at[2]["merged"]  # the line and a local's value changed
    merged_row = driver.find_element(By.CSS_SELECTOR, "#trace-locals tr[data-name=merged]")
    assert merged_row.get_attribute("class") == "changed"
    press(driver, "k")
    assert shown(driver) == at

    # The end: the assertion error raised in the test, then the unwinding return.
    press(driver, Keys.END)
    assert shown(driver)[0] == f"frame {len(doc['frames'])} / {len(doc['frames'])}"
    press(driver, Keys.ARROW_LEFT)
    assert text(driver, "#trace-event") == "exception"
    assert text(driver, "#trace-arg").startswith("AssertionError(")
    assert "ev-exception" in driver.find_element(By.CSS_SELECTOR, "#trace-code .line.cur").get_attribute("class")
    press(driver, Keys.HOME)
    assert shown(driver) == expected(doc, 0)

    # The hash names the trace and frame: a reload comes back to them.
    press(driver, "j")
    press(driver, "j")
    assert f"tab=traces&trace={before}&frame=3" in driver.current_url
    open_page(driver, driver.current_url)
    wait(driver, lambda d: d.find_element(By.ID, "trace-position").text == expected(doc, 2)[0])
    assert shown(driver) == expected(doc, 2)

    # `b` switches to the trace after the patch: the test passes, the patched line ran.
    press(driver, "b")
    after_button = driver.find_element(By.CSS_SELECTOR, "[data-phase=after]")
    wait(driver, lambda d: after_button.get_attribute("aria-pressed") == "true")
    wait(driver, lambda d: text(d, "#trace-outcome") == "passed")
    after_doc = document(server, traced_run.position(FAILING, "after"))
    wait(driver, lambda d: shown(d) == expected(after_doc, 0))
    lines = source_lines(driver)
    assert "        if merged and start <= merged[-1][1]:" not in lines  # the test file is shown at frame 1
    in_module = max(i for i, f in enumerate(after_doc["frames"]) if f["file"] == "intervals/core.py")
    for _ in range(in_module):
        press(driver, "j")
    assert shown(driver) == expected(after_doc, in_module)
    lines = source_lines(driver)
    assert "        if merged and start <= merged[-1][1]:" in lines
    # Steps still work from the Steps tab.
    press(driver, "1")
    press(driver, "j")
    assert driver.find_element(By.ID, "position").text == "2 / 7"


def test_markup_in_a_trace_stays_text(driver: Any, server: ViewerServer, traced_run: TracedRun) -> None:
    open_traces(driver, server)
    Select(driver.find_element(By.ID, "trace-test")).select_by_visible_text(MARKUP)
    wait(driver, lambda d: text(d, "#trace-file") == "tests/test_markup.py"
         and d.find_element(By.ID, "trace-position").text.startswith("frame 1 /"))
    doc = document(server, traced_run.position(MARKUP, "before"))
    position = next(i for i, f in enumerate(doc["frames"])
                    if f["locals"] and any(doc["values"][v] == f"'{SCRIPT_TAG}'" for _, v, _ in f["locals"]))
    for _ in range(position):
        press(driver, "j")
    assert shown(driver)[2]["label"] == f"'{SCRIPT_TAG}'"
    assert text(driver, "#trace-locals tr[data-name=label] td") == f"'{SCRIPT_TAG}'"
    lines = source_lines(driver)
    assert f'    label = "{SCRIPT_TAG}"' in lines
    press(driver, Keys.END)
    press(driver, "k")  # the assertion error, whose message holds the <img onerror> text
    assert "<img src=x onerror=alert(2)>" in text(driver, "#trace-arg")
    time.sleep(0.3)
    assert no_alert(driver)
    found = driver.execute_script(
        "const panel = document.getElementById('panel-traces');"
        "return [document.querySelectorAll('img').length, panel.querySelectorAll('script').length,"
        " panel.innerHTML.includes('<script>'), panel.innerHTML.includes('&lt;script&gt;alert(1)')]")
    assert found == [0, 0, False, True]

    # A test that could not be traced shows why, and nothing else.
    Select(driver.find_element(By.ID, "trace-test")).select_by_visible_text(MISSING)
    wait(driver, lambda d: d.find_element(By.ID, "trace-error").is_displayed())
    assert "no definition of 'test_missing'" in text(driver, "#trace-error")
    assert not driver.find_element(By.ID, "trace-body").is_displayed()
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_trace_screenshot(driver: Any, server: ViewerServer, traced_run: TracedRun, tmp_path: Path) -> None:
    """The panel renders without errors; with CWM_UPDATE_SCREENSHOTS=1 docs/viewer-trace.png is rewritten."""
    target = DOCS if os.environ.get("CWM_UPDATE_SCREENSHOTS") == "1" else tmp_path
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    try:
        index = traced_run.position(FAILING, "before")
        open_page(driver, f"{server.url}view?file=intervals.traj.jsonl#tab=traces&trace={index}&frame=13")
        wait(driver, lambda d: d.find_element(By.ID, "trace-position").text.startswith("frame 13 /"))
        driver.execute_script("document.documentElement.dataset.theme = 'light';"
                              "document.getElementById('tabs').scrollIntoView({block: 'start'})")
        assert driver.save_screenshot(str(target / "viewer-trace.png"))
        assert (target / "viewer-trace.png").stat().st_size > 10_000
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

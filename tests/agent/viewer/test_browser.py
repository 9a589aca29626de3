"""The viewer in a real browser: headless Chromium from Debian's packages, driven by Selenium.

Skipped (with the reason) only when chromium, chromium-driver or the selenium package are missing.
Set CWM_UPDATE_SCREENSHOTS=1 to rewrite docs/viewer-run-table.png and docs/viewer-trajectory.png.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.agent.viewer.fixtures import (
    XSS_IMAGE,
    XSS_REPLY,
    chromium_missing,
    make_header,
    no_alert,
    open_page,
    press,
    steps,
    wait,
    write_run_dir,
    write_trajectory,
    write_xss_trajectory,
)

MISSING = chromium_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser tests need headless Chromium: {MISSING}")

if MISSING is None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

from agent.viewer.server import ViewerServer, serve  # noqa: E402
from tests.helpers import REPO_ROOT
from traces.recorder import Recorder  # noqa: E402
from traces.schema import Ending  # noqa: E402

DOCS = REPO_ROOT / "docs"
MERGE = "intervals__merge-touching.traj.jsonl"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_run_dir(tmp_path_factory.mktemp("viewer") / "run")
    write_xss_trajectory(root / "xss.traj.jsonl")
    return root


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[ViewerServer]:
    running = serve(run_dir)
    yield running
    running.shutdown()


def column(driver: Any, index: int) -> list[str]:
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f"#body tr td:nth-child({index})")]


def position(driver: Any) -> str:
    return driver.find_element(By.ID, "position").text


def status_text(driver: Any) -> str:
    """The status pill's text, read in one script call (the pill is re-rendered while polling)."""
    return str(driver.execute_script("return document.querySelector('#status .pill')?.textContent || ''")).lower()


def clear(box: Any) -> None:
    """Empty a text box the way a user does (WebElement.clear fires no input event)."""
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)


def sort_by(driver: Any, key: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"th[data-key={key}] button").click()


def test_run_table_sorts_and_filters(driver: Any, server: ViewerServer) -> None:
    open_page(driver, server.url)
    instances = column(driver, 1)
    assert len(instances) == 7 and instances == sorted(instances, key=str.lower)
    sort_by(driver, "steps")  # numbers sort largest first
    steps_desc = [int(x) for x in column(driver, 4)]
    assert steps_desc == sorted(steps_desc, reverse=True) and steps_desc[0] == 128
    sort_by(driver, "steps")
    assert [int(x) for x in column(driver, 4)] == sorted(steps_desc)
    assert "sort=steps" in driver.current_url
    assert driver.find_element(By.CSS_SELECTOR, "th[data-key=steps]").get_attribute("aria-sort") == "ascending"

    sort_by(driver, "wall_s")
    walls = column(driver, 6)
    assert walls[0] == "33m 36s"

    box = driver.find_element(By.ID, "filter")
    box.send_keys("django")
    assert column(driver, 1) == ["django__django-11099"]
    clear(box)
    box.send_keys("cwm-sft")
    assert sorted(column(driver, 1)) == ["astropy__astropy-12907", "sympy__sympy-20590"]
    clear(box)
    Select(driver.find_element(By.ID, "status")).select_by_value("submitted")
    assert sorted(column(driver, 1)) == ["intervals__merge-touching", "intervals__total-length"]
    assert driver.find_element(By.ID, "count").text == "2 of 7 runs"
    Select(driver.find_element(By.ID, "status")).select_by_value("")
    assert len(column(driver, 1)) == 7
    driver.find_element(By.LINK_TEXT, "intervals__merge-touching").click()
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert "/view?file=intervals__merge-touching.traj.jsonl" in driver.current_url


def test_player_steps_with_the_keyboard(driver: Any, server: ViewerServer) -> None:
    open_page(driver, f"{server.url}view?file={MERGE}")
    assert position(driver) == "1 / 12"
    cells = driver.find_elements(By.CSS_SELECTOR, "#timeline .cell")
    assert len(cells) == 12 and "cur" in cells[0].get_attribute("class")
    assert "k-edit" in cells[2].get_attribute("class") and "f-timeout" in cells[4].get_attribute("class")
    assert "k-error" in cells[5].get_attribute("class") and "f-fail" in cells[6].get_attribute("class")
    reasoning = driver.find_element(By.CSS_SELECTOR, "#step details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded by default

    press(driver, "j")
    assert position(driver) == "2 / 12"
    assert "python -c" in driver.find_element(By.CSS_SELECTOR, "#step .headline").text
    press(driver, Keys.ARROW_RIGHT)
    assert position(driver) == "3 / 12"
    assert driver.find_element(By.CSS_SELECTOR, "#step .ed-del").text.strip().startswith("−")
    assert "start <= merged" in driver.find_element(By.CSS_SELECTOR, "#step .ed-add").text
    press(driver, "k")
    press(driver, Keys.ARROW_LEFT)
    assert position(driver) == "1 / 12"
    press(driver, Keys.END)
    assert position(driver) == "12 / 12"
    assert "Final response" in driver.find_element(By.ID, "step").text
    press(driver, Keys.HOME)
    assert position(driver) == "1 / 12"
    assert "#step=1" in driver.current_url

    press(driver, "r")
    assert driver.find_element(By.CSS_SELECTOR, "#step details.reasoning").get_attribute("open") is not None
    assert "read the implementation" in driver.find_element(By.CSS_SELECTOR, "#step details.reasoning").text

    cells[9].click()
    assert position(driver) == "10 / 12"
    assert driver.find_element(By.CSS_SELECTOR, "#step .submission .df-add").text.startswith("+")
    press(driver, "3")
    result = driver.find_element(By.ID, "panel-result")
    assert result.is_displayed() and "final response after a successful submission" in result.text
    assert driver.find_elements(By.CSS_SELECTOR, "#panel-result .df-del")
    press(driver, "j")  # stepping returns to the step view
    assert position(driver) == "11 / 12" and driver.find_element(By.ID, "panel-step").is_displayed()


def test_live_run_shows_new_steps_without_reload(driver: Any, server: ViewerServer, run_dir: Path) -> None:
    recorder = Recorder(run_dir / "live.traj.jsonl", make_header("live-episode"))
    produced = steps(20)
    for _ in range(3):
        recorder.step(next(produced))
    try:
        open_page(driver, f"{server.url}view?file=live.traj.jsonl")
        driver.execute_script("window.__sameDocument = true")
        assert position(driver) == "3 / 3+"
        assert status_text(driver) == "live"
        recorder.step(next(produced))
        recorder.step(next(produced))
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline .cell")) == 5, timeout=5)
        wait(driver, lambda d: position(d) == "5 / 5+", timeout=5)  # it follows the newest step
        press(driver, Keys.HOME)
        recorder.step(next(produced))
        wait(driver, lambda d: position(d) == "1 / 6+", timeout=5)  # but not when reading an earlier one
        recorder.end(Ending(status="submitted", reason="done", steps=6))
        wait(driver, lambda d: status_text(d) == "submitted", timeout=5)
        assert position(driver) == "1 / 6"
        assert driver.execute_script("return window.__sameDocument === true")
    finally:
        recorder.close()


def test_model_html_stays_text(driver: Any, server: ViewerServer) -> None:
    open_page(driver, f"{server.url}#q=xss")
    assert no_alert(driver)
    assert XSS_IMAGE in driver.find_element(By.ID, "body").text
    open_page(driver, f"{server.url}view?file=xss.traj.jsonl")
    press(driver, "r")
    time.sleep(0.3)
    assert no_alert(driver)
    text = driver.find_element(By.TAG_NAME, "body").text
    assert f"I will print {XSS_REPLY}" in text and f"Thinking about {XSS_IMAGE}" in text
    assert f"echo '{XSS_REPLY}' '{XSS_IMAGE}'" in text
    assert driver.find_element(By.ID, "instance").text == f"xss-{XSS_IMAGE}"
    found = driver.execute_script(
        "return [document.querySelectorAll('img').length, [...document.scripts].map(s => s.getAttribute('src')),"
        " document.querySelector('main').innerHTML.includes('<script')]")
    assert found == [0, ["/static/theme.js", "/static/view.js"], False]
    press(driver, "3")
    press(driver, "2")
    assert XSS_REPLY in driver.find_element(By.ID, "panel-task").text
    assert no_alert(driver)
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_thousand_steps_open_fast(driver: Any, tmp_path: Path) -> None:
    write_trajectory(tmp_path / "long.traj.jsonl", 1000, "max_turns", None, extra_reply=" More careful thought." * 60)
    running = serve(tmp_path)
    try:
        open_page(driver, f"{running.url}view?file=long.traj.jsonl")
        ready_ms = driver.execute_script("return window.__viewerReady")
        assert ready_ms < 1000, ready_ms
        assert len(driver.find_elements(By.CSS_SELECTOR, "#timeline .cell")) == 1000
        assert len(driver.find_elements(By.CSS_SELECTOR, "#step details.reasoning")) == 1
        press(driver, Keys.END)
        assert position(driver) == "1000 / 1000"
    finally:
        running.shutdown()


SHOWCASE = [  # extra rows for the docs screenshot: (file, steps, status, resolved, model)
    ("pytest-dev__pytest-5227.traj.jsonl", 18, "submitted", True, "facebook/cwm"),
    ("batch-2/scikit-learn__scikit-learn-13142.traj.jsonl", 57, "submitted", True, "facebook/cwm-sft"),
    ("batch-2/sphinx-doc__sphinx-8435.traj.jsonl", 33, "wall_clock", None, "facebook/cwm"),
    ("psf__requests-1963.traj.jsonl", 21, "submitted", False, "facebook/cwm-sft"),
    ("pylint-dev__pylint-7080.traj.jsonl", 9, "reply_too_long", None, "facebook/cwm"),
]


def test_screenshots(driver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both pages render without errors; with CWM_UPDATE_SCREENSHOTS=1 the docs images are rewritten."""
    target = DOCS if os.environ.get("CWM_UPDATE_SCREENSHOTS") == "1" else tmp_path
    runs = write_run_dir(tmp_path / "runs" / "2025-05-14-lite")
    for name, count, status, resolved, model in SHOWCASE:
        write_trajectory(runs / name, count, status, resolved, model=model)
    monkeypatch.chdir(tmp_path)  # the page shows PATH relative to the working directory
    running = serve(runs)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    try:
        open_page(driver, running.url)
        driver.execute_script("document.documentElement.dataset.theme = 'light'")
        assert driver.find_element(By.ID, "root").text == "runs/2025-05-14-lite"
        assert driver.save_screenshot(str(target / "viewer-run-table.png"))
        open_page(driver, f"{running.url}view?file={MERGE}#step=3")
        driver.execute_script("document.documentElement.dataset.theme = 'dark'")
        press(driver, "r")
        assert driver.save_screenshot(str(target / "viewer-trajectory.png"))
        assert (target / "viewer-trajectory.png").stat().st_size > 10_000
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        running.shutdown()

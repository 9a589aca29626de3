"""Viewer benchmark: a 1,000-step trajectory through the API and in headless Chromium, and Recorder.step cost.

Run: python3 bench/viewer_bench.py [--runs 5]. Prints one line per measurement. The browser part needs
Debian's chromium and chromium-driver plus the selenium package, and is skipped with a note otherwise.

What is measured, and why:
- API: the trajectory document for 1,000 steps, cold (first read: parse and validate every line) and
  warm (what every later page load costs), the incremental poll a live page makes every second, and
  the run table.
- Browser: from navigation start to `window.__viewerReady`, which the page sets once the first step is
  rendered and the keyboard handler is attached (so: interactive), then the time for one `j` press.
- Recorder.step: the per-step cost the agent loop pays for recording (serialize, write, flush).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.viewer.server import serve  # noqa: E402
from tests.agent.viewer.fixtures import chromium_missing, make_driver, make_header, steps, write_trajectory  # noqa: E402
from traces.recorder import Recorder  # noqa: E402

STEPS = 1000
# Real replies carry paragraphs of reasoning; pad the scripted ones to about 1.5 kB.
REASONING = " I check the failing case against the docstring before changing anything." * 20


def timed(function, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(name: str, times: list[float], extra: str = "") -> None:
    print(f"{name:<44} median {statistics.median(times):8.2f} ms   max {max(times):8.2f} ms   n={len(times)}{extra}")


def bench_api(folder: Path, runs: int) -> None:
    server = serve(folder)
    base = f"http://127.0.0.1:{server.port}"
    try:
        with httpx.Client(timeout=30) as client:
            params = {"file": "long.traj.jsonl"}
            cold = timed(lambda: client.get(f"{base}/api/trajectory", params=params).raise_for_status(), 1)
            size = len(client.get(f"{base}/api/trajectory", params=params).content)
            summary("API trajectory, cold (parse 1,000 steps)", cold, f"   {size / 1e6:.2f} MB")
            summary("API trajectory, warm", timed(lambda: client.get(f"{base}/api/trajectory", params=params), runs * 4))
            poll = {**params, "since": STEPS}
            summary("API steps?since=1000 (live poll, no change)", timed(lambda: client.get(f"{base}/api/steps", params=poll), runs * 10))
            summary("API runs (run table)", timed(lambda: client.get(f"{base}/api/runs"), runs * 4))
    finally:
        server.shutdown()


def bench_browser(folder: Path, runs: int) -> None:
    missing = chromium_missing()
    if missing:
        print(f"browser: skipped ({missing})")
        return
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = serve(folder)
    driver = make_driver()
    ready, key = [], []
    try:
        for run in range(runs):
            # A fresh document each time (about:blank in between), so nothing is reused from the last run.
            driver.get("about:blank")
            driver.get(f"{server.url}view?file=long.traj.jsonl&run={run}")
            WebDriverWait(driver, 15, poll_frequency=0.02).until(
                lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            ready.append(driver.execute_script("return window.__viewerReady"))
            cells = len(driver.find_elements(By.CSS_SELECTOR, "#timeline .cell"))
            assert cells == STEPS, cells
            key.append(driver.execute_script("""
                const t0 = performance.now();
                document.dispatchEvent(new KeyboardEvent('keydown', {key: 'j', bubbles: true}));
                const ok = document.getElementById('position').textContent.startsWith('2 /');
                return ok ? performance.now() - t0 : -1;"""))
        summary("browser: navigation -> first step interactive", ready, "   (window.__viewerReady)")
        summary("browser: one 'j' keypress (render next step)", key)
    finally:
        driver.quit()
        server.shutdown()


def bench_recorder(folder: Path) -> None:
    produced = list(steps(STEPS, REASONING))
    for fsync in (False, True):
        recorder = Recorder(folder / f"rec-{fsync}.traj.jsonl", make_header("bench"), fsync=fsync)
        start = time.perf_counter()
        for step in produced:
            recorder.step(step)
        elapsed = time.perf_counter() - start
        recorder.close()
        size = (folder / f"rec-{fsync}.traj.jsonl").stat().st_size
        print(f"Recorder.step, fsync={fsync!s:<5} average over {STEPS:,}   {elapsed / STEPS * 1e6:8.1f} µs/step"
              f"   ({size / STEPS / 1e3:.1f} kB/step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="page loads to time (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="viewer-bench-") as name:
        folder = Path(name)
        path = write_trajectory(folder / "long.traj.jsonl", STEPS, "max_turns", None, extra_reply=REASONING)
        print(f"trajectory: {STEPS:,} steps, {path.stat().st_size / 1e6:.2f} MB on disk")
        bench_api(folder, args.runs)
        bench_browser(folder, args.runs)
        bench_recorder(folder)


if __name__ == "__main__":
    main()

"""Realistic trajectories for the viewer's tests and benchmark, written with the project's own Recorder.

Why a scripted episode rather than random text: the viewer's job is to make a real episode readable
(reasoning, bash with output, a SEARCH/REPLACE edit, a timeout, a format error, a submission), so the
fixtures replay the shape of one, on the repository in traces/examples/intervals.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from agent.protocol import prompts
from tests.helpers import REPO_ROOT
from tools import messages
from traces.recorder import Recorder
from traces.schema import Ending, Evaluation, Header, ModelInfo, ProtocolSettings, Step, ToolCall

XSS_REPLY = "<script>alert(1)</script>"
XSS_IMAGE = "<img src=x onerror=alert(2)>"
ISSUE = (REPO_ROOT / "traces" / "examples" / "intervals" / "issue.md").read_text()
START = datetime(2025, 5, 14, 9, 30, tzinfo=timezone.utc)

PATCH = """\
diff --git a/intervals/core.py b/intervals/core.py
index 3b18e51..8c2d1f4 100644
--- a/intervals/core.py
+++ b/intervals/core.py
@@ -14,7 +14,7 @@ def merge(intervals: list[Interval]) -> list[Interval]:
     for start, end in sorted(intervals):
         if start > end:
             raise ValueError(f"interval ({start}, {end}) ends before it starts")
-        if merged and start < merged[-1][1]:
+        if merged and start <= merged[-1][1]:
             last_start, last_end = merged[-1]
             merged[-1] = (last_start, max(last_end, end))
         else:
diff --git a/tests/test_touching.py b/tests/test_touching.py
new file mode 100644
index 0000000..5f1e2a9
--- /dev/null
+++ b/tests/test_touching.py
@@ -0,0 +1,9 @@
+from intervals import merge, total_length
+
+
+def test_touching_intervals_merge():
+    assert merge([(1, 3), (3, 5)]) == [(1, 5)]
+
+
+def test_total_length_of_touching_intervals():
+    assert total_length([(0, 2), (2, 4)]) == 4
"""

EDIT_BODY = """\
intervals/core.py
<<<<<<< SEARCH
        if merged and start < merged[-1][1]:
=======
        if merged and start <= merged[-1][1]:
>>>>>>> REPLACE"""

TEST_FILE = """\
tests/test_touching.py
from intervals import merge, total_length


def test_touching_intervals_merge():
    assert merge([(1, 3), (3, 5)]) == [(1, 5)]


def test_total_length_of_touching_intervals():
    assert total_length([(0, 2), (2, 4)]) == 4"""

CORE_LISTING = (REPO_ROOT / "traces" / "examples" / "intervals" / "repo"
                / "intervals" / "core.py").read_text()

# One scripted turn: (reasoning, tool, body, feedback, exit code, flags).
SCRIPT: list[tuple[str, str | None, str, str, int | None, dict[str, object]]] = [
    ("The issue is about `merge()` and closed intervals. Let me look at the repository layout first and "
     "read the implementation.", "bash", "cd /testbed && ls -la && cat intervals/core.py",
     "total 16\ndrwxr-xr-x 1 root root 4096 May 14 09:30 .\n-rw-r--r-- 1 root root  412 README.md\n"
     "drwxr-xr-x 1 root root 4096 intervals\ndrwxr-xr-x 1 root root 4096 tests\n" + CORE_LISTING, 0, {}),
    ("Reproduce the bug exactly as the issue states before changing anything.", "bash",
     "python -c \"from intervals import merge; print(merge([(1, 3), (3, 5)]))\"  # expect [(1, 5)]",
     "[(1, 3), (3, 5)]\n", 0, {}),
    ("The output confirms the bug: [(1, 3), (3, 5)] comes back unchanged.\n\n"
     "Looking at `merge()`: intervals are sorted, then each one is folded into the last merged interval when "
     "`start < merged[-1][1]`. For (3, 5) after (1, 3) that is `3 < 3`, which is false, so a new interval is "
     "started. The docstring says the intervals are closed, so a shared end point counts as overlap.\n\n"
     "The fix is one character: `<` becomes `<=`. `total_length` goes through `merge()`, so it is fixed too.",
     "edit", EDIT_BODY,
     "File intervals/core.py has been successfully updated at line 17 and now contains 27 lines. The "
     "surrounding lines after the edit are shown below:\n        if merged and start <= merged[-1][1]:\n"
     "Review the changes and make sure they are as expected.\n", 0, {"diff_stat": " 1 file changed, 1 insertion(+), 1 deletion(-)"}),
    ("Add a regression test for touching intervals.", "create", TEST_FILE,
     "File created successfully at: tests/test_touching.py\n", 0,
     {"diff_stat": " 2 files changed, 10 insertions(+), 1 deletion(-)"}),
    ("Run the whole suite, with a stress loop to be sure nothing hangs.", "bash",
     "for i in $(seq 1 100000); do python -m pytest -q tests >/dev/null; done",
     messages.SESSION_TIMEOUT_MESSAGE, None, {"timed_out": True}),
    ("That was too slow. I'll just run the suite once; I should answer with a tool call.", None, "",
     messages.NO_CALL_ERROR, None, {}),
    ("Run the tests once.", "bash", "cd /testbed && python -m pytest -q tests 2>&1 | tail -n 3",
     "....F..\nFAILED tests/test_core.py::test_merge_disjoint - assert [(1, 5)] == [(1, 3), (4, 5)]\n"
     "1 failed, 6 passed in 0.04s\n", 1, {}),
    ("The failing test is about disjoint intervals (1,3) and (4,5), not touching ones; my change is "
     "right. Check the test input once more.", "bash", "grep -n \"disjoint\" -A3 tests/test_core.py",
     "12:def test_merge_disjoint():\n13:    assert merge([(1, 3), (4, 5)]) == [(1, 3), (4, 5)]\n", 0, {}),
    ("Write the patch and submit it.", "bash", "cd /testbed && git add -A && git diff --cached > /tmp/fix.patch && wc -l /tmp/fix.patch",
     "27 /tmp/fix.patch\n", 0, {"diff_stat": " 2 files changed, 10 insertions(+), 1 deletion(-)"}),
    ("Submit the patch file.", "submit", "/tmp/fix.patch", "Submission successful.\n", 0, {"submission": PATCH}),
]

FINAL_RESPONSE = """## Issue Summary

`merge()` treated closed intervals that share an end point as disjoint.

## Solution and Code Changes

Changed `start < merged[-1][1]` to `start <= merged[-1][1]` and added `tests/test_touching.py`."""


def make_header(instance_id: str, run_id: str = "run-2025-05-14", model: str = "facebook/cwm",
                started: datetime = START) -> Header:
    return Header(
        run_id=run_id, instance_id=instance_id, repo="traces/examples/intervals/repo", commit="3b18e51",
        image="cwm-runner/base:bookworm", sandbox_backend="docker", workdir="/testbed",
        model=ModelInfo(kind="completions", name=model, url="http://127.0.0.1:8000/v1", temperature=1.0,
                        top_p=0.95, max_tokens=65536),
        protocol=ProtocolSettings(), runner_version="0.1.0", started_at=started,
        system_prompt=prompts.system_prompt(), user_prompt=prompts.issue_prompt(ISSUE), issue=ISSUE,
    )


def make_step(position: int, started: datetime, context: int, extra_reply: str = "") -> Step:
    """Step `position` (0-based) of a scripted episode; the script repeats for long trajectories."""
    reasoning, tool, body, feedback, exit_code, flags = SCRIPT[position % len(SCRIPT)]
    if tool is None:
        reply = f"{reasoning}{extra_reply}\n</think>\nI will run the tests next."
        call, observation, role, error = None, feedback, "user", feedback
    else:
        reply = f"{reasoning}{extra_reply}\n</think>\n<tool: {tool}>\n{body}\n</tool>"
        call = ToolCall(name=tool, body=body)
        observation = prompts.format_observation(feedback, max(0, 128 - position - 1), 131072 - context)
        role, error = f"tool: {tool}", None
    completion = 40 + (position * 37) % 400
    latency = 0.8 + (position * 13 % 50) / 10
    duration = None if tool in (None, "submit") else (120.0 if flags.get("timed_out") else 0.05 + (position % 7) / 9)
    ended = started + timedelta(seconds=latency + (duration or 0))
    return Step(
        index=position + 1, prompt_delta=observation or "", raw_reply=reply, finish_reason="stop",
        tool_call=call, parse_error=error, observation=observation, observation_role=role,
        output=None if tool is None else feedback, exit_code=exit_code,
        timed_out=bool(flags.get("timed_out")), session_died=bool(flags.get("session_died")),
        cwd="/testbed" if tool else None, command_duration_s=duration, model_latency_s=latency,
        prompt_tokens=context, completion_tokens=completion, cached_tokens=max(0, context - 300),
        observation_tokens=len(feedback) // 4 + 20, diff_stat=flags.get("diff_stat"),  # type: ignore[arg-type]
        submission=flags.get("submission"), started_at=started, ended_at=ended,  # type: ignore[arg-type]
    )


def steps(count: int, extra_reply: str = "") -> Iterator[Step]:
    """`count` scripted steps with growing context and consistent timestamps."""
    started, context = START, 4200
    for position in range(count):
        step = make_step(position, started, context, extra_reply)
        yield step
        started = (step.ended_at or started) + timedelta(milliseconds=40)
        context = min(125_000, context + (step.completion_tokens or 0) + (step.observation_tokens or 0))


def final_step(index: int, started: datetime) -> Step:
    reply = f"The patch is submitted and the tests pass.\n</think>\n{FINAL_RESPONSE}"
    return Step(index=index, raw_reply=reply, finish_reason="stop", parse_error=messages.NO_CALL_ERROR,
                model_latency_s=2.1, prompt_tokens=9000, completion_tokens=180, started_at=started,
                ended_at=started + timedelta(seconds=2.1))


def write_trajectory(path: Path, count: int = 10, status: str | None = "submitted", resolved: bool | None = True,
                     instance_id: str | None = None, model: str = "facebook/cwm", extra_reply: str = "",
                     final: bool = True) -> Path:
    """Write one trajectory of `count` scripted steps; `status=None` leaves it without an Ending (live)."""
    instance = instance_id or path.name.removesuffix(".traj.jsonl")
    recorder = Recorder(path, make_header(instance, model=model))
    written: list[Step] = list(steps(count, extra_reply))
    for step in written:
        recorder.step(step)
    if status is None:
        recorder.close()
        return path
    if final and status == "submitted":
        last = final_step(count + 1, (written[-1].ended_at if written else START) + timedelta(seconds=1))
        recorder.step(last)
        written.append(last)
    evaluation = None
    if resolved is not None:
        evaluation = Evaluation(
            resolved=resolved,
            fail_to_pass={"tests/test_touching.py::test_touching_intervals_merge": resolved},
            pass_to_pass={"tests/test_core.py::test_merge_disjoint": True, "tests/test_core.py::test_total": True},
            log="7 passed in 0.05s" if resolved else "1 failed, 6 passed in 0.05s",
        )
    recorder.end(Ending(
        status=status, reason={"submitted": "final response after a successful submission",
                               "max_turns": "Max turns reached"}.get(status, status),
        steps=len(written), submission=PATCH if status == "submitted" else None, sandbox_diff=PATCH,
        final_response=FINAL_RESPONSE if status == "submitted" else None, evaluation=evaluation,
        total_prompt_tokens=sum(s.prompt_tokens or 0 for s in written),
        total_completion_tokens=sum(s.completion_tokens or 0 for s in written),
        ended_at=(written[-1].ended_at if written else START) + timedelta(seconds=3),
    ))
    return path


def write_xss_trajectory(path: Path) -> Path:
    """A trajectory whose model text, tool call, output and names all carry HTML that must stay text."""
    header = make_header(f"xss-{XSS_IMAGE}", model=f"evil {XSS_REPLY}")
    header.issue = f"Issue text {XSS_REPLY} {XSS_IMAGE}"
    recorder = Recorder(path, header)
    step = next(steps(1))
    reply = (f"Thinking about {XSS_IMAGE} while reasoning.\n</think>\nI will print {XSS_REPLY}\n"
             f"<tool: bash>\necho '{XSS_REPLY}' '{XSS_IMAGE}'\n</tool>")
    recorder.step(step.model_copy(update={
        "raw_reply": reply, "tool_call": ToolCall(name="bash", body=f"echo '{XSS_REPLY}' '{XSS_IMAGE}'"),
        "observation": prompts.format_observation(f"{XSS_REPLY} {XSS_IMAGE}\n", 127, 120000),
        "diff_stat": f" 1 file changed {XSS_IMAGE}",
    }))
    recorder.end(Ending(status="error", reason=XSS_REPLY, steps=1, submission=f"+{XSS_IMAGE}\n",
                        final_response=XSS_REPLY, ended_at=START + timedelta(seconds=20)))
    return path


def write_run_dir(root: Path) -> Path:
    """A run directory like `agent batch` leaves: several episodes, statuses and models, one live."""
    root.mkdir(parents=True, exist_ok=True)
    write_trajectory(root / "intervals__merge-touching.traj.jsonl", 11, "submitted", True)
    write_trajectory(root / "intervals__total-length.traj.jsonl", 24, "submitted", False)
    write_trajectory(root / "batch-2" / "astropy__astropy-12907.traj.jsonl", 128, "max_turns", None,
                     model="facebook/cwm-sft")
    write_trajectory(root / "batch-2" / "django__django-11099.traj.jsonl", 42, "context_exceeded", None)
    write_trajectory(root / "batch-2" / "sympy__sympy-20590.traj.jsonl", 3, "error", None,
                     model="facebook/cwm-sft")
    write_trajectory(root / "requests__requests-2317.traj.jsonl", 6, None)
    (root / "intervals__merge-touching.patch").write_text(PATCH)
    (root / "intervals__merge-touching.sandbox.diff").write_text(PATCH)
    return root


# --------------------------------------------------------------------------------------------------
# Headless Chromium from Debian's packages, driven by Selenium with the system chromedriver.

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_missing() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(binary) is None:
            return f"{binary} not installed (apt-get install -y {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    return None


def make_driver(width: int = 1440, height: int = 900):  # type: ignore[no-untyped-def]
    """Headless Chromium with the system driver; Selenium Manager is never asked to download anything."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1",
                     "--hide-scrollbars", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 10) -> Any:
    """Poll `condition(driver)` until it is truthy (Selenium's wait, at a test-friendly pace)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def open_page(driver: Any, url: str) -> None:
    """Load a viewer page and wait until its script says it is ready."""
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def press(driver: Any, key: str) -> None:
    """Send a key to the page body, as a user's keypress."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def no_alert(driver: Any) -> bool:
    """True when no JavaScript alert is open (an XSS payload that ran would have opened one)."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False

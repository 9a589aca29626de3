"""The submit tool: mark a patch file as the episode's answer.

Body: the path of a patch file, relative to the session's current directory. Failure messages are
those of docs/cwm-protocol.md, section 5, with no trailing newline; on success the
feedback quotes the patch exactly as read, and `ToolResult.submission` carries it for grading.

Choices where the protocol is silent:
* Surrounding whitespace of the body is stripped (the path is the body's only content, and the
  model often ends it with a newline); the stripped path is what messages show.
* A whitespace-only file counts as empty; the `diff` test is on the raw first bytes (a patch with
  leading blank lines is "not a valid diff file").
* The patch is decoded as UTF-8, undecodable bytes shown as U+FFFD.
"""

from __future__ import annotations

import time

from sandbox.base import Sandbox
from tools import messages
from tools.base import ToolResult, file_result


def check_patch(path: str, patch: str) -> str | None:
    """The failure message for a patch read from `path`, or None if it can be submitted."""
    if patch.strip() == "":
        return messages.SUBMIT_EMPTY.format(path=path)
    if not patch.startswith("diff"):
        return messages.SUBMIT_NOT_DIFF.format(path=path)
    return None


def submit(sandbox: Sandbox, body: str) -> ToolResult:
    """The submit tool."""
    started = time.monotonic()
    path = body.strip()
    try:
        data = sandbox.read_file(sandbox.resolve(path)) if path else None
    except OSError:
        data = None
    if data is None:
        return file_result(messages.SUBMIT_UNREADABLE.format(path=path), False, started)
    patch = data.decode("utf-8", "replace")
    failure = check_patch(path, patch)
    if failure is not None:
        return file_result(failure, False, started)
    return file_result(messages.submission_feedback(patch), True, started, output=patch, submission=patch)

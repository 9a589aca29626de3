"""What every tool returns, and the shape of a tool.

A tool is a plain function of (sandbox, body) -> ToolResult: the body is the text between
`<tool: name>\\n` and `\\n</tool>`, and the result carries both what the model will see (`feedback`,
to be wrapped by `agent.protocol.prompts.tool_observation`) and what the trajectory records.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from sandbox.base import Sandbox


class ToolResult(BaseModel):
    """One tool call's outcome.

    `feedback` is exactly the `{feedback}` of the observation. `output` is the raw output before any
    protocol wording (for bash: the command's output even when the session failed and the model is
    only told so; for edit, create and failed submits: the feedback itself; for a successful submit:
    the patch). `exit_code` is never shown to the model; the file tools report 0 on success and 1
    on failure, as their trained scripts did.
    `submission` is the patch text of a successful submit, the thing that gets graded.
    """

    feedback: str
    output: str
    success: bool
    exit_code: int | None = None
    timed_out: bool = False
    overflowed: bool = False
    session_died: bool = False
    duration_s: float = 0.0
    cwd: str | None = None
    submission: str | None = None


Tool = Callable[[Sandbox, str], ToolResult]


def printed(message: str) -> str:
    """A message as the edit and create scripts print it: one line ending with a newline."""
    return message + "\n"


def file_result(
    feedback: str,
    success: bool,
    started: float,
    *,
    output: str | None = None,
    submission: str | None = None,
) -> ToolResult:
    """Result of a file tool (edit, create, submit); `output` defaults to the feedback itself."""
    return ToolResult(
        feedback=feedback,
        output=feedback if output is None else output,
        success=success,
        exit_code=0 if success else 1,
        duration_s=time.monotonic() - started,
        submission=submission,
    )


def decode_text(data: bytes) -> str:
    """File bytes as text for matching and editing, any byte sequence round-tripping unchanged.

    Undecodable bytes become lone surrogates (`surrogateescape`), so editing one line of a file
    that holds some Latin-1 elsewhere writes those other bytes back exactly as they were.
    """
    return data.decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    """Inverse of `decode_text`."""
    return text.encode("utf-8", "surrogateescape")


def displayable(text: str) -> str:
    """Text safe to show the model and to store as JSON: escaped bytes shown as U+FFFD."""
    return encode_text(text).decode("utf-8", "replace")

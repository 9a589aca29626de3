"""The bash tool: run the body in the episode's persistent session and report its output verbatim.

The sandbox owns the session (sentinel, timeout, output limit, restart); this module only maps a
failed session to the protocol's message (docs/cwm-protocol.md, section 5). On a failed
session the partial output is dropped from the feedback, as the trained harness did, but kept in
`ToolResult.output` for the trajectory.
"""

from __future__ import annotations

from sandbox.base import CommandResult, Sandbox
from tools import messages
from tools.base import ToolResult


def session_failure_message(result: CommandResult) -> str | None:
    """The protocol's message for a timed-out, overflowed or dead session; None if it is healthy.

    A timeout wins over an overflow, which wins over a death, should a backend set several.
    """
    if result.timed_out:
        return messages.SESSION_TIMEOUT_MESSAGE
    if result.overflowed:
        return messages.SESSION_OVERFLOW_MESSAGE
    if result.session_died:
        return messages.SESSION_DIED_MESSAGE
    return None


def bash(sandbox: Sandbox, body: str) -> ToolResult:
    """The bash tool: the body goes to the session as is; the output comes back unstripped."""
    result = sandbox.run(body)
    failure = session_failure_message(result)
    return ToolResult(
        feedback=result.output if failure is None else failure,
        output=result.output,
        success=failure is None,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        overflowed=result.overflowed,
        session_died=result.session_died,
        duration_s=result.duration_s,
        cwd=result.cwd,
    )

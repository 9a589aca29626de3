"""What every command shares: the error line, the console, the per-step line, option defaults.

Commands exit through `fail` with one line that says what to do next; nothing else prints errors.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from traces.schema import Step

console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line and exit: the user's next step is in the message."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def first_line(error: BaseException) -> str:
    """An exception's first line (its class name if it has no text): for errors from deep below."""
    return (str(error).splitlines() or [error.__class__.__name__])[0]


def default_of(model: type[BaseModel], field: str) -> Any:
    """A config field's default, so an option shows the library's default instead of repeating it."""
    return model.model_fields[field].get_default(call_default_factory=True)


def step_line(step: Step) -> str:
    """One step as a table row: tool, exit code, failure flags, tokens, time, first line of the call."""
    tool = step.tool_call.name if step.tool_call else ("format error" if step.parse_error else "answer")
    code = "" if step.exit_code is None else f"exit {step.exit_code}"
    flags = " ".join(f for f, on in (("TIMEOUT", step.timed_out), ("OVERFLOW", step.overflowed),
                                      ("DIED", step.session_died)) if on)
    took = (step.model_latency_s or 0) + (step.command_duration_s or 0)
    tokens = (step.prompt_tokens or 0) + (step.completion_tokens or 0)
    first = (step.tool_call.body.splitlines() or [""])[0][:60] if step.tool_call else ""
    return f"{step.index:>3} {tool:<12} {code:<7}{flags:<8} {tokens:>6} tok {took:6.2f}s  {first[:40]}"

"""The agent loop: CWM's turn protocol (../shared/docs/cwm-protocol.md, sections 4-6) in one place.

Each turn: ask the model, parse its reply, run at most one tool in the sandbox, wrap the result with
the budget block, and record the step. The episode ends on a successful submission followed by a
reply without a tool call, on max turns, on context exhaustion, or on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import structlog
from pydantic import BaseModel

from agent import prompts
from agent.models.base import Message, Model
from agent.models.http import ContextExceededError
from agent.render import EOT, assistant_content, assistant_prefix, render_message, render_prompt
from sandbox.base import Sandbox
from tools.parser import parse_reply
from tools.registry import run_tool
from traces.recorder import Recorder
from traces.schema import Ending, Step, ToolCall

log = structlog.get_logger()


class LoopConfig(BaseModel):
    max_turns: int = prompts.MAX_TURNS
    context_size: int = prompts.CONTEXT_SIZE
    max_reply_tokens: int = prompts.MAX_REPLY_TOKENS
    wall_clock_s: float | None = None
    tools: tuple[str, ...] = ("bash", "edit", "create", "submit")
    record_diff_stat: bool = True


StepCallback = Callable[[Step], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _diff_stat(sandbox: Sandbox) -> str | None:
    """`git diff --stat` of the repository, read through the session after a state-changing tool."""
    repo = sandbox.config.workdir
    result = sandbox.run(f"git -C {repo} diff --stat HEAD 2>/dev/null | tail -n 1", aside=True)
    return result.output.strip() if not result.failed_session else None


def initial_messages(system_prompt: str, user_prompt: str) -> list[Message]:
    return [Message(role="system", content=system_prompt), Message(role="user", content=user_prompt)]


def run_episode(
    model: Model,
    sandbox: Sandbox,
    messages: list[Message],
    recorder: Recorder,
    config: LoopConfig | None = None,
    on_step: StepCallback | None = None,
) -> Ending:
    """Drive one episode to its end, recording every step; returns the ending for the caller to
    complete (sandbox diff, evaluation) and record."""
    config = config or LoopConfig()
    started = time.monotonic()
    submission: str | None = None
    prompt_delta = render_prompt(messages)
    tokens_so_far = 0
    totals = {"prompt": 0, "completion": 0}
    step_index = 0

    def finish(status: str, reason: str = "", final_response: str | None = None) -> Ending:
        ending = Ending(
            status=status, reason=reason, steps=step_index, submission=submission,
            final_response=final_response, total_prompt_tokens=totals["prompt"],
            total_completion_tokens=totals["completion"],
        )
        return ending

    while True:
        if config.wall_clock_s is not None and time.monotonic() - started > config.wall_clock_s:
            return finish("wall_clock", f"wall clock of {config.wall_clock_s:g} s reached")
        step_started = _now()
        try:
            reply = model.complete(messages)
        except ContextExceededError:
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)
        step_index += 1
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = model.count_tokens(render_prompt(messages))
        completion_tokens = reply.completion_tokens
        if completion_tokens is None:
            completion_tokens = model.count_tokens(reply.text)
        totals["prompt"] += prompt_tokens
        totals["completion"] += completion_tokens
        tokens_so_far = prompt_tokens + completion_tokens
        messages.append(Message(role="assistant", content=assistant_content(reply.text)))
        step = Step(
            index=step_index, prompt_delta=prompt_delta, raw_reply=reply.text,
            finish_reason=reply.finish_reason, model_latency_s=reply.latency_s,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            cached_tokens=reply.cached_tokens, started_at=step_started,
        )

        def record(step: Step = step) -> None:
            step.ended_at = _now()
            recorder.step(step)
            if on_step is not None:
                on_step(step)

        if step_index >= config.max_turns:
            record()
            return finish("max_turns", prompts.MAX_TURNS_REASON)
        if tokens_so_far >= config.context_size:
            record()
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)

        parsed = parse_reply(reply.text, config.tools)
        if parsed.call is None:
            if submission is not None:
                record()
                return finish("submitted", "final response after a successful submission",
                              final_response=reply.text.split("</think>", 1)[-1].strip())
            step.parse_error = parsed.error
            observation = Message(role="user", content=parsed.error or "")
        else:
            call = parsed.call
            step.tool_call = ToolCall(name=call.name, body=call.body)
            result = run_tool(call.name, sandbox, call.body)
            step.output = result.output
            step.exit_code = result.exit_code
            step.timed_out, step.overflowed, step.session_died = result.timed_out, result.overflowed, result.session_died
            step.command_duration_s = result.duration_s
            step.cwd = sandbox.cwd
            if result.submission is not None:
                submission = result.submission
                step.submission = result.submission
            content = prompts.tool_observation(
                result.feedback, config.max_turns - step_index, tokens_so_far, config.context_size,
                model.count_tokens,
            )
            observation = Message(role=f"tool: {call.name}", content=content)
            if config.record_diff_stat and call.name != "submit":
                step.diff_stat = _diff_stat(sandbox)
        step.observation = observation.content
        step.observation_role = observation.role
        step.observation_tokens = model.count_tokens(render_message(observation))
        messages.append(observation)
        record()
        # The next prompt is this one + the reply (right-stripped, as rendered) + this delta.
        prompt_delta = EOT + render_message(observation) + assistant_prefix()
        if tokens_so_far + step.observation_tokens >= config.context_size:
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)

"""The agent loop: CWM's turn protocol (docs/cwm-protocol.md, sections 4-6) in one place.

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

from agent.models.base import ContextExceededError, Model, ModelReply
from agent.protocol import prompts
from agent.protocol.render import EOT, Message, assistant_content, assistant_prefix, render_message, render_prompt
from sandbox.base import Sandbox
from tools.parser import parse_reply
from tools.registry import run_tool
from tools.syntax import DEFAULT_TOOL_NAMES, THINK_END
from traces.recorder import Recorder
from traces.schema import Ending, Step, ToolCall

log = structlog.get_logger()


class LoopConfig(BaseModel):
    max_turns: int = prompts.MAX_TURNS
    context_size: int = prompts.CONTEXT_SIZE
    max_reply_tokens: int = prompts.MAX_REPLY_TOKENS
    wall_clock_s: float | None = None
    tools: tuple[str, ...] = DEFAULT_TOOL_NAMES
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


class _Totals(BaseModel):
    """Token accounting across the episode's turns."""

    prompt: int = 0
    completion: int = 0
    so_far: int = 0  # prompt + reply of the latest turn: what the context holds before the observation


def _new_step(index: int, reply: ModelReply, model: Model, messages: list[Message], prompt_delta: str,
              totals: _Totals, started: datetime) -> Step:
    """The step record of a reply, with token counts from the server or, failing that, the tokenizer."""
    prompt_tokens = reply.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = model.count_tokens(render_prompt(messages))
    completion_tokens = reply.completion_tokens
    if completion_tokens is None:
        completion_tokens = model.count_tokens(reply.text)
    totals.prompt += prompt_tokens
    totals.completion += completion_tokens
    totals.so_far = prompt_tokens + completion_tokens
    return Step(
        index=index, prompt_delta=prompt_delta, raw_reply=reply.text, finish_reason=reply.finish_reason,
        model_latency_s=reply.latency_s, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cached_tokens=reply.cached_tokens, started_at=started,
    )


def _act(call: ToolCall, step: Step, sandbox: Sandbox, model: Model, config: LoopConfig,
         totals: _Totals) -> Message:
    """Run the tool call, record what it did on the step, and return the observation message."""
    step.tool_call = ToolCall(name=call.name, body=call.body)
    result = run_tool(call.name, sandbox, call.body)
    step.output = result.output
    step.exit_code = result.exit_code
    step.timed_out, step.overflowed, step.session_died = result.timed_out, result.overflowed, result.session_died
    step.command_duration_s = result.duration_s
    step.cwd = sandbox.cwd
    step.submission = result.submission
    content = prompts.tool_observation(
        result.feedback, config.max_turns - step.index, totals.so_far, config.context_size, model.count_tokens,
    )
    if config.record_diff_stat and call.name != "submit":
        step.diff_stat = _diff_stat(sandbox)
    return Message(role=f"tool: {call.name}", content=content)


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
    totals = _Totals()
    index = 0

    def finish(status: str, reason: str = "", final_response: str | None = None) -> Ending:
        return Ending(status=status, reason=reason, steps=index, submission=submission, final_response=final_response,
                      total_prompt_tokens=totals.prompt, total_completion_tokens=totals.completion)

    def record(step: Step) -> None:
        step.ended_at = _now()
        recorder.step(step)
        if on_step is not None:
            on_step(step)

    while True:
        if config.wall_clock_s is not None and time.monotonic() - started > config.wall_clock_s:
            return finish("wall_clock", f"wall clock of {config.wall_clock_s:g} s reached")
        step_started = _now()
        try:
            reply = model.complete(messages)
        except ContextExceededError:
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)
        index += 1
        step = _new_step(index, reply, model, messages, prompt_delta, totals, step_started)
        messages.append(Message(role="assistant", content=assistant_content(reply.text)))
        if index >= config.max_turns:
            record(step)
            return finish("max_turns", prompts.MAX_TURNS_REASON)
        if totals.so_far >= config.context_size:
            record(step)
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)
        parsed = parse_reply(reply.text, config.tools)
        if parsed.call is None and submission is not None:
            record(step)
            return finish("submitted", prompts.SUBMITTED_REASON,
                          final_response=reply.text.split(THINK_END, 1)[-1].strip())
        if parsed.call is None:
            step.parse_error = parsed.error
            observation = Message(role="user", content=parsed.error or "")
        else:
            observation = _act(parsed.call, step, sandbox, model, config, totals)
            if step.submission is not None:
                submission = step.submission
        step.observation, step.observation_role = observation.content, observation.role
        step.observation_tokens = model.count_tokens(render_message(observation))
        messages.append(observation)
        record(step)
        # The next prompt is this one + the reply (right-stripped, as rendered) + this delta.
        prompt_delta = EOT + render_message(observation) + assistant_prefix()
        if totals.so_far + step.observation_tokens >= config.context_size:
            return finish("context_exceeded", prompts.CONTEXT_EXCEEDED_REASON)

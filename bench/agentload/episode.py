"""One CWM-shaped episode played against a server through the runner's own client and renderer.

What is the runner's: the messages list and its layout (`initial_messages`, the system and issue
prompts, `assistant_content`, the `tool: bash` observation wrapped by `prompts.tool_observation` with
its budget block, `render_message` for the observation's count), the request body
(`CompletionsModel.request_body`: `render_prompt(messages)`, stop tokens, sampling, the reply cap)
and the token counts (`CompletionsModel.prompt_tokens` / `count_tokens`, i.e. the server's
/tokenize). So each prompt is the previous prompt + the previous reply + the new observation, byte
for byte as agent/episode/loop.py builds it.

What is the benchmark's: the observation's text (a piece of TextPool of the planned size instead of a
command's output; no sandbox), and the transport: the body is sent with `stream: true` because the
client does not measure time to first token, and with `ignore_eos` plus `min_tokens` = `max_tokens`
= the planned reply length, so random weights write exactly that many tokens.

An episode may start mid-life (`start_turn` > 0): its first `start_turn` turns are made up from the
plan (replies from the pool too) and sent as one prompt, flagged `warm_start`. A run of staggered
episodes then holds the mix of short and long contexts a long batch run has in flight, without first
playing every episode from its beginning.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from pydantic import BaseModel

from agent.episode.loop import initial_messages
from agent.models.completions import CompletionResponse, CompletionsModel, strip_stop_string
from agent.models.http import ServerError, Usage
from agent.protocol import prompts
from agent.protocol.render import Message, assistant_content, render_message
from bench.agentload.lengths import MIN_TOKENS, EpisodePlan
from bench.agentload.text import TextPool

ROLE = "tool: bash"
MIN_ISSUE_TOKENS = 64  # enough random text that no two episodes' issues (and so prompts) coincide


class TurnRecord(BaseModel):
    """One request of one episode, with the server's accounting and the times seen here."""

    episode: int
    plan: str
    turn: int  # 1-based, in the episode's own numbering
    warm_start: bool  # its history was never sent before: no cache hit is due
    requested_tokens: int
    counted_prompt_tokens: int  # the client's own count, before sending
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    ideal_cached_tokens: int | None = None  # the previous request's prompt; None on a first request
    drawn_observation_tokens: int | None = None
    observation_tokens: int | None = None  # as the loop counts it: the rendered message
    started: float
    first_token: float | None = None
    ended: float | None = None
    error: str | None = None


class EpisodeEnd(BaseModel):
    episode: int
    plan: str
    turns: int
    ending: str  # turns | context | error
    ended: float


class StreamResult(BaseModel):
    text: str
    usage: Usage
    first_token: float | None


async def stream_completion(client: httpx.AsyncClient, body: dict[str, Any]) -> StreamResult:
    """POST /completions with `stream: true`; the reply's text, the final usage, the first token's time."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    usage = Usage()
    first: float | None = None
    async with client.stream("POST", "/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", "replace")[:300]
            raise ServerError(f"HTTP {response.status_code}: {detail}", status=response.status_code)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = CompletionResponse.model_validate_json(data)
            if chunk.choices:
                first = first or time.monotonic()
                parts.append(chunk.choices[0].text)
            usage = chunk.usage or usage
    return StreamResult(text="".join(parts), usage=usage, first_token=first)


class Player:
    """Plays episodes one after another (one worker of a concurrency level), recording every turn."""

    def __init__(self, index: int, model: CompletionsModel, client: httpx.AsyncClient, pool: TextPool,
                 extra_body: dict[str, Any], max_context: int, seed: int, tool_seconds: float = 0.0) -> None:
        self.index = index
        self.model = model
        self.client = client
        self.pool = pool
        self.extra_body = extra_body
        self.max_context = max_context
        self.rng = random.Random(seed)
        self.tool_seconds = tool_seconds
        self.records: list[TurnRecord] = []
        self.ends: list[EpisodeEnd] = []
        self.first_reply = asyncio.Event()
        self.episodes = 0

    # text, sized in the server's tokens (runs in a thread: the client is synchronous)

    def _count(self, text: str) -> int:
        return self.model.count_tokens(text)

    def _opening(self, plan: EpisodePlan) -> list[Message]:
        system = prompts.system_prompt(context=self.max_context, turns=plan.turns)
        template = self.model.prompt_tokens(initial_messages(system, prompts.issue_prompt("")))
        issue = self.pool.sized(max(MIN_ISSUE_TOKENS, plan.first_prompt_tokens - template), self.rng, self._count)
        return initial_messages(system, prompts.issue_prompt(issue))

    def _observation(self, plan: EpisodePlan, turn: int, so_far: int) -> Message:
        """The loop's `tool: bash` message after turn `turn` (1-based), about the planned size."""
        remaining = plan.turns - turn
        wrapper = prompts.tool_observation("", remaining, so_far, self.max_context, self._count)
        overhead = self._count(render_message(Message(role=ROLE, content=wrapper)))
        target = max(1, plan.observations[turn - 1] - overhead)
        feedback = self.pool.sized(target, self.rng, self._count)
        content = prompts.tool_observation(feedback, remaining, so_far, self.max_context, self._count)
        return Message(role=ROLE, content=content)

    def _history(self, plan: EpisodePlan, start_turn: int) -> tuple[list[Message], int]:
        """The opening plus `start_turn` made-up turns (fewer if the context would not hold them)."""
        messages = self._opening(plan)
        for turn in range(1, start_turn + 1):
            prompt = self.model.prompt_tokens(messages)
            reply = self.pool.sized(plan.replies[turn - 1], self.rng, self._count)
            so_far = prompt + self._count(reply)
            observation = self._observation(plan, turn, so_far)
            if so_far + self._count(render_message(observation)) + MIN_TOKENS >= self.max_context:
                return messages, turn - 1
            messages += [Message(role="assistant", content=assistant_content(reply)), observation]
        return messages, start_turn

    # the episode

    async def play(self, plan: EpisodePlan, start_turn: int = 0) -> EpisodeEnd:
        self.episodes += 1
        episode = self.index * 100_000 + self.episodes
        messages, done = await asyncio.to_thread(self._history, plan, start_turn)
        previous_prompt: int | None = None
        turn, ending = done, "turns"
        while turn < plan.turns:
            turn += 1
            record = await self._turn(plan, messages, episode, turn, warm=previous_prompt is None and done > 0,
                                      previous_prompt=previous_prompt)
            if record is None:
                turn, ending = turn - 1, "context"
                break
            if record.error is not None:
                ending = "error"
                break
            previous_prompt = record.prompt_tokens
            if turn == plan.turns:
                break
            so_far = (record.prompt_tokens or record.counted_prompt_tokens) + (record.completion_tokens or 0)
            observation = await asyncio.to_thread(self._observation, plan, turn, so_far)
            record.drawn_observation_tokens = plan.observations[turn - 1]
            record.observation_tokens = await asyncio.to_thread(self._count, render_message(observation))
            messages.append(observation)
            if so_far + record.observation_tokens >= self.max_context:
                ending = "context"
                break
            if self.tool_seconds:
                await asyncio.sleep(self.tool_seconds)
        end = EpisodeEnd(episode=episode, plan=plan.name, turns=turn, ending=ending, ended=time.monotonic())
        self.ends.append(end)
        self.first_reply.set()
        return end

    async def _turn(self, plan: EpisodePlan, messages: list[Message], episode: int, turn: int, warm: bool,
                    previous_prompt: int | None) -> TurnRecord | None:
        """One request; None when the context has no room left for a reply."""
        counted = await asyncio.to_thread(self.model.prompt_tokens, messages)
        tokens = min(plan.replies[turn - 1], self.max_context - counted)
        if tokens < 1:
            return None
        update = {"max_tokens": tokens, "extra_body": {**self.extra_body, "min_tokens": tokens}}
        self.model.options = self.model.options.model_copy(update=update)
        record = TurnRecord(episode=episode, plan=plan.name, turn=turn, warm_start=warm, requested_tokens=tokens,
                            counted_prompt_tokens=counted, ideal_cached_tokens=previous_prompt,
                            started=time.monotonic())
        self.records.append(record)
        try:
            body = await asyncio.to_thread(self.model.request_body, messages)
            result = await stream_completion(self.client, body)
        except (ServerError, httpx.HTTPError, ValueError) as error:
            record.error = f"{type(error).__name__}: {error}"[:300]
            record.ended = time.monotonic()
            self.first_reply.set()
            return record
        record.ended, record.first_token = time.monotonic(), result.first_token
        record.prompt_tokens = result.usage.prompt_tokens
        record.completion_tokens = result.usage.completion_tokens
        record.cached_tokens = result.usage.cached_tokens
        messages.append(Message(role="assistant", content=assistant_content(strip_stop_string(result.text))))
        self.first_reply.set()
        return record

"""Per-turn token counts of a CWM-shaped episode: drawn from a fitted distribution, or replayed.

Why a distribution of our own: CWM's publications give no per-turn figures. Searched (2026-12-06):
facebookresearch/cwm's MODEL_CARD.md, evals/README.md and evals/configs/eval_sbv.yaml, and the
technical report as stored; they publish the limits only (128 turns, a 131,072-token context, 32,768
tokens per observation: the constants of agent.protocol.prompts) and the serving setup (tensor
parallel 2, 10 rollouts per rank, about 6 hours for SWE-bench Verified on 8 H100s), not how long
replies and observations are. So the default shape is fitted to our own recorded trajectories
(traces/examples/*/trajectory.jsonl): reply and observation token counts as log-normal
distributions (geometric mean, standard deviation of the logarithm), the first prompt's size and the
turn count. `Shape.scaled` keeps that shape (both spreads, the reply:observation ratio) and stretches
the medians so that an episode of T turns reaches C tokens on average, which is how a run asks for
"64 turns up to 64k" without inventing a second distribution.

`replay_plan` instead takes the per-step counts of one real trajectory file as they are.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from agent.protocol.prompts import MAX_TOOL_TOKENS
from traces.recorder import read_trajectory

MIN_TOKENS = 8  # a reply or an observation is never shorter (the role header alone is ~5 tokens)
MAX_REPLY = 32768  # a draw is clipped here; the context left caps it further at run time


class LogNormal(BaseModel):
    """Token counts whose logarithm is normal: right-skewed, as reply and command-output lengths are."""

    median: float = Field(gt=0, description="geometric mean, tokens")
    sigma: float = Field(ge=0, description="standard deviation of ln(tokens)")
    low: int = Field(MIN_TOKENS, ge=1)
    high: int = Field(MAX_REPLY, ge=1)

    def draw(self, rng: random.Random) -> int:
        value = round(self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))
        return int(min(self.high, max(self.low, value)))

    def mean(self) -> float:
        """Mean before clipping."""
        return self.median * math.exp(self.sigma**2 / 2)

    @classmethod
    def fit(cls, values: list[int], high: int) -> LogNormal:
        logs = [math.log(v) for v in values if v > 0]
        if len(logs) < 2:
            raise ValueError(f"need at least 2 positive counts to fit a distribution, got {len(logs)}")
        return cls(median=math.exp(statistics.fmean(logs)), sigma=statistics.pstdev(logs), high=high)


class EpisodePlan(BaseModel):
    """One episode's token counts: a reply per turn, an observation after every reply but the last."""

    name: str
    first_prompt_tokens: int = Field(ge=1)
    replies: list[int]
    observations: list[int]

    @property
    def turns(self) -> int:
        return len(self.replies)


class Shape(BaseModel):
    """Where the counts of drawn episodes come from (`source` says, for the report)."""

    source: str
    first_prompt_tokens: int = Field(ge=1)
    turns: int = Field(ge=1)
    reply: LogNormal
    observation: LogNormal

    def per_turn_mean(self) -> float:
        return self.reply.mean() + self.observation.mean()

    def scaled(self, turns: int, context: int) -> Shape:
        """The same spreads and ratio, medians stretched so `turns` turns reach `context` tokens."""
        room = context - self.first_prompt_tokens
        if room <= 0 or turns < 1:
            raise ValueError(f"cannot reach {context} tokens in {turns} turns from a "
                             f"{self.first_prompt_tokens}-token first prompt")
        factor = room / (turns * self.per_turn_mean())
        return self.model_copy(update={
            "turns": turns,
            "source": f"{self.source}; medians x{factor:.2f} so that {turns} turns reach {context} tokens",
            "reply": self.reply.model_copy(update={"median": self.reply.median * factor}),
            "observation": self.observation.model_copy(update={"median": self.observation.median * factor}),
        })

    def plan(self, rng: random.Random, name: str) -> EpisodePlan:
        replies = [self.reply.draw(rng) for _ in range(self.turns)]
        observations = [self.observation.draw(rng) for _ in range(self.turns - 1)]
        return EpisodePlan(name=name, first_prompt_tokens=self.first_prompt_tokens, replies=replies,
                           observations=observations)


def default_trajectories(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "traces" / "examples").glob("*/trajectory.jsonl"))


def fit_trajectories(paths: list[Path]) -> Shape:
    """The shape of the given trajectories' steps (every step with a count takes part)."""
    replies: list[int] = []
    observations: list[int] = []
    firsts: list[int] = []
    turns: list[int] = []
    for path in paths:
        steps = read_trajectory(path).steps
        if not steps:
            continue
        replies += [s.completion_tokens for s in steps if s.completion_tokens]
        observations += [s.observation_tokens for s in steps if s.observation_tokens]
        firsts += [steps[0].prompt_tokens] if steps[0].prompt_tokens else []
        turns.append(len(steps))
    if not firsts:
        raise ValueError("no trajectory with token counts among " + ", ".join(map(str, paths)))
    names = ", ".join(str(p) for p in paths)
    return Shape(
        source=f"log-normal fit to {len(replies)} replies and {len(observations)} observations of {names}",
        first_prompt_tokens=round(statistics.median(firsts)), turns=round(statistics.median(turns)),
        reply=LogNormal.fit(replies, MAX_REPLY), observation=LogNormal.fit(observations, MAX_TOOL_TOKENS),
    )


def replay_plan(path: Path) -> EpisodePlan:
    """The per-step counts of a recorded trajectory, as recorded (a missing count becomes the minimum)."""
    steps = read_trajectory(path).steps
    if not steps or not steps[0].prompt_tokens:
        raise ValueError(f"{path}: no steps with token counts to replay")
    return EpisodePlan(
        name=path.name, first_prompt_tokens=steps[0].prompt_tokens,
        replies=[s.completion_tokens or MIN_TOKENS for s in steps],
        observations=[s.observation_tokens or MIN_TOKENS for s in steps[:-1]],
    )


def simulate(plan: EpisodePlan, max_context: int) -> tuple[int, int]:
    """(turns, generated tokens) the player will get from `plan` under `max_context`, by the same
    rules: a reply is capped to the context left, and the episode ends when the next prompt would
    not leave room for one token."""
    context = plan.first_prompt_tokens
    generated = 0
    for turn, reply in enumerate(plan.replies):
        room = max_context - context
        if room < 1:
            return turn, generated
        generated += min(reply, room)
        if turn == len(plan.observations):
            return turn + 1, generated
        context += min(reply, room) + plan.observations[turn]
    return len(plan.replies), generated


def expected_per_episode(plans: list[EpisodePlan], max_context: int) -> tuple[float, float]:
    """Mean (turns, generated tokens) per episode over `plans` (what episodes/hour divides by)."""
    results = [simulate(plan, max_context) for plan in plans]
    return statistics.fmean(r[0] for r in results), statistics.fmean(r[1] for r in results)

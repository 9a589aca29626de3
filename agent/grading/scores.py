"""Scores over K samples per instance, each meaning what the same number means elsewhere.

- pass@1 is the mean over instances of (resolved samples / samples): CWM's `eval_cli.py` reports it
  this way, and it is the expected score of one sample drawn at random.
- pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) per instance, for
  every k up to the fewest samples any instance has: the chance that at least one of k samples drawn
  without replacement resolves it. pass@n with n samples is CWM's "pass@any".
- The selected score is that of the one prediction per instance a selection method picked without
  looking at grades (majority vote, or the repository's existing tests); it is what a submission of
  that method scores. The oracle (best of K by hidden tests) is reported only under its own name.

Instances without a prediction count as unresolved, so every figure has the instance set's size as
its denominator, as the official summary's resolved rate does. A prediction the infrastructure kept
from being graded (a sandbox or daemon failure, agent.episode.failures) is not a sample here: it says
nothing about the model, so counting it unresolved would lower pass@k by the machine's luck.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import comb

from pydantic import BaseModel, Field


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one instance with `n` samples of which `c` resolved it."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples (n = {n})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


class SampleScores(BaseModel):
    """The figures of one evaluation over an instance set."""

    instances: int = Field(description="size of the instance set (the denominator)")
    samples_per_instance: dict[str, int] = Field(default_factory=dict)
    resolved_per_instance: dict[str, int] = Field(default_factory=dict)
    pass_at_1: float = 0.0
    pass_at_k: dict[int, float] = Field(default_factory=dict, description="k -> pass@k, k = 1 .. fewest samples")
    selected_method: str | None = Field(default=None, description="how the selected prediction was chosen")
    selected_resolved: int | None = None
    selected_rate: float | None = None

    def lines(self) -> list[str]:
        """What a person reads under the per-instance lines."""
        out = [f"pass@1 {self.pass_at_1:.3f} (mean over samples; {self.instances} instances)"]
        out += [f"pass@{k} {v:.3f} (unbiased estimator)" for k, v in sorted(self.pass_at_k.items()) if k > 1]
        if self.selected_method is not None:
            out.append(f"selected by {self.selected_method}: resolved {self.selected_resolved}/{self.instances} "
                       f"({100 * (self.selected_rate or 0):.1f}%)")
        return out


def sample_scores(instance_ids: Sequence[str], outcomes: Mapping[str, Sequence[bool]]) -> SampleScores:
    """pass@1 and pass@k over `instance_ids` from each instance's per-sample resolved flags."""
    total = len(instance_ids)
    counts = {i: len(outcomes.get(i, ())) for i in instance_ids}
    resolved = {i: sum(outcomes.get(i, ())) for i in instance_ids}
    scores = SampleScores(instances=total, samples_per_instance=counts, resolved_per_instance=resolved)
    if not total:
        return scores
    scores.pass_at_1 = sum(resolved[i] / counts[i] for i in instance_ids if counts[i]) / total
    predicted = [counts[i] for i in instance_ids if counts[i]]
    for k in range(1, min(predicted, default=0) + 1):
        scores.pass_at_k[k] = sum(pass_at_k(counts[i], resolved[i], k) for i in instance_ids if counts[i]) / total
    return scores


def with_selection(scores: SampleScores, method: str, chosen_resolved: Mapping[str, bool]) -> SampleScores:
    """`scores` plus the score of the chosen prediction per instance (absent: nothing chosen)."""
    hits = sum(bool(chosen_resolved.get(i)) for i in scores.samples_per_instance)
    rate = hits / scores.instances if scores.instances else 0.0
    return scores.model_copy(update={"selected_method": method, "selected_resolved": hits, "selected_rate": rate})

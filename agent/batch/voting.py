"""Test-time scaling: pick one patch per instance out of K sampled episodes.

Why these rules:
- Agreement is evidence. Independent samples that converge on the same change are more often right,
  so identical patches vote together. "Identical" ignores whitespace at line ends and trailing blank
  lines, which models and editors vary in without changing what the patch does.
- Tests beat votes. When the samples were graded (evaluation results present), a patch that makes
  more of the instance's tests pass wins over a popular one; votes only break ties between equally
  good patches.
- Determinism. Every remaining tie goes to the group whose earliest sample came first, so the same
  samples always give the same prediction, whatever order they finished in (a resumed run writes the
  same preds.jsonl as an uninterrupted one).

The chosen patch is the earliest member's patch exactly as submitted, not the normalised text:
trailing whitespace on a context line is part of the file it must apply to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from traces.schema import Evaluation


class Candidate(BaseModel):
    """One finished sample of an instance: its submitted patch and, if graded, its evaluation."""

    sample: int
    patch: str | None = None
    evaluation: Evaluation | None = None


class PatchScore(BaseModel):
    """How well a patch did on the instance's tests (higher is better, compared as a tuple)."""

    resolved: bool
    passed: int
    total: int


class VoteGroup(BaseModel):
    """Samples whose patches are the same after normalisation."""

    samples: list[int]
    votes: int
    patch_sha: str = Field(description="sha256 (12 hex) of the normalised patch")
    score: PatchScore | None = None


class Vote(BaseModel):
    """The decision for one instance, recorded in the manifest."""

    method: Literal["tests", "majority", "none"]
    chosen_sample: int | None
    patch: str = ""
    groups: list[VoteGroup] = Field(default_factory=list)
    candidates: int = 0

    def summary(self) -> dict[str, object]:
        """The manifest's copy: everything but the patch text (that lives in preds.jsonl)."""
        return self.model_dump(exclude={"patch"})


def normalize_patch(patch: str | None) -> str:
    """Whitespace-insensitive identity of a patch: no trailing spaces per line, one final newline."""
    if not patch:
        return ""
    lines = [line.rstrip() for line in patch.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def score_of(evaluation: Evaluation | None) -> PatchScore | None:
    if evaluation is None:
        return None
    results = list(evaluation.fail_to_pass.values()) + list(evaluation.pass_to_pass.values())
    return PatchScore(resolved=evaluation.resolved, passed=sum(results), total=len(results))



def _score_key(score: PatchScore | None) -> tuple[int, int, int]:
    """Graded groups rank above ungraded ones; among graded: resolved, then tests passed."""
    if score is None:
        return (0, 0, 0)
    return (1, int(score.resolved), score.passed)


def choose(candidates: Iterable[Candidate]) -> Vote:
    """Group identical non-empty patches and pick one group (see the module docstring)."""
    ordered = sorted(candidates, key=lambda c: c.sample)
    groups: dict[str, list[Candidate]] = {}
    for candidate in ordered:
        key = normalize_patch(candidate.patch)
        if key.strip():
            groups.setdefault(key, []).append(candidate)
    if not groups:
        return Vote(method="none", chosen_sample=None, candidates=len(ordered))
    records: list[tuple[VoteGroup, Candidate]] = []
    for key, members in groups.items():
        scores = [s for s in (score_of(m.evaluation) for m in members) if s is not None]
        best = max(scores, key=_score_key) if scores else None
        records.append((
            VoteGroup(samples=[m.sample for m in members], votes=len(members),
                      patch_sha=hashlib.sha256(key.encode()).hexdigest()[:12], score=best),
            members[0],
        ))
    graded = any(group.score is not None for group, _ in records)
    if graded:
        rank = lambda r: (_score_key(r[0].score), r[0].votes, -r[1].sample)  # noqa: E731
    else:
        rank = lambda r: (r[0].votes, -r[1].sample)  # noqa: E731
    records.sort(key=rank, reverse=True)
    winner_group, winner = records[0]
    return Vote(
        method="tests" if graded else "majority",
        chosen_sample=winner.sample,
        patch=winner.patch or "",
        groups=[group for group, _ in records],
        candidates=len(ordered),
    )

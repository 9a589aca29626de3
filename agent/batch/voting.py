"""Test-time scaling: pick one patch per instance out of K sampled episodes, without the hidden tests.

Why these rules:
- Agreement is evidence. Independent samples that converge on the same change are more often right,
  so identical patches vote together (CWM's `evals/scripts/swerl/tts_majority_voting.py` counts
  patch strings; here "identical" also ignores whitespace at line ends and trailing blank lines,
  which models and editors vary in without changing what the patch does). Empty patches do not vote.
- `majority` (the default) ranks groups by votes, then by fewest completion tokens (the cheaper of
  equally popular answers: a sample that wandered less), then by earliest sample. CWM breaks ties by
  a shuffle seeded with the model name; a deterministic rule gives a resumed run the same
  preds.jsonl as an uninterrupted one.
- `regression` ranks groups first by how many of the repository's existing tests — those that pass
  before the change, with no test patch — they break (fewest first), then by votes, then by tokens,
  as Agentless and CWM's test-time scaling do. Groups never run rank last.
- `oracle` ranks by the hidden FAIL_TO_PASS/PASS_TO_PASS grades (resolved, then tests passed). That
  is best-of-K with an oracle, an upper bound, not a method: the vote says `oracle: true` and the
  predictions carry a model name ending in `+oracle`. Only this method reads `Candidate.evaluation`.

The chosen patch is the earliest member's patch exactly as submitted, not the normalised text:
trailing whitespace on a context line is part of the file it must apply to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from agent.batch.status_log import EpisodeSummary
from traces.schema import Evaluation

Method = Literal["majority", "regression", "oracle"]
METHODS: tuple[Method, ...] = ("majority", "regression", "oracle")
ORACLE_SUFFIX = "+oracle"
NEVER = 10**12  # rank of a missing count: after every real one


class Candidate(BaseModel):
    """One finished sample of an instance."""

    sample: int
    patch: str | None = None
    tokens: int | None = Field(default=None, description="completion tokens the episode spent")
    regressions: int | None = Field(default=None, description="existing tests broken by the patch (regression)")
    evaluation: Evaluation | None = Field(default=None, description="hidden-test grade: read by `oracle` only")


class PatchScore(BaseModel):
    """How a patch did on the hidden tests (oracle only)."""

    resolved: bool
    passed: int
    total: int


class VoteGroup(BaseModel):
    """Samples whose patches are the same after normalisation."""

    samples: list[int]
    votes: int
    patch_sha: str = Field(description="sha256 (12 hex) of the normalised patch")
    tokens: int | None = Field(default=None, description="fewest completion tokens among its samples")
    regressions: int | None = None
    score: PatchScore | None = Field(default=None, description="oracle only")


class Vote(BaseModel):
    """The decision for one instance, recorded in the manifest."""

    method: Literal["majority", "regression", "oracle", "none"]
    oracle: bool = False
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


def patch_sha(patch: str | None) -> str:
    return hashlib.sha256(normalize_patch(patch).encode()).hexdigest()[:12]


def score_of(evaluation: Evaluation | None) -> PatchScore | None:
    if evaluation is None:
        return None
    results = list(evaluation.fail_to_pass.values()) + list(evaluation.pass_to_pass.values())
    return PatchScore(resolved=evaluation.resolved, passed=sum(results), total=len(results))


def _least(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _group(members: list[Candidate], method: Method) -> VoteGroup:
    group = VoteGroup(samples=[m.sample for m in members], votes=len(members), patch_sha=patch_sha(members[0].patch),
                      tokens=_least(m.tokens for m in members), regressions=_least(m.regressions for m in members))
    if method == "oracle":
        scores = [s for s in (score_of(m.evaluation) for m in members) if s is not None]
        group.score = max(scores, key=lambda s: (s.resolved, s.passed)) if scores else None
    return group


def _rank(group: VoteGroup, first: int, method: Method) -> tuple[int, ...]:
    """Smaller ranks first (see the module docstring)."""
    common = (-group.votes, NEVER if group.tokens is None else group.tokens, first)
    if method == "regression":
        return (NEVER if group.regressions is None else group.regressions, *common)
    if method == "oracle":
        score = group.score
        return (-int(score is not None), -int(bool(score and score.resolved)), -(score.passed if score else 0),
                *common)
    return common


def choose(candidates: Iterable[Candidate], method: Method = "majority") -> Vote:
    """Group identical non-empty patches and pick one group by `method`."""
    ordered = sorted(candidates, key=lambda c: c.sample)
    groups: dict[str, list[Candidate]] = {}
    for candidate in ordered:
        key = normalize_patch(candidate.patch)
        if key.strip():
            groups.setdefault(key, []).append(candidate)
    if not groups:
        return Vote(method="none", chosen_sample=None, candidates=len(ordered))
    records = sorted(((_group(members, method), members[0]) for members in groups.values()),
                     key=lambda r: _rank(r[0], r[1].sample, method))
    winner = records[0][1]
    return Vote(method=method, oracle=method == "oracle", chosen_sample=winner.sample, patch=winner.patch or "",
                groups=[g for g, _ in records], candidates=len(ordered))


def select_prediction(patches: list[str]) -> int | None:
    """Majority vote over the patches of one instance's predictions (index in the list, or None):
    what `agent eval` reports as the selected prediction of a multi-sample predictions file."""
    return choose([Candidate(sample=i, patch=p) for i, p in enumerate(patches)]).chosen_sample


# -- what the run directory gives a vote ----------------------------------------------------------

REGRESSION_FILE = "regression.json"


class RegressionRecord(BaseModel):
    """trajectories/<instance>/regression.json: the baseline and each distinct patch's regressions."""

    baseline_passing: int = 0
    baseline_error: str | None = None
    regressions: dict[str, int | None] = Field(default_factory=dict, description="patch sha -> tests broken")
    errors: dict[str, str] = Field(default_factory=dict)


def read_regressions(instance_dir: Path) -> RegressionRecord | None:
    path = instance_dir / REGRESSION_FILE
    if not path.is_file():
        return None
    return RegressionRecord.model_validate_json(path.read_text(encoding="utf-8"))


def candidate(sample: int, patch: str | None, summary: EpisodeSummary, record: RegressionRecord | None) -> Candidate:
    """One sample as the vote sees it: its patch, the tokens it spent, its regressions if measured, and
    its hidden-test evaluation (which only the oracle reads)."""
    regressions = record.regressions.get(patch_sha(patch)) if record is not None and patch else None
    return Candidate(sample=sample, patch=patch, tokens=summary.completion_tokens or None, regressions=regressions,
                     evaluation=summary.evaluation)


def preds_name(name: str, method: str) -> str:
    """model_name_or_path of preds.jsonl: an oracle's picks say so."""
    return name + ORACLE_SUFFIX if method == "oracle" and not name.endswith(ORACLE_SUFFIX) else name

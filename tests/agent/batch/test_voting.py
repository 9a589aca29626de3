"""Choosing one patch out of K samples (agent.batch.voting): pure functions, no Docker."""

from __future__ import annotations

from agent.batch.voting import Candidate, choose, normalize_patch
from traces.schema import Evaluation

A = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"
B = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 3\n"
C = "diff --git a/y.py b/y.py\n--- a/y.py\n+++ b/y.py\n@@ -1 +1 @@\n-b = 1\n+b = 2\n"


def graded(passed: int, failed: int, resolved: bool = False) -> Evaluation:
    tests = {f"t{i}": True for i in range(passed)} | {f"f{i}": False for i in range(failed)}
    return Evaluation(resolved=resolved, fail_to_pass=tests)


def test_normalisation_ignores_line_end_whitespace_and_trailing_newlines() -> None:
    assert normalize_patch(A) == normalize_patch(A.replace("+a = 2\n", "+a = 2   \n") + "\n\n")
    assert normalize_patch(A) == normalize_patch(A.replace("\n", "\r\n"))
    assert normalize_patch(A) != normalize_patch(B)
    assert normalize_patch("") == normalize_patch("  \n\n") == normalize_patch(None) == ""
    # Leading whitespace is code: it is kept.
    assert normalize_patch(A) != normalize_patch(A.replace("+a = 2", "+ a = 2"))


def test_majority_over_identical_patches() -> None:
    vote = choose([Candidate(sample=0, patch=B), Candidate(sample=1, patch=A),
                   Candidate(sample=2, patch=A + "\n"), Candidate(sample=3, patch=C)])
    assert vote.method == "majority"
    assert vote.chosen_sample == 1 and vote.patch == A
    assert [g.samples for g in vote.groups] == [[1, 2], [0], [3]]
    assert vote.groups[0].votes == 2 and vote.candidates == 4


def test_ties_go_to_the_earliest_sample_whatever_the_input_order() -> None:
    forward = [Candidate(sample=0, patch=C), Candidate(sample=1, patch=A), Candidate(sample=2, patch=B)]
    assert choose(forward).chosen_sample == 0
    assert choose(list(reversed(forward))).chosen_sample == 0
    two_each = [Candidate(sample=3, patch=A), Candidate(sample=1, patch=B), Candidate(sample=2, patch=A),
                Candidate(sample=0, patch=B)]
    assert choose(two_each).patch == B  # B's earliest sample (0) precedes A's (2)


def test_empty_patches_do_not_vote() -> None:
    vote = choose([Candidate(sample=0, patch=""), Candidate(sample=1, patch=None),
                   Candidate(sample=2, patch="\n \n"), Candidate(sample=3, patch=C)])
    assert vote.chosen_sample == 3 and vote.patch == C
    assert [g.samples for g in vote.groups] == [[3]]


def test_no_patch_at_all() -> None:
    vote = choose([Candidate(sample=0, patch=None), Candidate(sample=1, patch="")])
    assert vote.method == "none" and vote.chosen_sample is None and vote.patch == "" and vote.groups == []
    assert choose([]).method == "none"


def test_tests_beat_votes_and_resolution_beats_passes() -> None:
    popular = [Candidate(sample=i, patch=A, evaluation=graded(3, 2)) for i in range(3)]
    better = Candidate(sample=5, patch=B, evaluation=graded(5, 0))
    vote = choose([*popular, better])
    assert vote.method == "tests" and vote.chosen_sample == 5
    assert vote.groups[0].score is not None and vote.groups[0].score.passed == 5
    resolved = Candidate(sample=6, patch=C, evaluation=graded(1, 1, resolved=True))
    assert choose([*popular, better, resolved]).chosen_sample == 6


def test_equal_test_results_fall_back_to_votes_then_earliest() -> None:
    vote = choose([Candidate(sample=0, patch=A, evaluation=graded(2, 0)),
                   Candidate(sample=1, patch=B, evaluation=graded(2, 0)),
                   Candidate(sample=2, patch=B, evaluation=graded(2, 0))])
    assert vote.chosen_sample == 1
    vote = choose([Candidate(sample=1, patch=A, evaluation=graded(2, 0)),
                   Candidate(sample=0, patch=B, evaluation=graded(2, 0))])
    assert vote.chosen_sample == 0


def test_graded_patches_rank_above_ungraded_ones() -> None:
    vote = choose([Candidate(sample=0, patch=A), Candidate(sample=1, patch=A),
                   Candidate(sample=2, patch=B, evaluation=graded(0, 3))])
    assert vote.method == "tests" and vote.chosen_sample == 2


def test_chosen_patch_is_the_submitted_text_not_the_normalised_one() -> None:
    spaced = A.replace(" a = 1\n", " a = 1 \n")  # a context line with trailing space must survive
    vote = choose([Candidate(sample=0, patch=spaced), Candidate(sample=1, patch=A)])
    assert vote.patch == spaced and vote.groups[0].votes == 2


def test_summary_for_the_manifest_leaves_out_the_patch() -> None:
    summary = choose([Candidate(sample=0, patch=A)]).summary()
    assert "patch" not in summary and summary["chosen_sample"] == 0 and summary["method"] == "majority"

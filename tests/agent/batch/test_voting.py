"""Choosing one patch out of K samples (agent.batch.voting): pure functions, no Docker."""

from __future__ import annotations

import itertools

from agent.batch.voting import Candidate, choose, normalize_patch, select_prediction
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
    assert normalize_patch(A) != normalize_patch(A.replace("+a = 2", "+ a = 2"))  # leading whitespace is code


def test_majority_over_identical_patches() -> None:
    vote = choose([Candidate(sample=0, patch=B), Candidate(sample=1, patch=A),
                   Candidate(sample=2, patch=A + "\n"), Candidate(sample=3, patch=C)])
    assert vote.method == "majority" and not vote.oracle
    assert vote.chosen_sample == 1 and vote.patch == A
    assert [g.samples for g in vote.groups] == [[1, 2], [0], [3]]
    assert vote.groups[0].votes == 2 and vote.candidates == 4


def test_majority_never_reads_the_hidden_test_grades() -> None:
    """Every way of grading the same samples gives the same vote."""
    grades = [None, graded(5, 0, True), graded(0, 5), graded(3, 2)]
    for e0, e1, e2 in itertools.product(grades, repeat=3):
        vote = choose([Candidate(sample=0, patch=A, evaluation=e0), Candidate(sample=1, patch=A, evaluation=e1),
                       Candidate(sample=2, patch=B, evaluation=e2)])
        assert vote.chosen_sample == 0 and all(g.score is None for g in vote.groups)
        regression = choose([Candidate(sample=0, patch=A, evaluation=e0, regressions=2),
                             Candidate(sample=1, patch=B, evaluation=e2, regressions=0)], "regression")
        assert regression.chosen_sample == 1


def test_ties_go_to_fewest_tokens_then_the_earliest_sample() -> None:
    forward = [Candidate(sample=0, patch=C), Candidate(sample=1, patch=A), Candidate(sample=2, patch=B)]
    assert choose(forward).chosen_sample == 0
    assert choose(list(reversed(forward))).chosen_sample == 0
    two_each = [Candidate(sample=3, patch=A), Candidate(sample=1, patch=B), Candidate(sample=2, patch=A),
                Candidate(sample=0, patch=B)]
    assert choose(two_each).patch == B  # B's earliest sample (0) precedes A's (2)
    cheaper = [Candidate(sample=0, patch=A, tokens=900), Candidate(sample=1, patch=B, tokens=300)]
    assert choose(cheaper).chosen_sample == 1 and choose(cheaper).groups[0].tokens == 300
    assert choose([*cheaper, Candidate(sample=2, patch=A, tokens=5000)]).chosen_sample == 0  # votes first


def test_regression_ranks_by_broken_existing_tests_then_votes_then_tokens() -> None:
    popular = [Candidate(sample=i, patch=A, regressions=3, tokens=100) for i in range(3)]
    careful = Candidate(sample=3, patch=B, regressions=0, tokens=900)
    vote = choose([*popular, careful], "regression")
    assert vote.method == "regression" and vote.chosen_sample == 3 and vote.groups[0].regressions == 0
    even = [Candidate(sample=0, patch=A, regressions=1, tokens=50), Candidate(sample=1, patch=B, regressions=1),
            Candidate(sample=2, patch=B, regressions=1, tokens=80)]
    assert choose(even, "regression").chosen_sample == 1  # equal regressions: votes
    unmeasured = [Candidate(sample=0, patch=A), Candidate(sample=1, patch=A), Candidate(sample=2, patch=B,
                                                                                        regressions=4)]
    assert choose(unmeasured, "regression").chosen_sample == 2  # a group never run ranks last


def test_oracle_reads_the_grades_and_says_so() -> None:
    popular = [Candidate(sample=i, patch=A, evaluation=graded(3, 2)) for i in range(3)]
    better = Candidate(sample=5, patch=B, evaluation=graded(5, 0))
    vote = choose([*popular, better], "oracle")
    assert vote.method == "oracle" and vote.oracle and vote.chosen_sample == 5
    assert vote.groups[0].score is not None and vote.groups[0].score.passed == 5
    resolved = Candidate(sample=6, patch=C, evaluation=graded(1, 1, resolved=True))
    assert choose([*popular, better, resolved], "oracle").chosen_sample == 6


def test_empty_patches_do_not_vote() -> None:
    vote = choose([Candidate(sample=0, patch=""), Candidate(sample=1, patch=None),
                   Candidate(sample=2, patch="\n \n"), Candidate(sample=3, patch=C)])
    assert vote.chosen_sample == 3 and vote.patch == C and [g.samples for g in vote.groups] == [[3]]
    none = choose([Candidate(sample=0, patch=None), Candidate(sample=1, patch="")])
    assert none.method == "none" and none.chosen_sample is None and none.patch == "" and none.groups == []
    assert choose([]).method == "none"


def test_chosen_patch_is_the_submitted_text_not_the_normalised_one() -> None:
    spaced = A.replace(" a = 1\n", " a = 1 \n")  # a context line with trailing space must survive
    vote = choose([Candidate(sample=0, patch=spaced), Candidate(sample=1, patch=A)])
    assert vote.patch == spaced and vote.groups[0].votes == 2


def test_summary_for_the_manifest_leaves_out_the_patch() -> None:
    summary = choose([Candidate(sample=0, patch=A)]).summary()
    assert "patch" not in summary and summary["chosen_sample"] == 0 and summary["method"] == "majority"


def test_select_prediction_for_a_predictions_file() -> None:
    assert select_prediction([B, A, A + "  \n", ""]) == 1
    assert select_prediction(["", " "]) is None

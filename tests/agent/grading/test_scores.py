"""Multi-sample scores (agent.grading.scores): pass@1, the unbiased pass@k, the selected prediction's score."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from agent.grading.scores import pass_at_k, sample_scores, with_selection


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    """The share of k-subsets of the samples with at least one success (what the estimator estimates)."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_is_the_exact_subset_probability() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(outcomes, k))
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_scores_over_an_instance_set() -> None:
    outcomes = {"a": [True, False, False, False], "b": [True, True, True, True], "c": [False] * 4}
    scores = sample_scores(["a", "b", "c", "d"], outcomes)  # d: no prediction, counts as unresolved
    assert scores.instances == 4 and scores.samples_per_instance["d"] == 0
    assert scores.pass_at_1 == pytest.approx((0.25 + 1 + 0) / 4)
    assert sorted(scores.pass_at_k) == [1, 2, 3, 4]
    assert scores.pass_at_k[4] == pytest.approx(2 / 4)  # pass@any: a and b
    assert scores.pass_at_k[2] == pytest.approx((0.5 + 1) / 4)
    chosen = with_selection(scores, "majority vote", {"a": False, "b": True, "c": False})
    assert (chosen.selected_resolved, chosen.selected_rate, chosen.selected_method) == (1, 0.25, "majority vote")
    assert chosen.lines()[-1] == "selected by majority vote: resolved 1/4 (25.0%)"


def test_pass_at_k_stops_at_the_fewest_samples() -> None:
    scores = sample_scores(["a", "b"], {"a": [True, False, True], "b": [False]})
    assert sorted(scores.pass_at_k) == [1] and scores.pass_at_1 == pytest.approx((2 / 3 + 0) / 2)

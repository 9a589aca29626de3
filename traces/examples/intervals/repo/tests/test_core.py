import pytest

from intervals import merge, total_length


def test_disjoint_intervals_stay_apart():
    assert merge([(5, 6), (1, 2)]) == [(1, 2), (5, 6)]


def test_overlapping_intervals_merge():
    assert merge([(1, 4), (2, 6), (8, 9)]) == [(1, 6), (8, 9)]


def test_touching_intervals_merge():
    assert merge([(1, 3), (3, 5)]) == [(1, 5)]


def test_total_length_counts_shared_points_once():
    assert total_length([(0, 2), (2, 4), (10, 11)]) == 5


def test_reversed_interval_is_rejected():
    with pytest.raises(ValueError):
        merge([(3, 1)])

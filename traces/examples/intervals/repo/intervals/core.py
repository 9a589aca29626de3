"""Merging and measuring closed intervals."""

from __future__ import annotations

Interval = tuple[int, int]


def merge(intervals: list[Interval]) -> list[Interval]:
    """Merge overlapping intervals and return them sorted by start.

    Intervals are closed: (1, 3) and (3, 5) share the point 3 and merge into (1, 5).
    """
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if start > end:
            raise ValueError(f"interval ({start}, {end}) ends before it starts")
        if merged and start < merged[-1][1]:
            last_start, last_end = merged[-1]
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def total_length(intervals: list[Interval]) -> int:
    """Total length covered by the intervals, counting shared stretches once."""
    return sum(end - start for start, end in merge(intervals))

"""Small helpers for closed integer intervals, written as (start, end) tuples."""

from intervals.core import merge, total_length

__all__ = ["merge", "total_length"]

"""Percentiles, one formula for the whole pipeline: gates, the load probe and the emulator's
per-revision latencies must agree on what "p95" means (numpy's default, linear interpolation
between closest ranks)."""

from __future__ import annotations

import math
from typing import Protocol


class Ordered(Protocol):
    """Samples by rank, 0 = smallest: a sorted list, or gates.Ranked (quickselect in C)."""

    def __len__(self) -> int: ...

    def __getitem__(self, rank: int) -> float: ...


def percentile(ordered: Ordered, pct: float, empty: float | None = None) -> float:
    """The `pct` (0..100) percentile of samples by rank. No samples: `empty` when given (a
    probe's live display), else ValueError (a gate must never judge nothing as a number)."""
    size = len(ordered)
    if size == 0:
        if empty is None:
            raise ValueError("percentile of no samples")
        return empty
    rank = (size - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, size - 1)
    low_value = ordered[low]
    return float(low_value + (ordered[high] - low_value) * (rank - low))

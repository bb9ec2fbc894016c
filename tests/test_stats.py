"""One percentile for gates, the load probe and the emulator: numpy's default (linear between
closest ranks), which is what `statistics.quantiles(method="inclusive")` computes too."""

from __future__ import annotations

import random
import statistics

import pytest

from pipeline.stats import percentile


@pytest.mark.parametrize(
    ("samples", "pct", "expected"),
    [
        ([7.0], 95, 7.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 95, 48.0),
        ([float(v) for v in range(1, 101)], 50, 50.5),
        ([float(v) for v in range(1, 101)], 95, 95.05),
    ],
    ids=[
        "one-sample",
        "median-of-two",
        "p0-is-min",
        "p100-is-max",
        "p95-between-ranks",
        "median-1-to-100",
        "p95-1-to-100",
    ],
)
def test_percentile_interpolates_between_closest_ranks(samples, pct, expected):
    assert percentile(samples, pct) == pytest.approx(expected)


@pytest.mark.parametrize("pct", [1, 25, 50, 90, 95, 99])
def test_percentile_agrees_with_the_standard_library(pct):
    rng = random.Random(pct)
    samples = sorted(rng.lognormvariate(3, 1) for _ in range(1001))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    assert percentile(samples, pct) == pytest.approx(cuts[pct - 1])


def test_no_samples_is_an_error_unless_a_display_value_is_given():
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 95)
    assert percentile([], 95, empty=0.0) == 0.0

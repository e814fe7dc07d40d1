"""Quantiles estimated from buckets, as Prometheus's histogram_quantile does."""

from __future__ import annotations

import pytest

from keygen.histogram import Histogram, quantile

BOUNDS = (0.001, 0.01, 0.1)


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    """Half of 100 observations in 0..1 ms and half in 1..10 ms: p50 is 1 ms, p75 5.5 ms."""
    counts = [50, 50, 0, 0]
    assert quantile(0.5, BOUNDS, counts) == pytest.approx(0.001)
    assert quantile(0.75, BOUNDS, counts) == pytest.approx(0.0055)


def test_no_observation_has_no_quantile_and_the_inf_bucket_gives_the_top_bound() -> None:
    """Without observations there is no quantile; one above every bound reads as the top one."""
    assert quantile(0.95, BOUNDS, [0, 0, 0, 0]) is None
    assert quantile(0.95, BOUNDS, [0, 0, 0, 10]) == 0.1


def test_observations_land_in_their_bucket() -> None:
    """A value equal to a bound is counted at or below it; the sum is kept."""
    histogram = Histogram(BOUNDS)
    for value in (0.0005, 0.001, 0.05, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 0, 1, 1]
    assert histogram.sum == pytest.approx(3.0515)

"""The report's statistics (issue 25): t-intervals against hand computation, the bootstrap's determinism, and the
verdict boundaries."""

from __future__ import annotations

import math

import pytest

from lipdeploy.bench import stats


def test_t_interval_matches_a_hand_computation():
    xs = [27.18, 27.02, 27.24, 26.76, 27.11]  # issue 25's five seeds
    iv = stats.t_interval(xs)
    mean = sum(xs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / 4)
    half = 2.776 * sd / math.sqrt(5)  # t(0.975, df=4) from the table
    assert iv.mean == pytest.approx(mean)
    assert iv.sd == pytest.approx(sd)
    assert (iv.lo, iv.hi) == pytest.approx((mean - half, mean + half))
    assert iv.kind == "t" and iv.n == 5
    # worked by hand: mean 27.062, squared deviations sum to 0.14088, sd = sqrt(0.03522) = 0.1877 (the issue's
    # "0.19 dB"), half-width 2.776 x 0.1877 / sqrt(5) = 0.2330
    assert iv.sd == pytest.approx(0.1877, abs=1e-4)
    assert (iv.lo, iv.hi) == pytest.approx((26.829, 27.295), abs=1e-3)


def test_t_quantiles_known_values_and_the_large_df_expansion():
    assert stats.t_quantile(1) == 12.706
    assert stats.t_quantile(2) == 4.303
    assert stats.t_quantile(30) == 2.042
    # beyond the table: known quantiles t(0.975, 40) = 2.0211, t(0.975, 120) = 1.9799; tends to z = 1.96
    assert stats.t_quantile(40) == pytest.approx(2.0211, abs=1e-3)
    assert stats.t_quantile(120) == pytest.approx(1.9799, abs=1e-3)
    assert stats.t_quantile(31) < stats.t_quantile(30)
    with pytest.raises(ValueError):
        stats.t_quantile(0)


def test_bootstrap_is_deterministic_with_its_seed_and_brackets_the_mean():
    xs = [0.1 * i for i in range(25)]
    a, b = stats.bootstrap_interval(xs, seed=3), stats.bootstrap_interval(xs, seed=3)
    assert (a.lo, a.hi) == (b.lo, b.hi)
    other = stats.bootstrap_interval(xs, seed=4)
    assert (other.lo, other.hi) != (a.lo, a.hi)
    assert a.lo < a.mean < a.hi and a.kind == "bootstrap"
    # the percentile bootstrap of n=25 is about as wide as the t-interval
    t = stats.t_interval(xs)
    assert 0.7 < (a.hi - a.lo) / (t.hi - t.lo) < 1.2


def test_interval_kind_follows_n():
    assert stats.interval([]).kind == "n too small" and stats.interval([]).n == 0
    small = stats.interval([1.0, 2.0])
    assert small.kind == "n too small" and not small.known and small.mean == 1.5
    assert stats.interval([1.0, 2.0, 4.0]).kind == "t"
    assert stats.interval([float(i % 7) for i in range(stats.BOOTSTRAP_MIN_N)]).kind == "bootstrap"
    assert stats.interval([1.0, float("nan"), 2.0]).n == 2  # nan values are not units


def test_verdict_boundaries():
    iv = stats.Interval
    assert stats.verdict(iv(0.0, -0.5, 0.4, 6, "t"), -0.5) == "holds"  # lo exactly at the bar: >= holds
    assert stats.verdict(iv(0.0, -0.51, 0.4, 6, "t"), -0.5) == "within noise"
    assert stats.verdict(iv(-0.8, -1.0, -0.51, 6, "t"), -0.5) == "does not hold"
    assert stats.verdict(iv(0.3, 0.0, 0.6, 6, "t"), 0.0, strict=True) == "within noise"  # strict: 0 is not above
    assert stats.verdict(iv(0.3, 0.01, 0.6, 6, "t"), 0.0, strict=True) == "holds"
    assert stats.verdict(iv(-0.3, -0.6, 0.0, 6, "t"), 0.0, strict=True) == "does not hold"
    assert stats.verdict(stats.interval([1.0, 2.0]), 0.0) == "n too small"


def test_pooled_sd_over_groups():
    sd, df = stats.pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [5.0]])
    # within-group sums of squares 2 + 8 over 1 + 2 degrees of freedom; the single value adds nothing
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    assert math.isnan(stats.pooled_sd([[1.0]])[0])


def test_interval_text():
    assert stats.Interval(0.123, -0.05, 0.29, 6, "t").text() == "+0.12 [-0.05, +0.29]"
    assert stats.interval([1.0]).text() == "+1.00"
    assert stats.Interval(29.5, 29.0, 30.0, 3, "t").text(signed=False) == "29.50 [29.00, 30.00]"

"""The statistics of ``nbconv bench compare``: intervals, ratios and the regression flag, on
synthetic timings with known truth."""
import math

import numpy as np
import pytest

from nbconv import benchstats
from nbconv.benchstats import independent_ratio, median_ci, paired_ratio


def test_median_ci_order_statistics():
    xs = list(range(10, 0, -1))  # order must not matter
    med, lo, hi, cov = median_ci(xs, 0.95)
    assert med == 5.5
    # n = 10: [x_(2), x_(9)] covers with 1 - 2 * 11 / 1024; [x_(3), x_(8)] would only reach 0.89
    assert (lo, hi) == (2, 9)
    assert cov == pytest.approx(1 - 2 * 11 / 1024)
    med, lo, hi, cov = median_ci([3.0, 1.0, 2.0], 0.95)
    assert (med, lo, hi) == (2.0, 1.0, 3.0) and cov == pytest.approx(0.75)  # too few: [min, max]
    with pytest.raises(ValueError):
        median_ci([])


def test_median_ci_coverage_is_at_least_nominal():
    """Distribution-free: on a skewed, heavy-tailed distribution the interval still covers the
    true median in >= 95 % of the experiments."""
    rng = np.random.default_rng(1)
    true_median = 1.0  # of exp(N(0, 1)) ... times a Pareto tail that keeps the median
    hits = 0
    trials = 2000
    for _ in range(trials):
        x = np.exp(rng.standard_normal(15))
        _, lo, hi, _ = median_ci(x)
        hits += lo <= true_median <= hi
    assert hits / trials >= 0.95 - 0.01  # binomial slack of the simulation


def _rounds(rng, n, ratio, noise=0.05, load_spikes=True):
    """Per-round times of two sides measured alternately: a shared load factor per round (both
    sides slowed alike, heavy-tailed), independent jitter per side, ``new`` = ``ratio`` x base."""
    load = np.exp(np.abs(rng.standard_normal(n)) * 0.5) if load_spikes else np.ones(n)
    base = 0.010 * load * np.exp(noise * rng.standard_normal(n))
    new = 0.010 * ratio * load * np.exp(noise * rng.standard_normal(n))
    return base, new


def test_paired_ratio_recovers_the_ratio_and_cancels_shared_load():
    rng = np.random.default_rng(2)
    base, new = _rounds(rng, 15, 1.3)
    ci = paired_ratio(base, new)
    assert ci.lo < 1.3 < ci.hi and ci.lo > 1.1
    assert ci.flag() == "regression" and ci.n == 15 and ci.confidence >= 0.95
    # the same timings unpaired: the per-round load no longer cancels, the interval is wider
    wide = independent_ratio(base, new)
    assert (wide.hi - wide.lo) > (ci.hi - ci.lo)


@pytest.mark.parametrize("ratio, noise, low, high", [
    (1.0, 0.05, 0.0, 0.0),   # unchanged code: never flagged (the threshold, not only the CI, protects)
    (1.0, 0.30, 0.0, 0.01),  # 30 % jitter per side and turn: still (almost) never
    (1.5, 0.05, 1.0, 1.0),   # a clear regression: always flagged
    (1.3, 0.10, 0.85, 1.0),  # a moderate one on a noisy machine: mostly (the CI must clear 1.10)
])
def test_flag_rates_on_synthetic_runs(ratio, noise, low, high):
    rng = np.random.default_rng(3)
    trials = 300
    flagged = sum(paired_ratio(*_rounds(rng, 15, ratio, noise)).flag() == "regression"
                  for _ in range(trials))
    assert low <= flagged / trials <= high


def test_flag_thresholds_and_improvements():
    ci = benchstats.RatioCI(1.2, 1.11, 1.3, 0.95, 10, "x")
    assert ci.flag(1.10) == "regression" and ci.flag(1.15) == ""
    assert benchstats.RatioCI(0.8, 0.7, 0.88, 0.95, 10, "x").flag(1.10) == "improvement"
    assert benchstats.RatioCI(1.0, 0.5, 2.0, 0.95, 10, "x").flag() == ""


def test_clustered_ratio_is_over_process_pairs():
    """Each pair of processes has a speed difference of its own (here +-15 %, alternating), which
    its rounds share: the per-round interval would be confidently wrong, the interval over the
    pairs is not."""
    rng = np.random.default_rng(5)
    base, new, groups = [], [], []
    for g in range(6):
        bias = 1.15 if g % 2 else 1 / 1.15
        b, n = _rounds(rng, 3, bias, noise=0.01, load_spikes=False)
        base += list(b)
        new += list(n)
        groups += [g] * 3
    per_round = paired_ratio(base, new)
    clustered = benchstats.clustered_ratio(base, new, groups)
    assert clustered.n == 6 and clustered.confidence == pytest.approx(1 - 2 / 64)
    assert clustered.lo < 0.9 and clustered.hi > 1.1 and clustered.flag() == ""
    assert per_round.n == 18
    # with one group it is the paired statistic over the rounds
    one = benchstats.clustered_ratio(base, new, [0] * 18)
    assert (one.lo, one.hi) == (per_round.lo, per_round.hi)
    # a real slowdown shows in every pair
    slow = benchstats.clustered_ratio(base, [1.5 * v for v in new], groups)
    assert slow.flag() == "regression"


def test_paired_ratio_needs_pairs():
    with pytest.raises(ValueError, match="length"):
        paired_ratio([1, 2], [1, 2, 3])


def test_independent_ratio_hodges_lehmann():
    base = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    new = [2.0] * 8
    ci = independent_ratio(base, new)
    assert ci.ratio == pytest.approx(2.0) and ci.lo == pytest.approx(2.0) and ci.hi == pytest.approx(2.0)
    rng = np.random.default_rng(4)
    a = np.exp(0.1 * rng.standard_normal(20))
    b = 1.25 * np.exp(0.1 * rng.standard_normal(20))
    ci = independent_ratio(a, b)
    assert ci.lo < 1.25 < ci.hi and ci.flag() == "regression"
    # Hodges-Lehmann: the median of every pairwise log difference
    diffs = sorted(math.log(y) - math.log(x) for x in a for y in b)
    assert math.log(ci.ratio) == pytest.approx(0.5 * (diffs[199] + diffs[200]))
    with pytest.raises(ValueError):
        independent_ratio([], [1.0])


def test_geomean_and_median():
    assert benchstats.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert benchstats.geomean([None, 0, 4.0]) == pytest.approx(4.0)
    assert benchstats.geomean([]) is None
    assert benchstats.median([3, 1, 2]) == 2 and benchstats.median([1, 2]) == 1.5
    assert benchstats.median([]) is None

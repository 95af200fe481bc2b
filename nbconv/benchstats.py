"""Statistics of benchmark timings: ratios with distribution-free confidence intervals, and the
regression flag.

Timings on a shared machine are not normal: they have a floor and a long tail of rounds that
another process slowed down. So nothing here assumes a distribution:

* paired samples (two sides timed in alternating rounds of one run): the ratio of each round,
  then a confidence interval for the *median* ratio from the sign test's order statistics (the
  interval between the k-th smallest and k-th largest round ratio; its coverage is a binomial
  sum, exact for any distribution). A round slowed for both sides cancels in its ratio;
* independent samples (two saved runs): the Hodges-Lehmann shift of log times (the median of
  all pairwise log differences) with Moses' interval from the Mann-Whitney statistic's normal
  approximation.

All intervals are for ``time_new / time_base`` (> 1: the new side is slower). A case is flagged
as a regression only when the whole interval lies above ``threshold`` (default 1.10): noise that
widens the interval can hide a small regression but cannot fabricate one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

DEFAULT_THRESHOLD = 1.10
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class RatioCI:
    ratio: float  # point estimate of time_new / time_base
    lo: float
    hi: float
    confidence: float  # achieved coverage (below the requested one when there are too few samples)
    n: int  # rounds (paired) or min(len(a), len(b)) (independent)
    method: str

    def flag(self, threshold=DEFAULT_THRESHOLD):
        """'regression' when the interval lies entirely above ``threshold``, 'improvement' when
        it lies entirely below ``1 / threshold``, else ''."""
        if self.lo > threshold:
            return "regression"
        if self.hi < 1.0 / threshold:
            return "improvement"
        return ""


def _binom_cdf_half(k, n):
    """P(Binomial(n, 1/2) <= k)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2.0 ** n


def median_ci(values, confidence=DEFAULT_CONFIDENCE):
    """(median, lo, hi, achieved coverage) for the median of ``values``, distribution-free.

    The interval [x_(k), x_(n+1-k)] covers the median with probability 1 - 2 P(B <= k - 1),
    B ~ Binomial(n, 1/2); k is the largest that still reaches ``confidence``. With too few values
    for that (n < 6 at 95 %) the interval is [min, max] and its lower coverage is returned.
    """
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    med = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * _binom_cdf_half(k, n) >= confidence:
        k += 1
    coverage = 1 - 2 * _binom_cdf_half(k - 1, n)
    return med, xs[k - 1], xs[n - k], coverage


def paired_ratio(base, new, confidence=DEFAULT_CONFIDENCE):
    """Ratio of ``new`` to ``base`` from per-round samples measured side by side (``base[i]`` and
    ``new[i]`` from the same round): the median round ratio and its sign-test interval."""
    if len(base) != len(new):
        raise ValueError(f"paired samples differ in length: {len(base)} and {len(new)}")
    logs = [math.log(b / a) for a, b in zip(base, new)]
    med, lo, hi, cov = median_ci(logs, confidence)
    return RatioCI(math.exp(med), math.exp(lo), math.exp(hi), cov, len(logs), "sign-test, paired rounds")


def clustered_ratio(base, new, groups, confidence=DEFAULT_CONFIDENCE):
    """Ratio of ``new`` to ``base`` from paired rounds measured by several pairs of processes
    (``groups[i]``: the pair of round i). Rounds of one pair share that pair's own speed
    difference (where its memory and threads landed), so they are not independent: each pair
    contributes one value, the median of its round ratios, and the interval is the sign-test
    interval over those values (6 pairs: [min, max], 96.9 % coverage). One group: the rounds."""
    if len(set(groups)) < 2:
        return paired_ratio(base, new, confidence)
    by_group = {}
    for a, b, g in zip(base, new, groups):
        by_group.setdefault(g, []).append(math.log(b / a))
    values = [median(v) for v in by_group.values()]
    _, lo, hi, cov = median_ci(values, confidence)
    # the point estimate uses every round; the interval, the pairs
    est = median([math.log(b / a) for a, b in zip(base, new)])
    return RatioCI(math.exp(est), math.exp(min(lo, est)), math.exp(max(hi, est)), cov,
                   len(values), f"sign test over {len(values)} process pairs")


def independent_ratio(base, new, confidence=DEFAULT_CONFIDENCE):
    """Ratio of ``new`` to ``base`` from independent samples (two separate runs): Hodges-Lehmann
    estimate of the shift of log times and Moses' Mann-Whitney interval."""
    la, lb = [math.log(v) for v in base], [math.log(v) for v in new]
    n, m = len(la), len(lb)
    if n == 0 or m == 0:
        raise ValueError("independent_ratio needs samples on both sides")
    diffs = sorted(b - a for a in la for b in lb)
    N = len(diffs)
    est = diffs[N // 2] if N % 2 else 0.5 * (diffs[N // 2 - 1] + diffs[N // 2])
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    # number of pairwise differences cut from each end (Mann-Whitney U's critical value)
    c = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12))
    c = max(c, 0)
    lo, hi = diffs[c], diffs[N - 1 - c]
    # the coverage the cut actually gives (normal approximation; = confidence unless c hit 0)
    sd = math.sqrt(n * m * (n + m + 1) / 12)
    achieved = 1 - 2 * NormalDist().cdf((c - n * m / 2) / sd) if sd > 0 else 0.0
    return RatioCI(math.exp(est), math.exp(lo), math.exp(hi), min(achieved, 1.0), min(n, m),
                   "Hodges-Lehmann, Mann-Whitney interval")


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def median(values):
    xs = sorted(values)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])

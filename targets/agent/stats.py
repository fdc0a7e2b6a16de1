"""Order statistics of timed runs: percentiles, and the median's distribution-free interval (its ranks are
exact binomial up to EXACT_RANKS runs, the normal approximation above), which the stopping rule reads."""
from __future__ import annotations

import math
import statistics
from statistics import NormalDist

CONFIDENCE = 0.95  # of the median's interval
EXACT_RANKS = 5000  # up to this many runs the interval's ranks are exact binomial; above, the normal approximation


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def median_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (l, n + 1 - l) of the order statistics that bracket the median with at least
    `confidence`, whatever the distribution: l is the largest rank with P(B <= l - 1) <= (1 - confidence) / 2
    for B ~ Binomial(n, 1/2). Exact up to EXACT_RANKS runs, the normal approximation above.
    None when n is too small for any pair (n < 6 at 95%)."""
    tail = (1 - confidence) / 2
    if n > EXACT_RANKS:
        z = NormalDist().inv_cdf(1 - tail)
        low = int(math.floor(n / 2 + 0.5 - z * math.sqrt(n) / 2))
        return (low, n + 1 - low) if low >= 1 else None
    log_all = math.lgamma(n + 1) + n * math.log(0.5)
    cdf, low = 0.0, 0
    while low < n // 2:
        pmf = math.exp(log_all - math.lgamma(low + 1) - math.lgamma(n - low + 1))  # P(B = low)
        if cdf + pmf > tail:
            break
        cdf += pmf
        low += 1
    return (low, n + 1 - low) if low >= 1 else None


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """The order-statistics interval of the median of values, or None for too few values."""
    ranks = median_ranks(len(values), confidence)
    if ranks is None:
        return None
    ordered = sorted(values)
    return [ordered[ranks[0] - 1], ordered[ranks[1] - 1]]


def half_width(values: list[float]) -> float | None:
    """The larger side of the median's interval as a fraction of the median (None: no interval yet)."""
    interval = median_interval(values)
    median = percentile(values, 0.5)
    if interval is None or median <= 0:
        return None
    return max(median - interval[0], interval[1] - median) / median


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "p99": percentile(values, 0.99),
            "mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
            "max": max(values), "p50_interval": median_interval(values), "confidence": CONFIDENCE,
            "half_width": half_width(values)}

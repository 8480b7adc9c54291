"""Distribution summaries without numpy, so the summary is cheap to build and bit-for-bit
reproducible (math.fsum is exact, hence independent of record order)."""

from __future__ import annotations

import math
from typing import Iterable

#: Keys of every latency block in summary.json; all None when there is no data.
DIST_KEYS = ("p50", "p95", "p99", "mean", "max", "min", "count")


def finite(values: Iterable[float]) -> list[float]:
    """Drop NaN and infinities: one bad record must not turn a whole metric into NaN."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks,
    the definition numpy uses by default; None for no data."""
    xs = sorted(finite(values))
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def mean(values: Iterable[float]) -> float | None:
    xs = finite(values)
    return math.fsum(xs) / len(xs) if xs else None


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max/min/count of a sample; statistics are None (never NaN) when empty."""
    xs = sorted(finite(values))
    if not xs:
        return {k: (0 if k == "count" else None) for k in DIST_KEYS}
    return {
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "mean": math.fsum(xs) / len(xs),
        "max": xs[-1],
        "min": xs[0],
        "count": len(xs),
    }


def ecdf(values: Iterable[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions, for CDF plots."""
    xs = sorted(finite(values))
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]

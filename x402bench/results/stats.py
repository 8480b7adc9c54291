"""Distribution summaries without numpy, so the summary is cheap to build and bit-for-bit
reproducible (math.fsum is exact, hence independent of record order)."""

from __future__ import annotations

import math
from typing import Any, Iterable

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


class Histogram:
    """A latency distribution in fixed memory, for runs too long to keep every value.

    An HdrHistogram (the `hdrhistogram` package) of whole microseconds from 1 µs to about 11.6 days
    at 3 significant figures: every value lands in a bucket no wider than 1/1024 of it (0.1%), so
    each percentile it gives is within 0.1% + 1 µs of the recorded value of that rank (nearest rank,
    not the interpolation `percentile` does on a full sample). Its counts take ~200 KB whatever the
    number of values. Mean, min, max and count are kept exactly beside it (the buckets would round
    them). Values are recorded a numpy array at a time: one Python call per value would cost more
    than the simulated request that made it.
    """

    SIGNIFICANT_FIGURES = 3
    #: Relative width of a bucket: the stated precision of every percentile.
    PRECISION = 2.0 ** -10
    UNIT_S = 1e-6
    HIGHEST_US = 10**12

    def __init__(self) -> None:
        import numpy as np
        from hdrh.histogram import HdrHistogram

        self._h = HdrHistogram(1, self.HIGHEST_US, self.SIGNIFICANT_FIGURES)
        self._counts = np.ctypeslib.as_array(self._h.counts)
        self._lows = _bucket_lows(self._h)
        self._sum: list[float] = []
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None

    def record(self, values_s: "Any") -> None:
        """Add values in seconds (an array or iterable); non-finite and negative values are dropped."""
        import numpy as np

        x = np.asarray(values_s, dtype=np.float64)
        x = x[np.isfinite(x) & (x >= 0)]
        if not x.size:
            return
        us = np.minimum(np.rint(x / self.UNIT_S), self.HIGHEST_US).astype(np.int64)
        index = np.searchsorted(self._lows, us, side="right") - 1
        self._counts += np.bincount(index, minlength=self._counts.size).astype(self._counts.dtype)
        self._h.total_count += int(x.size)
        self._h.min_value = min(self._h.min_value, int(us.min()))
        self._h.max_value = max(self._h.max_value, int(us.max()))
        self._sum.append(math.fsum(x.tolist()))
        self.count += int(x.size)
        lo, hi = float(x.min()), float(x.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100), nearest rank, to the histogram's precision; None when empty."""
        if not self.count:
            return None
        value = self._h.get_value_at_percentile(q) * self.UNIT_S
        return min(max(value, self.min), self.max)  # type: ignore[type-var]

    def mean(self) -> float | None:
        return math.fsum(self._sum) / self.count if self.count else None

    def distribution(self) -> dict[str, float | int | None]:
        """The same keys as `distribution`, from the buckets (percentiles) and the exact side figures."""
        if not self.count:
            return {k: (0 if k == "count" else None) for k in DIST_KEYS}
        return {"p50": self.percentile(50), "p95": self.percentile(95), "p99": self.percentile(99),
                "mean": self.mean(), "max": self.max, "min": self.min, "count": self.count}

    def cdf(self) -> tuple[list[float], list[float]]:
        """Bucket upper edges (seconds) with their cumulative fractions, for CDF plots."""
        import numpy as np

        nz = np.flatnonzero(self._counts)
        if not nz.size:
            return [], []
        cum = np.cumsum(self._counts[nz]) / self.count
        edges = self._lows[np.minimum(nz + 1, self._lows.size - 1)] * self.UNIT_S
        return edges.tolist(), cum.tolist()


_LOWS: dict[tuple[int, int, int], "Any"] = {}


def _bucket_lows(h: "Any") -> "Any":
    """The lowest value of each counts index of an HdrHistogram layout (ascending), made once per layout."""
    import numpy as np

    key = (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures)
    if key not in _LOWS:
        lows = np.array([h.get_value_from_index(i) for i in range(h.counts_len)], dtype=np.int64)
        _LOWS[key] = np.maximum.accumulate(lows)
    return _LOWS[key]

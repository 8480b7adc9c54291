"""Figures over time: paid throughput and request latency per time bin, and the steadiness check.

Why bins are whole multiples of the block time: with 2 s blocks and 1 s bins, every other bin holds
a block's answers and the next holds none, so the bars read twice the real rate and half of them
are empty. A bin of k blocks holds k blocks' answers whatever its phase. Bins are also at least
1 s (a 0.2 s block chain bins by whole seconds' worth of blocks) and there are at most MAX_BINS
in a run, so an hour-long sim draws a readable number of bars instead of 3,600.

Steadiness: a run's mean throughput is only "the" throughput when the rate held across the steady
window. The check cuts the steady window's complete bins into thirds (bins that overlap a fault
window are left out: a fault's dip is the fault table's business, not drift) and compares the mean
paid throughput of the last third with the first: drift = last / first - 1. |drift| > DRIFT_LIMIT
means the run is not steady (the automine smoke run fell from ~150 to ~80 paid/s in 20 s: drift
about -0.45; an overloaded hour-long sim that stops paying after ten minutes: -1.0). Thirds of
whole bins hold whole blocks, so block quantization does not pass for drift, and the figure reads
as it is said: "the last third ran 45% slower than the first".
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np

from x402bench.results.records import RequestRecord

#: Most bins a run is cut into (plots and steadiness alike).
MAX_BINS = 100
#: |drift| above this fraction of the mean: the run is not steady.
DRIFT_LIMIT = 0.20
#: Fewest complete bins the steadiness check needs; fewer gives steady = None ("cannot tell").
MIN_BINS = 3
#: Fewest paid answers in a bin for its latency percentiles to be drawn (fewer: a gap, not a guess).
MIN_LATENCY_SAMPLES = 5


class Steadiness(TypedDict):
    """summary.json `steadiness`: did the paid throughput hold across the steady window?"""

    steady: bool | None              # |drift| <= limit; None when fewer than MIN_BINS usable bins (cannot tell)
    drift: float | None              # last_third_rps / first_third_rps - 1; negative = slowing; None: first is 0
    limit: float                     # DRIFT_LIMIT
    method: str                      # how drift was computed, in words
    bin_s: float                     # width of the bins compared (TimeSeries.bin_s)
    bins: int                        # complete bins inside the window, fault windows left out
    first_third_rps: float | None    # mean paid throughput of the first third of those bins
    last_third_rps: float | None     # ... of the last third
    mean_rps: float | None           # mean paid throughput of all those bins
    message: str                     # one line for the report and the console


class TimeSeries(TypedDict):
    """summary.json `timeseries`: per-bin figures of the whole run (warm-up included), bin i covering
    [i*bin_s, (i+1)*bin_s) of run time by each request's answer time (the metrics' window rule)."""

    bin_s: float                         # a whole multiple of the block time, at least 1 s
    t_s: list[float]                     # each bin's start
    throughput_rps: list[float]          # paid 200s answered in the bin / bin_s
    request_p50_s: list[float | None]    # request latency of the bin's paid answers (None: < MIN_LATENCY_SAMPLES,
    request_p95_s: list[float | None]    # or records not kept)
    request_p99_s: list[float | None]


def bin_width(duration_s: float, block_time_s: float | None) -> float:
    """The bin: a whole number of blocks (1 s when blocks have no fixed interval), at least 1 s, and
    wide enough that `duration_s` makes at most MAX_BINS bins."""
    base = float(block_time_s) if block_time_s and block_time_s > 0 else 1.0
    if base < 1.0:
        base *= math.ceil(round(1.0 / base, 9))
    blocks = max(1, math.ceil(round(max(duration_s, 0.0) / MAX_BINS / base, 9)))
    return round(base * blocks, 9)


def scenario_bin(config: Mapping[str, Any], duration_s: float) -> float:
    """bin_width from a scenario's config (summary["scenario"]["config"] or Scenario.model_dump())."""
    chain = config.get("chain") or {}
    block = chain.get("block_time_s") if chain.get("mining") == "interval" else None
    return bin_width(duration_s, block)


def _bin_index(t: np.ndarray, width: float) -> np.ndarray:
    return np.floor(np.round(t / width, 9)).astype(np.int64)


def paid_per_bin(t_end: Sequence[float] | np.ndarray, width: float, until_s: float) -> np.ndarray:
    """Paid answers per bin from time 0 up to the bin holding `until_s` (answers after it are left out)."""
    t = np.asarray(t_end, dtype=np.float64)
    t = t[np.isfinite(t) & (t >= 0) & (t <= until_s)]
    n = int(_bin_index(np.array([until_s]), width)[0]) + 1 if until_s >= 0 else 0
    counts = np.bincount(_bin_index(t, width), minlength=n) if t.size else np.zeros(n, dtype=np.int64)
    return counts[:max(n, 0)]


def rebin_seconds(per_s: np.ndarray, width: float, until_s: float) -> tuple[np.ndarray, float]:
    """Per-second counts (RequestTally.paid_per_s) into bins of whole seconds: `width` rounded up to a
    whole number of seconds (exact when the bin already is one). Returns (counts, the width used)."""
    secs = max(1, math.ceil(round(width, 9)))
    n = int(math.floor(until_s / secs)) + 1
    padded = np.zeros(n * secs, dtype=np.int64)
    k = min(per_s.size, padded.size)
    padded[:k] = per_s[:k]
    return padded.reshape(n, secs).sum(axis=1), float(secs)


def steadiness(counts: np.ndarray, width: float, window: tuple[float, float],
               faults: Sequence[tuple[float, float]] = ()) -> Steadiness:
    """The check of the module docstring on paid answers per bin (`counts[i]` for [i*width, (i+1)*width))."""
    start, end = window
    method = (f"mean paid throughput of the last third of the steady window's complete {width:g} s bins against "
              "the first third (fault windows left out); drift = last / first - 1")
    ys = []
    for i, c in enumerate(counts.tolist()):
        lo, hi = i * width, (i + 1) * width
        if lo < start - 1e-9 or hi > end + 1e-9:
            continue
        if any(lo < f_end and f_start < hi for f_start, f_end in faults):
            continue
        ys.append(c / width)
    out: Steadiness = {"steady": None, "drift": None, "limit": DRIFT_LIMIT, "method": method, "bin_s": width,
                       "bins": len(ys), "first_third_rps": None, "last_third_rps": None, "mean_rps": None,
                       "message": ""}
    if len(ys) < MIN_BINS:
        out["message"] = (f"steadiness not judged: the steady window holds {len(ys)} complete {width:g} s bin(s), "
                          f"fewer than {MIN_BINS}")
        return out
    k = len(ys) // 3
    first, last = sum(ys[:k]) / k, sum(ys[-k:]) / k
    mean_rps = sum(ys) / len(ys)
    out.update(first_third_rps=first, last_third_rps=last, mean_rps=mean_rps)
    if first == last == 0:
        out["message"] = "steadiness not judged: no paid request answered in the steady window"
        return out
    limits = f"limit ±{DRIFT_LIMIT:.0%}"
    if first == 0:
        out["steady"] = False
        out["message"] = (f"throughput NOT steady: nothing was paid in the first third of the steady window, "
                          f"{last:.3g}/s in the last ({limits}); the mean {mean_rps:.3g}/s is not a steady figure")
        return out
    drift = last / first - 1
    steady = abs(drift) <= DRIFT_LIMIT
    out.update(steady=steady, drift=drift)
    out["message"] = (f"throughput steady: the last third of the window ran at {last:.3g}/s, the first at {first:.3g}/s "
                      f"(drift {drift:+.0%}, {limits})" if steady
                      else f"throughput NOT steady: {first:.3g} paid/s in the first third of the steady window, "
                           f"{last:.3g}/s in the last (drift {drift:+.0%}, {limits}); the mean {mean_rps:.3g}/s is "
                           "an average over a changing rate, not a steady figure")
    return out


def latency_per_bin(requests: Sequence[RequestRecord], width: float, n: int) -> dict[str, list[float | None]]:
    """p50/p95/p99 request latency of the paid answers in each of `n` bins (None where too few); numpy's
    default percentile, the same linear interpolation as stats.percentile, one sort for the whole run."""
    rows = [(r.t_end, r.latency_s) for r in requests if r.paid and math.isfinite(r.t_end) and r.t_end >= 0
            and math.isfinite(r.latency_s)]
    out: dict[str, list[float | None]] = {f"request_p{q}_s": [None] * n for q in (50, 95, 99)}
    if not rows or n <= 0:
        return out
    ends, latency = np.array(rows, dtype=np.float64).T
    index = _bin_index(ends, width)
    keep = index < n
    index, latency = index[keep], latency[keep]
    order = np.lexsort((latency, index))
    index, latency = index[order], latency[order]
    bins, starts, counts = np.unique(index, return_index=True, return_counts=True)
    for b, lo, k in zip(bins.tolist(), starts.tolist(), counts.tolist()):
        if k < MIN_LATENCY_SAMPLES:
            continue
        p50, p95, p99 = np.percentile(latency[lo:lo + k], (50, 95, 99)).tolist()
        out["request_p50_s"][b], out["request_p95_s"][b], out["request_p99_s"][b] = p50, p95, p99
    return out


def time_series(requests: Sequence[RequestRecord], width: float, until_s: float,
                counts: np.ndarray | None = None) -> TimeSeries:
    """The `timeseries` section: `counts` (paid per bin) when a tally gave them, else from the records."""
    if counts is None:
        counts = paid_per_bin([r.t_end for r in requests if r.paid], width, until_s)
    n = int(counts.size)
    return {"bin_s": width, "t_s": [round(i * width, 9) for i in range(n)],
            "throughput_rps": [c / width for c in counts.tolist()],
            **latency_per_bin(requests, width, n)}  # type: ignore[typeddict-item]

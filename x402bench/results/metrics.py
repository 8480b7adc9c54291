"""The `metrics` block of summary.json: one definition of every figure, for live and sim alike.

The window rule, used by every windowed request figure (throughput, request latency, phase split,
error rate, steady counts) so they always describe the same requests:

- the steady window runs from `warmup_s` to the end of traffic: `meta["duration_s"]` when the
  caller knows it, else min(scenario duration, last response);
- a request belongs to the window when its final answer (`t_end`) falls inside it
  (`in_window(r.t_end, ...)`), whenever it started: throughput is the paid ones per second of
  window (a departure rate, which can never exceed what the world settles), request latency and
  the phase split are theirs, error rate is the failed share of them, and `steady_requests` /
  `steady_paid` count them. An overloaded run therefore reports the latency of the payments it
  actually completed (however long they queued), never "n/a" next to a passing throughput;
- what the window leaves out is counted beside it: `answered_after_window`, the requests that
  started by the window's end but were answered after it (a queue still draining; under
  overload, nearly every request offered in the window);
- settlement latency uses settlements accepted from the window's start on, and voucher-paid
  (batch-settlement) requests that started from then on (served to the claim covering the
  voucher: x402bench.results.channels): a settlement is judged from the facilitator's side;
- counts (requests, paid, errors), gas and cost cover the whole run: an error or a settlement
  during warmup still happened and still cost money.

Two sources give the same figures by the same rule: the records (`compute_metrics(requests=...)`,
exact percentiles), or a `RequestTally` fed in bulk while a long sim runs (fixed memory; latency
percentiles from x402bench.results.stats.Histogram, within its stated precision) when not every
record is kept. A statistic is null only when there is no data for it (no paid request, no
settled payment, no CPU figures); it is never NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from x402bench.results import economics as econ
from x402bench.results.records import RequestRecord, SettlementRecord
from x402bench.results.stats import Histogram, distribution, mean
from x402bench.scenario import Scenario

#: Phase fields of RequestRecord reported in metrics.phase_s, in request order.
PHASES = ("challenge", "sign", "verify", "handler", "settle", "paid")
#: Cost fractions for which metrics.break_even_price_usd gives the price.
BREAK_EVEN_FRACTIONS = (0.01, 0.05, 0.1)


def error_reason(r: RequestRecord) -> str:
    """The reason a request failed: its code, else its HTTP status ("http_402"), 0 = transport."""
    if r.error:
        return r.error
    return "transport_error" if r.status == 0 else f"http_{r.status}"


def steady_window(scenario: Scenario, requests: Sequence[RequestRecord], meta: dict[str, Any]) -> tuple[float, float]:
    """(start, end) of the steady window, in run seconds; see the module docstring."""
    start = float(scenario.run.warmup_s)
    if meta.get("duration_s") is not None:
        return start, float(meta["duration_s"])
    ends = [r.t_end for r in requests if math.isfinite(r.t_end) and r.t_end > start]
    end = float(scenario.run.duration_s)
    if ends:
        end = min(end, max(ends))
    return start, end


def in_window(t_end: float, start: float, end: float) -> bool:
    """Whether a request answered at t_end belongs to the steady window: the module docstring's one rule."""
    return start <= t_end <= end


class RequestTally:
    """The request side of `compute_metrics`, accumulated in fixed memory: counts, error reasons, the
    paid requests' latency histogram, phase sums and paid-per-second bins, all by the window rule.

    Fed with numpy arrays in any order and any chunking (a sim hands over its rows as it drops them);
    the figures do not depend on how the rows were split, except for the last bits of float sums."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.requests = 0
        self.paid = 0
        self.steady_requests = 0
        self.steady_paid = 0
        self.errors: Counter[str] = Counter()
        self.steady_errors: Counter[str] = Counter()
        self.latency = Histogram()
        self.phase_sums: dict[str, list[float]] = {p: [] for p in PHASES}
        self.amount_sum = 0
        self.amount_count = 0
        self.paid_per_s = np.zeros(0, dtype=np.int64)  # paid answers per whole second of run time
        self.answered_after_window = 0

    def _mask(self, t_end: np.ndarray) -> np.ndarray:
        return (t_end >= self.start) & (t_end <= self.end)

    def _late(self, t_start: np.ndarray, t_end: np.ndarray) -> int:
        return int(np.count_nonzero((t_start <= self.end) & (t_end > self.end)))

    def add_paid(self, t_start: np.ndarray, t_end: np.ndarray, amount: np.ndarray,
                 phases: Mapping[str, np.ndarray]) -> None:
        """Paid 200s: their latency and phases (by `phases`' keys, seconds) count when answered in the window."""
        t_end = np.asarray(t_end, dtype=np.float64)
        n = int(t_end.size)
        if not n:
            return
        self.requests += n
        self.paid += n
        amount = np.asarray(amount)
        positive = amount[amount > 0]
        self.amount_sum += int(positive.sum())
        self.amount_count += int(positive.size)
        seconds = np.floor(t_end[np.isfinite(t_end) & (t_end >= 0)]).astype(np.int64)
        if seconds.size:
            bins = np.bincount(seconds)
            if bins.size > self.paid_per_s.size:
                self.paid_per_s = np.concatenate([self.paid_per_s, np.zeros(bins.size - self.paid_per_s.size,
                                                                            dtype=np.int64)])
            self.paid_per_s[:bins.size] += bins
        t_start = np.asarray(t_start, dtype=np.float64)
        self.answered_after_window += self._late(t_start, t_end)
        mask = self._mask(t_end)
        k = int(np.count_nonzero(mask))
        if not k:
            return
        self.steady_requests += k
        self.steady_paid += k
        self.latency.record(t_end[mask] - t_start[mask])
        for p in PHASES:
            values = phases.get(p)
            if values is not None:
                v = np.asarray(values, dtype=np.float64)[mask]
                self.phase_sums[p].append(math.fsum(v[np.isfinite(v)].tolist()))

    def add_failed(self, reason: str, t_start: np.ndarray, t_end: np.ndarray) -> None:
        """Failed requests of one reason (`error_reason`'s words): counted, never stored."""
        t_start = np.asarray(t_start, dtype=np.float64)
        t_end = np.asarray(t_end, dtype=np.float64)
        n = int(t_end.size)
        if not n:
            return
        self.answered_after_window += self._late(t_start, t_end)
        k = int(np.count_nonzero(self._mask(t_end)))
        self.requests += n
        self.errors[reason] += n
        self.steady_requests += k
        if k:
            self.steady_errors[reason] += k

    def add_records(self, requests: Sequence[RequestRecord]) -> None:
        """Records, for a caller that has some (tests; a live run's parts)."""
        paid = [r for r in requests if r.paid]
        self.add_paid(np.array([r.t_start for r in paid]), np.array([r.t_end for r in paid]),
                      np.array([r.amount for r in paid], dtype=np.int64),
                      {p: np.array([getattr(r, f"{p}_s") for r in paid]) for p in PHASES})
        by_reason: dict[str, list[tuple[float, float]]] = {}
        for r in requests:
            if not r.paid:
                by_reason.setdefault(error_reason(r), []).append((r.t_start, r.t_end))
        for reason, times in by_reason.items():
            starts, ends = zip(*times)
            self.add_failed(reason, np.array(starts), np.array(ends))

    def figures(self) -> dict[str, Any]:
        """The request keys of `metrics`, by the same rule as compute_metrics on records."""
        length = self.end - self.start
        failed = sum(self.steady_errors.values())
        return {
            "throughput_rps": self.steady_paid / length if length > 0 else None,
            "requests": self.requests,
            "paid": self.paid,
            "steady_requests": self.steady_requests,
            "steady_paid": self.steady_paid,
            "answered_after_window": self.answered_after_window,
            "error_rate": failed / self.steady_requests if self.steady_requests else None,
            "errors": dict(sorted(self.errors.items())),
            "request_latency_s": self.latency.distribution(),
            "phase_s": {p: (math.fsum(self.phase_sums[p]) / self.steady_paid if self.steady_paid else None)
                        for p in PHASES},
        }


def _cpu_block(cpu: Any, paid: int) -> dict[str, Any] | None:
    """Accept {"seconds": {role: s}, ...} or {role: s}; recompute per-paid figures from seconds."""
    if not isinstance(cpu, dict) or not cpu:
        return None
    seconds = cpu.get("seconds", cpu)
    if not isinstance(seconds, dict):
        return None
    spent = {str(k): float(v) for k, v in seconds.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    total = math.fsum(spent.values())
    return {
        "seconds": spent,
        "total_seconds": total,
        "ms_per_paid_request": {k: (v * 1000 / paid if paid else None) for k, v in spent.items()},
        "total_ms_per_paid_request": total * 1000 / paid if paid else None,
        # live runs (loadtest/cpu.py): the world's idle CPU per role, and how long the counted window lasted
        **{k: cpu[k] for k in ("idle_cores", "traffic_s") if k in cpu},
    }


def compute_metrics(scenario: Scenario, requests: Sequence[RequestRecord],
                    settlements: Sequence[SettlementRecord], meta: dict[str, Any],
                    voucher_settlement_latency: Sequence[float] = (),
                    tally: RequestTally | None = None) -> dict[str, Any]:
    """Every figure under summary.json's `metrics`. `voucher_settlement_latency`: the batch-settlement
    requests' settlement latencies (x402bench.results.channels.settlement_latencies, steady window), which
    join the exact settlements' in `settlement_latency_s`: a payment is settled when a block makes its
    money the seller's, a transfer for exact, the claim covering the voucher for batch-settlement. Gas and
    cost here are the exact scheme's; the channels section has the batch-settlement figures.

    `tally`: the request figures come from it instead of `requests` (a run that did not keep every
    record); `requests` may then be a sample or empty, and only decides the window's end when meta
    does not give it."""
    start, end = steady_window(scenario, requests, meta)
    length = end - start
    if tally is None:
        paid_all = [r for r in requests if r.paid]
        answered = [r for r in requests if in_window(r.t_end, start, end)]
        steady_paid = [r for r in answered if r.paid]
        errors = Counter(error_reason(r) for r in requests if not r.paid)
        steady_failed = sum(1 for r in answered if not r.paid)
        amounts = [r.amount for r in paid_all if r.amount > 0]
        request_figures = {
            "throughput_rps": len(steady_paid) / length if length > 0 else None,
            "requests": len(requests),
            "paid": len(paid_all),
            "steady_requests": len(answered),
            "steady_paid": len(steady_paid),
            "answered_after_window": sum(1 for r in requests if r.t_start <= end < r.t_end),
            "error_rate": steady_failed / len(answered) if answered else None,
            "errors": dict(sorted(errors.items())),
            "request_latency_s": distribution(r.latency_s for r in steady_paid),
            "phase_s": {p: mean(getattr(r, f"{p}_s") for r in steady_paid) for p in PHASES},
        }
        mean_amount = mean(amounts)
        paid_count = len(paid_all)
    else:
        request_figures = tally.figures()
        mean_amount = tally.amount_sum / tally.amount_count if tally.amount_count else None
        paid_count = tally.paid
    if mean_amount is None:
        mean_amount = mean([s.amount for s in settlements if s.amount > 0])

    # one pass, keeping no record: a long sim hands its settlements over as a lazy view
    states: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    settle_latency: list[float] = []
    for s in settlements:
        states[s.state] += 1
        if s.state == "failed":
            failures[s.error or "unknown"] += 1
        elif s.state == "settled" and s.t_accepted >= start:
            latency = s.settlement_latency_s
            if latency is not None:
                settle_latency.append(latency)
    settle_latency += list(voucher_settlement_latency)

    gas = econ.gas_stats(settlements)
    decimals = scenario.token.decimals
    mean_price = econ.atomic_to_usd(mean_amount, decimals) if mean_amount is not None else None
    cost = split = None
    if gas.gas_per_payment is not None:
        cost = econ.cost_per_payment_usd(gas.gas_per_payment, scenario.economics, gas.txs_per_payment or 0.0)
        split = econ.cost_split_usd(gas.gas_per_payment, scenario.economics, gas.txs_per_payment or 0.0)

    return {
        "window": {"start_s": start, "end_s": end, "duration_s": length},
        **request_figures,
        "settlement_latency_s": distribution(settle_latency),
        "settlements": dict(sorted(states.items())),
        "settlement_errors": dict(sorted(failures.items())),
        "gas_per_payment": gas.gas_per_payment,
        "gas": {
            "settlement_txs": len(gas.txs),
            "tx_equivalents": gas.tx_equivalents,
            "payments_with_gas": gas.payments,
            "total_gas": gas.total_gas,
            "mean_batch_size": gas.mean_batch_size,
        },
        "mean_price_usd": mean_price,
        "cost_per_payment_usd": cost,
        "cost_breakdown_usd": split,
        "cost_fraction_of_price": cost / mean_price if cost is not None and mean_price else None,
        "break_even_price_usd": {
            f"{f:g}": (econ.break_even_price_usd(cost, f) if cost is not None else None)
            for f in BREAK_EVEN_FRACTIONS
        },
        "cpu": _cpu_block(meta.get("cpu"), paid_count),
    }

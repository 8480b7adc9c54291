"""The `metrics` block of summary.json, computed from raw records only.

Windows, chosen so a run is judged on its steady state but nothing is hidden:
- the steady window runs from `warmup_s` to the end of traffic: `meta["duration_s"]` when
  the caller knows it, else min(scenario duration, last response). Throughput counts paid
  200s whose response arrived inside it; request latency (paid 200s only, 402 round trip
  included) and the phase split use requests that started inside it; settlement latency
  uses settlements accepted inside it and voucher-paid (batch-settlement) requests that started
  inside it (served to the claim covering the voucher: x402bench.results.channels).
- counts (requests, paid, errors, error_rate), gas and cost cover the whole run: an error or
  a settlement during warmup still happened and still cost money.
A statistic is null only when there is no data for it (no paid request, no settled payment,
no CPU figures); it is never NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from x402bench.results import economics as econ
from x402bench.results.records import RequestRecord, SettlementRecord
from x402bench.results.stats import distribution, mean
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
    }


def compute_metrics(scenario: Scenario, requests: Sequence[RequestRecord],
                    settlements: Sequence[SettlementRecord], meta: dict[str, Any],
                    voucher_settlement_latency: Sequence[float] = ()) -> dict[str, Any]:
    """Every figure under summary.json's `metrics`. `voucher_settlement_latency`: the batch-settlement
    requests' settlement latencies (x402bench.results.channels.settlement_latencies, steady window), which
    join the exact settlements' in `settlement_latency_s`: a payment is settled when a block makes its
    money the seller's, a transfer for exact, the claim covering the voucher for batch-settlement. Gas and
    cost here are the exact scheme's; the channels section has the batch-settlement figures."""
    start, end = steady_window(scenario, requests, meta)
    length = end - start
    paid_all = [r for r in requests if r.paid]
    steady = [r for r in requests if r.t_start >= start]
    steady_paid = [r for r in steady if r.paid]
    completed = sum(1 for r in paid_all if start <= r.t_end <= end)
    errors = Counter(error_reason(r) for r in requests if not r.paid)

    settled = [s for s in settlements if s.state == "settled"]
    steady_settled = [s for s in settled if s.t_accepted >= start]
    settle_latency = [s.settlement_latency_s for s in steady_settled if s.settlement_latency_s is not None]
    settle_latency += list(voucher_settlement_latency)

    gas = econ.gas_stats(settlements)
    decimals = scenario.token.decimals
    amounts = [r.amount for r in paid_all if r.amount > 0] or [s.amount for s in settlements if s.amount > 0]
    mean_amount = mean(amounts)
    mean_price = econ.atomic_to_usd(mean_amount, decimals) if mean_amount is not None else None
    cost = None
    if gas.gas_per_payment is not None:
        cost = econ.cost_per_payment_usd(gas.gas_per_payment, scenario.economics, gas.txs_per_payment or 0.0)

    return {
        "window": {"start_s": start, "end_s": end, "duration_s": length},
        "throughput_rps": completed / length if length > 0 else None,
        "requests": len(requests),
        "paid": len(paid_all),
        "steady_requests": len(steady),
        "steady_paid": len(steady_paid),
        "error_rate": sum(errors.values()) / len(requests) if requests else None,
        "errors": dict(sorted(errors.items())),
        "request_latency_s": distribution(r.latency_s for r in steady_paid),
        "settlement_latency_s": distribution(settle_latency),
        "phase_s": {p: mean(getattr(r, f"{p}_s") for r in steady_paid) for p in PHASES},
        "settlements": dict(sorted(Counter(s.state for s in settlements).items())),
        "settlement_errors": dict(sorted(Counter(s.error or "unknown" for s in settlements
                                                 if s.state == "failed").items())),
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
        "cost_fraction_of_price": cost / mean_price if cost is not None and mean_price else None,
        "break_even_price_usd": {
            f"{f:g}": (econ.break_even_price_usd(cost, f) if cost is not None else None)
            for f in BREAK_EVEN_FRACTIONS
        },
        "cpu": _cpu_block(meta.get("cpu"), len(paid_all)),
    }

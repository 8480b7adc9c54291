"""Two runs side by side (load vs load, load vs sim, before vs after a change), with B/A ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x402bench.results.rundir import load_summary

#: (label, dotted path in summary.json), in display order.
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("paid throughput (req/s)", "metrics.throughput_rps"),
    ("requests", "metrics.requests"),
    ("paid", "metrics.paid"),
    ("error rate", "metrics.error_rate"),
    ("request latency p50 (s)", "metrics.request_latency_s.p50"),
    ("request latency p95 (s)", "metrics.request_latency_s.p95"),
    ("request latency p99 (s)", "metrics.request_latency_s.p99"),
    ("settlement latency p50 (s)", "metrics.settlement_latency_s.p50"),
    ("settlement latency p95 (s)", "metrics.settlement_latency_s.p95"),
    ("settlement latency p99 (s)", "metrics.settlement_latency_s.p99"),
    ("gas per payment", "metrics.gas_per_payment"),
    ("cost per payment (USD)", "metrics.cost_per_payment_usd"),
    ("cost / price", "metrics.cost_fraction_of_price"),
    ("CPU ms per paid request", "metrics.cpu.total_ms_per_paid_request"),
    ("served unpaid", "reconciliation.served_unpaid"),
    ("paid unserved", "reconciliation.paid_unserved"),
    ("double settled", "reconciliation.double_settled"),
    ("reconciliation exact", "reconciliation.exact"),
    ("channel gas per payment", "channels.economics.gas_per_payment"),
    ("channel cost per payment (USD)", "channels.economics.cost_per_payment_usd"),
    ("channel settlement latency p95 (s)", "channels.settlement_latency_s.p95"),
    ("channel exposure peak (USD)", "channels.exposure.peak_usd"),
    ("channel capital locked (USD)", "channels.capital.deposited_usd"),
    ("channel books exact", "channels.reconciliation.exact"),
    ("SLO passed", "slo.passed"),
)


@dataclass(frozen=True)
class CompareRow:
    metric: str
    a: Any
    b: Any
    ratio: float | None  # b / a; None when either side is missing, not a number, or a is zero


def dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def ratio(a: Any, b: Any) -> float | None:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers or a == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return b / a


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> list[CompareRow]:
    """Rows for the key metrics of two summaries."""
    return [CompareRow(label, dig(a, path), dig(b, path), ratio(dig(a, path), dig(b, path)))
            for label, path in KEY_METRICS]


def describe(summary: dict[str, Any]) -> str:
    """A short label for a run: scenario, mode, run id."""
    return f"{dig(summary, 'scenario.name')} ({summary.get('mode')}) {summary.get('run_id') or ''}".strip()


def compare_runs(run_a: Path | str, run_b: Path | str) -> tuple[str, str, list[CompareRow]]:
    """Labels of both runs and their rows; raises RunDirError for a bad folder."""
    a, b = load_summary(run_a), load_summary(run_b)
    return describe(a), describe(b), compare_summaries(a, b)

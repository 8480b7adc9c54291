"""Runs side by side (load vs load, load vs sim, before vs after a change): the first run is the baseline,
every later run gets its ratio to it, and `--fail-if` gates turn a ratio past a bound into a failed CI step."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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

#: Rows that are yes/no, not figures: shown, never gated.
VERDICTS = frozenset({"reconciliation.exact", "channels.reconciliation.exact", "slo.passed"})


def metric_key(path: str) -> str:
    """The name a gate uses: the dotted path without its `metrics.` prefix (`settlement_latency_s.p95`)."""
    return path.removeprefix("metrics.")


#: Gate name -> dotted path, for every figure of the table.
GATE_METRICS: dict[str, str] = {metric_key(path): path for _, path in KEY_METRICS if path not in VERDICTS}


@dataclass(frozen=True)
class CompareRow:
    metric: str
    path: str
    values: tuple[Any, ...]  # one per run, the baseline first
    ratios: tuple[float | None, ...]  # one per later run: value / baseline; None when not two finite numbers, a != 0

    @property
    def a(self) -> Any:
        return self.values[0]

    @property
    def b(self) -> Any:
        return self.values[1]

    @property
    def ratio(self) -> float | None:
        return self.ratios[0]


@dataclass(frozen=True)
class Comparison:
    run_dirs: tuple[Path, ...]
    labels: tuple[str, ...]
    summaries: tuple[dict[str, Any], ...]
    rows: tuple[CompareRow, ...]


def dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ratio(a: Any, b: Any) -> float | None:
    if not (_number(a) and _number(b)) or a == 0:
        return None
    return b / a


def compare_summaries(*summaries: dict[str, Any]) -> list[CompareRow]:
    """Rows for the key metrics of two or more summaries, ratios against the first."""
    rows = []
    for label, path in KEY_METRICS:
        values = tuple(dig(s, path) for s in summaries)
        rows.append(CompareRow(label, path, values, tuple(ratio(values[0], v) for v in values[1:])))
    return rows


def describe(summary: dict[str, Any]) -> str:
    """A short label for a run: scenario, mode, run id."""
    return f"{dig(summary, 'scenario.name')} ({summary.get('mode')}) {summary.get('run_id') or ''}".strip()


def compare_runs(run_a: Path | str, run_b: Path | str) -> tuple[str, str, list[CompareRow]]:
    """Labels of both runs and their rows; raises RunDirError for a bad folder."""
    a, b = load_summary(run_a), load_summary(run_b)
    return describe(a), describe(b), compare_summaries(a, b)


def compare_many(run_dirs: Sequence[Path | str]) -> Comparison:
    """Every run against the first; raises RunDirError for a bad folder, ValueError for fewer than two."""
    if len(run_dirs) < 2:
        raise ValueError(f"compare needs two or more run folders (the first is the baseline), got {len(run_dirs)}")
    summaries = tuple(load_summary(d) for d in run_dirs)
    return Comparison(tuple(Path(d) for d in run_dirs), tuple(describe(s) for s in summaries), summaries,
                      tuple(compare_summaries(*summaries)))


# ---- regression gates ---------------------------------------------------------------------------------------

_GATE = re.compile(r"^\s*(?P<metric>[A-Za-z0-9_.]+)\s*(?P<op>[<>])\s*(?P<bound>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    """`METRIC>RATIO`: a later run fails when its value over the baseline's is above RATIO (for figures where
    more is worse: latency, gas); `METRIC<RATIO`: when below it (more is better: throughput)."""

    text: str
    key: str
    path: str
    op: str
    bound: float

    def crossed(self, value: float) -> bool:
        return value > self.bound if self.op == ">" else value < self.bound


def parse_gate(text: str) -> Gate:
    """A `--fail-if` expression; ValueError naming the problem and every metric a gate may use."""
    names = f"metrics: {', '.join(GATE_METRICS)}"
    match = _GATE.match(text)
    if match is None:
        raise ValueError(f"--fail-if {text!r}: expected METRIC>RATIO or METRIC<RATIO (e.g. "
                         f"'settlement_latency_s.p95>1.2', 'throughput_rps<0.9'); {names}")
    key = metric_key(match["metric"])
    if key not in GATE_METRICS:
        raise ValueError(f"--fail-if {text!r}: unknown metric {match['metric']!r}; {names}")
    return Gate(text.strip(), key, GATE_METRICS[key], match["op"], float(match["bound"]))


def gate_ratio(baseline: Any, value: Any) -> float | None:
    """value / baseline for a gate: 0 against 0 is no change (1.0), anything above a baseline of 0 is
    infinitely worse or better; None when either run lacks the figure (a gate cannot judge it)."""
    if not (_number(baseline) and _number(value)):
        return None
    if baseline == 0:
        return 1.0 if value == 0 else math.copysign(math.inf, value)
    return value / baseline


@dataclass(frozen=True)
class Breach:
    gate: Gate
    run: int  # index into Comparison.run_dirs (>= 1)
    label: str
    ratio: float | None

    @property
    def message(self) -> str:
        if self.ratio is None:
            return (f"{self.gate.text}: cannot judge {self.label}: {self.gate.key} is missing in it or in the "
                    "baseline (a gate never passes on no data)")
        return (f"{self.gate.text}: {self.label} has {self.gate.key} at {self.ratio:.6g}x the baseline's "
                f"({self.gate.op} {self.gate.bound:g})")


def judge(comparison: Comparison, gates: Sequence[Gate]) -> list[Breach]:
    """Every (gate, later run) that crosses its bound or cannot be judged."""
    breaches = []
    for gate in gates:
        baseline = dig(comparison.summaries[0], gate.path)
        for i in range(1, len(comparison.summaries)):
            r = gate_ratio(baseline, dig(comparison.summaries[i], gate.path))
            if r is None or gate.crossed(r):
                breaches.append(Breach(gate, i, comparison.labels[i], r))
    return breaches

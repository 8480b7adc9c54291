"""The sweep's capacity-planning plots: throughput and latency against offered load, cost against price.

Points that differ only in what sets the x axis are joined into one line; every other
grid key (strategy, block time, signer keys, ...) makes a separate line.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOAD_KEYS = {"agents", "rate", "agents.count", "agents.arrivals.rate_per_agent_s", "users", "run.users"}
PRICE_KEYS = {"price"}


def _series(rows: list[dict[str, Any]], keys: list[str], x_keys: set[str]) -> dict[str, list[dict[str, Any]]]:
    other = [k for k in keys if k not in x_keys]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        label = ", ".join(f"{k}={row[k]}" for k in other) or "all"
        groups[label].append(row)
    return groups


def _line(ax: Any, rows: list[dict[str, Any]], x: str, y: str, label: str, style: str = "o-") -> None:
    pts = sorted((r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=4)


def _log_if_wide(ax: Any, values: list[Any]) -> None:
    """Queues that blow up next to ones that do not: a log axis keeps both readable."""
    xs = [v for v in values if v is not None and v > 0]
    if xs and max(xs) / min(xs) > 50:
        ax.set_yscale("log")


def _finish(fig: Any, axes: list[Any], path: Path) -> Path:
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_sweep_plots(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> list[Path]:
    plots = []
    load_series = _series(rows, keys, LOAD_KEYS)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = max([r["offered_rps"] or 0 for r in rows] + [1e-9])
    ax.plot([0, top], [0, top], ":", color="grey", label="throughput = offered")
    for label, series in load_series.items():
        _line(ax, series, "offered_rps", "throughput_rps", label)
    ax.set(xlabel="offered load (requests/s)", ylabel="paid throughput (requests/s)",
           title="Throughput vs offered load")
    plots.append(_finish(fig, [ax], out_dir / "throughput_vs_offered.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, series in load_series.items():
        _line(a1, series, "offered_rps", "request_p95_s", label)
        _line(a2, series, "offered_rps", "settlement_p95_s", label)
    a1.set(xlabel="offered load (requests/s)", ylabel="p95 request latency (s)", title="Request latency (p95)")
    a2.set(xlabel="offered load (requests/s)", ylabel="p95 settlement latency (s)", title="Settlement latency (p95)")
    for ax, key in ((a1, "request_p95_s"), (a2, "settlement_p95_s")):
        _log_if_wide(ax, [r.get(key) for r in rows])
    plots.append(_finish(fig, [a1, a2], out_dir / "latency_vs_offered.png"))

    fig, (c1, c2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, series in _series(rows, keys, PRICE_KEYS).items():
        _line(c1, series, "mean_price_usd", "cost_per_payment_usd", label)
        _line(c2, series, "mean_price_usd", "cost_fraction_of_price", label)
    c1.set(xlabel="mean price paid (USD)", ylabel="settlement cost per payment (USD)",
           title="Cost per payment vs price")
    c2.set(xlabel="mean price paid (USD)", ylabel="cost / price", title="Cost as a fraction of the price")
    for ax in (c1, c2):
        if any((r.get("mean_price_usd") or 0) > 0 for r in rows):
            ax.set_xscale("log")
    if any((r.get("cost_fraction_of_price") or 0) > 0 for r in rows):
        c2.set_yscale("log")
    plots.append(_finish(fig, [c1, c2], out_dir / "cost_vs_price.png"))
    return plots

"""The sweep's capacity-planning plots: throughput and latency against offered load, cost against price.

Points that differ only in what sets the x axis are joined into one line; every other
grid key (strategy, block time, signer keys, ...) makes a separate line. Readable at a glance:
series with the same points (to 3 significant digits) are drawn once under a joint label (cost does not depend on the
agent count, so "agents=1000" and "agents=10000" would hide each other), each series has its own
marker, a series of fewer than MIN_LINE points is drawn as markers only (a line through two
points claims a curve nobody measured), tick labels are plain numbers (no offset such as
"1e-8+2.591e-3", no scientific notation, on log axes too), and a figure with no point is not
written.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter

LOAD_KEYS = {"agents", "rate", "agents.count", "agents.arrivals.rate_per_agent_s", "users", "run.users"}
PRICE_KEYS = {"price"}
#: Fewest points a series needs to be drawn as a line.
MIN_LINE = 3
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _series(rows: list[dict[str, Any]], keys: list[str], x_keys: set[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by the grid keys other than the x axis's; keys with one value in the whole grid
    name no series (they would only lengthen every label)."""
    other = [k for k in keys if k not in x_keys and len({repr(r.get(k)) for r in rows}) > 1]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple((k, row[k]) for k in other)].append(row)
    return groups


def _points(rows: list[dict[str, Any]], x: str, y: str) -> list[tuple[float, float]]:
    return sorted((r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None)


def _label(names: list[tuple]) -> str:
    """One legend entry for series drawn as one: each key with the values it took, "agents=100/1000"."""
    if not names or not names[0]:
        return "all"
    values: dict[str, list[str]] = {}
    for name in names:
        for k, v in name:
            values.setdefault(k, [])
            if str(v) not in values[k]:
                values[k].append(str(v))
    return ", ".join(f"{k}={'/'.join(v)}" for k, v in values.items())


def _lines(ax: Any, groups: dict[tuple, list[dict[str, Any]]], x: str, y: str) -> int:
    """Draw each group's (x, y) points; groups whose points agree to 3 significant digits (closer than a plot
    can show) share one line and one label. Returns how many points were drawn."""
    merged: dict[tuple, tuple[list[tuple[float, float]], list[tuple]]] = {}
    for name, rows in groups.items():
        pts = _points(rows, x, y)
        if pts:
            key = tuple((float(f"{a:.3g}"), float(f"{b:.3g}")) for a, b in pts)
            merged.setdefault(key, (pts, []))[1].append(name)
    for i, (pts, names) in enumerate(merged.values()):
        marker = _MARKERS[i % len(_MARKERS)]
        style = f"{marker}-" if len(pts) >= MIN_LINE else marker
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=_label(names), markersize=5)
    return sum(len(p) for p, _ in merged.values())


def _plain_number(value: float, _pos: Any = None) -> str:
    """A tick label as a written number: 0.001, 2,500, 0.0025 (never 1e-3)."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0", "0") else f"{value:.3g}"


def _plain(ax: Any) -> None:
    """Plain tick labels on both axes, linear or log."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_formatter(FuncFormatter(_plain_number))
            axis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
        else:
            axis.set_major_locator(MaxNLocator(nbins=6))
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            axis.set_major_formatter(formatter)


def _log_if_wide(ax: Any, values: list[Any], axis: str = "y") -> None:
    """Queues that blow up next to ones that do not: a log axis keeps both readable."""
    xs = [v for v in values if v is not None and v > 0]
    if xs and max(xs) / min(xs) > 50:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _figure(ncols: int) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(11 if ncols > 1 else 7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _finish(fig: Figure, axes: list[Any], path: Path, drawn: int) -> Path | None:
    if not drawn:
        path.unlink(missing_ok=True)
        return None
    for ax in axes:
        ax.grid(True, alpha=0.3)
        _plain(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def render_sweep_plots(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> list[Path]:
    """The sweep's figures that have a point to show, written into out_dir."""
    out_dir = Path(out_dir)
    plots: list[Path | None] = []
    load_series = _series(rows, keys, LOAD_KEYS)

    fig, (ax,) = _figure(1)
    top = max([r.get("offered_rps") or 0 for r in rows] + [1e-9])
    ax.plot([0, top], [0, top], ":", color="grey", label="throughput = offered")
    drawn = _lines(ax, load_series, "offered_rps", "throughput_rps")
    ax.set(xlabel="offered load (requests/s)", ylabel="paid throughput (requests/s)",
           title="Throughput vs offered load")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    plots.append(_finish(fig, [ax], out_dir / "throughput_vs_offered.png", drawn))

    fig, (a1, a2) = _figure(2)
    drawn = _lines(a1, load_series, "offered_rps", "request_p95_s") + _lines(a2, load_series, "offered_rps",
                                                                                "settlement_p95_s")
    a1.set(xlabel="offered load (requests/s)", ylabel="p95 request latency (s)", title="Request latency (p95)")
    a2.set(xlabel="offered load (requests/s)", ylabel="p95 settlement latency (s)", title="Settlement latency (p95)")
    for ax, key in ((a1, "request_p95_s"), (a2, "settlement_p95_s")):
        _log_if_wide(ax, [r.get(key) for r in rows])
    plots.append(_finish(fig, [a1, a2], out_dir / "latency_vs_offered.png", drawn))

    fig, (c1, c2) = _figure(2)
    price_series = _series(rows, keys, PRICE_KEYS)
    drawn = (_lines(c1, price_series, "mean_price_usd", "cost_per_payment_usd")
             + _lines(c2, price_series, "mean_price_usd", "cost_fraction_of_price"))
    costs = [r["cost_per_payment_usd"] for r in rows if r.get("cost_per_payment_usd") is not None]
    if costs:  # a cost that does not move with price is a flat line, not a zoom into float noise
        c1.set_ylim(0, max(costs) * 1.15 or 1)
    c1.set(xlabel="mean price paid (USD)", ylabel="settlement cost per payment (USD)",
           title="Cost per payment vs price")
    c2.set(xlabel="mean price paid (USD)", ylabel="cost / price", title="Cost as a fraction of the price")
    for ax in (c1, c2):
        _log_if_wide(ax, [r.get("mean_price_usd") for r in rows], "x")
    _log_if_wide(c2, [r.get("cost_fraction_of_price") for r in rows])
    plots.append(_finish(fig, [c1, c2], out_dir / "cost_vs_price.png", drawn))
    return [p for p in plots if p is not None]

"""PNG plots of a run, drawn with matplotlib's Agg canvas (no pyplot, no display, no global
backend switch).

Readable at a glance: plain tick labels (no offset, no scientific notation), time plots binned by
whole blocks (x402bench.results.timeseries) with the warm-up, the drain after the window and every
fault window marked, and no empty panel: a plot with nothing to show is not drawn, and
render_plots says why in one line (DrawnPlots.omitted), which the report prints in its place."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter, StrMethodFormatter

from x402bench.results.channels import exposure_series, settlement_latencies, voucher_requests
from x402bench.results.economics import gas_stats
from x402bench.results.metrics import error_reason, in_window
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, SettlementRecord
from x402bench.results.stats import ecdf, finite, percentile
from x402bench.results.timeseries import MAX_BINS, TimeSeries, bin_width, paid_per_bin, time_series

#: File name -> title, in report order.
PLOTS = {
    "throughput.png": "Paid throughput over time",
    "latency_over_time.png": "Request latency over time",
    "request_latency_cdf.png": "Request latency CDF",
    "settlement_latency_hist.png": "Settlement latency histogram",
    "settlement_latency_cdf.png": "Settlement latency CDF",
    "gas_per_payment.png": "Gas per payment",
    "errors.png": "Errors by reason",
}
#: The Channels section's plots (batch-settlement runs only, and only those with data: no empty panel).
CHANNEL_PLOTS = {
    "channel_exposure.png": "Seller exposure and locked capital over time",
    "channel_settlement_latency_cdf.png": "Voucher settlement latency CDF",
    "channel_gas.png": "Gas per payment by scheme",
}
#: How to read each plot: the report's caption (the title is already in the image).
CAPTIONS = {
    "throughput.png": "Bars: paid 200s per bin of answer time (bins are whole blocks). Grey: warm-up and the "
                      "drain after the window, both outside the figures; coloured: fault windows; red: the "
                      "window's mean (dotted when not steady; the dashed segments are the first and last thirds the "
                      "steadiness check compared).",
    "latency_over_time.png": "Percentiles of the paid requests answered in each bin (bins with fewer than 5 "
                             "answers are gaps).",
    "request_latency_cdf.png": "Share of the paid requests answered in the steady window within a latency.",
    "settlement_latency_hist.png": "Payments per latency bin, from acceptance by the facilitator to the block "
                                   "holding the transfer; with interval blocks it spreads over about one block.",
    "settlement_latency_cdf.png": "Share of the settlements accepted in the steady window settled within a time.",
    "gas_per_payment.png": "Gas per payment of each settlement transaction; batched runs also by batch size.",
    "errors.png": "Failed requests of the whole run by reason code.",
    "channel_exposure.png": "What the seller served but had not claimed, and what payers had locked in escrow.",
    "channel_settlement_latency_cdf.png": "Voucher-paid requests: from the 200 to the claim covering the voucher.",
    "channel_gas.png": "Gas per payment of each scheme; the measured batch-settlement bar split by tx kind.",
}
#: Fewest values a distribution plot needs; fewer are listed in the tables, not drawn as a curve.
MIN_POINTS = 10
_SIZE = (7.0, 3.6)
_DPI = 100


class DrawnPlots(dict):
    """File name -> PNG path of the plots drawn, in report order; `omitted`: file name -> the one line
    saying why a plot was not drawn (the report prints it in the plot's place)."""

    def __init__(self) -> None:
        super().__init__()
        self.omitted: dict[str, str] = {}


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _plain(axis) -> None:
    """Tick labels as written numbers: no offset, no scientific notation."""
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _gas_axis(axis) -> None:
    """Gas counts: whole numbers with thousands separators, few enough ticks not to collide."""
    axis.set_major_locator(MaxNLocator(nbins=5))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _seconds_axis(axis) -> None:
    """Latency in seconds: plain numbers, at most 6 ticks."""
    axis.set_major_locator(MaxNLocator(nbins=6))
    _plain(axis)


#: One colour per fault window on time plots (cycled); each window is labelled with its kind.
_FAULT_COLOURS = ("#f4a261", "#e76f51", "#2a9d8f", "#9b5de5", "#f15bb5", "#00bbf9", "#8ac926", "#ffca3a")


def _fault_windows(ax, faults: Sequence[tuple[str, float, float]]) -> None:
    """Shade each fault's window on a time axis, its kind written at the top."""
    for i, (kind, start, end) in enumerate(faults):
        colour = _FAULT_COLOURS[i % len(_FAULT_COLOURS)]
        ax.axvspan(start, max(end, start + 0.3), color=colour, alpha=0.25, lw=0)
        ax.text(start, 0.98, f"{kind} ", transform=ax.get_xaxis_transform(), rotation=90, va="top", ha="left",
                fontsize="x-small", color="#444")


def _outside_window(ax, window: tuple[float, float] | None, until: float, legend: bool = True) -> None:
    """Grey the warm-up and the drain after the window: time the figures do not count."""
    if window is None:
        return
    start, end = window
    if start > 0:
        ax.axvspan(0, start, color="#bbb", alpha=0.35, lw=0, label="outside the window" if legend else None)
        legend = False
    if until > end:
        ax.axvspan(end, until, color="#bbb", alpha=0.35, lw=0, label="outside the window" if legend else None)


def _time_axes(ax, until: float) -> None:
    ax.set_xlim(0, until)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8))
    _plain(ax.xaxis)
    ax.set_xlabel("seconds since start")


def _series_from(requests: Sequence[RequestRecord], window: tuple[float, float] | None,
                 series: Mapping[str, Any] | None, block_time_s: float | None) -> TimeSeries | None:
    """The summary's time series when there is one (the figures the summary states), else from the records."""
    if series and series.get("t_s"):
        return series if any(series["throughput_rps"]) else None  # type: ignore[return-value]
    ends = [t for t in finite(r.t_end for r in requests if r.paid) if t >= 0]
    if not ends:
        return None
    until = max(max(ends), window[1] if window else 0.0)
    width = bin_width(until, block_time_s)
    return time_series(requests, width, until, paid_per_bin(ends, width, until))


def throughput_plot(path: Path, series: TimeSeries, window: tuple[float, float] | None,
                    faults: Sequence[tuple[str, float, float]] = (),
                    steadiness: Mapping[str, Any] | None = None) -> Path:
    """Paid 200s per bin of answer time, the window's mean, and (when it drifted) the first and last thirds'
    means the steadiness check compared."""
    fig, (ax,) = _figure()
    width = float(series["bin_s"])
    xs, ys = series["t_s"], series["throughput_rps"]
    until = xs[-1] + width
    ax.bar(xs, ys, width=width * (0.9 if len(xs) <= MAX_BINS // 2 else 1.0), align="edge", color="#3b7dd8",
           label=f"paid 200s per second ({width:g} s bins)")
    _outside_window(ax, window, until)
    steady = (steadiness or {}).get("steady")
    if window is not None and window[1] > window[0]:
        start, end = window
        inside = [(x, y) for x, y in zip(xs, ys) if x >= start - 1e-9 and x + width <= end + 1e-9]
        mean_rps = (steadiness or {}).get("mean_rps")
        if mean_rps is None and inside:
            mean_rps = sum(y for _, y in inside) / len(inside)
        if mean_rps is not None:
            word = "steady throughput" if steady else "window mean"
            ax.hlines(mean_rps, start, end, colors="#d83b3b", linestyles="-" if steady else ":",
                      label=f"{word} {mean_rps:.2f}/s")
        first, last = (steadiness or {}).get("first_third_rps"), (steadiness or {}).get("last_third_rps")
        fault_spans = [(f_start, f_end) for _, f_start, f_end in faults]
        used = [x for x, _ in inside if not any(x < f_end and f_start < x + width for f_start, f_end in fault_spans)]
        k = len(used) // 3
        if steady is False and k and first is not None and last is not None:
            drift = steadiness.get("drift")  # type: ignore[union-attr]
            label = "thirds: " + (f"drift {drift:+.0%} (not steady)" if drift is not None else "not steady")
            ax.hlines([first, last], [used[0], used[-k]], [used[k - 1] + width, used[-1] + width],
                      colors="#8a1414", linestyles="--", linewidth=2, label=label)
    _fault_windows(ax, faults)
    _time_axes(ax, until)
    ax.set_ylim(bottom=0)
    _plain(ax.yaxis)
    ax.set_ylabel("paid requests / s")
    ax.set_title(PLOTS["throughput.png"])
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)  # never over the bars
    return _save(fig, path)


def latency_time_plot(path: Path, series: TimeSeries, window: tuple[float, float] | None,
                      faults: Sequence[tuple[str, float, float]] = ()) -> Path | None:
    """p50/p95/p99 request latency per bin; None when no bin has enough answers to say."""
    width = float(series["bin_s"])
    mids = [x + width / 2 for x in series["t_s"]]
    lines = {q: series.get(f"request_p{q}_s") or [] for q in (50, 95, 99)}
    if not any(v is not None for v in lines[50]):
        return None
    fig, (ax,) = _figure()
    few = sum(v is not None for v in lines[50]) < 3
    for q, colour in ((50, "#3b7dd8"), (95, "#f4a261"), (99, "#d83b3b")):
        ys = [np.nan if v is None else v for v in lines[q]]
        ax.plot(mids, ys, "o" if few else "-", color=colour, markersize=4, label=f"p{q}")
    until = series["t_s"][-1] + width
    _outside_window(ax, window, until)
    _fault_windows(ax, faults)
    _time_axes(ax, until)
    ax.set_ylim(bottom=0)
    _seconds_axis(ax.yaxis)
    ax.set_ylabel("request latency (s)")
    ax.set_title(f"{PLOTS['latency_over_time.png']} (per {width:g} s bin)")
    fig.legend(loc="outside lower center", ncols=4, fontsize="small", frameon=False)
    return _save(fig, path)


def cdf_plot(path: Path, values: Sequence[float], title: str, xlabel: str) -> Path:
    """Empirical CDF with p50/p95/p99 marked (callers draw it only with MIN_POINTS values or more)."""
    fig, (ax,) = _figure()
    xs, ys = ecdf(values)
    ax.step(xs, ys, where="post", color="#3b7dd8")
    for q, style in ((50, ":"), (95, "--"), (99, "-.")):
        p = percentile(xs, q)
        ax.axvline(p, color="#d83b3b", linestyle=style, linewidth=1, label=f"p{q} {p:.3f} s")
    ax.set_ylim(0, 1.02)
    _seconds_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(f"{title} (n={len(xs):,})")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def histogram_plot(path: Path, values: Sequence[float], title: str, xlabel: str) -> Path:
    """Histogram with p50/p95 marked (callers draw it only with MIN_POINTS values or more)."""
    fig, (ax,) = _figure()
    xs = finite(values)
    ax.hist(xs, bins=min(40, max(5, int(math.sqrt(len(xs))))), color="#3b7dd8")
    for q, style in ((50, ":"), (95, "--")):
        p = percentile(xs, q)
        ax.axvline(p, color="#d83b3b", linestyle=style, linewidth=1.2, label=f"p{q} {p:.3f} s")
    _seconds_axis(ax.xaxis)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("payments")
    ax.set_title(f"{title} (n={len(xs):,})")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return _save(fig, path)


def gas_plot(path: Path, settlements: Sequence[SettlementRecord]) -> Path | None:
    """Per settlement tx: histogram of gas per payment, and (batched runs only) gas per payment against batch
    size; an unbatched run has one batch size, so that panel would say nothing. None without a receipt."""
    stats = gas_stats(settlements)
    per_tx = [t.gas_per_payment for t in stats.txs]
    sizes = [t.payments for t in stats.txs]
    if not per_tx:
        return None
    batched = len(set(sizes)) > 1
    fig, axes = _figure(2 if batched else 1)
    left = axes[0]
    values = Counter(round(g) for g in per_tx)
    if len(values) <= 8:  # a few exact figures (a sim's, or new vs known recipients): one bar each, labelled
        items = sorted(values.items())
        bars = left.bar([f"{g:,}" for g, _ in items], [n for _, n in items], color="#3b7dd8", width=0.6)
        left.bar_label(bars, labels=[f"{n:,}" for _, n in items], padding=2, fontsize="small")
        left.set_ylim(0, max(values.values()) * 1.15)
    else:
        left.hist(per_tx, bins=30, color="#3b7dd8")
        _gas_axis(left.xaxis)
        if stats.gas_per_payment is not None:
            left.axvline(stats.gas_per_payment, color="#d83b3b", linewidth=1,
                         label=f"amortised {stats.gas_per_payment:,.0f}")
            left.legend(loc="upper left", fontsize="small")
    left.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    left.yaxis.set_major_formatter(FuncFormatter(_count_label))
    left.set_xlabel("gas per payment (per tx)" + (f"; amortised {stats.gas_per_payment:,.0f}"
                                                   if stats.gas_per_payment is not None else ""))
    left.set_ylabel("transactions")
    if not batched:
        left.set_title(f"{PLOTS['gas_per_payment.png']} ({len(per_tx):,} txs, {sizes[0]} payment(s) each)")
        return _save(fig, path)
    right = axes[1]
    left.set_title("Distribution")
    right.scatter(sizes, per_tx, s=10, color="#3b7dd8", alpha=0.6)
    _gas_axis(right.yaxis)
    right.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    right.set_xlabel("payments in the tx (batch size)")
    right.set_ylabel("gas per payment")
    right.set_title("By batch size")
    fig.suptitle(PLOTS["gas_per_payment.png"])
    return _save(fig, path)


def _count_label(value: float, _pos: Any = None) -> str:
    """A count as people write it on an axis: 950, 12,000, 3.5M."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:,.3g}M"
    return f"{value:,.0f}"


def _wrap(code: str, width: int = 24) -> str:
    """A reason code over lines at its underscores, so a long one does not squeeze the bars."""
    lines, line = [], ""
    for part in code.split("_"):
        if line and len(line) + 1 + len(part) > width:
            lines.append(line + "_")
            line = part
        else:
            line = f"{line}_{part}" if line else part
    return "\n".join([*lines, line])


def errors_plot(path: Path, counts: Mapping[str, int]) -> Path | None:
    """Horizontal bars: failed requests per reason code, most frequent on top, each bar with its count;
    None without a failure."""
    if not counts:
        return None
    fig, (ax,) = _figure()
    items = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[-12:]
    bars = ax.barh([_wrap(k) for k, _ in items], [v for _, v in items], color="#d83b3b")
    ax.bar_label(bars, labels=[f"{v:,}" for _, v in items], padding=3, fontsize="small")
    ax.set_xlim(0, max(v for _, v in items) * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.tick_params(axis="y", labelsize="small")
    ax.set_xlabel("requests")
    more = f", {len(counts) - len(items)} rarer reasons in the Errors table" if len(counts) > len(items) else ""
    fig.suptitle(f"{PLOTS['errors.png']} ({sum(counts.values()):,} failed{more})")
    return _save(fig, path)


def exposure_plot(path: Path, requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                  txs: Sequence[ChannelTxRecord], decimals: int,
                  faults: Sequence[tuple[str, float, float]] = ()) -> Path | None:
    """Two step series over one time axis, USD: what the seller served but had not claimed yet (top), and
    what the payers had locked in escrow and not yet paid or got back (bottom). Their scales differ by
    orders of magnitude (a deposit covers many calls), hence two panels. None when there is nothing to draw."""
    ts, exposure, locked = exposure_series(requests, channels, txs)
    if not ts:
        return None
    scale = 10 ** decimals
    fig = Figure(figsize=(_SIZE[0], _SIZE[1] * 1.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, values, colour, label in ((top, exposure, "#d83b3b", "seller exposure (charged, unclaimed)"),
                                      (bottom, locked, "#3b7dd8", "locked by payers (deposits in escrow)")):
        ax.step(ts, [v / scale for v in values], where="post", color=colour)
        _fault_windows(ax, faults)
        ax.set_ylim(bottom=0)
        _plain(ax.yaxis)
        ax.set_ylabel("USD")
        ax.set_title(label, fontsize="medium")
    _plain(bottom.xaxis)
    bottom.set_xlabel("seconds since start")
    fig.suptitle(CHANNEL_PLOTS["channel_exposure.png"])
    return _save(fig, path)


#: Stack colours of the batch-settlement bar, by escrow tx kind.
_KIND_COLOURS = {"deposit": "#3b7dd8", "claim": "#2a9d8f", "settle": "#f4a261", "refund": "#9b5de5",
                 "withdraw": "#e76f51", "other": "#888888"}


def scheme_gas_plot(path: Path, requests: Sequence[RequestRecord], txs: Sequence[ChannelTxRecord],
                    comparison: Sequence[dict]) -> Path | None:
    """Horizontal bars, gas per payment: each row of the summary's economics comparison, this run's
    batch-settlement bar split by the escrow tx kind that spent it; None without a voucher-paid request."""
    vouchers = len(voucher_requests(requests))
    if not vouchers or not txs:
        return None
    per_kind: dict[str, float] = {}
    for tx in txs:
        per_kind[tx.kind] = per_kind.get(tx.kind, 0.0) + tx.gas_used / vouchers
    rows = [r for r in comparison if r.get("gas_per_payment") is not None
            and not (r.get("scheme") == "batch-settlement" and r.get("source") == "measured")]  # drawn stacked below
    fig, (ax,) = _figure()
    labels = [r["strategy"] if r["source"] in r["strategy"] else f"{r['strategy']} ({r['source']})" for r in rows]
    labels.append("batch-settlement (measured)")
    for i, r in enumerate(rows):
        ax.barh(i, r["gas_per_payment"], color="#bbbbbb" if r.get("source") == "model" else "#555555")
    left = 0.0
    y = len(rows)
    for kind in sorted(per_kind, key=lambda k: list(_KIND_COLOURS).index(k) if k in _KIND_COLOURS else 99):
        ax.barh(y, per_kind[kind], left=left, color=_KIND_COLOURS.get(kind, "#888888"), label=kind)
        left += per_kind[kind]
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    _gas_axis(ax.xaxis)
    ax.set_xlabel("gas per payment")
    ax.set_title(CHANNEL_PLOTS["channel_gas.png"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="escrow tx",
              title_fontsize="small")  # outside: the measured bar may be the longest
    return _save(fig, path)


def render_plots(out_dir: Path, requests: Sequence[RequestRecord], settlements: Sequence[SettlementRecord],
                 window: tuple[float, float] | None = None,
                 faults: Sequence[tuple[str, float, float]] = (), channels: Sequence[ChannelRecord] = (),
                 channel_txs: Sequence[ChannelTxRecord] = (), decimals: int = 6,
                 comparison: Sequence[dict] = (), summary: Mapping[str, Any] | None = None) -> DrawnPlots:
    """Write every plot that has something to show into out_dir; returns file name -> path in report order,
    with the reason for each plot left out (a stale file of that name from an earlier render is removed).
    `faults`: (kind, start, end) of each fault window, marked on the time plots. `summary`: the run's
    summary.json, whose time series, steadiness, error counts and chain the plots then follow (without it
    they are computed from the records). Channel plots (CHANNEL_PLOTS) only for a run with channels and
    data (`comparison`: the summary's channels.economics.comparison rows)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary or {}
    start, end = window if window else (0.0, math.inf)
    request_latency = [r.latency_s for r in requests if r.paid and in_window(r.t_end, start, end)]
    settle_latency = [s.settlement_latency_s for s in settlements if s.state == "settled"
                      and s.t_accepted >= start and s.settlement_latency_s is not None]
    out = DrawnPlots()
    channel_plots: dict[str, Path] = {}
    if channels or channel_txs:
        exposure = exposure_plot(out_dir / "channel_exposure.png", requests, channels, channel_txs, decimals, faults)
        if exposure is not None:
            channel_plots["channel_exposure.png"] = exposure
        latencies, _ = settlement_latencies(requests, channels, start)
        exact_too = bool(settle_latency)  # a voucher-only CDF says something new only next to exact ones
        settle_latency = settle_latency + latencies
        gas = scheme_gas_plot(out_dir / "channel_gas.png", requests, channel_txs, comparison)
        if gas is not None:
            channel_plots["channel_gas.png"] = gas
        if len(latencies) >= MIN_POINTS and exact_too:
            channel_plots["channel_settlement_latency_cdf.png"] = cdf_plot(
                out_dir / "channel_settlement_latency_cdf.png", latencies,
                CHANNEL_PLOTS["channel_settlement_latency_cdf.png"], "seconds (voucher served to the claim covering it)")
    chain = ((summary.get("scenario") or {}).get("config") or {}).get("chain") or {}
    block = chain.get("block_time_s") if chain.get("mining") == "interval" else None
    series = _series_from(requests, window, summary.get("timeseries"), block)
    settle_label = ("seconds (accepted to block; voucher: served to its claim)" if channels
                    else "seconds (accepted to block)")
    errors = summary.get("metrics", {}).get("errors") if summary else None
    if errors is None:
        errors = dict(Counter(error_reason(r) for r in requests if not r.paid))
    few = "fewer than {} {}: the figures are in the tables".format
    drawers = {
        "throughput.png": (lambda p: throughput_plot(p, series, window, faults, summary.get("steadiness"))
                           if series else None, "no paid request"),
        "latency_over_time.png": (lambda p: latency_time_plot(p, series, window, faults) if series else None,
                                  "no time bin holds 5 paid answers"),
        "request_latency_cdf.png": (lambda p: cdf_plot(p, request_latency, PLOTS["request_latency_cdf.png"],
                                                       "seconds (first byte to paid 200)")
                                    if len(request_latency) >= MIN_POINTS else None,
                                    few(MIN_POINTS, "paid requests answered in the steady window")),
        "settlement_latency_hist.png": (lambda p: histogram_plot(p, settle_latency,
                                                                 PLOTS["settlement_latency_hist.png"], settle_label)
                                        if len(settle_latency) >= MIN_POINTS else None,
                                        few(MIN_POINTS, "settlements included from the window's start")),
        "settlement_latency_cdf.png": (lambda p: cdf_plot(p, settle_latency, PLOTS["settlement_latency_cdf.png"],
                                                          settle_label)
                                       if len(settle_latency) >= MIN_POINTS else None,
                                       few(MIN_POINTS, "settlements included from the window's start")),
        "gas_per_payment.png": (lambda p: gas_plot(p, settlements) if not ((channels or channel_txs)
                                                                           and not gas_stats(settlements).txs)
                                else None, "no settled payment with a receipt"),
        "errors.png": (lambda p: errors_plot(p, errors), "no failed request"),
    }
    for name, (draw, why) in drawers.items():
        path = out_dir / name
        drawn = draw(path)
        if drawn is None:
            path.unlink(missing_ok=True)
            if not (name == "gas_per_payment.png" and (channels or channel_txs)):  # channel_gas.png says it
                out.omitted[name] = why
        else:
            out[name] = drawn
    for name in CHANNEL_PLOTS:
        if name in channel_plots:
            out[name] = channel_plots[name]
        else:
            (out_dir / name).unlink(missing_ok=True)
    return out

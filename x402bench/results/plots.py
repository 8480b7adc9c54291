"""PNG plots of a run, drawn with matplotlib's Agg canvas (no pyplot, no display, no global
backend switch), each one readable with empty data: a "no data" figure, never a crash."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter, StrMethodFormatter

from x402bench.results.channels import exposure_series, settlement_latencies, voucher_requests
from x402bench.results.economics import gas_stats
from x402bench.results.metrics import error_reason, in_window
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, SettlementRecord
from x402bench.results.stats import ecdf, finite, percentile

#: File name -> title, in report order.
PLOTS = {
    "throughput.png": "Paid throughput over time",
    "request_latency_cdf.png": "Request latency CDF",
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
_SIZE = (7.0, 3.6)
_DPI = 100


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _no_data(ax, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, f"no data\n{why}", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_xticks([])
    ax.set_yticks([])


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


#: One colour per fault window on time plots (cycled); each window is labelled with its kind.
_FAULT_COLOURS = ("#f4a261", "#e76f51", "#2a9d8f", "#9b5de5", "#f15bb5", "#00bbf9", "#8ac926", "#ffca3a")


def _fault_windows(ax, faults: Sequence[tuple[str, float, float]]) -> None:
    """Shade each fault's window on a time axis, its kind written at the top."""
    for i, (kind, start, end) in enumerate(faults):
        colour = _FAULT_COLOURS[i % len(_FAULT_COLOURS)]
        ax.axvspan(start, max(end, start + 0.3), color=colour, alpha=0.25, lw=0)
        ax.text(start, 1.0, f" {kind}", transform=ax.get_xaxis_transform(), rotation=90, va="top", ha="left",
                fontsize="x-small", color="#444")


def throughput_plot(path: Path, requests: Sequence[RequestRecord], window: tuple[float, float] | None,
                    faults: Sequence[tuple[str, float, float]] = ()) -> Path:
    """Paid 200s per 1 s bin of response time; the warmup is shaded, fault windows marked, and the steady
    throughput drawn by the metrics' rule (x402bench.results.metrics: paid requests answered in the window)."""
    fig, (ax,) = _figure()
    ends = finite(r.t_end for r in requests if r.paid)
    ends = [t for t in ends if t >= 0]
    if not ends:
        _no_data(ax, PLOTS["throughput.png"], "no paid request")
        return _save(fig, path)
    bins = Counter(int(math.floor(t)) for t in ends)
    last = max(bins)
    xs = list(range(last + 1))
    ax.bar(xs, [bins.get(x, 0) for x in xs], width=1.0, align="edge", color="#3b7dd8", label="paid 200s per second")
    if window is not None:
        start, end = window
        if start > 0:
            ax.axvspan(0, start, color="#ccc", alpha=0.5, label="warmup (excluded)")
        length = end - start
        if length > 0:  # metrics.throughput_rps: the paid requests answered in the window (one rule)
            rate = sum(1 for t in ends if in_window(t, start, end)) / length
            ax.hlines(rate, start, end, colors="#d83b3b", label=f"steady throughput {rate:.2f}/s")
    _fault_windows(ax, faults)
    _plain(ax.xaxis)
    _plain(ax.yaxis)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("paid requests / s")
    ax.set_title(PLOTS["throughput.png"])
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def cdf_plot(path: Path, values: Sequence[float], title: str, xlabel: str, why: str) -> Path:
    """Empirical CDF with p50/p95/p99 marked."""
    fig, (ax,) = _figure()
    xs, ys = ecdf(values)
    if not xs:
        _no_data(ax, title, why)
        return _save(fig, path)
    ax.step(xs, ys, where="post", color="#3b7dd8")
    for q, style in ((50, ":"), (95, "--"), (99, "-.")):
        p = percentile(xs, q)
        ax.axvline(p, color="#d83b3b", linestyle=style, linewidth=1, label=f"p{q} {p:.3f} s")
    ax.set_ylim(0, 1.02)
    _plain(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(f"{title} (n={len(xs)})")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def gas_plot(path: Path, settlements: Sequence[SettlementRecord]) -> Path:
    """Per settlement tx: histogram of gas per payment, and gas per payment against batch size."""
    stats = gas_stats(settlements)
    per_tx = [t.gas_per_payment for t in stats.txs]
    sizes = [t.payments for t in stats.txs]
    if not per_tx:
        fig, (ax,) = _figure()
        _no_data(ax, PLOTS["gas_per_payment.png"], "no settled payment with a receipt")
        return _save(fig, path)
    fig, (left, right) = _figure(2)
    left.hist(per_tx, bins=min(30, max(1, len(set(per_tx)))), color="#3b7dd8")
    _gas_axis(left.xaxis)
    _plain(left.yaxis)
    _gas_axis(right.yaxis)
    left.set_xlabel("gas per payment (per tx)")
    left.set_ylabel("transactions")
    left.set_title("Distribution")
    right.scatter(sizes, per_tx, s=10, color="#3b7dd8", alpha=0.6)
    if stats.gas_per_payment is not None:
        right.axhline(stats.gas_per_payment, color="#d83b3b", linewidth=1,
                      label=f"amortised {stats.gas_per_payment:,.0f}")
        right.legend(loc="upper right", fontsize="small")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("payments in the tx (batch size)")
    right.set_ylabel("gas per payment")
    right.set_title("By batch size")
    fig.suptitle(PLOTS["gas_per_payment.png"])
    return _save(fig, path)


def errors_plot(path: Path, requests: Sequence[RequestRecord]) -> Path:
    """Horizontal bars: failed requests per reason code, most frequent on top."""
    fig, (ax,) = _figure()
    counts = Counter(error_reason(r) for r in requests if not r.paid)
    if not counts:
        _no_data(ax, PLOTS["errors.png"], "no failed request" if requests else "no request")
        return _save(fig, path)
    items = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#d83b3b")
    ax.set_xlabel("requests")
    ax.set_title(f"{PLOTS['errors.png']} (of {len(requests)} requests)")
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
                 comparison: Sequence[dict] = ()) -> dict[str, Path]:
    """Write every plot into out_dir; returns file name -> path in report order. `faults`: (kind, start,
    end) of each fault window, marked on the time plots. Channel plots (CHANNEL_PLOTS) are added only
    for a run with channels and only when they have data; such a run without exact settlements gets no
    (empty) exact gas plot, its gas is in channel_gas.png (`comparison`: the summary's
    channels.economics.comparison rows)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, end = window if window else (0.0, math.inf)
    request_latency = [r.latency_s for r in requests if r.paid and in_window(r.t_end, start, end)]
    settle_latency = [s.settlement_latency_s for s in settlements if s.state == "settled"
                      and s.t_accepted >= start and s.settlement_latency_s is not None]
    drawn: dict[str, Path] = {}
    if channels or channel_txs:
        exposure = exposure_plot(out_dir / "channel_exposure.png", requests, channels, channel_txs, decimals, faults)
        if exposure is not None:
            drawn["channel_exposure.png"] = exposure
        latencies, _ = settlement_latencies(requests, channels, start)
        exact_too = bool(settle_latency)  # a voucher-only CDF says something new only next to exact ones
        settle_latency = settle_latency + latencies
        gas = scheme_gas_plot(out_dir / "channel_gas.png", requests, channel_txs, comparison)
        if gas is not None:
            drawn["channel_gas.png"] = gas
        if latencies and exact_too:
            drawn["channel_settlement_latency_cdf.png"] = cdf_plot(
                out_dir / "channel_settlement_latency_cdf.png", latencies,
                CHANNEL_PLOTS["channel_settlement_latency_cdf.png"], "seconds (voucher served to the claim covering it)",
                "no claimed voucher")
    plots = {
        "throughput.png": throughput_plot(out_dir / "throughput.png", requests, window, faults),
        "request_latency_cdf.png": cdf_plot(out_dir / "request_latency_cdf.png", request_latency,
                                            PLOTS["request_latency_cdf.png"], "seconds (first byte to paid 200)",
                                            "no paid request answered in the steady window"),
        "settlement_latency_cdf.png": cdf_plot(out_dir / "settlement_latency_cdf.png", settle_latency,
                                               PLOTS["settlement_latency_cdf.png"],
                                               "seconds (accepted to block; voucher: served to its claim)"
                                               if channels else "seconds (accepted to block)",
                                               "no settlement included in the steady window"),
        "gas_per_payment.png": gas_plot(out_dir / "gas_per_payment.png", settlements),
        "errors.png": errors_plot(out_dir / "errors.png", requests),
        **drawn,
    }
    if (channels or channel_txs) and not gas_stats(settlements).txs:
        plots.pop("gas_per_payment.png").unlink(missing_ok=True)
    return plots

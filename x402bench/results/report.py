"""report.html: one self-contained page per run, readable offline and safe to attach to a CI
job: inline CSS, plots embedded as base64 data URIs, no script, no link, no external URL.

Any text that would spell a URL (an RPC address in meta, an external service in the
scenario) is written with its colon as an HTML entity, so it reads the same but the file
never contains "http://" or "https://".
"""

from __future__ import annotations

import base64
import html
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from x402bench.results.metrics import PHASES
from x402bench.results.plots import CAPTIONS, CHANNEL_PLOTS, PLOTS

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f6f6}
.pass{background:#e3f6e3;color:#155a15}.fail{background:#fbe2e2;color:#8a1414}.muted{color:#888}
.badge{display:inline-block;padding:.2em .7em;border-radius:.3em;font-weight:600}
.bar{display:inline-block;height:.8em;background:#3b7dd8;vertical-align:middle}.bar.l1{background:#f4a261}
.warn{background:#fff3cd;color:#6b4e00;border:1px solid #e0c060;padding:.5em .8em;border-radius:.3em;font-weight:600}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}figure{margin:1em 0}img{max-width:100%}
"""


def esc(value: Any) -> str:
    """HTML-escape, and defuse URL schemes so the page never names an external address."""
    return html.escape(str(value)).replace("://", "&#58;//")


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for humans: None is n/a, floats get significant digits, ints get separators."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value and abs(value) < 1e-3:  # 0.00002, not 2e-05: plain numbers throughout the page
            return np.format_float_positional(value, precision=digits, unique=False, fractional=False, trim="-")
        return f"{value:.{digits}g}"
    return str(value)


def _table(rows: Iterable[tuple[Any, ...]], header: tuple[str, ...] | None = None,
           classes: Iterable[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row, cls in zip(rows, classes if classes is not None else repeat("")):
        cells = "".join(f'<td class="num">{esc(fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
                        else f"<td>{esc(fmt(c))}</td>" for c in row)
        out.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _metrics_rows(m: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = [
        ("paid throughput (mean over the steady window, req/s)", m.get("throughput_rps")),
        ("requests / paid (whole run)", f"{fmt(m.get('requests'))} / {fmt(m.get('paid'))}"),
        ("requests / paid (answered in the steady window)",
         f"{fmt(m.get('steady_requests'))} / {fmt(m.get('steady_paid'))}"),
        ("requests answered after the window (started by its end)", m.get("answered_after_window")),
        ("error rate (steady window)", m.get("error_rate")),
    ]
    for key, label in (("request_latency_s", "request latency (s)"), ("settlement_latency_s", "settlement latency (s)")):
        d = m.get(key) or {}
        rows.append((label, " / ".join(f"{q} {fmt(d.get(q))}" for q in ("p50", "p95", "p99", "mean", "max"))))
    rows += [
        ("gas per payment (amortised)", m.get("gas_per_payment")),
        ("mean batch size", (m.get("gas") or {}).get("mean_batch_size")),
        ("cost per payment (USD)", m.get("cost_per_payment_usd")),
        ("cost per payment: execution gas (USD)", (m.get("cost_breakdown_usd") or {}).get("execution_gas_usd")),
        ("cost per payment: L1 data fee share (USD)", (m.get("cost_breakdown_usd") or {}).get("l1_fee_usd")),
        ("mean price paid (USD)", m.get("mean_price_usd")),
        ("cost as a fraction of price", m.get("cost_fraction_of_price")),
    ]
    for fraction, price in sorted((m.get("break_even_price_usd") or {}).items(), key=lambda kv: float(kv[0])):
        rows.append((f"price at which cost is {float(fraction):.0%} (USD)", price))
    w = m.get("window") or {}
    rows.append(("steady window (s)", f"{fmt(w.get('start_s'))} to {fmt(w.get('end_s'))}"))
    return rows


def _notes_html(summary: Mapping[str, Any]) -> list[str]:
    """What the reader must know before the figures: an overloaded world, records not all kept, and
    the window rule every figure below follows (x402bench.results.metrics)."""
    meta = summary.get("meta") or {}
    out = []
    load = (meta.get("sim") or {}).get("load") or {}
    if load.get("warning"):
        out.append(f'<p class="badge fail">{esc(load["warning"])}</p>')
    rec = meta.get("records") or {}
    if rec and rec.get("kept") is not None and rec.get("total") is not None and rec["kept"] < rec["total"]:
        where = (f'; every request is in {esc(rec["parquet_file"])}' if rec.get("parquet_file") else "")
        out.append(f'<p class="muted">records: {fmt(rec["kept"])} of {fmt(rec["total"])} requests kept '
                   f'(mode {esc(rec.get("mode"))}: every paid one, failed ones counted past the cap); the metrics '
                   f"count every request, the plots and requests.csv show the kept ones{where}</p>")
    steady = summary.get("steadiness") or {}
    if steady.get("steady") is False:
        out.append(f'<p class="warn" id="steadiness-warning">&#9888; {esc(steady.get("message"))}</p>')
    out.append('<p class="muted">windowed figures (throughput, latency, phases, error rate) all count the '
               "requests answered in the steady window, whenever they started</p>")
    return out


def _steady_badge(summary: Mapping[str, Any]) -> str:
    """The header's word on steadiness: only when it was judged."""
    steady = (summary.get("steadiness") or {}).get("steady")
    if steady is None:
        return ""
    return (f" · throughput <span class=\"badge {'pass' if steady else 'fail'}\">"
            f"{'steady' if steady else 'NOT steady'}</span>")


def _steadiness_html(steady: Mapping[str, Any]) -> list[str]:
    """The steadiness check (x402bench.results.timeseries): its verdict, the fitted line and how it was made."""
    if not steady:
        return []
    verdict = {True: ("pass", "steady"), False: ("fail", "not steady"), None: ("muted", "not judged")}[
        steady.get("steady")]
    return ["<h2>Steadiness</h2>",
            f'<p><span class="badge {verdict[0]}">{verdict[1]}</span> {esc(steady.get("message"))}</p>',
            _table([("drift (last third / first third - 1)",
                     "n/a" if steady.get("drift") is None else f"{steady['drift']:+.1%}"),
                    ("limit", f"±{steady.get('limit', 0):.0%}"),
                    ("paid throughput, first third / last third of the window (req/s)",
                     f"{fmt(steady.get('first_third_rps'))} / {fmt(steady.get('last_third_rps'))}"),
                    ("mean of the bins (req/s)", fmt(steady.get("mean_rps"))),
                    ("bins compared", f"{fmt(steady.get('bins'))} of {fmt(steady.get('bin_s'))} s"),
                    ("method", steady.get("method"))], ("figure", "value"))]


def _routes_html(routes: Mapping[str, Any]) -> list[str]:
    """Per route: the run's figures split by service (x402bench.results.routes)."""
    if not routes:
        return []
    rows = [(name, r.get("requests"), r.get("paid"), r.get("errors"), r.get("throughput_rps"), r.get("error_rate"),
             r.get("request_p50_s"), r.get("request_p95_s")) for name, r in routes.items()]
    note = ([] if all(r.get("complete", True) for r in routes.values()) else
            ['<p class="muted">not every request record was kept: per-route errors count the kept records only '
             "(the totals above count every request)</p>"])
    return ["<h2>Routes</h2>",
            '<p class="muted">counts: whole run; throughput, error rate and latency: answered in the steady '
            "window</p>", *note,
            _table(rows, ("route", "requests", "paid", "errors", "paid req/s", "error rate", "latency p50 (s)",
                          "latency p95 (s)"), ["fail" if r.get("errors") else "" for r in routes.values()])]


def _cost_html(m: Mapping[str, Any]) -> list[str]:
    """Cost per payment in its parts (execution gas, the L1 fee share), each with its share of the whole."""
    split = m.get("cost_breakdown_usd") or {}
    total = split.get("total_usd")
    if not total:
        return []
    rows = []
    for key, label, cls in (("execution_gas_usd", "execution gas", "bar"), ("l1_fee_usd", "L1 data fee share",
                                                                               "bar l1")):
        value = split.get(key) or 0.0
        width = int(300 * value / total)
        rows.append(f"<tr><td>{esc(label)}</td><td class=\"num\">{esc(fmt(value))}</td>"
                    f"<td class=\"num\">{value / total:.0%}</td>"
                    f'<td><span class="{cls}" style="width:{width}px"></span></td></tr>')
    rows.append(f"<tr><td>total</td><td class=\"num\">{esc(fmt(total))}</td><td class=\"num\">100%</td><td></td></tr>")
    return ["<h2>Cost per payment</h2>",
            '<p class="muted">gas per payment at the scenario\'s gas price and ETH/USD, plus each payment\'s share '
            "of the per-transaction L1 fee</p>",
            "<table><tr><th>part</th><th>USD</th><th>share</th><th></th></tr>" + "".join(rows) + "</table>"]


def _phase_html(phases: Mapping[str, Any]) -> str:
    order = [p for p in PHASES if p in phases] + sorted(p for p in phases if p not in PHASES)
    phases = {p: phases[p] for p in order}
    values = {k: v for k, v in phases.items() if isinstance(v, (int, float))}
    top = max(values.values(), default=0) or 1
    rows = []
    for name, value in phases.items():
        width = int(200 * (values.get(name, 0) / top))
        bar = f'<span class="bar" style="width:{width}px"></span>' if width else ""
        rows.append(f"<tr><td>{esc(name)}</td><td class=\"num\">{esc(fmt(None if value is None else value * 1000))}"
                    f" ms</td><td>{bar}</td></tr>")
    return "<table><tr><th>phase</th><th>mean</th><th></th></tr>" + "".join(rows) + "</table>"


def _cpu_html(cpu: Mapping[str, Any] | None) -> str:
    if not cpu:
        return '<p class="muted">no CPU figures for this run</p>'
    per_paid = cpu.get("ms_per_paid_request") or {}
    rows = [(role, s, per_paid.get(role)) for role, s in sorted((cpu.get("seconds") or {}).items())]
    rows.append(("total", cpu.get("total_seconds"), cpu.get("total_ms_per_paid_request")))
    return _table(rows, ("process", "CPU seconds", "CPU ms per paid request"))


def _img(name: str, data: bytes) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    title = PLOTS.get(name) or CHANNEL_PLOTS.get(name, name)
    caption = CAPTIONS.get(name)
    return (f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{b64}">'
            + (f'<figcaption class="muted">{esc(caption)}</figcaption>' if caption else "") + "</figure>")


def _plot(plots: Mapping[str, bytes | Path], name: str) -> list[str]:
    if name not in plots:
        return []
    data = plots[name]
    return [_img(name, data if isinstance(data, bytes) else Path(data).read_bytes())]


def _usd(amount: Any, decimals: int) -> Any:
    return None if amount is None else amount / 10**decimals


#: Most channels listed one by one in the report (those the seller is most exposed on first).
CHANNEL_ROWS = 20


def _channel_rows(channels: Sequence[Any], decimals: int) -> list[str]:
    if not channels:
        return []
    ranked = sorted(channels, key=lambda c: (-abs(c.unclaimed), -c.charged, c.channel))[:CHANNEL_ROWS]
    rows = [(f"{c.channel[:10]}…", f"{c.payer[:10]}…", _usd(c.deposited, decimals), _usd(c.charged, decimals),
             _usd(c.claimed, decimals), _usd(c.refunded, decimals), _usd(c.unclaimed, decimals),
             _usd(c.refundable, decimals), c.vouchers, c.deposits) for c in ranked]
    more = len(channels) - len(ranked)
    return [_table(rows, ("channel", "payer", "deposited $", "charged $", "claimed $", "refunded $", "unclaimed $",
                          "refundable $", "vouchers", "deposits"),
                   ["fail" if c.unclaimed else "" for c in ranked]),
            f'<p class="muted">{more} more channel(s) in channels.csv</p>' if more > 0 else ""]


def _channels_html(section: Mapping[str, Any] | None, decimals: int, plots: Mapping[str, bytes | Path],
                   channels: Sequence[Any] = ()) -> list[str]:
    """The Channels section: the books, their verdict, exposure and locked capital, the economics of the
    scheme against the exact strategies (x402bench.results.channels defines every figure); `channels`
    (ChannelRecords, when the caller has them) adds the books per channel, most exposed first."""
    if not section:
        return []
    t = section.get("totals") or {}
    rec = section.get("reconciliation") or {}
    books = [(label, t.get(key), _usd(t.get(key), decimals)) for key, label in (
        ("deposited", "deposited into escrow"), ("charged", "charged (vouchers served)"),
        ("claimed", "claimed"), ("refunded", "refunded to payers"),
        ("unclaimed", "unclaimed (seller's exposure at the end)"),
        ("refundable", "refundable (payers' unspent deposits)"))]
    if rec.get("settled") is not None:
        books.insert(3, ("settled to the payees", rec.get("settled"), _usd(rec.get("settled"), decimals)))
    if rec.get("payee_balance_delta") is not None:
        books.insert(4, ("payees' balance change from the escrow", rec.get("payee_balance_delta"),
                         _usd(rec.get("payee_balance_delta"), decimals)))
    exact = rec.get("exact")
    badge = "pass" if exact else "fail"
    verdict = [(k, rec.get(k)) for k in ("served_unpaid", "paid_unserved", "double_settled", "pending",
                                         "served_unpaid_amount", "paid_unserved_amount")]
    verdict += [(f"check: {name}", ok) for name, ok in sorted((rec.get("checks") or {}).items())]
    verdict += [("findings", "; ".join(rec.get("findings") or []) or "none")]
    cap, exp = section.get("capital") or {}, section.get("exposure") or {}
    lat = section.get("settlement_latency_s") or {}
    e = section.get("economics") or {}
    comparison = [(r.get("scheme"), r.get("strategy"), r.get("gas_per_payment"), r.get("txs_per_payment"),
                   r.get("cost_per_payment_usd"),
                   *((r.get("break_even_price_usd") or {}).get(f) for f in ("0.01", "0.05", "0.1")),
                   r.get("source")) for r in e.get("comparison") or []]
    usage = e.get("usage") or {}
    return [
        "<h2>Channels (batch-settlement)</h2>",
        f"<p>{fmt(t.get('channels'))} channels of {fmt(t.get('payers'))} payers · {fmt(t.get('vouchers'))} "
        f"voucher-paid requests · {fmt(t.get('deposits'))} deposits · books "
        f"<span class='badge {badge}'>{'exact' if exact else 'not exact'}</span></p>",
        _table(books, ("books", "atomic units", "USD")),
        *_channel_rows(channels, decimals),
        _table(verdict, ("reconciliation", "value"), ["fail" if isinstance(v, int) and not isinstance(v, bool) and v
                                                      or v is False else "" for _, v in verdict]),
        _table([
            ("settlement latency (s): voucher served to the claim covering it",
             " / ".join(f"{q} {fmt(lat.get(q))}" for q in ("p50", "p95", "p99", "mean", "max"))),
            ("vouchers no claim covered", section.get("unsettled_vouchers")),
            ("capital locked in deposits (USD)", cap.get("deposited_usd")),
            ("locked per payer, mean / max (USD)", f"{fmt(cap.get('per_payer_mean_usd'))} / "
                                                   f"{fmt(cap.get('per_payer_max_usd'))}"),
            ("peak locked at once (USD)", cap.get("peak_locked_usd")),
            ("deposit per paid request (USD)", cap.get("deposit_per_paid_request_usd")),
            ("seller exposure peak / time-mean / end (USD)", f"{fmt(exp.get('peak_usd'))} / "
                                                             f"{fmt(exp.get('mean_usd'))} / {fmt(exp.get('final_usd'))}"),
        ], ("figure", "value")),
        *_plot(plots, "channel_exposure.png"),
        *_plot(plots, "channel_settlement_latency_cdf.png"),
        "<h3>Economics per scheme</h3>",
        *_plot(plots, "channel_gas.png"),
        '<p class="muted">measured: this run; model: x402bench.results.economics reference figures '
        "(exact) or its channel model on this run's usage (batch-settlement)</p>",
        _table(comparison, ("scheme", "strategy", "gas / payment", "txs / payment", "USD / payment",
                            "break-even 1%", "break-even 5%", "break-even 10%", "source")),
        _table([(kind, v.get("count"), v.get("gas")) for kind, v in (e.get("txs") or {}).items()],
               ("escrow tx", "count", "gas"))
        if e.get("txs") else '<p class="muted">no escrow transaction</p>',
        _table([("payments per channel", usage.get("payments_per_channel")),
                ("payments per channel per claim", usage.get("payments_per_claim")),
                ("payments per settle", usage.get("payments_per_settle")),
                ("channels per claim tx", usage.get("channels_per_claim")),
                ("deposits per channel", usage.get("deposits_per_channel")),
                ("model gas per payment (fitted gas, this usage)", e.get("model_gas_per_payment"))],
               ("model input (this run)", "value")) if usage else "",
        '<p class="muted">the model over other usage: this run\'s fitted gas, settle interval and channels per '
        "claim tx</p>",
        _table([(r.get("payments_per_channel"), r.get("payments_per_claim"), r.get("gas_per_payment"))
                for r in e.get("sensitivity") or []], ("payments per channel", "payments per claim",
                                                       "model gas / payment")),
    ]


def _faults_html(rows: list[Mapping[str, Any]]) -> list[str]:
    """The per-fault table: each window, what money did during and after it, and the throughput dip."""
    if not rows:
        return []
    losses = ("served_unpaid", "paid_unserved", "double_settled", "pending")
    body = []
    marks = []
    for row in rows:
        during, after = row.get("during") or {}, row.get("after") or {}
        dip = row.get("throughput_dip")
        body.append((row.get("kind"), f"{row.get('at_s', 0):g}–{row.get('end_s', 0):g} s",
                     *(f"{during.get(k, 0)} / {after.get(k, 0)}" for k in losses),
                     "n/a" if dip is None else f"{dip:.0%}"))
        marks.append("fail" if any(during.get(k) or after.get(k) for k in losses[:3]) else "pass")
    return ["<h2>Faults</h2>",
            '<p class="muted">each count: during the window / after it, until the next fault</p>',
            _table(body, ("fault", "window", *losses, "throughput dip"), marks)]


def _when(summary: Mapping[str, Any]) -> str:
    """A simulated run has no wall-clock start: say so rather than n/a."""
    if summary.get("mode") == "sim":
        sim = (summary.get("meta") or {}).get("sim") or {}
        return f"simulated {fmt(sim.get('simulated_s'))} s"
    return "started n/a"


def render_report(summary: Mapping[str, Any], plots: Mapping[str, bytes | Path], channels: Sequence[Any] = ()) -> str:
    """The whole HTML page for a summary and its plots (file name -> PNG bytes or path); `channels`:
    the run's ChannelRecords, for the per-channel books."""
    m = summary.get("metrics") or {}
    rec = summary.get("reconciliation") or {}
    slo = summary.get("slo") or {"passed": True, "checks": []}
    scenario = summary.get("scenario") or {}
    name = scenario.get("name", "?")
    verdict = "pass" if slo.get("passed") else "fail"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>x402bench: {esc(name)} {esc(summary.get('run_id') or '')}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(name)} <span class=\"muted\">({esc(summary.get('mode'))} run)</span></h1>",
        f"<p>run {esc(summary.get('run_id') or 'n/a')} · "
        f"{'started ' + esc(summary.get('started_at')) if summary.get('started_at') else esc(_when(summary))} · "
        f"seed {esc(summary.get('seed'))} · SLO <span class=\"badge {verdict}\">{verdict.upper()}</span> · "
        f"reconciliation <span class=\"badge {'pass' if rec.get('exact') else 'fail'}\">"
        f"{'exact' if rec.get('exact') else ('not exact' if rec else 'n/a')}</span>{_steady_badge(summary)}</p>",
        "<h2>Key metrics</h2>", *_notes_html(summary), _table(_metrics_rows(m)),
        *_steadiness_html(summary.get("steadiness") or {}),
        *_routes_html(summary.get("routes") or {}),
        *_cost_html(m),
        "<h2>SLO checks</h2>",
        _table([(c.get("name"), c.get("measured"), c.get("op"), c.get("bound"), "pass" if c.get("passed") else "FAIL",
                 c.get("message", "")) for c in slo.get("checks", [])],
               ("check", "measured", "op", "bound", "verdict", "detail"),
               ["pass" if c.get("passed") else "fail" for c in slo.get("checks", [])])
        if slo.get("checks") else '<p class="muted">no SLO set in the scenario</p>',
        "<h2>Reconciliation</h2>",
        _table([(k, v if not isinstance(v, (list, dict)) else ", ".join(map(str, v)) or "none")
                for k, v in sorted(rec.items()) if k != "channels"], ("figure", "value"))
        if rec else '<p class="muted">no reconciliation for this run</p>',
        *_channels_html(summary.get("channels"), int((scenario.get("config") or {}).get("token", {}).get("decimals", 6)),
                        plots, channels),
        *_faults_html(summary.get("faults") or []),
        "<h2>Phase split (paid requests answered in the steady window)</h2>",
        _phase_html(m.get("phase_s") or {}) if m.get("steady_paid") or m.get("steady_paid") is None
        else '<p class="muted">no paid request answered in the steady window: throughput 0, no latency or phases</p>',
        "<h2>Errors</h2>",
        _table(sorted((m.get("errors") or {}).items()), ("reason", "requests"))
        if m.get("errors") else '<p class="muted">no failed request</p>',
        "<h2>CPU</h2>", _cpu_html(m.get("cpu")),
        "<h2>Plots</h2>",
    ]
    omitted = getattr(plots, "omitted", {})
    for file_name in PLOTS:
        if file_name in plots:
            data = plots[file_name]
            parts.append(_img(file_name, data if isinstance(data, bytes) else Path(data).read_bytes()))
        elif file_name in omitted:
            parts.append(f'<p class="muted">{esc(PLOTS[file_name])}: not drawn, {esc(omitted[file_name])}</p>')
    parts += [
        "<h2>Versions</h2>", _table(sorted((summary.get("versions") or {}).items()), ("package", "version")),
        "<h2>Scenario</h2>",
        f"<pre>{esc(yaml.safe_dump(scenario.get('config') or {}, sort_keys=False, allow_unicode=True))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"

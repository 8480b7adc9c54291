"""The report's figures over time, per route and per cost part, on synthetic records (pure logic, no
chain): bins of whole blocks, the steadiness check live and from a tally alike, the per-route table,
the cost split, and plots that are omitted rather than drawn empty, with plain tick labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from x402bench.results import economics as econ
from x402bench.results.metrics import RequestTally
from x402bench.results.records import RequestRecord, SettlementRecord
from x402bench.results.report import render_report
from x402bench.results.rundir import write_run
from x402bench.results.summary import build_summary
from x402bench.results.timeseries import DRIFT_LIMIT, MAX_BINS, bin_width, paid_per_bin, steadiness
from x402bench.scenario import Economics, load_scenario

REPO = Path(__file__).resolve().parents[1]
SMOKE = load_scenario(REPO / "scenarios" / "smoke.yaml")
TWO_S = SMOKE.with_overrides(chain={"mining": "interval", "block_time_s": 2.0}, run={"duration_s": 60, "warmup_s": 0})


def paid(t_end: float, route: str = "weather", latency: float = 0.1, i: int = 0) -> RequestRecord:
    return RequestRecord(t_start=t_end - latency, t_end=t_end, route=route, agent=0, status=200, amount=1000,
                         payer="0x" + "a" * 40, nonce=f"0x{i:064x}", paid_s=latency)


def refused(t_end: float, route: str = "quote") -> RequestRecord:
    return RequestRecord(t_start=t_end - 0.01, t_end=t_end, route=route, agent=0, status=402, error="insufficient_funds")


def blocks(rate_per_s: float, start: float, end: float, block_s: float = 2.0, offset: float = 0.05) -> list[float]:
    """Answer times of a sync facilitator on interval blocks: every answer just after a block."""
    out = []
    t = start + offset
    while t < end:
        out += [t + 0.001 * k for k in range(int(round(rate_per_s * block_s)))]
        t += block_s
    return out


def test_bins_are_whole_blocks_at_least_a_second_and_at_most_max_bins() -> None:
    assert bin_width(60, 2.0) == 2.0            # one block per bin: no empty every-other bar
    assert bin_width(60, 0.2) == 1.0            # five 0.2 s blocks
    assert bin_width(60, 0.3) == pytest.approx(1.2)
    assert bin_width(60, None) == 1.0           # automine: no block rhythm
    assert bin_width(3600, 2.0) == 36.0 and 3600 / 36 <= MAX_BINS
    assert bin_width(3600, None) == 36.0
    assert bin_width(86_400, 0.25) % 0.25 == pytest.approx(0) and 86_400 / bin_width(86_400, 0.25) <= MAX_BINS


def test_two_second_blocks_read_the_real_rate_in_every_bin() -> None:
    ends = blocks(10.0, 0, 60)  # 20 answers per 2 s block: 10/s
    per_bin = paid_per_bin(ends, bin_width(60, 2.0), 60) / bin_width(60, 2.0)
    assert set(per_bin[:30].tolist()) == {10.0}  # 1 s bins read 20, 0, 20, 0...
    s = build_summary(TWO_S, [paid(t, i=i) for i, t in enumerate(ends)], [], {}, "load", {"duration_s": 60.0})
    assert s["timeseries"]["bin_s"] == 2.0 and max(s["timeseries"]["throughput_rps"]) == 10.0
    assert s["steadiness"]["steady"] is True and s["steadiness"]["drift"] == pytest.approx(0.0)


def test_a_slowing_run_is_not_steady_and_the_report_says_so() -> None:
    ends = blocks(14.0, 0, 20) + blocks(10.0, 20, 40) + blocks(7.0, 40, 60)  # like automine piling up blocks
    requests = [paid(t, i=i) for i, t in enumerate(ends)]
    s = build_summary(TWO_S, requests, [], {}, "load", {"duration_s": 60.0})
    st = s["steadiness"]
    assert st["steady"] is False and st["drift"] < -DRIFT_LIMIT
    assert st["first_third_rps"] == pytest.approx(14.0, rel=0.05) and st["last_third_rps"] == pytest.approx(7.0, rel=0.05)
    assert st["drift"] == pytest.approx(-0.5, abs=0.05)
    assert s["metrics"]["throughput_rps"] == pytest.approx(st["mean_rps"], rel=0.05)  # the mean, still reported
    page = render_report(s, {})
    assert 'id="steadiness-warning"' in page and "throughput NOT steady" in page
    steady = build_summary(TWO_S, [paid(t, i=i) for i, t in enumerate(blocks(10.0, 0, 60))], [], {}, "load",
                           {"duration_s": 60.0})
    page = render_report(steady, {})
    assert "steadiness-warning" not in page and "throughput steady" in page


def test_a_fault_window_is_left_out_of_the_check_and_too_short_a_window_is_not_judged() -> None:
    counts = np.array([10] * 10 + [0] * 10 + [10] * 10)
    assert steadiness(counts, 1.0, (0, 30))["steady"] is True  # a dip in the middle third is not drift
    dip_at_end = np.array([10] * 20 + [0] * 10)
    assert steadiness(dip_at_end, 1.0, (0, 30))["steady"] is False
    assert steadiness(dip_at_end, 1.0, (0, 30), faults=[(20.0, 30.0)])["steady"] is True
    short = steadiness(np.array([5, 5]), 2.0, (0, 4))
    assert short["steady"] is None and short["drift"] is None and "not judged" in short["message"]


def test_live_records_and_a_sim_tally_give_the_same_steadiness() -> None:
    ends = blocks(14.0, 0, 30) + blocks(8.0, 30, 60)
    requests = [paid(t, i=i) for i, t in enumerate(ends)]
    from_records = build_summary(TWO_S, requests, [], {}, "sim", {"duration_s": 60.0})
    tally = RequestTally(0.0, 60.0)
    tally.add_records(requests)
    from_tally = build_summary(TWO_S, [], [], {}, "sim", {"duration_s": 60.0}, tally=tally)
    a, b = from_records["steadiness"], from_tally["steadiness"]
    assert a["steady"] is b["steady"] is False
    assert a["drift"] == pytest.approx(b["drift"]) and a["bin_s"] == b["bin_s"] == 2.0
    assert from_tally["routes"] == {"weather": from_tally["routes"]["weather"], "quote": from_tally["routes"]["quote"]}
    assert from_tally["routes"]["weather"]["complete"] is False  # no record kept: the tally has no routes


def test_per_route_table_follows_the_window_rule() -> None:
    s0 = SMOKE.with_overrides(run={"duration_s": 10, "warmup_s": 2})
    requests = ([paid(1.0, "weather", i=0)] + [paid(2.5 + 0.5 * i, "weather", 0.1, i + 1) for i in range(10)]
                + [paid(3.0 + i, "quote", 0.3, 100 + i) for i in range(4)] + [refused(5.0), refused(1.0)])
    s = build_summary(s0, requests, [], {}, "load", {"duration_s": 10.0})
    routes = s["routes"]
    assert list(routes) == ["weather", "quote"]  # the scenario's order
    w, q = routes["weather"], routes["quote"]
    assert (w["requests"], w["paid"], w["errors"], w["steady_paid"]) == (11, 11, 0, 10)
    assert w["throughput_rps"] == pytest.approx(10 / 8) and w["request_p50_s"] == pytest.approx(0.1)
    assert (q["requests"], q["paid"], q["errors"], q["steady_paid"]) == (6, 4, 2, 4)
    assert q["error_rate"] == pytest.approx(1 / 5)  # the warm-up refusal is outside the window
    assert sum(r["steady_paid"] for r in routes.values()) == s["metrics"]["steady_paid"]
    assert w["complete"] and q["complete"]


def test_cost_is_split_into_execution_gas_and_the_l1_fee() -> None:
    e = Economics(gas_price_gwei=0.012, eth_usd=2500, l1_fee_usd_per_tx=0.00002)
    split = econ.cost_split_usd(85_000, e, 1.0)
    assert split["execution_gas_usd"] == pytest.approx(85_000 * 0.012e-9 * 2500)
    assert split["l1_fee_usd"] == pytest.approx(0.00002)
    assert split["total_usd"] == pytest.approx(econ.cost_per_payment_usd(85_000, e, 1.0))
    batched = econ.cost_split_usd(48_000, e, 1 / 50)
    assert batched["l1_fee_usd"] == pytest.approx(0.00002 / 50)
    settled = [SettlementRecord(nonce=f"0x{i:064x}", payer="0x" + "a" * 40, payee="0x" + "b" * 40, amount=1000,
                                t_accepted=1.0, t_included=1.5, state="settled", tx_hash=f"0x{i:064x}", gas_used=85_000)
               for i in range(3)]
    m = build_summary(SMOKE, [paid(2.0, i=i) for i in range(3)], settled, {}, "load", {"duration_s": 10.0})["metrics"]
    assert m["cost_breakdown_usd"]["total_usd"] == pytest.approx(m["cost_per_payment_usd"])


def test_nothing_to_show_is_said_in_a_line_not_drawn_as_an_empty_panel(tmp_path: Path) -> None:
    requests = [paid(t, i=i) for i, t in enumerate(blocks(10.0, 0, 60))]
    settled = [SettlementRecord(nonce=r.nonce, payer=r.payer, payee="0x" + "b" * 40, amount=1000, t_accepted=r.t_end - 1,
                                t_included=r.t_end - 0.5, state="settled", tx_hash=f"0x{i:064x}", gas_used=85_000 + i % 7)
               for i, r in enumerate(requests)]
    s = build_summary(TWO_S, requests, settled, {}, "load", {"duration_s": 60.0})
    out = write_run(tmp_path, "smoke", "r", s, requests, settled)
    drawn = {p.name for p in out.glob("*.png")}
    assert "errors.png" not in drawn  # no failed request
    assert {"throughput.png", "latency_over_time.png", "settlement_latency_hist.png", "gas_per_payment.png"} <= drawn
    page = (out / "report.html").read_text()
    assert "Errors by reason: not drawn, no failed request" in page
    assert "<figcaption" in page and "<figcaption class=\"muted\">Paid throughput over time" not in page


def test_tick_labels_are_plain_numbers() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from x402bench.results.plots import _plain

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0.1, 1000.2], [0.0025910, 0.0025910 + 1e-8])  # what made "1e-8+2.591e-3"
    _plain(ax.yaxis)
    _plain(ax.xaxis)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
    assert not any("e" in lab.lower() for lab in labels), labels
    assert ax.yaxis.get_offset_text().get_text() == ""


def test_sweep_plots_draw_equal_series_once_and_skip_empty_figures(tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sim.sweep_plots import _lines, _series, render_sweep_plots

    rows = [{"agents": a, "price": p, "offered_rps": a / 10, "throughput_rps": a / 10, "request_p95_s": 0.1,
             "settlement_p95_s": 1.0, "mean_price_usd": p, "cost_per_payment_usd": 0.0025910 + a * 1e-12,
             "cost_fraction_of_price": 0.002591 / p} for a in (100, 1000) for p in (0.001, 0.1)]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    assert _lines(ax, _series(rows, ["agents", "price"], {"price"}), "mean_price_usd", "cost_per_payment_usd") == 2
    (line,) = ax.get_lines()  # agents=100 and agents=1000 agree: one line, one label
    assert line.get_label() == "agents=100/1000" and line.get_linestyle() == "None"  # two points: markers only
    (tmp_path / "cost_vs_price.png").write_bytes(b"stale")
    failed = [{**r, **dict.fromkeys(("offered_rps", "throughput_rps", "request_p95_s", "settlement_p95_s",
                                     "mean_price_usd", "cost_per_payment_usd", "cost_fraction_of_price"))}
              for r in rows]  # every point of the sweep failed: no figure, and no stale one left
    assert render_sweep_plots(tmp_path, failed, ["agents", "price"]) == []
    assert not list(tmp_path.glob("*.png"))


def test_every_summary_key_is_listed_in_one_place() -> None:
    from typing import get_type_hints

    from x402bench.results.routes import RouteFigures
    from x402bench.results.summary import Summary
    from x402bench.results.timeseries import Steadiness, TimeSeries

    ends = blocks(10.0, 0, 60)
    s = build_summary(TWO_S, [paid(t, i=i) for i, t in enumerate(ends)], [], {}, "load", {"duration_s": 60.0})
    assert set(s) == set(get_type_hints(Summary))
    assert set(s["steadiness"]) == set(get_type_hints(Steadiness))
    assert set(s["timeseries"]) == set(get_type_hints(TimeSeries))
    assert set(s["routes"]["weather"]) == set(get_type_hints(RouteFigures))
    assert set(s["metrics"]["cost_breakdown_usd"] or econ.cost_split_usd(1, TWO_S.economics)) == set(
        get_type_hints(econ.CostSplit))

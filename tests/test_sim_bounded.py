"""The sim at any load: bounded memory, one metric rule, records capping said out loud.

An overloaded world is the case that used to break everything at once: memory grew with every
queued request, and the summary counted throughput by answer but latency by start, so a run
whose window's requests all expired passed its throughput SLO next to "n/a" latency. Each test
here is a few seconds of wall time.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.calibration import default_calibration
from sim.run import SimOptions, build_sim_summary, offered_load, run_sim, simulate
from x402bench.results.metrics import RequestTally
from x402bench.results.stats import Histogram
from x402bench.scenario import Scenario, load_scenario, validate_scenario

REPO = Path(__file__).resolve().parent.parent


def world(rate: float, duration: float, agents: int = 2000, warmup: float = 10.0) -> Scenario:
    """base-like's cheap route alone (sync facilitator, 2 s blocks), agents offering `rate` req/s in all."""
    data = load_scenario(REPO / "scenarios" / "base-like.yaml").model_dump(mode="python")
    data["services"] = data["services"][:1]
    data["agents"].update(count=agents, mix={}, funding_usdc=1000,
                          arrivals={**data["agents"]["arrivals"], "rate_per_agent_s": rate / agents})
    data["run"].update(duration_s=duration, warmup_s=warmup)
    return validate_scenario(data, source="test")


def capacity(s: Scenario) -> float:
    return offered_load(s, SHORT)["capacity_rps"]


#: Authorizations valid for 20 s instead of 300: an overloaded world starts refusing within seconds.
SHORT = default_calibration().model_copy(update={"max_timeout_s": 20.0})


# ---- the histogram ---------------------------------------------------------------------------------

def test_histogram_percentiles_match_exact_within_its_precision() -> None:
    x = np.random.default_rng(7).lognormal(mean=-1.0, sigma=1.2, size=200_000)  # 0.4 ms .. minutes
    h = Histogram()
    for chunk in np.array_split(x, 7):  # chunking changes nothing
        h.record(chunk)
    xs = np.sort(x)
    for q in (1, 25, 50, 90, 95, 99, 99.9):
        rank = max(1, int(q / 100 * xs.size + 0.5))  # nearest rank, the histogram's definition
        exact = xs[rank - 1]
        assert abs(h.percentile(q) - exact) <= exact * Histogram.PRECISION + 1e-6, q
    d = h.distribution()
    assert d["count"] == x.size and d["max"] == xs[-1] and d["min"] == xs[0]
    assert d["mean"] == pytest.approx(float(x.mean()), rel=1e-12)
    assert Histogram().distribution()["p50"] is None and Histogram().distribution()["count"] == 0


# ---- one rule, two sources ----------------------------------------------------------------------------

def test_tally_and_records_give_the_same_figures() -> None:
    """The streaming path (records not all kept) and the records path agree on every request figure."""
    s = world(rate=400.0, duration=40.0)
    kept = run_sim(s, SHORT, SimOptions(records="all"))
    capped = run_sim(s, SHORT, SimOptions(records="capped", records_cap=500))
    assert kept.tally is None and capped.tally is not None
    a, b = build_sim_summary(kept)["metrics"], build_sim_summary(capped)["metrics"]
    for key in ("throughput_rps", "requests", "paid", "steady_requests", "steady_paid", "errors"):
        assert a[key] == b[key], key
    assert b["error_rate"] == pytest.approx(a["error_rate"])
    for q in ("p50", "p95", "p99"):  # exact interpolation vs nearest rank at 0.1%: within a rank's spacing
        assert b["request_latency_s"][q] == pytest.approx(a["request_latency_s"][q], rel=0.01)
    for p, v in a["phase_s"].items():
        assert b["phase_s"][p] == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert b["settlement_latency_s"] == a["settlement_latency_s"]


def test_overloaded_summary_and_report_agree(tmp_path: Path) -> None:
    s = world(rate=2000.0, duration=60.0)
    assert 2000.0 > 5 * capacity(s)
    run_dir, summary, result = simulate(s, SHORT, SimOptions(records_cap=1000), out_root=tmp_path)
    m = summary["metrics"]
    w = m["window"]["duration_s"]
    # throughput, latency, phases and error rate count the same requests (answered in the window)
    assert m["throughput_rps"] * w == pytest.approx(m["steady_paid"])
    assert m["request_latency_s"]["count"] == m["steady_paid"]
    assert m["error_rate"] == pytest.approx(1 - m["steady_paid"] / m["steady_requests"])
    assert (m["phase_s"]["paid"] is None) == (m["steady_paid"] == 0)
    # most answers in the window are refusals of payments whose validBefore passed in the queue, and what
    # the window leaves out (offered in it, answered after) is counted beside it
    assert m["error_rate"] > 0.5 and m["errors"]["invalid_exact_evm_payload_authorization_valid_before"] > 0
    assert m["answered_after_window"] > 0
    load = summary["meta"]["sim"]["load"]
    assert load["overloaded"] and load["offered_rps"] == pytest.approx(2000.0)
    assert load["capacity_rps"] < 400 and "overloaded" in load["warning"]
    page = (run_dir / "report.html").read_text()
    assert "overloaded: the agents offer 2,000.0 req/s" in page
    assert "answered in the steady window" in page and "started n/a" not in page
    assert m["steady_paid"] > 0 and "no paid request answered in the steady window" not in page
    rec = summary["meta"]["records"]
    assert rec["mode"] == "capped" and rec["total"] == m["requests"]
    assert rec["kept"] == m["paid"] + 1000 < rec["total"]
    assert rec["failed_counted_not_kept"] == rec["total"] - rec["kept"]
    rows = (run_dir / "requests.csv").read_text().count("\n") - 1
    assert rows == rec["kept"]


def test_records_all_keeps_everything_and_says_so() -> None:
    s = world(rate=50.0, duration=20.0, agents=200)
    result = run_sim(s, options=SimOptions(records="all"))
    rec = result.meta["records"]
    assert rec == {"mode": "all", "kept": len(result.requests), "total": len(result.requests),
                   "failed_counted_not_kept": 0, "metrics_from": "records"}
    assert not result.meta["sim"]["load"]["overloaded"] and "warning" not in result.meta["sim"]["load"]


def test_tally_counts_by_answer() -> None:
    t = RequestTally(10.0, 20.0)
    t.add_paid(np.array([5.0, 12.0, 19.0]), np.array([15.0, 13.0, 40.0]), np.array([1, 1, 1]),
               {"paid": np.array([10.0, 1.0, 21.0])})
    t.add_failed("x", np.array([11.0, 12.0]), np.array([11.5, 25.0]))
    f = t.figures()
    assert f["steady_paid"] == 2 and f["steady_requests"] == 3 and f["requests"] == 5
    assert f["answered_after_window"] == 2
    assert f["throughput_rps"] == pytest.approx(0.2) and f["error_rate"] == pytest.approx(1 / 3)
    assert f["request_latency_s"]["max"] == pytest.approx(10.0) and f["phase_s"]["paid"] == pytest.approx(5.5)


# ---- memory -------------------------------------------------------------------------------------------

def _peak(s: Scenario, **options: Any) -> tuple[int, int]:
    tracemalloc.start()
    try:
        result = run_sim(s, SHORT, SimOptions(**options))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result.meta["sim"]["started_requests"]


def test_peak_memory_of_an_overloaded_sim_stays_bounded_as_duration_grows() -> None:
    """3x what the facilitator settles, for 80 and 240 simulated seconds: three times the requests, and
    the peak grows by far less than a record per added request (the refused ones are counted, not kept)."""
    short = world(rate=3 * 143.0, duration=80.0)
    long = world(rate=3 * 143.0, duration=240.0)
    p1, n1 = _peak(short, records_cap=1000)
    p2, n2 = _peak(long, records_cap=1000)
    assert n2 > 2.5 * n1
    assert p2 - p1 < 40 * (n2 - n1)  # bytes per added request; a kept record alone is ~120
    assert p2 < 2 * p1


# ---- the bulk path ------------------------------------------------------------------------------------

def _run_without_bulk(s: Scenario, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Any:
    from sim import agents

    original = agents.OpenDriver.__init__

    def no_bulk(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.bulk = False

    with monkeypatch.context() as m:
        m.setattr(agents.OpenDriver, "__init__", no_bulk)
        return run_sim(s, SHORT, SimOptions(**options))


@pytest.mark.parametrize("funding", [1000.0, 0.024])
def test_bulk_refusals_match_one_at_a_time(monkeypatch: pytest.MonkeyPatch, funding: float) -> None:
    """Requests a saturated service can only refuse, started as arrays, give what one event each gives
    (their draws come in another order, so the figures agree statistically, not bit for bit)."""
    data = world(rate=8000.0, duration=20.0, agents=500).model_dump(mode="python")
    data["agents"]["funding_usdc"] = funding  # 0.024: about a third of the agents go broke while the service refuses
    s = validate_scenario(data, source="test")
    bulk = run_sim(s, SHORT, SimOptions(records="all"))
    single = _run_without_bulk(s, monkeypatch, records="all")
    a, b = build_sim_summary(bulk)["metrics"], build_sim_summary(single)["metrics"]
    assert bulk.perf["events"] < single.perf["events"] / 3  # the bulk path did take most requests
    assert a["requests"] == pytest.approx(b["requests"], rel=0.03)
    assert a["paid"] == pytest.approx(b["paid"], rel=0.02)
    assert a["errors"].keys() == b["errors"].keys()
    for key in a["errors"]:
        assert a["errors"][key] == pytest.approx(b["errors"][key], rel=0.03)
    refused = [[r.latency_s for r in res.requests if r.status == 402] for res in (bulk, single)]
    assert np.mean(refused[0]) == pytest.approx(np.mean(refused[1]), rel=0.02)
    assert bulk.meta["agents_broke"] == pytest.approx(single.meta["agents_broke"], rel=0.1, abs=3)


def test_sdk_facilitator_refuses_late_verifies_under_open_overload() -> None:
    """The SDK facilitator's thread pool refuses a /verify whose validBefore passed while it waited for a
    thread (this raised TypeError: the thread release and the faults' claim release shared a name)."""
    data = load_scenario(REPO / "scenarios" / "sim-over.yaml").model_dump(mode="python")
    data["agents"] = {"count": 2000, "funding_usdc": 10, "cache_requirements": True,
                      "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.1}}
    data["run"].update(duration_s=40.0)
    s = validate_scenario(data, source="test")
    summary = build_sim_summary(run_sim(s, SHORT))
    assert summary["meta"]["sim"]["load"]["overloaded"]
    assert summary["metrics"]["errors"]["invalid_exact_evm_payload_authorization_valid_before"] > 0
    assert summary["reconciliation"]["exact"]


def test_records_parquet_writes_every_request(tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # the dev extra installs it: a run without it must fail, not skip
    s = world(rate=2000.0, duration=20.0)
    run_dir, summary, _ = simulate(s, SHORT, SimOptions(records="parquet"), out_root=tmp_path)
    rec = summary["meta"]["records"]
    table = pq.read_table(run_dir / rec["parquet_file"])
    assert table.num_rows == rec["parquet_rows"] == rec["total"] == summary["metrics"]["requests"]
    status = table.column("status").to_numpy()
    assert int((status == 200).sum()) == summary["metrics"]["paid"] == rec["kept"]
    assert len(set(table.column("seq").to_pylist())) == table.num_rows

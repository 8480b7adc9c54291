"""Pure-logic tests of the shared results package on synthetic records: statistics, windows,
amortised gas and cost, SLO verdicts, summary determinism, the run folder, the offline
report, comparison, and the `report` / `compare` commands' exit codes. No chain, no network."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from x402bench.results import economics as econ
from x402bench.results.compare import compare_runs, compare_summaries, ratio
from x402bench.results.records import RequestRecord, SettlementRecord, read_csv
from x402bench.results.rundir import RunDirError, load_summary, new_run_id, rebuild_report, write_run
from x402bench.results.slo import evaluate_slo, failures
from x402bench.results.stats import distribution, percentile
from x402bench.results.summary import build_summary, summary_json
from x402bench.scenario import Economics, Slo, load_scenario

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / ".venv" / "bin" / "x402bench"
SMOKE = load_scenario(REPO / "scenarios" / "smoke.yaml")
PRICE = 1000  # atomic units of "$0.001" at 6 decimals
EXACT = {"paid_responses": 0, "settled": 0, "pending": 0, "served_unpaid": 0, "paid_unserved": 0, "double_settled": 0,
         "payee_balance_delta": 0, "expected_payee_delta": 0}


def scenario(**sections):  # noqa: ANN201
    return SMOKE.with_overrides(**sections) if sections else SMOKE


def paid(t: float, latency: float = 0.1, i: int = 0) -> RequestRecord:
    return RequestRecord(t_start=t, t_end=t + latency, route="weather", agent=i % 5, status=200, amount=PRICE,
                         payer=f"0x{i % 5:040x}", nonce=f"0x{i:064x}", sign_s=0.001, verify_s=0.01, settle_s=0.2,
                         handler_s=0.002, paid_s=latency)


def failed(t: float, reason: str = "invalid_exact_evm_payload_signature", status: int = 402) -> RequestRecord:
    return RequestRecord(t_start=t, t_end=t + 0.01, route="weather", agent=0, status=status, error=reason)


def settled(i: int, tx: str, gas: int, batch: int = 1, accepted: float = 0.0, latency: float = 1.0) -> SettlementRecord:
    return SettlementRecord(nonce=f"0x{i:064x}", payer=f"0x{i % 5:040x}", payee="0x" + "b" * 40, amount=PRICE,
                            t_accepted=accepted, t_included=accepted + latency, state="settled", tx_hash=tx,
                            gas_used=gas, batch_size=batch)


def healthy_run(n: int = 40) -> tuple[list[RequestRecord], list[SettlementRecord], dict]:
    requests = [paid(0.2 * i, 0.05 + 0.001 * i, i) for i in range(n)] + [failed(1.0), failed(2.0, "", 0)]
    settlements = [settled(i, f"0x{i:064x}", 85_704, accepted=0.2 * i + 0.03, latency=0.5 + 0.01 * i)
                   for i in range(n)]
    rec = {**EXACT, "paid_responses": n, "settled": n, "payee_balance_delta": n * PRICE,
           "expected_payee_delta": n * PRICE}
    return requests, settlements, rec


# ---- statistics -------------------------------------------------------------------------------

def test_percentile_matches_hand_computed_linear_interpolation() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4; rank h = 3q
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 95) == pytest.approx(3.85)  # h = 2.85: 3 + 0.85 * (4 - 3)
    assert percentile(xs, 99) == pytest.approx(3.97)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    hundred = [float(i) for i in range(1, 101)]  # h = 99q: p95 = 95.05, p99 = 99.01
    assert percentile(hundred, 95) == pytest.approx(95.05)
    assert percentile(hundred, 99) == pytest.approx(99.01)


def test_distribution_is_null_not_nan_without_data_and_ignores_nan() -> None:
    empty = distribution([])
    assert empty["count"] == 0 and all(empty[k] is None for k in ("p50", "p95", "p99", "mean", "max"))
    d = distribution([1.0, float("nan"), 3.0, float("inf")])
    assert d["count"] == 2 and d["mean"] == 2.0 and d["max"] == 3.0


# ---- windows and metrics ----------------------------------------------------------------------

def test_warmup_is_excluded_from_throughput_and_latency() -> None:
    s = scenario(run={"warmup_s": 2.0, "duration_s": 10.0})
    warm = [paid(0.1 * i, 5.0, i) for i in range(10)]             # slow, all start in warmup
    steady = [paid(2.0 + 0.25 * i, 0.1, 100 + i) for i in range(30)]  # 30 paid, last ends at 9.35
    summary = build_summary(s, warm + steady, [], None, "sim", {"duration_s": 10.0})
    m = summary["metrics"]
    assert m["window"] == {"start_s": 2.0, "end_s": 10.0, "duration_s": 8.0}
    # the warmup requests end at 5.0..5.9, inside the window: one rule (answered in the window) counts
    # them in throughput, latency and the steady counts alike
    assert m["throughput_rps"] == pytest.approx(40 / 8.0)
    assert m["request_latency_s"]["max"] == pytest.approx(5.0)
    assert m["request_latency_s"]["count"] == 40
    assert m["requests"] == 40 and m["paid"] == 40 and m["steady_paid"] == 40


def test_window_ends_at_last_response_when_traffic_stops_early() -> None:
    s = scenario(run={"duration_s": 60.0})
    requests = [paid(0.1 * i, 0.1, i) for i in range(50)]  # traffic stops at 5.0 s (max_requests)
    m = build_summary(s, requests, [], None, "load", {})["metrics"]
    assert m["window"]["end_s"] == pytest.approx(5.0)
    assert m["throughput_rps"] == pytest.approx(50 / 5.0)


def test_errors_by_reason_and_error_rate() -> None:
    requests = [paid(0.0, 0.1, i) for i in range(7)] + [failed(0.1), failed(0.2), failed(0.3, "", 0),
                                                        failed(0.4, "", 500)]
    m = build_summary(SMOKE, requests, [], None, "load", {})["metrics"]
    assert m["errors"] == {"http_500": 1, "invalid_exact_evm_payload_signature": 2, "transport_error": 1}
    assert m["error_rate"] == pytest.approx(4 / 11)


# ---- gas and money ----------------------------------------------------------------------------

def test_gas_per_payment_amortises_batches_and_counts_each_tx_once() -> None:
    batch = [settled(i, "0xAA", 150_000, batch=3) for i in range(3)]     # one tx, three payments
    single = [settled(3, "0xbb", 90_000)]
    loose = [settled(4, "", 100_000, batch=2)]                           # no hash: its half of the tx
    pending = [SettlementRecord("0x99", "0x1", "0x2", PRICE, 0.0)]        # not settled: ignored
    stats = econ.gas_stats(batch + single + loose + pending)
    assert stats.payments == 5
    assert stats.total_gas == 150_000 + 90_000 + 50_000
    assert stats.gas_per_payment == pytest.approx(290_000 / 5)
    assert stats.tx_equivalents == pytest.approx(2.5)
    assert stats.mean_batch_size == pytest.approx(2.0)
    assert econ.gas_stats([]).gas_per_payment is None


def test_cost_per_payment_and_break_even() -> None:
    e = Economics(gas_price_gwei=0.012, eth_usd=2500, l1_fee_usd_per_tx=0.00002)
    # 100,000 gas x 0.012e-9 ETH x $2500 = $0.003, plus a full L1 fee per tx
    assert econ.gas_cost_usd(100_000, e) == pytest.approx(0.003)
    assert econ.cost_per_payment_usd(100_000, e) == pytest.approx(0.00302)
    assert econ.cost_per_payment_usd(100_000, e, txs_per_payment=0.01) == pytest.approx(0.0030002)
    assert econ.break_even_price_usd(0.003, 0.01) == pytest.approx(0.3)
    gas = econ.max_gas_for_fraction(0.3, 0.01, e)
    assert econ.cost_per_payment_usd(gas, e) == pytest.approx(0.3 * 0.01)
    assert econ.max_gas_for_fraction(0.001, 0.01, e) is None  # the L1 fee alone is over budget


def test_summary_cost_is_fraction_of_mean_price_paid() -> None:
    requests, settlements, rec = healthy_run(10)
    m = build_summary(SMOKE, requests, settlements, rec, "load", {})["metrics"]
    expected = 85_704 * 0.012e-9 * 2500 + 0.00002
    assert m["gas_per_payment"] == 85_704
    assert m["cost_per_payment_usd"] == pytest.approx(expected)
    assert m["mean_price_usd"] == pytest.approx(0.001)
    assert m["cost_fraction_of_price"] == pytest.approx(expected / 0.001)
    assert m["break_even_price_usd"]["0.01"] == pytest.approx(expected / 0.01)


# ---- SLO --------------------------------------------------------------------------------------

def test_slo_pass_fail_and_implicit_reconciliation_checks() -> None:
    metrics = {"throughput_rps": 20.0, "error_rate": 0.0, "settlement_latency_s": {"p95": 3.0}}
    ok = evaluate_slo(Slo(min_throughput_rps=15, max_p95_settlement_s=4.5), metrics, EXACT)
    assert ok["passed"] and [c["name"] for c in ok["checks"]] == [
        "min_throughput_rps", "max_p95_settlement_s", "served_unpaid", "paid_unserved", "double_settled", "payee_delta_matches"]
    bad = evaluate_slo(Slo(min_throughput_rps=25), metrics, {**EXACT, "served_unpaid": 2})
    assert not bad["passed"]
    lines = failures(bad)
    assert any(line.startswith("min_throughput_rps") and "20" in line and "25" in line for line in lines)
    assert any(line.startswith("served_unpaid") for line in lines)
    assert [c["name"] for c in evaluate_slo(Slo(), metrics, None)["checks"]] == []


def test_slo_without_data_fails_with_a_message() -> None:
    result = evaluate_slo(Slo(max_p95_request_s=1.0, max_gas_per_payment=100_000), {"request_latency_s": {}}, None)
    assert not result["passed"]
    for c in result["checks"]:
        assert c["measured"] is None and not c["passed"] and c["message"].startswith("no data")


def test_empty_run_has_no_nan_and_fails_its_slos() -> None:
    summary = build_summary(SMOKE, [], [], {}, "sim", {})
    text = summary_json(summary)  # allow_nan=False: would raise on NaN
    assert "NaN" not in text and "Infinity" not in text
    assert summary["metrics"]["throughput_rps"] == 0.0
    assert summary["metrics"]["gas_per_payment"] is None
    assert not summary["slo"]["passed"]
    assert summary["reconciliation"] == {}


# ---- summary ----------------------------------------------------------------------------------

def test_summary_has_the_required_keys_and_exact_reconciliation() -> None:
    requests, settlements, rec = healthy_run()
    meta = {"run_id": "r1", "started_at": 0.0, "cpu": {"seconds": {"facilitator": 0.4, "anvil": 0.2}}, "processes": 2}
    s = build_summary(SMOKE, requests, settlements, rec, "load", meta)
    assert s["scenario"]["name"] == "smoke" and s["scenario"]["config"]["name"] == "smoke"
    assert s["seed"] == 42 and s["mode"] == "load" and s["run_id"] == "r1"
    assert s["started_at"] == "1970-01-01T00:00:00Z"
    assert {"python", "x402bench"} <= set(s["versions"])
    m = s["metrics"]
    for key in ("p50", "p95", "p99", "mean", "max"):
        assert m["request_latency_s"][key] is not None and m["settlement_latency_s"][key] is not None
    assert set(m["phase_s"]) >= {"challenge", "sign", "verify", "handler", "settle"}
    assert m["cpu"]["total_ms_per_paid_request"] == pytest.approx(600 / 40)
    assert s["reconciliation"]["exact"] is True
    assert [c["name"] for c in s["slo"]["checks"] if not c["passed"]] == ["max_error_rate"]  # 2 of 42 failed
    assert s["meta"] == {"processes": 2}
    assert build_summary(SMOKE, requests, settlements, {**rec, "double_settled": 1}, "load", {})[
        "reconciliation"]["exact"] is False


def test_summary_json_is_deterministic_whatever_the_record_order() -> None:
    requests, settlements, rec = healthy_run()
    first = summary_json(build_summary(SMOKE, requests, settlements, rec, "sim", {"run_id": "x"}))
    rng = random.Random(1)
    for _ in range(3):
        rng.shuffle(requests)
        rng.shuffle(settlements)
        assert summary_json(build_summary(SMOKE, requests, settlements, rec, "sim", {"run_id": "x"})) == first
    assert json.loads(first)["metrics"]["paid"] == 40


# ---- run folder, report, compare --------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    requests, settlements, rec = healthy_run()
    s = scenario(facilitator={"strategy": "sync", "external_url": "https://facilitator.example.org"})
    meta = {"run_id": "r1", "world": {"rpc_url": "http://127.0.0.1:8545"}}
    summary = build_summary(s, requests, settlements, rec, "load", meta)
    return write_run(tmp_path_factory.mktemp("results"), s.name, "r1", summary, requests, settlements)


def test_run_folder_holds_every_file(run_dir: Path) -> None:
    assert run_dir.parts[-2:] == ("smoke", "r1")
    for name in ("summary.json", "requests.csv", "settlements.csv", "report.html", "scenario.yaml",
                 "throughput.png", "latency_over_time.png", "request_latency_cdf.png",
                 "settlement_latency_hist.png", "settlement_latency_cdf.png", "gas_per_payment.png", "errors.png"):
        assert (run_dir / name).is_file(), name
    assert len(read_csv(run_dir / "requests.csv", RequestRecord)) == 42
    assert len(read_csv(run_dir / "settlements.csv", SettlementRecord)) == 40


def test_report_is_self_contained(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "href=" not in page and "<script" not in page and "<link" not in page
    sources = re.findall(r"src=\"([^\"]*)\"", page)
    assert len(sources) == len(list(run_dir.glob("*.png"))) == 7
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "min_throughput_rps" in page and "smoke" in page
    assert 'class="pass"' in page


def test_report_rebuilds_from_the_files_alone(run_dir: Path) -> None:
    before = (run_dir / "summary.json").read_text()
    for path in list(run_dir.glob("*.png")) + [run_dir / "report.html"]:
        path.unlink()
    report = rebuild_report(run_dir)
    assert report == run_dir / "report.html" and report.is_file()
    assert len(list(run_dir.glob("*.png"))) == 7
    assert (run_dir / "summary.json").read_text() == before


def test_empty_run_draws_no_empty_panel_and_says_why(tmp_path: Path) -> None:
    summary = build_summary(SMOKE, [], [], {}, "sim", {})
    out = write_run(tmp_path, "smoke", "empty", summary, [], [])
    assert not list(out.glob("*.png"))
    page = (out / "report.html").read_text()
    assert "Paid throughput over time: not drawn, no paid request" in page
    assert "Errors by reason: not drawn, no failed request" in page
    assert json.loads((out / "summary.json").read_text())["run_id"] == "empty"


def test_rebuild_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no such run folder"):
        rebuild_report(tmp_path / "absent")
    with pytest.raises(RunDirError, match="no summary.json"):
        load_summary(tmp_path)


def test_compare_ratios() -> None:
    requests, settlements, rec = healthy_run()
    a = build_summary(SMOKE, requests, settlements, rec, "load", {})
    b = json.loads(json.dumps(a))
    b["mode"] = "sim"
    b["metrics"]["throughput_rps"] = a["metrics"]["throughput_rps"] * 2
    b["metrics"]["gas_per_payment"] = None
    rows = {r.metric: r for r in compare_summaries(a, b)}
    assert rows["paid throughput (req/s)"].ratio == pytest.approx(2.0)
    assert rows["gas per payment"].ratio is None
    assert rows["served unpaid"].ratio is None  # 0 / 0
    assert ratio(True, False) is None and ratio(2, 3) == pytest.approx(1.5)


def test_exact_only_runs_have_no_channels_and_channel_books_join_the_slo() -> None:
    requests, settlements, rec = healthy_run()
    s = build_summary(SMOKE, requests, settlements, rec, "load", {})
    assert s["channels"] is None and "channels_exact" not in s["reconciliation"]
    assert not [c for c in s["slo"]["checks"] if c["name"].startswith("channels_")]
    rows = {r.metric: r for r in compare_summaries(s, s)}
    assert rows["channel gas per payment"].a is None and rows["channel books exact"].ratio is None
    books = {"served_unpaid": 1, "paid_unserved": 0, "double_settled": 0, "pending": 0,
             "checks": {"settled_equals_claimed": True, "payee_delta_equals_settled": False}}
    failed = failures(evaluate_slo(Slo(), {}, None, books))
    assert [f.split(":")[0] for f in failed] == ["channels_served_unpaid", "channels_payee_delta_equals_settled"]


def test_compare_runs_reads_two_folders(run_dir: Path) -> None:
    label_a, label_b, rows = compare_runs(run_dir, run_dir)
    assert label_a == label_b == "smoke (load) r1"
    assert all(r.ratio in (None, 1.0) for r in rows)


def test_run_ids_sort_by_time_and_do_not_collide() -> None:
    ids = [new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids, key=lambda i: i.split("-")[0])
    assert re.fullmatch(r"\d{8}T\d{9}Z-[0-9a-f]{6}", ids[0])


# ---- commands ---------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "x402bench"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})


def test_cli_report_and_compare(run_dir: Path, tmp_path: Path) -> None:
    done = cli("report", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert f"report: {run_dir / 'report.html'}" in done.stdout
    done = cli("compare", str(run_dir), str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "paid throughput" in done.stdout and "1.000x" in done.stdout


def test_cli_bad_run_folder_exits_2(tmp_path: Path, run_dir: Path) -> None:
    for args in (("report", str(tmp_path / "absent")), ("report", str(tmp_path)),
                 ("compare", str(run_dir), str(tmp_path))):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "error:" in done.stderr and "Traceback" not in done.stderr


def test_results_package_imports_neither_world_nor_load_nor_sim() -> None:
    code = ("import sys, pkgutil, importlib, x402bench.results as r\n"
            "[importlib.import_module(f'x402bench.results.{m.name}') for m in pkgutil.iter_modules(r.__path__)]\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'services', 'loadtest', 'sim', 'locust', 'simpy'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

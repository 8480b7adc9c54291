"""Load mode end to end: a short Locust run through a real world, the run folder it leaves,
the reconciliation it reports, an SLO gate, and Locust's own master/worker mode.

The smoke run and the SIGTERM test run the installed command in a process of its own; the SLO gate and
master/worker runs go through its entry point in this process (conftest's x402bench_here: the same code,
exit code and output, without importing the command again)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from x402bench.results.records import RequestRecord, SettlementRecord, read_csv

SMOKE = Path("scenarios/smoke.yaml")
REQUIRED = [
    "scenario", "seed", "versions", "mode", "metrics.throughput_rps",
    "metrics.request_latency_s.p50", "metrics.request_latency_s.p95", "metrics.request_latency_s.p99",
    "metrics.settlement_latency_s.p50", "metrics.settlement_latency_s.p95", "metrics.settlement_latency_s.p99",
    "metrics.gas_per_payment", "metrics.cost_per_payment_usd", "metrics.errors",
    "reconciliation.paid_responses", "reconciliation.settled", "reconciliation.pending", "reconciliation.served_unpaid", "reconciliation.paid_unserved",
    "reconciliation.double_settled", "reconciliation.payee_balance_delta", "reconciliation.expected_payee_delta",
    "slo.passed", "slo.checks",
]


def x402bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", *args], capture_output=True, text=True, timeout=timeout)


def dig(data: dict, dotted: str):  # noqa: ANN201
    for part in dotted.split("."):
        data = data[part]
    return data


def run_dir_of(output: str) -> Path:
    match = re.search(r"report: (\S+)report\.html", output.replace("\n", ""))
    assert match, output
    return Path(match.group(1))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("results")
    done = x402bench("load", str(SMOKE), "--duration", "6", "--users", "4", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, run_dir_of(done.stdout)


def test_load_run_writes_every_file_with_every_metric(smoke_run) -> None:
    _, run_dir = smoke_run
    for name in ("summary.json", "requests.csv", "settlements.csv", "report.html"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("*.png")), "no plots"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "load"
    for key in REQUIRED:
        assert dig(summary, key) is not None, key
    assert summary["metrics"]["throughput_rps"] > 0
    for keys in ("world/world.json", "world/facilitator.json"):  # they hold (local test) private keys
        assert (run_dir / keys).stat().st_mode & 0o077 == 0, keys


def test_load_run_reconciles_exactly(smoke_run) -> None:
    _, run_dir = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    rec = summary["reconciliation"]
    requests = read_csv(run_dir / "requests.csv", RequestRecord)
    settlements = read_csv(run_dir / "settlements.csv", SettlementRecord)
    paid = [r for r in requests if r.status == 200]
    assert rec["paid_responses"] == len(paid) > 0
    assert rec["served_unpaid"] == 0 and rec["paid_unserved"] == 0 and rec["double_settled"] == 0
    assert rec["payee_balance_delta"] == rec["expected_payee_delta"] == sum(r.amount for r in paid)
    assert rec["settled"] == sum(1 for s in settlements if s.state == "settled") == len(paid)
    assert all(s.gas_used > 80_000 and s.tx_hash for s in settlements if s.state == "settled")
    assert len({r.nonce for r in paid}) == len(paid)


def test_impossible_slo_exits_1_naming_the_check(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    scenario = tmp_path / "impossible.yaml"
    text = SMOKE.read_text().replace("min_throughput_rps: 1", "min_throughput_rps: 100000")
    scenario.write_text(text.replace("name: smoke", "name: impossible"))
    done = x402bench_here("load", str(scenario), "--duration", "3", "--users", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "min_throughput_rps" in done.stdout


def test_master_and_two_workers_count_both_workers(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("load", str(SMOKE), "--duration", "6", "--users", "4", "--processes", "2",
                          "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = run_dir_of(done.stdout)
    parts = sorted((run_dir / "world" / "parts").glob("requests-*.csv"))
    assert len(parts) == 2, parts
    per_worker = [len(read_csv(p, RequestRecord)) for p in parts]
    assert all(n > 0 for n in per_worker), per_worker
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["requests"] == sum(per_worker)
    assert summary["reconciliation"]["served_unpaid"] == 0


def test_sigterm_mid_run_stops_the_whole_world(tmp_path: Path) -> None:
    """A load run told to stop (SIGTERM, as a CI runner or `timeout` sends it) takes its world down with it."""
    import signal
    import time

    run = subprocess.Popen([sys.executable, "-m", "x402bench", "load", str(SMOKE), "--duration", "60", "--users", "2",
                            "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*/*/world/started")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (world,) = tmp_path.glob("*/*/world")
    pids = json.loads((world / "world.json").read_text())["pids"]
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=60)
    assert run.returncode != 0
    for name, pid in pids.items():
        alive = Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        assert not alive, f"{name} (pid {pid}) outlived the run"

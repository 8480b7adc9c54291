"""Nothing lost when things break: one short live run per fault kind, on real Anvil, through real HTTP,
each fault applied the way the scenario's timeline says (crashes by SIGKILL, RPC and /settle faults
through the loopback proxies, reorgs and drained keys on the node itself).

Every run must end with served_unpaid, paid_unserved and double_settled all 0, and show that its
fault really struck (a proxy counter, a re-sent transaction, a retried payment, a throughput dip).
The strategies rotate over the kinds so each of ours meets several faults here; `bench/bench_faults.py`
runs scenarios/faults.yaml (every kind in one run) for every strategy.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.runner import LoadOptions, run_load
from x402bench.results.money import LOSS_KEYS
from x402bench.scenario import FAULT_KINDS, load_scenario, validate_scenario

#: kind -> (strategy, the fault's own fields)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "facilitator_crash": ("sync", {"restart_after_s": 2}),
    "service_crash": ("pipelined", {"restart_after_s": 2}),
    "chain_stall": ("batched", {"for_s": 3}),
    "rpc_latency": ("sync", {"for_s": 3, "ms": 300, "jitter_ms": 50}),
    "rpc_errors": ("pipelined", {"for_s": 3, "rate": 0.3}),
    "tx_dropped": ("sync", {"for_s": 2}),
    "reorg": ("pipelined", {"depth": 2}),
    "signer_out_of_gas": ("batched", {"for_s": 2}),
    "facilitator_5xx_after_settle": ("batched", {"for_s": 3}),
    "client_disconnect": ("sync", {"for_s": 3, "rate": 0.5}),
}


def scenario_with(kind: str) -> Any:
    strategy, fields = CASES[kind]
    return validate_scenario({
        "name": f"fault-{kind}", "seed": 5, "chain": {"mining": "interval", "block_time_s": 1},
        "facilitator": {"strategy": strategy, **({"batch": {"max_size": 10, "max_age_s": 0.3}}
                                                 if strategy == "batched" else {})},
        "services": [{"name": "weather", "path": "/weather", "price": "$0.001", "work_ms": 2}],
        "agents": {"count": 40, "funding_usdc": 5, "arrivals": {"kind": "closed"},
                   "retry": {"attempts": 8, "backoff_s": 1.0, "timeout_s": 10}},
        "run": {"duration_s": 10, "users": 20, "spawn_rate": 20},
        "faults": [{"at_s": 3, "kind": kind, **fields}],
    })


def struck(kind: str, summary: dict[str, Any], run_dir: Path) -> bool:
    """Evidence that the fault did something, read from what the run left behind."""
    meta = summary["meta"]
    proxies = meta.get("fault_proxies") or {}
    rpc, http = proxies.get("rpc", {}), proxies.get("http", {})
    guard = (meta.get("facilitator") or {}).get("guard") or {}
    (row,) = summary["faults"]
    retried = sum(int(r["attempts"]) > 1 for r in csv.DictReader((run_dir / "requests.csv").open()))
    return {
        "facilitator_crash": (row["throughput_dip"] or 0) > 0.9,
        "service_crash": (row["throughput_dip"] or 0) > 0.9,
        "chain_stall": rpc.get("held", {}).get("stall", 0) > 0,
        "rpc_latency": rpc.get("delayed", 0) > 0,
        "rpc_errors": sum(rpc.get("failed", {}).values()) > 0,
        "tx_dropped": rpc.get("dropped", 0) > 0 and guard.get("resends", 0) > 0,
        "reorg": guard.get("reorgs", 0) > 0 and guard.get("resends", 0) > 0,
        "signer_out_of_gas": guard.get("resends", 0) > 0 or bool(summary["metrics"]["errors"]),
        "facilitator_5xx_after_settle": http.get("settle_answers_lost", 0) > 0 and retried > 0,
        "client_disconnect": retried > 0,
    }[kind]


def test_every_fault_kind_has_a_case_and_the_shipped_timeline_has_them_all() -> None:
    assert set(CASES) == set(FAULT_KINDS)
    shipped = load_scenario("scenarios/faults.yaml")
    assert {f.kind for f in shipped.faults} == set(FAULT_KINDS)
    assert shipped.chain.block_time_s == 2.0 and shipped.agents.retry.attempts > 0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_fault_loses_no_money(kind: str, tmp_path: Path) -> None:
    result = run_load(scenario_with(kind), LoadOptions(out_root=tmp_path))
    summary = result.summary
    rec = summary["reconciliation"]
    (applied,) = summary["meta"]["faults_applied"]
    assert applied["started_s"] is not None and applied["error"] == "", applied
    assert {k: rec[k] for k in (*LOSS_KEYS, "pending")} == {k: 0 for k in (*LOSS_KEYS, "pending")}, rec
    assert rec["payee_balance_delta"] == rec["expected_payee_delta"] > 0, rec
    (row,) = summary["faults"]
    assert row["kind"] == kind and all(row["during"][k] == 0 and row["after"][k] == 0 for k in LOSS_KEYS)
    assert struck(kind, summary, result.run_dir), (summary["meta"].get("fault_proxies"), summary["faults"])
    assert "<h2>Faults</h2>" in (result.run_dir / "report.html").read_text()


def test_a_fault_this_world_cannot_apply_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "outside.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "outside", "facilitator": {"external_url": "http://127.0.0.1:9"},
        "services": [{"name": "weather", "path": "/weather", "price": "$0.001"}],
        "faults": [{"at_s": 1, "kind": "facilitator_crash"}]}))
    done = subprocess.run([sys.executable, "-m", "x402bench", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "faults.0 (facilitator_crash)" in done.stderr and "own facilitator" in done.stderr
    automine = tmp_path / "automine.yaml"
    automine.write_text(yaml.safe_dump({
        "name": "automine", "services": [{"name": "weather", "path": "/weather", "price": "$0.001"}],
        "faults": [{"at_s": 1, "kind": "tx_dropped", "for_s": 1}]}))
    done = subprocess.run([sys.executable, "-m", "x402bench", "check", str(automine)], capture_output=True, text=True)
    assert done.returncode == 2 and "tx_dropped" in done.stderr and "interval mining" in done.stderr

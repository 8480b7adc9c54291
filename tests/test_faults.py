"""Nothing lost when things break: every fault kind struck on a short live run, on real Anvil, through
real HTTP, each fault applied the way the scenario's timeline says (crashes by SIGKILL, RPC and /settle
faults through the loopback proxies, reorgs and drained keys on the node itself).

The strategies rotate over the kinds so each of ours meets several faults here; kinds of one strategy
share a run (one world), struck one after another in slots as long as the old one-kind
runs (the fault at 3 s of its slot, the next one 7 s later), as `scenarios/faults.yaml` strikes every kind
in one run. Each kind is still its own test, judged on its own row of the per-fault table (a loss during
or after its window, up to the next fault, is charged to it) and on evidence only it can leave: its own
proxy counter, a re-sent transaction (one kind per run can cause one), a payment retried or failed
in its window, a throughput dip in its window. A crash of the facilitator comes first
in its run, so the counters read from the restarted facilitator at the end cover the kinds after it.

Every run must end with served_unpaid, paid_unserved and double_settled all 0.
`bench/bench_faults.py` runs scenarios/faults.yaml (every kind in one run) for every strategy.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.runner import LoadOptions, LoadResult, run_load
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

#: run -> the kinds it strikes, in order; the kinds of one run share a strategy. One kind per run that
#: can make the guard re-send (tx_dropped, reorg, signer_out_of_gas), so `resends` is that kind's evidence
#: alone. The facilitator crash strikes first in its run (the facilitator's counters are read at the end,
#: from the process that came back), with the RPC fault proxy in the path (tests/test_crash_recovery.py
#: pins down the crash mid-send that the proxy's slower answers made likely).
RUNS: dict[str, tuple[str, ...]] = {
    "sync": ("facilitator_crash", "rpc_latency", "tx_dropped", "client_disconnect"),
    "pipelined": ("service_crash", "rpc_errors", "reorg"),
    "batched": ("chain_stall", "signer_out_of_gas", "facilitator_5xx_after_settle"),
}
RUN_OF = {kind: run for run, kinds in RUNS.items() for kind in kinds}
LEAD_S = 3  # traffic before a kind strikes, in its slot
SLOT_S = 10  # a slot is one old one-kind run: LEAD_S before the fault, the rest to recover


def scenario_for(run: str) -> Any:
    kinds = RUNS[run]
    (strategy,) = {CASES[kind][0] for kind in kinds}
    return validate_scenario({
        "name": f"faults-{run}", "seed": 5, "chain": {"mining": "interval", "block_time_s": 1},
        "facilitator": {"strategy": strategy, **({"batch": {"max_size": 10, "max_age_s": 0.3}}
                                                 if strategy == "batched" else {})},
        "services": [{"name": "weather", "path": "/weather", "price": "$0.001", "work_ms": 2}],
        "agents": {"count": 40, "funding_usdc": 5, "arrivals": {"kind": "closed"},
                   "retry": {"attempts": 8, "backoff_s": 1.0, "timeout_s": 10}},
        "run": {"duration_s": LEAD_S + (SLOT_S - LEAD_S) * len(kinds), "users": 20, "spawn_rate": 20},
        "faults": [{"at_s": LEAD_S + (SLOT_S - LEAD_S) * i, "kind": kind, **CASES[kind][1]}
                   for i, kind in enumerate(kinds)],
    })


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """kind -> the run that strikes it (run once, on first use, for all of its kinds)."""
    done: dict[str, LoadResult | BaseException] = {}

    def get(kind: str) -> LoadResult:
        run = RUN_OF[kind]
        if run not in done:
            try:
                done[run] = run_load(scenario_for(run), LoadOptions(out_root=tmp_path_factory.mktemp(f"faults-{run}")))
            except Exception as exc:  # every kind of this run fails with it, without running it again
                done[run] = exc
        result = done[run]
        if isinstance(result, BaseException):
            raise result
        return result

    return get


def struck(kind: str, summary: dict[str, Any], run_dir: Path) -> bool:
    """Evidence that the fault did something, read from what the run left behind, and only this kind's."""
    meta = summary["meta"]
    proxies = meta.get("fault_proxies") or {}
    rpc, http = proxies.get("rpc", {}), proxies.get("http", {})
    guard = (meta.get("facilitator") or {}).get("guard") or {}
    (row,) = [r for r in summary["faults"] if r["kind"] == kind]
    requests = list(csv.DictReader((run_dir / "requests.csv").open()))
    # payments sent again: begun in this kind's window (an agent decides to hang up as it begins a payment),
    # or in flight during it (a lost /settle answer strikes the payments waiting for one)
    begun = sum(int(r["attempts"]) > 1 and row["at_s"] <= float(r["t_start"]) < row["end_s"] for r in requests)
    in_flight = sum(int(r["attempts"]) > 1 and float(r["t_start"]) < row["end_s"] and float(r["t_end"]) >= row["at_s"]
                    for r in requests)
    failed = sum(r["status"] != "200" and row["at_s"] <= float(r["t_start"]) < row["after"]["until_s"]
                 for r in requests)
    return {
        "facilitator_crash": (row["throughput_dip"] or 0) > 0.9,
        "service_crash": (row["throughput_dip"] or 0) > 0.9,
        "chain_stall": rpc.get("held", {}).get("stall", 0) > 0,
        "rpc_latency": rpc.get("delayed", 0) > 0,
        "rpc_errors": sum(rpc.get("failed", {}).values()) > 0,
        "tx_dropped": rpc.get("dropped", 0) > 0 and guard.get("resends", 0) > 0,
        "reorg": guard.get("reorgs", 0) > 0 and guard.get("resends", 0) > 0,
        "signer_out_of_gas": guard.get("resends", 0) > 0 or failed > 0,
        "facilitator_5xx_after_settle": http.get("settle_answers_lost", 0) > 0 and in_flight > 0,
        "client_disconnect": begun > 0,
    }[kind]


def test_every_fault_kind_has_a_case_and_the_shipped_timeline_has_them_all() -> None:
    assert set(CASES) == set(FAULT_KINDS)
    assert sorted(k for kinds in RUNS.values() for k in kinds) == sorted(CASES)
    # the slots keep every kind's window (and its recovery) apart from the next kind's
    for run in RUNS:
        faults = scenario_for(run).faults
        assert all(a.window[1] <= b.at_s - 3 for a, b in zip(faults, faults[1:])), run
    shipped = load_scenario("scenarios/faults.yaml")
    assert {f.kind for f in shipped.faults} == set(FAULT_KINDS)
    assert shipped.chain.block_time_s == 2.0 and shipped.agents.retry.attempts > 0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_fault_loses_no_money(kind: str, fault_run) -> None:  # noqa: ANN001
    result = fault_run(kind)
    summary = result.summary
    rec = summary["reconciliation"]
    assert sorted(a["kind"] for a in summary["meta"]["faults_applied"]) == sorted(RUNS[RUN_OF[kind]])
    (applied,) = [a for a in summary["meta"]["faults_applied"] if a["kind"] == kind]
    assert applied["started_s"] is not None and applied["error"] == "", applied
    assert {k: rec[k] for k in (*LOSS_KEYS, "pending")} == {k: 0 for k in (*LOSS_KEYS, "pending")}, rec
    assert rec["payee_balance_delta"] == rec["expected_payee_delta"] > 0, rec
    (row,) = [r for r in summary["faults"] if r["kind"] == kind]
    assert all(row["during"][k] == 0 and row["after"][k] == 0 for k in LOSS_KEYS), row
    assert struck(kind, summary, result.run_dir), (kind, summary["meta"].get("fault_proxies"),
                                                   (summary["meta"].get("facilitator") or {}).get("guard"), row)
    assert "<h2>Faults</h2>" in (result.run_dir / "report.html").read_text()


def test_a_fault_this_world_cannot_apply_is_refused_by_name(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    bad = tmp_path / "outside.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "outside", "facilitator": {"external_url": "http://127.0.0.1:9"},
        "services": [{"name": "weather", "path": "/weather", "price": "$0.001"}],
        "faults": [{"at_s": 1, "kind": "facilitator_crash"}]}))
    done = x402bench_here("check", str(bad))  # the command's code in this process: see conftest
    assert done.returncode == 2 and "faults.0 (facilitator_crash)" in done.stderr and "own facilitator" in done.stderr
    automine = tmp_path / "automine.yaml"
    automine.write_text(yaml.safe_dump({
        "name": "automine", "services": [{"name": "weather", "path": "/weather", "price": "$0.001"}],
        "faults": [{"at_s": 1, "kind": "tx_dropped", "for_s": 1}]}))
    done = x402bench_here("check", str(automine))
    assert done.returncode == 2 and "tx_dropped" in done.stderr and "interval mining" in done.stderr

"""Sim mode under the scenario's fault timeline: what each modelled kind does to money and time, the
agents' retries, the per-fault table, refusal of the kinds the sim cannot model, reproducibility.
Pure sim, no Anvil."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sim.run import SimOptions, SimResult, build_sim_summary, run_sim, simulate
from x402bench.results.money import classify
from x402bench.scenario import Scenario, ScenarioError, validate_scenario

LOSSES = ("served_unpaid", "paid_unserved", "double_settled")
CRASH = {"kind": "facilitator_crash", "at_s": 10, "restart_after_s": 2.5}
RETRY = {"attempts": 3, "backoff_s": 1.5}


def scenario(faults: list[dict[str, Any]], strategy: str = "sync", retry: dict[str, Any] | None = None,
             **parts: Any) -> Scenario:
    """2 s blocks, one cheap route, 100 Poisson agents offering ~10 paid req/s for 30 s."""
    data: dict[str, Any] = {
        "name": "faults", "seed": 3, "chain": {"mining": "interval", "block_time_s": 2.0},
        "facilitator": {"strategy": strategy},
        "services": [{"name": "a", "path": "/a", "price": 1000}],
        "agents": {"count": 100, "funding_usdc": 1000, "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.1},
                   **({"retry": retry} if retry else {})},
        "run": {"duration_s": 30},
        "faults": faults,
    }
    for key, value in parts.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return validate_scenario(data, source="test")


def summarize(s: Scenario) -> tuple[SimResult, dict[str, Any]]:
    result = run_sim(s)
    return result, build_sim_summary(result)


def row(summary: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [r for r in summary["faults"] if r["kind"] == kind]
    return found


def test_facilitator_crash_without_retry_costs_the_payers_in_its_window() -> None:
    result, summary = summarize(scenario([CRASH]))
    crash = row(summary, "facilitator_crash")
    assert (crash["at_s"], crash["end_s"]) == (10.0, 12.5)
    assert crash["during"]["paid_unserved"] > 0  # answers died with the process, their txs landed while it was down
    assert crash["throughput_dip"] == pytest.approx(1.0, abs=0.02)
    rec = summary["reconciliation"]
    assert rec["paid_unserved"] == crash["during"]["paid_unserved"] + crash["after"]["paid_unserved"]
    assert rec["served_unpaid"] == rec["double_settled"] == rec["pending"] == 0 and not rec["exact"]
    assert set(summary["metrics"]["errors"]) == {"http_502"}  # the service answers its clients 502
    assert summary["meta"]["sim"]["faults"]["windows"] == [{"kind": "facilitator_crash", "start_s": 10.0,
                                                            "end_s": 12.5}]
    requests, settlements = result.records()
    # nothing served while it is down (an answer that left just before the crash lands within a few ms)
    assert not any(10.01 <= r.t_end < 12.5 for r in requests if r.paid)


@pytest.mark.parametrize("strategy", ["sync", "pipelined", "batched"])
def test_facilitator_crash_with_retry_loses_nothing(strategy: str) -> None:
    result, summary = summarize(scenario([CRASH], strategy, RETRY))
    rec = summary["reconciliation"]
    assert all(rec[k] == 0 for k in LOSSES) and rec["pending"] == 0 and rec["exact"], rec
    assert all(row(summary, "facilitator_crash")[p][k] == 0 for p in ("during", "after") for k in LOSSES)
    requests, _ = result.records()
    retried = [r for r in requests if r.attempts > 1]
    assert retried and all(r.paid for r in requests)
    assert len({r.nonce for r in requests}) == len(requests)  # one record per payment, whatever its attempts
    counts = summary["meta"]["sim"]["faults"]["counts"]
    assert counts["facilitator_crashes"] == 1 and counts["retries"] >= len(retried)


def test_batched_crash_resumes_the_claims_left_in_its_batch() -> None:
    _, summary = summarize(scenario([CRASH], "batched", facilitator={"strategy": "batched",
                                                                     "batch": {"max_size": 50, "max_age_s": 1.0}}))
    counts = summary["meta"]["sim"]["faults"]["counts"]
    assert counts["claims_unsent_at_crash"] > 0
    assert counts["claims_resent_at_restart"] == counts["claims_unsent_at_crash"]
    assert summary["reconciliation"]["pending"] == 0


def test_crash_without_restart_leaves_the_unsent_claims_pending() -> None:
    _, summary = summarize(scenario([{"kind": "facilitator_crash", "at_s": 10}], "batched"))
    crash = row(summary, "facilitator_crash")
    assert crash["end_s"] == 30.0 and crash["during"]["paid_rps"] == 0.0
    unsent = summary["meta"]["sim"]["faults"]["counts"]["claims_unsent_at_crash"]
    assert summary["reconciliation"]["pending"] == unsent > 0  # still accepted in the ledger: never sent


def test_service_crash_breaks_its_clients_connections_and_settlement_goes_on() -> None:
    _, summary = summarize(scenario([{"kind": "service_crash", "at_s": 10, "restart_after_s": 2.5}]))
    crash = row(summary, "service_crash")
    assert crash["during"]["paid_unserved"] > 0 and crash["throughput_dip"] == pytest.approx(1.0, abs=0.02)
    assert set(summary["metrics"]["errors"]) == {"transport_error"}
    _, retried = summarize(scenario([{"kind": "service_crash", "at_s": 10, "restart_after_s": 2.5}], retry=RETRY))
    assert all(retried["reconciliation"][k] == 0 for k in LOSSES)


def test_chain_stall_settles_nothing_during_it_and_everything_after() -> None:
    result, summary = summarize(scenario([{"kind": "chain_stall", "at_s": 10, "for_s": 6}]))
    _, settlements = result.records()
    included = np.array([s.t_included for s in settlements])
    assert not np.any((included >= 10) & (included < 16))
    assert np.any((included >= 16) & (included < 16 + 2.0 + 0.01))  # the first block a block time after it
    rec = summary["reconciliation"]
    assert all(rec[k] == 0 for k in LOSSES) and rec["pending"] == 0 and rec["exact"]
    assert rec["paid_responses"] == summary["metrics"]["requests"]  # every request answered 200, late ones too
    assert summary["metrics"]["request_latency_s"]["max"] > 6 - 2


def settlement_p50(result: SimResult, start: float, end: float) -> float:
    _, settlements = result.records()
    return float(np.median([s.settlement_latency_s for s in settlements if start <= s.t_accepted < end - 3]))


def test_rpc_latency_raises_settlement_latency_by_about_its_calls() -> None:
    """Two calls lie between acceptance and the tx reaching the node (the chain read, the send), so
    settlement p50 rises by about twice the added latency, a little more for the send lock held longer."""
    base = dict(agents={"count": 400, "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.05}},
                facilitator={"strategy": "sync", "signer_keys": 4}, run={"duration_s": 60})
    added = 0.1
    slow = run_sim(scenario([{"kind": "rpc_latency", "at_s": 10, "for_s": 40, "ms": added * 1000}], **base))
    plain = run_sim(scenario([], **base))
    rise = settlement_p50(slow, 10, 50) - settlement_p50(plain, 10, 50)
    assert 1.5 * added < rise < 2.6 * added, rise
    assert settlement_p50(slow, 0, 10) == pytest.approx(settlement_p50(plain, 0, 10), abs=1e-9)


def test_rpc_errors_refuse_with_their_reasons_and_lose_nothing() -> None:
    _, summary = summarize(scenario([{"kind": "rpc_errors", "at_s": 5, "for_s": 20, "rate": 0.5}]))
    errors = summary["metrics"]["errors"]
    assert set(errors) == {"unexpected_verify_error", "transaction_failed"}  # a chain read, a send
    assert errors["unexpected_verify_error"] > errors["transaction_failed"] > 0
    rec = summary["reconciliation"]
    assert all(rec[k] == 0 for k in LOSSES) and rec["pending"] == 0 and rec["exact"]
    assert summary["metrics"]["settlements"] == {"settled": rec["settled"]}  # released claims leave no row


def test_rpc_timeouts_wait_for_the_client_timeout_or_the_window_end() -> None:
    result, summary = summarize(scenario([{"kind": "rpc_errors", "at_s": 5, "for_s": 5, "rate": 0.5,
                                           "error": "timeout"}]))
    refused = [r for r in result.records()[0] if r.error == "unexpected_verify_error"]
    assert refused and all(10.0 <= r.t_end < 10.1 for r in refused)  # the proxy lets go at the window's end
    assert all(summary["reconciliation"][k] == 0 for k in LOSSES)


def test_client_timeout_retries_the_same_payment_and_is_served_once() -> None:
    stall = {"kind": "chain_stall", "at_s": 10, "for_s": 8}
    result, summary = summarize(scenario([stall], retry={"attempts": 2, "backoff_s": 0.5, "timeout_s": 5}))
    counts = summary["meta"]["sim"]["faults"]["counts"]
    assert counts["client_timeouts"] > 0 and counts["repeats_answered_from_ledger"] > 0
    rec = summary["reconciliation"]
    assert all(rec[k] == 0 for k in LOSSES) and rec["exact"]


@pytest.mark.parametrize("faults", [[CRASH], [{"kind": "facilitator_crash", "at_s": 10}], []])
def test_money_events_match_classify_on_every_payment(faults: list[dict[str, Any]]) -> None:
    """sim/run.py leaves payments served and settled once out of classify's inputs: the same events."""
    result = run_sim(scenario(faults, "batched"))
    requests, settlements = result.records()
    seq = {r.nonce: int(r.nonce, 16) for r in requests}
    full = classify(
        served={seq[r.nonce]: r.t_end for r in requests if r.paid},
        sent={seq[r.nonce]: r.t_start for r in requests if not r.paid},
        settlements={int(s.nonce, 16): [s.t_included] for s in settlements if s.state == "settled"},
        pending={int(s.nonce, 16): s.t_accepted for s in settlements if s.state == "pending"})
    assert result.money_events == full
    assert bool(faults) == bool(full)


def test_retry_without_faults_changes_nothing() -> None:
    """The retry machinery (attempt objects, deadlines, one event per stage) must not move the model."""
    plain, retrying = run_sim(scenario([])), run_sim(scenario([], retry=RETRY))
    for a, b in zip(plain.records(), retrying.records()):
        assert a == b


@pytest.mark.parametrize("fault", [{"kind": "tx_dropped", "at_s": 5, "for_s": 5},
                                   {"kind": "reorg", "at_s": 5, "depth": 2},
                                   {"kind": "facilitator_5xx_after_settle", "at_s": 5, "for_s": 5},
                                   {"kind": "client_disconnect", "at_s": 5, "for_s": 5}])
def test_unmodelled_kinds_are_refused_by_name(fault: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match=f"{fault['kind']}.*live-only"):
        run_sim(scenario([fault]))


def test_sdk_strategy_refuses_faults_it_cannot_model() -> None:
    with pytest.raises(ScenarioError, match="rpc_latency.*sdk.*live-only"):
        run_sim(scenario([{"kind": "rpc_latency", "at_s": 5, "for_s": 5, "ms": 10}], "sdk"))
    with pytest.raises(ScenarioError, match="retry.*sdk.*live-only"):
        run_sim(scenario([], "sdk", RETRY))


def test_cli_exits_2_on_an_unmodelled_kind(tmp_path: Path) -> None:
    data = scenario([]).model_dump(mode="json")
    data["faults"] = [{"kind": "signer_out_of_gas", "at_s": 5, "for_s": 5}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "x402bench", "sim", str(path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "signer_out_of_gas" in done.stderr and "live-only" in done.stderr
    assert not (tmp_path / "r").exists()


def test_same_seed_same_faults_identical_summary(tmp_path: Path) -> None:
    s = scenario([CRASH, {"kind": "rpc_errors", "at_s": 15, "for_s": 5, "rate": 0.3},
                  {"kind": "rpc_latency", "at_s": 20, "for_s": 5, "ms": 20, "jitter_ms": 30}], "batched", RETRY)
    dirs = [simulate(s, None, SimOptions(), tmp_path / name, run_id="r")[0] for name in ("a", "b")]
    for name in ("summary.json", "requests.csv", "settlements.csv"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    assert [r["kind"] for r in json.loads((dirs[0] / "summary.json").read_text())["faults"]] == [
        "facilitator_crash", "rpc_errors", "rpc_latency"]

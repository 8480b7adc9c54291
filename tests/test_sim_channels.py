"""The sim's batch-settlement model (sim/channels.py): its books are exact, its vouchers grow by the price,
its claims keep the services' cadence, the spend cap bounds deposits, and its gas is the gas table's.
Pure sim, no Anvil."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sim.calibrate import calibration_from_run
from sim.calibration import default_calibration
from sim.run import SimOptions, SimResult, build_sim_summary, run_sim
from sim.validate import CHANNEL_METRICS, metrics_for
from x402bench.results.records import ChannelTxRecord
from x402bench.results.rundir import load_channels, load_records, load_summary
from x402bench.scenario import Scenario, ScenarioError, load_scenario

DEFERRED = Path("scenarios/deferred.yaml")


def deferred(agents: dict[str, Any] | None = None, channel: dict[str, Any] | None = None, **sections: Any) -> Scenario:
    """scenarios/deferred.yaml with some of its sections changed."""
    base = load_scenario(DEFERRED)
    data = base.model_dump(mode="python")
    if agents:
        data["agents"].update(agents)
    if channel:
        data["channel"].update(channel)
    data.update(sections)
    return type(base).model_validate(data)


def gas_per_payment(result: SimResult) -> float:
    return result.meta["sim"]["channels"]["gas_per_payment"]


def claims(result: SimResult) -> list[ChannelTxRecord]:
    return [t for t in result.channel_txs if t.kind == "claim"]


def test_cli_writes_exact_channel_books(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "x402bench", "sim", str(DEFERRED), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (p.parent for p in tmp_path.glob("*/*/summary.json"))
    summary = load_summary(run_dir)
    requests, settlements = load_records(run_dir)
    channels, txs = load_channels(run_dir)
    assert summary["mode"] == "sim" and not settlements  # deposits are channel txs, not exact settlements
    price = 1000
    paid = [r for r in requests if r.status == 200]
    assert paid and all(r.scheme == "batch-settlement" and r.channel and r.amount == price for r in paid)
    assert len(channels) == 50
    for ch in channels:
        assert ch.charged == ch.claimed > 0  # the last claim covered everything served
        assert ch.deposited >= ch.charged and ch.refunded == 0
        assert ch.deposits == math.ceil(ch.charged / 100_000)  # 0.1 USDC deposits, a top-up when one runs out
        assert ch.vouchers == ch.charged // price and ch.t_claimed >= 0
        history = ch.claim_history()
        assert history and history[-1][1] == ch.claimed
        assert [total for _, total in history] == sorted(total for _, total in history)
    by_kind: dict[str, list[ChannelTxRecord]] = defaultdict(list)
    for t in txs:
        by_kind[t.kind].append(t)
    assert sum(t.amount for t in by_kind["settle"]) == sum(ch.claimed for ch in channels)  # settled == claimed
    assert sum(t.amount for t in by_kind["claim"]) == sum(ch.charged for ch in channels)
    assert sum(t.amount for t in by_kind["deposit"]) == sum(ch.deposited for ch in channels)
    assert len(by_kind["deposit"]) == sum(ch.deposits for ch in channels)
    # vouchers per channel: price, 2 price, 3 price, ... in the order they were sent
    per_channel: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in paid:
        per_channel[r.channel].append((r.cumulative, r.t_start))
    for vouchers in per_channel.values():
        vouchers.sort()
        assert [c for c, _ in vouchers] == [price * (k + 1) for k in range(len(vouchers))]
        starts = [t for _, t in vouchers]
        assert starts == sorted(starts)
    # a deposit names its tx, a voucher none; the deposit's tx is in channel_txs
    deposit_hashes = {t.tx_hash for t in by_kind["deposit"]}
    assert {r.tx_hash for r in paid if r.tx_hash} == deposit_hashes
    assert summary["channels"]["reconciliation"]["exact"] is True
    assert summary["channels"]["economics"]["gas_per_payment"] == pytest.approx(
        sum(t.gas_used for t in txs) / len(paid))


def test_vouchers_cost_no_block_wait() -> None:
    """A voucher is answered after the service's check and the route; only deposits wait for a block."""
    result = run_sim(deferred())
    requests, _ = result.records()
    vouchers = sorted(r.latency_s for r in requests if r.status == 200 and not r.tx_hash)
    deposits = sorted(r.latency_s for r in requests if r.status == 200 and r.tx_hash)
    assert vouchers[len(vouchers) // 2] < 0.05 < deposits[0]
    assert all(r.settle_s == 0 for r in requests if not r.tx_hash)


def test_gas_per_payment_falls_with_payments_per_channel() -> None:
    figures = [gas_per_payment(run_sim(deferred(channel={"deposit_usdc": usdc}))) for usdc in (0.01, 0.1, 1.0)]
    assert figures[0] > figures[1] > figures[2]
    exact = default_calibration().gas.transfer_existing
    assert figures[0] < exact  # even 10 payments per deposit beat one transfer each


def test_gas_per_payment_matches_the_gas_table() -> None:
    """Deposits per channel from its payments, one claim of every channel per claim tick plus the last one,
    one settle per settle tick plus the last one: the gas table's figure within a few per cent."""
    scenario = deferred()
    result = run_sim(scenario)
    g = default_calibration().gas
    terms = scenario.channel
    assert terms is not None and terms.deposit_usdc is not None
    per_channel = round(terms.deposit_usdc * 1e6) // 1000  # payments one deposit covers
    payments = [ch.vouchers for ch in result.channels]
    agents = len(payments)
    duration = scenario.run.duration_s
    deposits = sum(g.channel_deposit_new + (math.ceil(p / per_channel) - 1) * g.channel_deposit_topup
                   for p in payments)
    claim_rounds = duration / terms.claim_every_s + 1
    settles = duration / terms.settle_every_s + 1
    analytic = (deposits + claim_rounds * g.channel_claim(agents) + settles * g.channel_settle) / sum(payments)
    assert gas_per_payment(result) == pytest.approx(analytic, rel=0.05)


def test_claims_follow_the_cadence_and_size() -> None:
    scenario = deferred(channel={"claims_per_tx": 20, "claim_every_s": 10, "settle_every_s": 30})
    result = run_sim(scenario)
    rounds: dict[float, list[int]] = defaultdict(list)
    for t in claims(result):
        rounds[t.t_included].append(t.channels)
    assert all(sorted(sizes) == [10, 20, 20] for sizes in list(rounds.values())[:-1])  # 50 channels, 20 a tx
    times = sorted(rounds)
    gaps = [b - a for a, b in zip(times[:-2], times[1:-1])]  # the last round is the run's end, off the grid
    block = scenario.chain.block_time_s or 0.0
    assert gaps and all(abs(gap - 10) <= block + 1e-9 for gap in gaps)
    assert len(times) == pytest.approx(scenario.run.duration_s / 10 + 1, abs=1)
    gas = default_calibration().gas
    assert all(t.gas_used == gas.channel_claim(t.channels) for t in claims(result))
    settles = [t for t in result.channel_txs if t.kind == "settle"]
    assert 1 <= len(settles) <= scenario.run.duration_s / 30 + 1


def test_spend_cap_bounds_deposits_and_broke_agents_stop() -> None:
    # 0.15 USDC each: a 0.1 deposit, then a top-up of the 0.05 left, then nothing: 150 paid requests
    scenario = deferred(agents={"count": 10, "funding_usdc": 0.15, "arrivals": {"kind": "poisson",
                                                                                "rate_per_agent_s": 5.0}})
    result = run_sim(scenario)
    assert result.meta["agents_broke"] == 10
    for ch in result.channels:
        assert (ch.deposited, ch.deposits, ch.vouchers, ch.charged, ch.claimed) == (150_000, 2, 150, 150_000, 150_000)
    deposits = sorted(t.amount for t in result.channel_txs if t.kind == "deposit")
    assert deposits == [50_000] * 10 + [100_000] * 10
    # a budget below the deposit caps the first deposit itself; one below the price stops the agent at once
    capped = run_sim(deferred(agents={"count": 5, "funding_usdc": 5, "budget_usdc": 0.03}))
    assert all((ch.deposited, ch.vouchers) == (30_000, 30) for ch in capped.channels)
    broke = run_sim(deferred(agents={"count": 5, "funding_usdc": 0.0005}))
    assert broke.paid == 0 and not broke.channels and broke.meta["agents_broke"] == 5


def test_open_arrivals_wait_for_their_channels_deposit() -> None:
    """Bursts: requests for a channel whose deposit is in flight are held, then paid by voucher."""
    scenario = deferred(agents={"count": 5, "arrivals": {"kind": "bursts", "rate_per_agent_s": 4.0,
                                                         "burst_size": 8}})
    result = run_sim(scenario)
    requests, _ = result.records()
    assert all(ch.charged == ch.claimed for ch in result.channels)
    per_channel: dict[str, list[int]] = defaultdict(list)
    for r in sorted((r for r in requests if r.status == 200), key=lambda r: r.cumulative):
        per_channel[r.channel].append(r.cumulative)
    for cumulatives in per_channel.values():
        assert cumulatives == [1000 * (k + 1) for k in range(len(cumulatives))]
    assert sum(ch.deposits for ch in result.channels) == sum(math.ceil(ch.charged / 100_000) for ch in result.channels)


def test_refunds_at_the_end_return_the_rest() -> None:
    result = run_sim(deferred(agents={"count": 10}), options=SimOptions(refund_at_end=True))
    refunds = [t for t in result.channel_txs if t.kind == "refund"]
    assert len(refunds) == 10
    for ch in result.channels:
        assert ch.refunded == ch.deposited - ch.claimed > 0 and ch.refundable == 0
    last_settle = max(t.t_included for t in result.channel_txs if t.kind == "settle")
    assert min(t.t_included for t in refunds) >= last_settle


def test_refused_faults_and_honoured_ones() -> None:
    for kind, extra in (("facilitator_crash", {"restart_after_s": 5}), ("service_crash", {"restart_after_s": 5}),
                        ("rpc_errors", {"for_s": 5, "rate": 0.5})):
        with pytest.raises(ScenarioError, match=f"{kind}.*batch-settlement.*live-only"):
            run_sim(deferred(faults=[{"kind": kind, "at_s": 10, **extra}]))
    with pytest.raises(ScenarioError, match="retry.*batch-settlement.*live-only"):
        run_sim(deferred(agents={"retry": {"attempts": 2}}))
    stalled = run_sim(deferred(agents={"count": 10}, faults=[{"kind": "chain_stall", "at_s": 20, "for_s": 8}]))
    assert all(ch.charged == ch.claimed for ch in stalled.channels)
    assert not [t for t in stalled.channel_txs if 20 < t.t_included < 28]


def test_refused_fault_exits_2(tmp_path: Path) -> None:
    scenario = tmp_path / "crash.yaml"
    text = DEFERRED.read_text() + "faults:\n  - {kind: service_crash, at_s: 10, restart_after_s: 5}\n"
    scenario.write_text(text)
    done = subprocess.run([sys.executable, "-m", "x402bench", "sim", str(scenario), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "service_crash" in done.stderr + done.stdout


def test_calibration_learns_the_escrow_gas_and_the_voucher_time() -> None:
    """Calibrated on a run of itself (summary, records, channel txs), the sim gives that run back."""
    scenario = deferred()
    cal = default_calibration()
    gas = cal.gas.model_copy(update={"channel_deposit_new": 150_000, "channel_deposit_topup": 120_000,
                                     "channel_claim_fixed": 90_000, "channel_settle": 60_000})
    service = cal.service.model_copy(update={"voucher_verify_s": cal.service.voucher_verify_s.const(0.004)})
    truth = cal.model_copy(update={"gas": gas, "service": service})
    first = run_sim(scenario, truth, SimOptions(driver="locust"))
    summary = build_sim_summary(first)
    requests, settlements = first.records()
    learned = calibration_from_run(summary, requests, settlements, source="sim", channel_txs=first.channel_txs)
    assert learned.gas.channel_deposit_new == 150_000 and learned.gas.channel_deposit_topup == 120_000
    assert learned.gas.channel_settle == 60_000
    assert learned.gas.channel_claim(50) == pytest.approx(gas.channel_claim(50), abs=2)
    again = build_sim_summary(run_sim(scenario, learned, SimOptions(driver="locust")))
    for key in ("throughput_rps",):
        assert again["metrics"][key] == pytest.approx(summary["metrics"][key], rel=0.02)
    # calibrated, the model draws a voucher's wait and its route's work together (a live service's busy loop
    # slows both) while this truth drew them apart; learned from each request's own total, the tail still
    # comes back
    for q, rel in (("p50", 0.1), ("p95", 0.1)):
        assert again["metrics"]["request_latency_s"][q] == pytest.approx(summary["metrics"]["request_latency_s"][q],
                                                                         rel=rel)
    # deposits are whole txs: one agent more or less topping up before the end moves this figure ~0.7%
    assert again["channels"]["economics"]["gas_per_payment"] == pytest.approx(
        summary["channels"]["economics"]["gas_per_payment"], rel=0.02)


def test_validation_judges_request_latency_and_gas_for_a_channel_world() -> None:
    assert metrics_for(deferred()) == CHANNEL_METRICS
    judged = {label for label, _, judged in CHANNEL_METRICS if judged}
    assert judged == {"throughput (req/s)", "request p50 (s)", "request p95 (s)", "gas per payment"}


def test_exact_worlds_are_unchanged_by_the_channel_model() -> None:
    """A scenario without batch-settlement routes writes no channel records and keeps its plain paths."""
    scenario = load_scenario(Path("scenarios/base-like.yaml"))
    result = run_sim(scenario, options=SimOptions(duration_s=20))
    assert not result.channels and not result.channel_txs and "channels" not in result.meta["sim"]
    requests, _ = result.records()
    assert all(r.scheme == "exact" and r.nonce for r in requests)


def test_a_mixed_world_keeps_exact_and_channel_books_apart() -> None:
    """Exact and batch-settlement routes side by side: one spend cap, exact reconciliation over the exact
    payments only (as live), the channel books over the vouchers."""
    base = load_scenario(DEFERRED).model_dump(mode="python")
    base["services"].append({"name": "plain", "path": "/plain", "price": 2000, "work_ms": {"median": 5}})
    base["agents"].update(count=20, mix={"metered": 1, "plain": 1})
    scenario = type(load_scenario(DEFERRED)).model_validate(base)
    result = run_sim(scenario)
    summary = build_sim_summary(result)
    requests, settlements = result.records()
    exact = [r for r in requests if r.status == 200 and r.route == "plain"]
    vouchers = [r for r in requests if r.status == 200 and r.route == "metered"]
    assert exact and vouchers and all(r.scheme == "exact" and r.nonce for r in exact)
    assert len(settlements) == len(exact)  # deposits are not exact settlements
    rec = summary["reconciliation"]
    assert rec["paid_responses"] == len(exact) and rec["expected_payee_delta"] == 2000 * len(exact)
    assert rec["served_unpaid"] == rec["paid_unserved"] == 0 and rec["exact"]["exact"] if isinstance(
        rec.get("exact"), dict) else True
    assert all(ch.charged == ch.claimed for ch in result.channels)
    assert sum(ch.vouchers for ch in result.channels) == len(vouchers)


def test_cli_refunds_at_the_end(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "x402bench", "sim", str(DEFERRED), "--agents", "50", "--refund-at-end",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (p.parent for p in tmp_path.glob("*/*/summary.json"))
    channels, txs = load_channels(run_dir)
    assert len([t for t in txs if t.kind == "refund"]) == 50
    assert all(ch.refunded == ch.deposited - ch.claimed for ch in channels)


def test_the_exact_start_and_launch_are_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """World.start writes launch's client side out (speed); both must give the same run."""
    from sim.world import World

    scenario = load_scenario(Path("scenarios/base-like.yaml"))
    options = SimOptions(duration_s=20, driver="locust")
    plain, _ = run_sim(scenario, options=options).records()

    def start(self: World, agent: int, route: int, user: Any = None) -> bool:
        price = self.prices[route]
        if self.spent[agent] + price > self.cap:
            self.mark_broke(agent)
            return False
        self.spent[agent] += price
        r = self._req(self.started, agent, route, price, user, self.clock.now)
        self.started += 1
        self.in_flight += 1
        self.launch(r, self._service, self._at_service)
        return True

    monkeypatch.setattr(World, "start", start)
    launched, _ = run_sim(scenario, options=options).records()
    assert launched == plain


@pytest.mark.parametrize("strategy", ["pipelined", "batched", "sdk"])
def test_deposits_through_every_strategy(strategy: str) -> None:
    """A deposit is its own tx whatever the facilitator's strategy (never in a transfer batch), dated by its
    block even when the facilitator answers before it is mined (pipelined)."""
    facilitator: dict[str, Any] = {"strategy": strategy, "signer_keys": 1}
    if strategy == "batched":
        facilitator["batch"] = {"max_size": 10, "max_age_s": 0.5}
    result = run_sim(deferred(agents={"count": 10}, facilitator=facilitator))
    deposits = [t for t in result.channel_txs if t.kind == "deposit"]
    gas = default_calibration().gas
    assert deposits and all(t.t_included >= 0 and t.block_number > 0 for t in deposits)
    assert {t.gas_used for t in deposits} <= {gas.channel_deposit_new, gas.channel_deposit_topup}
    assert all(ch.t_deposit >= 0 and ch.charged == ch.claimed for ch in result.channels)

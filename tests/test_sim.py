"""Sim mode: reproducibility, queueing theory, the chain and facilitator limits the model must honour,
calibration files, sweeps, the ecosystem scenarios and the CLI. No Anvil needed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from x402bench.results.records import RequestRecord
from sim.calibration import (Calibration, CalibrationError, Dist, default_calibration, instant_calibration,
                             load_calibration)
from sim.run import SimOptions, build_sim_summary, run_sim, simulate
from x402bench.scenario import ScenarioError, load_scenario, validate_scenario

SCENARIOS = Path("scenarios")
Z99 = 2.3263478740408408


def world(**parts: object) -> dict:
    """A minimal scenario dict; keyword sections replace the defaults."""
    data: dict = {
        "name": "t", "seed": 1, "chain": {"mining": "interval", "block_time_s": 2.0},
        "services": [{"name": "a", "path": "/a", "price": 1000}],
        "agents": {"count": 100, "funding_usdc": 1000, "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.1}},
        "run": {"duration_s": 30},
    }
    data.update(parts)
    return data


def col(values: object) -> np.ndarray:
    return np.asarray(values, dtype=float)


# ---- reproducibility ------------------------------------------------------------------------------


def test_same_seed_gives_identical_records_and_summary(tmp_path: Path) -> None:
    s = load_scenario(SCENARIOS / "base-like.yaml")
    options = SimOptions(agents=120, duration_s=15)
    dirs = [simulate(s, None, options, tmp_path / name, run_id="r")[0] for name in ("a", "b")]
    for name in ("summary.json", "requests.csv", "settlements.csv"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    summary = json.loads((dirs[0] / "summary.json").read_text())
    assert summary["mode"] == "sim" and summary["reconciliation"]["served_unpaid"] == 0
    other = simulate(s, None, SimOptions(agents=120, duration_s=15, seed=2), tmp_path / "c", run_id="r")[0]
    assert (other / "summary.json").read_bytes() != (dirs[0] / "summary.json").read_bytes()


# ---- queueing theory ------------------------------------------------------------------------------


def _mg1_world(rho: float, customers: int, seed: int) -> dict:
    """Poisson arrivals into one worker whose work time is lognormal with coefficient of variation 1:
    the same first two moments as an exponential, so Pollaczek-Khinchine gives M/M/1's mean wait."""
    mean_s = 0.01
    sigma = math.sqrt(math.log(2))  # CV^2 = e^(sigma^2) - 1 = 1
    median_ms = mean_s / math.sqrt(2) * 1000
    lam = rho / mean_s
    return world(
        seed=seed, chain={"mining": "auto"},
        services=[{"name": "q", "path": "/q", "price": 1,
                   "work_ms": {"median": median_ms, "p99": median_ms * math.exp(Z99 * sigma)}, "workers": 1}],
        agents={"count": 10_000, "funding_usdc": 1000,
                "arrivals": {"kind": "poisson", "rate_per_agent_s": lam / 10_000}},
        run={"duration_s": customers / lam},
    )


@pytest.mark.parametrize("rho,customers", [(0.5, 100_000), (0.9, 1_000_000)])
def test_mm1_like_mean_wait_matches_theory(rho: float, customers: int) -> None:
    """Mean wait for the worker (handler time minus work) within 5% of rho/(mu - lambda)."""
    result = run_sim(validate_scenario(_mg1_world(rho, customers, seed=0)), instant_calibration())
    handler = np.frombuffer(result.requests.cols.handler, dtype=np.float64)
    assert len(handler) > 0.95 * customers
    measured = handler.mean() - 0.01
    theory = rho * 0.01 / (1 - rho)
    assert measured == pytest.approx(theory, rel=0.05), (measured, theory)


def test_two_second_blocks_make_settlement_wait_uniform() -> None:
    """With everything else instant, a payment waits for the next block: uniform on [0, 2 s]."""
    s = validate_scenario(world(agents={"count": 1000, "funding_usdc": 1000,
                                        "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.05}},
                                run={"duration_s": 400}))
    result = run_sim(s, instant_calibration())
    cols = result.settlements.cols
    wait = col(cols.t_included) - col(cols.t_accepted)
    assert len(wait) > 15_000 and wait.min() >= 0 and wait.max() <= 2.0 + 1e-9
    assert wait.mean() == pytest.approx(1.0, abs=0.03)
    for q in (10, 25, 50, 75, 90):
        assert np.percentile(wait, q) == pytest.approx(q / 50, abs=0.05)
    # "plus inclusion": seen by a receipt watcher polling every 0.05 s, each wait grows by less than one poll
    # (by the same amount here: the watcher's phase against a 2 s block clock never changes)
    seen = run_sim(s, instant_calibration(t_included="receipt"))
    extra = (col(seen.settlements.cols.t_included) - col(seen.settlements.cols.t_accepted)) - wait
    assert extra.min() >= -1e-9 and extra.max() < 0.05


# ---- facilitator and chain limits ------------------------------------------------------------------


def test_sdk_thread_pool_caps_throughput_at_40_per_block() -> None:
    """With 2 s blocks the SDK facilitator's 40 threads cap it at 40 per 2 s (~19/s measured live)."""
    s = load_scenario(SCENARIOS / "sim-over.yaml").with_overrides(run={"duration_s": 40})
    summary = build_sim_summary(run_sim(s, options=SimOptions(driver="locust")))
    assert summary["metrics"]["throughput_rps"] == pytest.approx(20.0, rel=0.03)


def test_sdk_with_automine_is_cpu_bound() -> None:
    """With automine the SDK facilitator is CPU-bound (live here: ~35 ms per payment, ~30/s): the model's
    throughput is one over its CPU per payment, receipt polls included."""
    s = load_scenario(SCENARIOS / "sim-over.yaml").with_overrides(chain={"mining": "auto", "block_time_s": None},
                                                                  run={"duration_s": 30})
    result = run_sim(s, options=SimOptions(driver="locust"))
    summary = build_sim_summary(result)
    timing = default_calibration().strategy("sdk")
    fac = result.meta["sim"]["facilitator"]
    per_payment = (timing.verify_cpu_s.mean + timing.settle_cpu_s.mean
                   + timing.poll_cpu_s.mean * fac["receipt_polls"] / fac["txs"])
    assert summary["metrics"]["throughput_rps"] == pytest.approx(1 / per_payment, rel=0.05)
    assert fac["cpu_utilization"] > 0.95


def test_machine_shares_its_cores_between_threads() -> None:
    from sim.engine import Machine

    one = Machine(1, slot_s=0.01)
    assert one.run(0.0, 1.0) == pytest.approx(1.0)
    assert one.run(0.0, 1.0) == pytest.approx(2.0)  # the only core is taken: it waits, nothing is lost
    two = Machine(2, slot_s=0.01)
    ends = [two.run(0.0, 1.0) for _ in range(3)]
    assert ends[:2] == [pytest.approx(1.0)] * 2 and ends[2] == pytest.approx(2.0)  # a thread uses one core at most
    assert two.run(5.0, 0.003) == pytest.approx(5.003)  # an idle host: full speed


def test_idle_cpu_is_taken_out_of_cpu_per_request_and_placed_per_second() -> None:
    """A light live run's facilitator: 6 s of CPU over 1,000 paid requests in 100 s, 0.03 of a core of it idle
    (polling): 3 ms per request, not 6; the machine keeps those 0.03 cores busy in every slot."""
    from sim.calibrate import _idle_cores, _ms_per_paid
    from sim.engine import Machine

    summary = {"metrics": {"cpu": {"seconds": {"facilitator": 6.0, "loadgen": 2.0},
                                   "ms_per_paid_request": {"facilitator": 6.0, "loadgen": 2.0},
                                   "idle_cores": {"facilitator": 0.03}, "traffic_s": 100.0}}}
    assert _ms_per_paid(summary, "facilitator") == pytest.approx(0.003)
    assert _ms_per_paid(summary, "loadgen") == pytest.approx(0.002)  # no idle figure: as measured
    assert _idle_cores(summary) == pytest.approx(0.03)
    busy = Machine(1, slot_s=0.01, idle_cores=0.5)
    assert busy.busy_at(3.0) == pytest.approx(0.5)
    assert busy.run(0.0, 1.0) == pytest.approx(2.0)  # half of the core is the idle work's


def test_block_mining_is_read_off_the_pause_in_a_busy_senders_sends() -> None:
    """A sender that never idles sends every 4 ms; each 0.2 s block of n txs, after h txs, stops it for
    0.1 ms * n + 2 us * h: the fit gives both back. Sends evenly spread (no pause) give no mining time."""
    from sim.calibrate import _block_mining
    from x402bench.results.records import SettlementRecord

    def records(pause: bool) -> list[SettlementRecord]:
        out, t, before = [], 0.0, 0
        for number in range(1, 200):
            n = 30 + number % 25
            for i in range(n):
                out.append(SettlementRecord(nonce=f"{number}-{i}", payer="a", payee="b", amount=1, t_accepted=t,
                                            t_submitted=t, state="settled", tx_hash=f"{number}-{i}",
                                            block_number=number))
                t += 0.004
            if pause:
                t += 0.0001 * n + 2e-6 * before
            before += n
        return out

    per_tx, per_before = _block_mining(records(True))  # type: ignore[misc]
    assert per_tx == pytest.approx(0.0001, rel=0.05) and per_before == pytest.approx(2e-6, rel=0.05)
    assert _block_mining(records(False)) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_shared_cpu_is_processor_sharing() -> None:
    """A thread pool under the GIL: a short job beside a long one finishes at twice its own length, not after it."""
    from sim.engine import Clock, SharedCpu

    clock = Clock()
    cpu = SharedCpu(clock)
    done: dict[str, float] = {}
    cpu.run(1.0, lambda name: done.__setitem__(name, clock.now), "long")
    cpu.run(0.1, lambda name: done.__setitem__(name, clock.now), "short")
    clock.at(0.5, lambda _: cpu.run(0.2, lambda name: done.__setitem__(name, clock.now), "late"))
    clock.run(10)
    # 0-0.2: two jobs at half speed (short done at 0.2); 0.2-0.5: long alone (0.4 of its 1.0 done);
    # 0.5-0.9: long and late at half speed (late done at 0.9, long at 0.6); then long alone, done at 1.3
    assert done["short"] == pytest.approx(0.2) and done["late"] == pytest.approx(0.9)
    assert done["long"] == pytest.approx(1.3)
    assert cpu.busy_s == pytest.approx(1.3) and cpu.jobs == 3
    two = SharedCpu(clock, cores=2)
    ends: list[float] = []
    start = clock.now
    for _ in range(2):
        two.run(1.0, lambda _: ends.append(clock.now - start), None)
    clock.run(start + 10)
    assert ends == [pytest.approx(1.0)] * 2  # two threads, two cores: no sharing


def test_a_shared_host_bounds_throughput_by_total_cpu_per_payment() -> None:
    """Closed-loop payers, automine, every process 2 ms of CPU per payment (+1 ms of node): on their own cores the
    busiest process caps throughput at ~500/s; sharing one core it is one over the sum, ~1/7 ms."""
    s = validate_scenario(world(chain={"mining": "auto"}, agents={"count": 64, "funding_usdc": 1000,
                                                                  "arrivals": {"kind": "closed"}},
                                run={"duration_s": 10, "warmup_s": 2, "users": 64, "spawn_rate": 1000}))
    ms = Dist.from_ms
    base = instant_calibration()
    timing = base.strategy("sync").model_copy(update={"verify_cpu_s": ms(1.0), "settle_cpu_s": ms(1.0)})
    cal = base.model_copy(update={
        "strategies": {**base.strategies, "sync": timing},
        "service": base.service.model_copy(update={"cpu_s": ms(2.0)}),
        "client": base.client.model_copy(update={"cpu_s": ms(2.0)}),
        "chain": base.chain.model_copy(update={"node_cpu_s": 0.001}),
    })
    apart = build_sim_summary(run_sim(s, cal, SimOptions(driver="locust")))["metrics"]["throughput_rps"]
    shared = build_sim_summary(run_sim(s, cal.model_copy(update={"machine_cores": 1}),
                                       SimOptions(driver="locust")))["metrics"]["throughput_rps"]
    assert apart == pytest.approx(500, rel=0.05)
    assert shared <= 1 / 0.007 * 1.01 and shared == pytest.approx(1 / 0.007, rel=0.08)


def test_gas_new_recipient_then_existing() -> None:
    s = validate_scenario(world(chain={"mining": "auto"}, services=[
        {"name": "a", "path": "/a", "price": 1000}, {"name": "b", "path": "/b", "price": 2000}]))
    settlements = list(run_sim(s).settlements)
    first: dict[str, int] = {}
    for record in sorted(settlements, key=lambda r: r.block_number):
        first.setdefault(record.payee, record.gas_used)
    assert sorted(first.values()) == [102_792, 102_792]
    assert sum(r.gas_used == 85_704 for r in settlements) == len(settlements) - 2


def test_batched_gas_is_amortised_to_about_48400_at_100() -> None:
    s = validate_scenario(world(facilitator={"strategy": "batched", "batch": {"max_size": 100, "max_age_s": 5}},
                                agents={"count": 2000, "funding_usdc": 1000,
                                        "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.2}},
                                run={"duration_s": 20}))
    m = build_sim_summary(run_sim(s))["metrics"]
    assert m["gas"]["mean_batch_size"] == pytest.approx(100, rel=0.02)
    assert m["gas_per_payment"] == pytest.approx(48_400, rel=0.01)


def test_block_gas_limit_caps_txs_per_block() -> None:
    """1,000,000 gas holds 11 settlements of 85,704: 30/s offered, 11 per 1 s block carried."""
    s = validate_scenario(world(chain={"mining": "interval", "block_time_s": 1.0, "gas_limit": 1_000_000},
                                agents={"count": 300, "funding_usdc": 1000,
                                        "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.1}},
                                run={"duration_s": 30}))
    result = run_sim(s, options=SimOptions(drain_s=5))
    per_block = np.bincount([r.block_number for r in result.settlements if r.block_number >= 0])
    assert per_block.max() == 11
    assert result.meta["sim"]["chain"]["blocks_full"] > 10
    assert build_sim_summary(result)["metrics"]["throughput_rps"] < 12


def test_agents_that_run_dry_stop_and_are_not_errors() -> None:
    s = validate_scenario(world(agents={"count": 50, "funding_usdc": 0.01,
                                        "arrivals": {"kind": "poisson", "rate_per_agent_s": 2}}))
    result = run_sim(s)
    summary = build_sim_summary(result)
    assert summary["meta"]["agents_broke"] == 50
    assert summary["metrics"]["errors"] == {}
    assert summary["metrics"]["paid"] == 50 * 10  # $0.01 buys ten $0.001 requests each
    assert summary["reconciliation"]["exact"]


def test_expired_authorizations_are_refused_with_their_reason() -> None:
    """A queue longer than the authorization's validity: x402 refuses late payments, nothing is lost."""
    s = validate_scenario(world(services=[{"name": "a", "path": "/a", "price": 1000, "work_ms": 100, "workers": 1}],
                                agents={"count": 100, "funding_usdc": 1000,
                                        "arrivals": {"kind": "poisson", "rate_per_agent_s": 0.2}},
                                run={"duration_s": 60}))
    result = run_sim(s, default_calibration().model_copy(update={"max_timeout_s": 10.0}))
    summary = build_sim_summary(result)
    assert summary["metrics"]["errors"].get("invalid_exact_evm_payload_authorization_valid_before", 0) > 100
    assert summary["reconciliation"]["served_unpaid"] == 0 and summary["reconciliation"]["exact"]


def test_pipelined_answers_before_inclusion_and_loses_nothing() -> None:
    s = validate_scenario(world(facilitator={"strategy": "pipelined"}))
    summary = build_sim_summary(run_sim(s))
    m = summary["metrics"]
    assert m["request_latency_s"]["p50"] < 0.1 < m["settlement_latency_s"]["p50"]
    assert summary["reconciliation"]["served_unpaid"] == 0 and summary["reconciliation"]["pending"] == 0


def test_locust_driver_keeps_one_request_per_user() -> None:
    s = validate_scenario(world(agents={"count": 40, "funding_usdc": 1000, "arrivals": {"kind": "closed"}},
                                run={"duration_s": 20, "users": 8, "spawn_rate": 8}))
    result = run_sim(s, options=SimOptions(driver="locust"))
    events = sorted([(r.t_start, 1) for r in result.requests] + [(r.t_end, -1) for r in result.requests])
    in_flight = np.cumsum([e for _, e in events])
    assert in_flight.max() == 8


def test_manual_mining_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="manual"):
        run_sim(validate_scenario(world(chain={"mining": "manual"})))


# ---- calibration ------------------------------------------------------------------------------------


def test_calibration_file_round_trip_and_errors(tmp_path: Path) -> None:
    cal = default_calibration().model_copy(update={"source": "test"})
    path = tmp_path / "cal.json"
    cal.dump(path)
    assert load_calibration(path) == cal
    partial = {"version": 1, "strategies": {"sync": {**json.loads(path.read_text())["strategies"]["sync"],
                                                     "submit_s": {"median": 0.002}}}}
    path.write_text(json.dumps(partial))
    loaded = load_calibration(path)
    assert loaded.strategy("sync").submit_s.median == 0.002 and loaded.strategy("sdk").threads == 40
    path.write_text(json.dumps({"version": 2}))
    with pytest.raises(CalibrationError, match="version 2"):
        load_calibration(path)
    path.write_text(json.dumps({"version": 1, "gas": {"transfer_existing": "lots"}}))
    with pytest.raises(CalibrationError, match="gas.transfer_existing"):
        load_calibration(path)
    with pytest.raises(ValueError):
        Dist(quantiles=[0.2, 0.1])


def test_calibration_from_a_run_folder(tmp_path: Path) -> None:
    """The live side hands over a run folder; here a sim run stands in for it."""
    from sim.calibrate import calibrate_from_run_dir

    s = load_scenario(SCENARIOS / "sim-under.yaml").with_overrides(run={"duration_s": 20, "warmup_s": 2})
    run_dir, summary, _ = simulate(s, None, SimOptions(driver="locust"), tmp_path, run_id="live")
    cal = calibrate_from_run_dir(run_dir)
    assert cal.source == str(run_dir) and cal.scenario == "sim-under" and cal.t_included == "receipt"
    assert cal.gas.transfer_existing == 85_704 and cal.gas.transfer_new == 102_792
    assert cal.client.sign_s is not None and cal.client.sign_s.quantiles
    assert cal.measured["throughput_rps"] == pytest.approx(summary["metrics"]["throughput_rps"])
    cal.dump(tmp_path / "cal.json")
    assert load_calibration(tmp_path / "cal.json") == cal


def _sdk_summary(fac_cpu_s: float, duration_s: float = 60.0) -> dict:
    """A live sdk run's summary as far as calibration reads it: CPU per role and the SDK thread probe."""
    return {
        "scenario": {"name": "sim-over", "config": {"facilitator": {"strategy": "sdk"}, "run": {"duration_s": duration_s}}},
        "metrics": {"cpu": {"seconds": {"facilitator": fac_cpu_s},
                            "ms_per_paid_request": {"facilitator": fac_cpu_s * 1000 / 1000}}},
        "meta": {"facilitator": {"sdk_threads": {
            "calls": {"verify": 1000, "settle": 1000, "receipt_wait": 1000},
            "cpu_s": {"verify": 13.0, "settle": 34.0, "receipt_wait": 18.0},
            "rpc_calls": {"eth_getTransactionReceipt": 9000, "eth_call": 1000}}}},
    }


def test_sdk_calibration_splits_thread_cpu_and_keeps_io_defaults_when_busy() -> None:
    """1,000 payments: 13 s verifying, 16 s settling before the wait, 18 s in 9,000 receipt polls, 3 s in
    the event loop (50 s in all). A busy facilitator's latencies are queueing: RPC waits stay the defaults."""
    from sim.calibrate import calibration_from_run

    requests = [RequestRecord(t_start=1.0, t_end=3.0, route="weather", agent=0, status=200, verify_s=0.7,
                              paid_s=2.0, settle_s=1.2, handler_s=0.01)]
    cal = calibration_from_run(_sdk_summary(50.0), requests, [])
    sdk, default = cal.strategy("sdk"), default_calibration().strategy("sdk")
    assert sdk.poll_cpu_s.mean == pytest.approx(0.002)
    assert sdk.verify_cpu_s.mean == pytest.approx(0.013 + 0.0015)
    assert sdk.settle_cpu_s.mean == pytest.approx(0.016 + 0.0015)
    assert sdk.verify_io_s == default.verify_io_s  # 0.7 s of verify latency is a queue, not RPC
    quiet = calibration_from_run(_sdk_summary(50.0, duration_s=1000.0), requests, [])  # 5% busy
    assert quiet.strategy("sdk").verify_io_s.mean == pytest.approx(0.7 - 2 * 0.0003 - 0.0145, abs=1e-6)


def test_receipt_polls_are_cpu_jobs_of_the_facilitator() -> None:
    """web3-style polling every 0.1 s from the send: each poll costs poll_cpu_s on the facilitator's CPU,
    so its busy time grows by exactly polls x poll_cpu_s, and a busier CPU answers later."""
    s = load_scenario(SCENARIOS / "sim-over.yaml").with_overrides(run={"duration_s": 20})
    base = default_calibration()
    sdk = base.strategy("sdk")
    free = base.model_copy(update={"strategies": {**base.strategies,
                                                  "sdk": sdk.model_copy(update={"poll_cpu_s": Dist.const(0.0)})}})
    costly = run_sim(s, base, SimOptions(driver="locust"))
    fac = costly.meta["sim"]["facilitator"]
    assert fac["receipt_polls"] >= 5 * fac["txs"]  # 2 s blocks polled every 0.1 s
    without = run_sim(s, free, SimOptions(driver="locust"))
    per_payment = sdk.verify_cpu_s.mean + sdk.settle_cpu_s.mean
    busy = costly.meta["cpu"]["seconds"]["facilitator"]
    assert busy == pytest.approx(fac["txs"] * per_payment + fac["receipt_polls"] * sdk.poll_cpu_s.mean, rel=0.02)
    assert "receipt_polls" not in without.meta["sim"]["facilitator"]
    assert without.meta["sim"]["facilitator"]["cpu_utilization"] < fac["cpu_utilization"]


def test_validation_table_of_a_sim_against_itself(tmp_path: Path) -> None:
    from sim.validate import passed, table_text, validate_against

    s = load_scenario(SCENARIOS / "sim-fast.yaml").with_overrides(run={"duration_s": 20, "warmup_s": 2})
    _, live, _ = simulate(s, None, SimOptions(driver="locust"), tmp_path, run_id="live")
    rows, _ = validate_against(live, replicates=1)
    assert passed(rows) and all(abs(r.error or 0) < 1e-9 for r in rows)
    assert "throughput" in table_text(rows)

    rows, sims = validate_against(live, replicates=3)  # seeds seed, seed+1, seed+2: the first one is the live twin
    assert [s["seed"] for s in sims] == [live["seed"], live["seed"] + 1, live["seed"] + 2]
    assert sims[0]["metrics"] == live["metrics"] and sims[1]["metrics"] != live["metrics"]
    throughput = rows[0]
    values = [s["metrics"]["throughput_rps"] for s in sims]
    assert throughput.sim == pytest.approx(sum(values) / 3) and throughput.sim_sd and throughput.sim_sd > 0


# ---- sweeps -----------------------------------------------------------------------------------------


def test_grid_keys_apply_and_bad_keys_fail_fast() -> None:
    from sim.overrides import apply_overrides, parse_grid

    grid = parse_grid(["agents=10,20", "block_time_s=0,0.2", "strategy=batched", "price=0.01", "batch_size=7"])
    assert grid == {"agents": [10, 20], "block_time_s": [0, 0.2], "strategy": ["batched"], "price": [0.01],
                    "batch_size": [7]}
    base = validate_scenario(world())
    s = apply_overrides(base, {"block_time_s": 0, "price": 0.01, "strategy": "batched", "batch_size": 7})
    assert s.chain.mining == "auto" and s.chain.block_time_s is None
    assert s.price_atomic(s.services[0]) == 10_000 and s.facilitator.batch.max_size == 7
    with pytest.raises(ScenarioError, match="agents.cont"):
        apply_overrides(base, {"agents.cont": 3})
    with pytest.raises(ScenarioError, match="expected KEY"):
        parse_grid(["agents"])


def test_sweep_runs_points_in_parallel_and_writes_table_and_plots(tmp_path: Path) -> None:
    from sim.overrides import parse_grid
    from sim.sweep import run_sweep

    base = validate_scenario(world(run={"duration_s": 10}))
    result = run_sweep(base, parse_grid(["agents=50,200", "price=0.001,0.1"]), tmp_path, jobs=2)
    assert len(result.rows) == 4
    names = {p.name for p in result.plots}
    assert names == {"throughput_vs_offered.png", "latency_vs_offered.png", "cost_vs_price.png"}
    assert all(p.stat().st_size > 1000 for p in result.plots)
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["offered_rps"] for r in table["rows"]] == [5.0, 5.0, 20.0, 20.0]
    fractions = {r["price"]: r["cost_fraction_of_price"] for r in table["rows"] if r["agents"] == 200}
    assert fractions[0.001] == pytest.approx(fractions[0.1] * 100, rel=0.01)
    assert (tmp_path / "sweep.csv").read_text().startswith("agents,price,offered_rps")


# ---- the ecosystem ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,scale", [("", 1), ("-10x", 10), ("-100x", 100)])
def test_ecosystem_scenarios_carry_the_public_figures(suffix: str, scale: int) -> None:
    from sim.ecosystem import mean_price_usd, mean_rate

    s = load_scenario(SCENARIOS / f"x402-ecosystem-2025{suffix}.yaml")
    assert mean_rate(s) * 30 * 86_400 == pytest.approx(1.35e6 * scale, rel=0.005)
    assert mean_price_usd(s) == pytest.approx(1.48e6 / 1.35e6, rel=0.01)
    if scale == 1:
        assert s.agents.count == 72_000


def test_capacity_report_answers_per_strategy() -> None:
    from sim.ecosystem import capacity_report, report_markdown

    s = load_scenario(SCENARIOS / "x402-ecosystem-2025-100x.yaml")
    report = capacity_report(s, check_s=20)
    plans = {p["strategy"]: p for p in report["plans"]}
    assert set(plans) == {"sdk", "sync", "pipelined", "batched"}
    assert report["settlements_per_s"]["peak_hour"] == pytest.approx(3 * 52.08, rel=0.01)
    assert plans["sdk"]["processes"] > plans["sync"]["processes"]  # 40 threads per 2 s block vs CPU-bound
    assert plans["batched"]["gas_per_payment"] < plans["sync"]["gas_per_payment"]
    assert plans["sync"]["gas_per_day"] == pytest.approx(45_000 * 100 * 85_704, rel=0.01)
    assert all(p["check"]["keeps_up"] for p in plans.values())
    assert "| sdk |" in report_markdown(report)
    # a calibration measured on one shared host still plans processes on hosts of their own
    shared = capacity_report(s, default_calibration().model_copy(update={"machine_cores": 1}), check_s=20)
    assert all(p["check"]["keeps_up"] for p in shared["plans"])


# ---- CLI and boundaries ---------------------------------------------------------------------------------


def x402bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", *args], capture_output=True, text=True, timeout=120)


def test_cli_sim_writes_a_run_folder_and_bad_run_folders_are_refused(tmp_path: Path) -> None:
    done = x402bench("sim", str(SCENARIOS / "smoke.yaml"), "--duration", "3", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    (summary_path,) = tmp_path.glob("smoke/*/summary.json")
    assert json.loads(summary_path.read_text())["mode"] == "sim"
    for command, flag in (("calibrate", "--from-run"), ("validate", "--live-run")):
        refused = x402bench(command, str(SCENARIOS / "smoke.yaml"), flag, str(tmp_path / "no-such-run"))
        assert refused.returncode == 2 and "no-such-run" in refused.stderr, refused.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    refused = x402bench("sim", str(SCENARIOS / "smoke.yaml"), "--calibration", str(bad))
    assert refused.returncode == 2 and "not valid JSON" in refused.stderr


def test_the_sim_never_imports_the_live_world() -> None:
    code = ("import sys, sim.run, sim.sweep, sim.ecosystem, sim.calibrate, sim.validate;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('services', 'loadtest', 'locust', 'web3')];"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_calibration_version_is_in_every_file() -> None:
    assert json.loads(Calibration().model_dump_json())["version"] == 1


@pytest.mark.parametrize("kind,expected", [("poisson", 6000), ("constant", 6000), ("bursts", 6000),
                                            ("ramp", 6000 * (60 - 20 / 2) / 60)])
def test_open_arrival_kinds_offer_the_scenario_rate(kind: str, expected: float) -> None:
    s = validate_scenario(world(agents={"count": 500, "funding_usdc": 1000, "arrivals": {
        "kind": kind, "rate_per_agent_s": 0.2, "burst_size": 5, "ramp_s": 20}}, run={"duration_s": 60}))
    started = run_sim(s).meta["sim"]["started_requests"]
    assert started == pytest.approx(expected, rel=0.05)


def test_one_signer_key_queues_payments_at_its_lock_after_acceptance() -> None:
    """Our engines hold the signer lock across two loop steps and the send's round trip, so one key sends at
    most 1 / (steps + round trip) txs per second: closed-loop payers then wait at the lock (after acceptance,
    inside settlement latency), not at /verify; a second key doubles the rate (each has its own lock)."""
    def run(keys: int, verify_ms: float = 0.1, settle_ms: float = 0.2) -> dict:
        s = validate_scenario(world(chain={"mining": "interval", "block_time_s": 0.2},
                                    facilitator={"strategy": "pipelined", "signer_keys": keys},
                                    agents={"count": 100, "funding_usdc": 1000, "arrivals": {"kind": "closed"}},
                                    run={"duration_s": 10, "warmup_s": 2, "users": 100, "spawn_rate": 1000}))
        base = instant_calibration()
        ms = Dist.from_ms
        timing = base.strategy("pipelined").model_copy(update={
            "verify_cpu_s": ms(verify_ms), "settle_cpu_s": ms(settle_ms), "submit_s": ms(4.0)})
        cal = base.model_copy(update={"strategies": {**base.strategies, "pipelined": timing}})
        return build_sim_summary(run_sim(s, cal, SimOptions(driver="locust")))["metrics"]

    one, two = run(1), run(2)
    cycle = 0.004 + 0.2e-3 * (0.15 + 0.05)  # the round trip and the lock's own steps (no wait: the CPU is idle)
    assert one["throughput_rps"] == pytest.approx(1 / cycle, rel=0.03)
    assert two["throughput_rps"] == pytest.approx(2 / cycle, rel=0.05)
    phases = one["phase_s"]
    assert phases["settle"] > 50 * phases["verify"]  # the queue is after acceptance
    assert one["settlement_latency_s"]["p50"] > 0.3  # ~100 payments ahead at the lock, 4 ms each
    # A busy loop (2.8 ms of CPU per payment, ~60% busy) makes each lock step wait its
    # turn: the key sends fewer txs than its round trip allows, though the CPU alone could carry them.
    busy = run(1, verify_ms=1.2, settle_ms=1.6)
    alone = 1 / (0.004 + 1.6e-3 * 0.2)
    assert busy["throughput_rps"] < 0.96 * alone and busy["throughput_rps"] < 1 / 2.8e-3

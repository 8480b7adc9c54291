"""What it takes to carry a scenario's volume: settlements per second at peak, facilitator
processes and signer keys per strategy, gas and USD per day.

Built for scenarios/x402-ecosystem-2025*.yaml (October 2025's public x402 volume and 10x,
100x), but it answers for any scenario with open arrivals. Capacity comes from the same
calibration the sim uses, in closed form:
- a facilitator process carries min(threads / hold, cores / CPU per payment) payments/s,
  where a /settle that answers after its receipt holds its thread for about a block
  (saturated handlers all wait for the same next block: the SDK's 40 threads settle 40 per 2 s);
- a signer key carries 1 / submit_s txs/s (its nonce lock), times the batch size when batched;
- the chain carries gas_limit / gas per payment per block.
Each plan is then checked by simulating the peak hour's rate for `check_s` seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sim.calibration import Calibration, default_calibration
from sim.run import SimOptions, build_sim_summary, run_sim
from x402bench import registry
from x402bench.scenario import Scenario

DAY = 86_400.0
#: Peak hour over the mean hour. An assumption (documented, overridable): agent traffic is
#: diurnal and bursty; 3x is a common planning factor for consumer-facing API traffic.
PEAK_FACTOR = 3.0
#: Plan to run resources at most this busy at the peak.
HEADROOM = 0.7
STRATEGIES = tuple(registry.STRATEGIES)


@dataclass
class Plan:
    strategy: str
    process_cap_tps: float
    key_cap_tps: float
    chain_cap_tps: float
    processes: int
    signer_keys: int
    mean_batch_size: float
    gas_per_payment: float
    gas_per_day: float
    txs_per_day: float
    usd_per_day: float
    usd_per_payment: float
    check: dict[str, Any] | None = None


def mean_rate(scenario: Scenario) -> float:
    a = scenario.agents.arrivals
    if a.kind == "closed":
        raise ValueError("capacity planning needs open arrivals (poisson, constant, bursts, ramp), not 'closed'")
    return scenario.agents.count * a.rate_per_agent_s


def mean_price_usd(scenario: Scenario) -> float:
    weights = scenario.mix_weights()
    scale = 10 ** scenario.token.decimals
    return sum(weights[s.name] * scenario.price_atomic(s) / scale for s in scenario.services)


def _block_time(scenario: Scenario, cal: Calibration) -> float:
    return scenario.chain.block_time_s or cal.chain.automine_tx_s


def caps(scenario: Scenario, cal: Calibration, strategy: str, batch_size: float) -> tuple[float, float, float]:
    """(per facilitator process, per signer key, whole chain) payments per second."""
    t = cal.strategy(strategy)
    cpu = t.verify_cpu_s.mean + t.settle_cpu_s.mean
    cpu_cap = cal.facilitator_cores / cpu if cpu > 0 else math.inf
    poll = t.receipt_poll_s or scenario.facilitator.receipt_poll_s
    if t.threads:
        block = scenario.chain.block_time_s or cal.chain.automine_tx_s
        hold = (t.settle_cpu_s.mean + t.settle_io_s.mean + t.submit_s.mean + block
                + (poll if t.answer_after == "included" else 0.0))
        if strategy == "batched":
            hold += scenario.facilitator.batch.max_age_s if scenario.facilitator.batch else 0.0
        process = min(cpu_cap, t.threads / hold)
    else:
        process = cpu_cap
    lock = t.submit_s.mean + (cal.chain.automine_tx_s if scenario.chain.mining == "auto" else 0.0)
    key = (batch_size if strategy == "batched" else 1.0) / lock if lock > 0 else math.inf
    gas = gas_per_payment(cal, strategy, batch_size)
    chain = scenario.chain.gas_limit / gas / _block_time(scenario, cal)
    return process, key, chain


def expected_batch(scenario: Scenario, rate: float) -> float:
    """Mean batch size at a rate: the first payment opens a batch, the ones within max_age_s join it."""
    batch = scenario.facilitator.batch
    max_size = batch.max_size if batch else 50
    max_age = batch.max_age_s if batch else 1.0
    return float(min(max_size, 1.0 + rate * max_age))


def gas_per_payment(cal: Calibration, strategy: str, batch_size: float) -> float:
    g = cal.gas
    if strategy == "batched":
        return g.batch_fixed / batch_size + g.batch_per_item
    return float(g.transfer_existing)


def plan(scenario: Scenario, cal: Calibration, strategy: str, peak_tps: float) -> Plan:
    rate = mean_rate(scenario)
    batched = strategy == "batched"
    peak_batch = expected_batch(scenario, peak_tps) if batched else 1.0
    mean_batch = expected_batch(scenario, rate) if batched else 1.0
    process, key, chain = caps(scenario, cal, strategy, peak_batch)
    processes = max(1, math.ceil(peak_tps / (process * HEADROOM)))
    keys = max(1, math.ceil(peak_tps / (key * HEADROOM)))
    gas = gas_per_payment(cal, strategy, mean_batch)
    per_day = rate * DAY
    txs = per_day / mean_batch
    e = scenario.economics
    usd = per_day * gas * e.gas_price_gwei * 1e-9 * e.eth_usd + txs * e.l1_fee_usd_per_tx
    return Plan(strategy, process, key, chain, processes, keys, mean_batch, gas, per_day * gas, txs, usd,
                usd / per_day if per_day else 0.0)


def check_plan(scenario: Scenario, cal: Calibration, p: Plan, peak_factor: float, check_s: float) -> dict[str, Any]:
    """Simulate the peak rate with the plan's processes (CPU servers, threads) and keys."""
    a = scenario.agents
    warmup = min(20.0, check_s / 4)
    data = scenario.model_dump(mode="python")
    data["facilitator"].update(strategy=p.strategy, signer_keys=min(64, p.signer_keys))
    data["agents"]["arrivals"]["rate_per_agent_s"] = a.arrivals.rate_per_agent_s * peak_factor
    data["run"].update(duration_s=check_s, warmup_s=warmup)
    from x402bench.scenario import validate_scenario

    peak = validate_scenario(data, source=f"{scenario.name} at peak ({p.strategy})")
    timing = cal.strategy(p.strategy)
    scaled = timing.model_copy(update={"threads": timing.threads * p.processes if timing.threads else None})
    # the plan's processes run on their own hosts: a calibration measured on one shared host
    # (machine_cores) says what each costs, not that they must share that host's cores
    peak_cal = cal.model_copy(update={"facilitator_cores": cal.facilitator_cores * p.processes,
                                      "strategies": {**cal.strategies, p.strategy: scaled},
                                      "machine_cores": None})
    result = run_sim(peak, peak_cal, SimOptions())
    m = build_sim_summary(result)["metrics"]
    offered = mean_rate(peak)
    busiest = _busiest_block(result)
    return {
        "offered_tps": offered,
        "throughput_tps": m["throughput_rps"],
        "keeps_up": bool(m["throughput_rps"] and m["throughput_rps"] >= 0.95 * offered),
        "settlement_p50_s": m["settlement_latency_s"]["p50"],
        "settlement_p95_s": m["settlement_latency_s"]["p95"],
        "request_p95_s": m["request_latency_s"]["p95"],
        "busiest_block_payments": busiest,
        "busiest_block_tps": busiest / _block_time(peak, cal),
        "facilitator_cpu_utilization": result.meta["sim"]["facilitator"]["cpu_utilization"],
        "gas_per_payment": m["gas_per_payment"],
        "simulated_s": check_s,
    }


def _busiest_block(result: Any) -> int:
    """Payments settled by the fullest block."""
    import numpy as np

    cols = result.settlements.cols
    txs = np.frombuffer(cols.tx, dtype=np.int64)
    txs = txs[txs >= 0]
    if txs.size == 0:
        return 0
    blocks = np.frombuffer(result.settlements.txs.block, dtype=np.int64)[txs]
    return int(np.bincount(blocks).max())


def with_rpc_latency(cal: Calibration, rpc_s: float) -> Calibration:
    """The calibration against a node `rpc_s` away (round trip) instead of local Anvil: verify waits for
    2 calls, settle for 4 before sending, and the send itself holds the key's lock (x402-protocol.md)."""
    if rpc_s <= 0:
        return cal
    strategies = {}
    for name, t in cal.strategies.items():
        strategies[name] = t.model_copy(update={
            "verify_io_s": _shift(t.verify_io_s, 2 * rpc_s), "settle_io_s": _shift(t.settle_io_s, 4 * rpc_s),
            "submit_s": _shift(t.submit_s, rpc_s)})
    return cal.model_copy(update={"strategies": strategies, "source": f"{cal.source} + {rpc_s * 1000:g} ms RPC"})


def _shift(dist: Any, seconds: float) -> Any:
    from sim.calibration import Dist

    if dist.quantiles is not None:
        return Dist(quantiles=[q + seconds for q in dist.quantiles])
    p99 = None if dist.p99 is None else dist.p99 + seconds
    return Dist(median=dist.median + seconds, p99=p99)


def capacity_report(scenario: Scenario, calibration: Calibration | None = None, peak_factor: float = PEAK_FACTOR,
                    strategies: tuple[str, ...] = STRATEGIES, check_s: float = 120.0) -> dict[str, Any]:
    """The whole answer as a dict (see report_markdown for the words)."""
    cal = calibration or default_calibration()
    rate = mean_rate(scenario)
    peak = rate * peak_factor
    plans = []
    for strategy in strategies:
        p = plan(scenario, cal, strategy, peak)
        if check_s > 0:
            p.check = check_plan(scenario, cal, p, peak_factor, check_s)
        plans.append(p)
    price = mean_price_usd(scenario)
    return {
        "scenario": scenario.name,
        "agents": scenario.agents.count,
        "payments_per_day": rate * DAY,
        "payments_per_30_days": rate * DAY * 30,
        "mean_price_usd": price,
        "usd_paid_per_day": rate * DAY * price,
        "settlements_per_s": {"mean": rate, "peak_hour": peak, "peak_factor": peak_factor},
        "chain": {"mining": scenario.chain.mining, "block_time_s": scenario.chain.block_time_s,
                  "gas_limit": scenario.chain.gas_limit},
        "economics": scenario.economics.model_dump(),
        "calibration": cal.source,
        "headroom": HEADROOM,
        "plans": [asdict(p) for p in plans],
    }


def report_markdown(report: dict[str, Any]) -> str:
    s = report["settlements_per_s"]
    lines = [
        f"## What it takes to carry {report['scenario']}",
        "",
        f"- {report['agents']:,} paying agents, {report['payments_per_day']:,.0f} payments/day "
        f"({report['payments_per_30_days']:,.0f} per 30 days), mean price ${report['mean_price_usd']:.3f}, "
        f"${report['usd_paid_per_day']:,.0f} paid/day",
        f"- settlements per second: mean {s['mean']:.3f}, peak hour {s['peak_hour']:.3f} "
        f"(assumed {s['peak_factor']:g}x the mean)",
        f"- chain: {report['chain']['mining']} mining, block time {report['chain']['block_time_s']} s, "
        f"gas limit {report['chain']['gas_limit']:,}; calibration: {report['calibration']}; "
        f"plans keep every resource under {report['headroom']:.0%} busy at the peak",
        "",
        "| strategy | per process (pay/s) | per key (pay/s) | chain cap (pay/s) | processes | signer keys "
        "| gas/payment | gas/day | USD/day | USD/payment | sim at peak: paid/s of offered | settle p95 (s) "
        "| busiest block (pay/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["plans"]:
        c = p.get("check") or {}
        sim = (f"{c['throughput_tps']:.2f} / {c['offered_tps']:.2f}" + ("" if c.get("keeps_up") else " (falls behind)")
               if c.get("throughput_tps") is not None else "n/a")
        p95 = f"{c['settlement_p95_s']:.2f}" if c.get("settlement_p95_s") is not None else "n/a"
        busiest = f"{c['busiest_block_tps']:.1f}" if c.get("busiest_block_tps") is not None else "n/a"
        lines.append(
            f"| {p['strategy']} | {p['process_cap_tps']:.1f} | {p['key_cap_tps']:.1f} | {p['chain_cap_tps']:.0f} "
            f"| {p['processes']} | {p['signer_keys']} | {p['gas_per_payment']:,.0f} | {p['gas_per_day']:,.0f} "
            f"| {p['usd_per_day']:,.2f} | {p['usd_per_payment']:.5f} | {sim} | {p95} | {busiest} |"
        )
    return "\n".join(lines) + "\n"

"""Run the model of one scenario and hand back the same records and summary a live run gives.

`run_sim` is pure (no files): scenario + calibration + options in, records and the
reconciliation/meta blocks out, identical for the same inputs. `simulate` adds the run
folder through the shared results module, so sim and load runs compare side by side.

Money is classified by x402bench.results.money, as for live runs, from the model's ground
truth keyed by payment (its seq): what was served, what settled on chain, what is still open.
The scenario's fault windows are in the summary's `faults` table; the plots (drawn by the
results package) do not mark them, so the windows the model applied, and what they did, are
in summary meta under `sim.faults`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from sim.agents import DRIVERS, Stopper
from sim.calibration import Calibration, default_calibration
from sim.engine import Clock
from sim.faults import build_plan
from sim.store import (FAILED, PENDING, RELEASED, SETTLED, ParquetSpill, RequestView, SettlementView, materialize,
                       nonce_hex, reason_of)
from sim.world import World
from x402bench.results.metrics import RequestTally
from x402bench.results.money import LOSS_KEYS, MoneyEvent, classify, counts
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, SettlementRecord
from x402bench.scenario import Scenario

Driver = Literal["open", "locust"]
Records = Literal["all", "capped", "none", "parquet"]
#: Failed requests kept as records by default (`capped`); past it they are counted, not stored.
RECORDS_CAP = 100_000
#: Where `records: parquet` writes every request, in the run folder.
PARQUET = "requests.parquet"
#: Simulated seconds per step of the run loop, so a progress callback hears from it.
PROGRESS_STEPS = 200


@dataclass(frozen=True)
class SimOptions:
    """Command-line overrides and how the sim runs (not part of the world)."""

    agents: int | None = None
    duration_s: float | None = None
    seed: int | None = None
    driver: Driver = "open"
    drain_s: float = 600.0  # most simulated seconds to let in-flight payments finish after arrivals stop
    refund_at_end: bool = False  # batch-settlement: refund each channel's unclaimed rest after the last claim
    # Which request records are kept: all of them; `capped` (every paid one, failed ones up to records_cap,
    # the rest counted); `none` (as capped with no failed row kept, and no requests.csv rows written).
    # Paid requests are always kept: reconciliation matches each to its settlement.
    records: Records = "capped"
    records_cap: int = RECORDS_CAP


@dataclass
class SimResult:
    scenario: Scenario  # with the overrides applied: what really ran
    requests: RequestView
    settlements: SettlementView
    reconciliation: dict[str, Any]
    meta: dict[str, Any]  # deterministic: goes into summary.json
    perf: dict[str, float] = field(default_factory=dict)  # wall clock figures: printed, never in summary.json
    money_events: list[MoneyEvent] = field(default_factory=list)  # where money went astray, in run seconds
    channels: list[ChannelRecord] = field(default_factory=list)  # batch-settlement books, one per channel
    channel_txs: list[ChannelTxRecord] = field(default_factory=list)  # batch-settlement txs, by inclusion

    # set when some records were not kept, or more than RECORDS_CAP were: the request metrics come from it
    # (histogram percentiles) and the records are never all materialized as objects
    tally: RequestTally | None = None

    _records: tuple[list[RequestRecord], list[SettlementRecord]] | None = None

    def records(self) -> tuple[list[RequestRecord], list[SettlementRecord]]:
        """Request and settlement records as lists, made once (hex strings shared between them)."""
        if self._records is None:
            self._records = materialize(self.requests, self.settlements)
        return self._records

    @property
    def paid(self) -> int:
        return int(np.count_nonzero(np.frombuffer(self.requests.cols.status, dtype=np.uint16) == 200))


def effective_scenario(scenario: Scenario, options: SimOptions) -> Scenario:
    """The scenario with the options' overrides, so the summary records what was simulated."""
    sections: dict[str, Any] = {}
    if options.agents is not None:
        sections["agents"] = {"count": options.agents}
    if options.duration_s is not None:
        sections["run"] = {"duration_s": options.duration_s}
    if options.seed is not None:
        sections["seed"] = options.seed
    return scenario.with_overrides(**sections) if sections else scenario


def offered_load(scenario: Scenario, cal: Calibration, driver: Driver = "open") -> dict[str, Any]:
    """What the run offers against what its world can settle, per second, before anything runs.

    offered: the agents' mean arrival rate (open arrivals; the locust driver's users each wait for
    their answer, so they offer at most what they get back, and closed agents likewise: None).
    capacity: the most paid requests per second the world carries at this mix: the tightest of
    the facilitator (per process, and its signer keys) and the chain as sim/ecosystem.py's caps
    give them and the service's CPU (cores / cpu_s per paid request), each route limited by its
    workers (workers / mean work) carrying no more than that. A route offered more than its workers
    carry is overloaded on its own (`routes_overloaded`) even when the world as a whole is not.
    Overloaded, queues grow for the whole run: latencies are mostly waiting, and payments whose
    validBefore passes while queued are refused."""
    from sim.ecosystem import caps, expected_batch

    a = scenario.agents.arrivals
    offered = None
    if driver == "open" and a.kind != "closed":
        offered = scenario.agents.count * a.rate_per_agent_s
    strategy = scenario.facilitator.strategy
    rate = offered if offered is not None else 0.0
    batch = expected_batch(scenario, rate) if strategy == "batched" else 1.0
    try:
        process, key, chain = caps(scenario, cal, strategy, batch)
    except ZeroDivisionError:  # automine that takes no time (an instant calibration): the chain is no limit
        quick = cal.model_copy(update={"chain": cal.chain.model_copy(update={"automine_tx_s": 1e-12})})
        process, key, chain = caps(scenario, quick, strategy, batch)
    limits = {"facilitator": process, "signer_keys": key * scenario.facilitator.signer_keys, "chain": chain}
    svc = cal.service.cpu_s.mean
    if svc > 0:
        servers = cal.service.cores * scenario.service_processes  # each at most one core, on a shared host's cores
        limits["service_cpu"] = min(servers, cal.machine_cores or servers) / svc
    mix = scenario.mix_weights()
    routes: dict[str, float] = {}
    for s in scenario.services:
        work = _ms(s.work_ms).mean
        if s.workers and work > 0 and mix.get(s.name, 0) > 0:
            routes[s.name] = s.workers / work
    bottleneck = min(limits, key=lambda k: limits[k])
    capacity = limits[bottleneck]
    if offered is not None and routes:  # routes past their workers carry only that much of the mix
        carried = sum(min(offered * mix[s.name], routes.get(s.name, math.inf)) for s in scenario.services
                      if mix.get(s.name, 0) > 0)
        if carried < capacity:
            capacity, bottleneck = carried, "route workers"
    over_routes = {name: {"offered_rps": offered * mix[name], "capacity_rps": cap}
                   for name, cap in routes.items() if offered is not None and offered * mix[name] > cap}
    return {"offered_rps": offered, "capacity_rps": capacity, "bottleneck": bottleneck,
            "limits_rps": {**limits, **{f"route {k}": v for k, v in routes.items()}},
            "routes_overloaded": over_routes,
            "overloaded": offered is not None and (offered > capacity * (1 + 1e-9) or bool(over_routes)),
            "ratio": offered / capacity if offered is not None and capacity > 0 else None}


def overload_warning(load: dict[str, Any]) -> str | None:
    """The sentence printed before an overloaded run (and kept in its summary), or None."""
    if not load.get("overloaded"):
        return None
    parts = []
    if load["offered_rps"] > load["capacity_rps"] * (1 + 1e-9):
        parts.append(f"the agents offer {load['offered_rps']:,.1f} req/s, {load['ratio']:.3g}x what this world "
                     f"settles ({load['capacity_rps']:,.1f}/s, limited by {load['bottleneck']})")
    for name, r in sorted(load.get("routes_overloaded", {}).items()):
        parts.append(f"route {name} is offered {r['offered_rps']:,.1f} req/s, over the {r['capacity_rps']:,.1f}/s "
                     "its workers carry")
    return ("overloaded: " + "; ".join(parts) + ". Queues grow for the whole run, latencies are mostly waiting, "
            "and payments whose validBefore passes while queued are refused")


def run_sim(scenario: Scenario, calibration: Calibration | None = None,
            options: SimOptions = SimOptions(),
            progress: Callable[[float, float], None] | None = None,
            parquet_path: Path | None = None) -> SimResult:
    """Simulate the scenario: arrivals until run.duration_s, then drain in-flight payments.

    `progress(simulated_s, total_s)` is called every 1/PROGRESS_STEPS of the arrivals (then during
    the drain, and once with total_s 0 when the model is done), for a progress bar. `parquet_path`: where
    `records: parquet` writes every request as the run goes. Raises ScenarioError when the scenario
    holds a fault the sim cannot apply (see sim/faults.py)."""
    scenario = effective_scenario(scenario, options)
    cal = calibration or default_calibration()
    plan = build_plan(scenario)
    wall0 = time.perf_counter()
    clock = Clock()
    cap = None if options.records == "all" else (0 if options.records in ("none", "parquet") else options.records_cap)
    world = World(clock, scenario, cal, scenario.agents.count, loadgen=options.driver == "locust", plan=plan,
                  refund_at_end=options.refund_at_end, failed_cap=cap)
    if options.records == "parquet":
        if parquet_path is None:
            raise ValueError("records 'parquet' writes a file: run it through simulate (x402bench sim)")
        world.spill = ParquetSpill(parquet_path, world.routes)
    duration = scenario.run.duration_s
    tally = RequestTally(float(scenario.run.warmup_s), float(duration))
    world.dropped.sink = tally.add_failed
    driver = DRIVERS[options.driver](clock, world, scenario, Stopper(world, duration, scenario.run.max_requests))
    world.driver = driver
    driver.start()
    if progress is None:
        clock.run(duration)
    else:
        step = duration / PROGRESS_STEPS
        for i in range(1, PROGRESS_STEPS + 1):
            clock.run(duration if i == PROGRESS_STEPS else i * step)
            progress(clock.now, duration)
    fac = world.facilitator
    chain = fac.chain
    limit = duration + options.drain_s
    step = max(1.0, scenario.chain.block_time_s or 0.0)
    t = duration
    while t < limit and (world.in_flight or chain.pending or fac._batch or fac.awaiting_restart):
        t = min(limit, t + step)
        clock.run(t)
        if progress is not None:
            progress(t, duration)
    channels = world.channels
    if channels is not None:  # every request answered: the services' last claim and settle (and refunds)
        channels.close()
        while t < limit and (channels.busy or chain.pending):
            t = min(limit, t + step)
            clock.run(t)
    chain.stop()
    end = clock.now
    wall = time.perf_counter() - wall0
    if progress is not None:
        progress(end, 0.0)  # done: a total of 0 says so

    order = _request_order(world)
    requests = RequestView(world.requests, world.routes, order)
    gas_price_wei = int(round(scenario.economics.gas_price_gwei * 1e9))
    accepted = np.frombuffer(world.settlements.t_accepted, dtype=np.float64)
    by_acceptance = np.argsort(accepted, kind="stable")
    if plan is not None:  # released claims are not in the ledger (the live one deletes them)
        state = np.frombuffer(world.settlements.state, dtype=np.uint8)
        by_acceptance = by_acceptance[state[by_acceptance] != RELEASED]
    if channels is not None:  # deposits are channel txs (channel_txs), not exact settlements: the live ledger has none
        exact_rows = _exact_rows(world, np.frombuffer(world.settlements.payee, dtype=np.uint16))
        by_acceptance = by_acceptance[exact_rows[by_acceptance]]
    settlements = SettlementView(world.settlements, world.txs, gas_price_wei, by_acceptance.tolist())
    events = money_events(world)
    reconciliation = _reconcile(world, events)
    paid = int(np.count_nonzero(np.frombuffer(world.requests.status, dtype=np.uint16) == 200))  # every scheme's
    meta = {
        "seed": scenario.seed,
        "duration_s": duration,
        "run_id": None,
        "started_at": None,
        "cpu": {"seconds": {"facilitator": fac.cpu.busy_s, "services": world.svc_cpu.busy_s,
                            **({"loadgen": world.loadgen.busy_s} if world.loadgen else {})}},
        "agents_broke": world.broke_count,
        "agents_broke_first_s": world.broke_first_t if world.broke_count else None,
        "sim": {
            "driver": options.driver,
            "agents": scenario.agents.count,
            "calibration": cal.source,
            "calibration_sha256": _digest(cal.model_dump_json()),
            "started_requests": world.started,
            "unfinished_requests": world.in_flight,
            "simulated_s": end,
            "events": clock.events,
            "chain": chain.stats(),
            "facilitator": fac.stats(end),
            "service_cpu_utilization": world.svc_cpu.busy_s / max(end, 1e-9) / world.svc_cpu.servers,
            "route_wait_s": {world.routes[i]: (g.wait_s / g.jobs if g and g.jobs else 0.0)
                             for i, g in enumerate(world.gates)},
            **({"faults": plan.report()} if plan is not None else {}),
            **({"channels": channels.stats(_channel_paid(world))} if channels is not None else {}),
        },
    }
    world.dropped.flush()
    if world.spill is not None:
        world.spill.close()
    kept = len(world.requests)
    total = kept + world.dropped.total
    meta["records"] = {"mode": options.records, "kept": kept, "total": total,
                       "failed_counted_not_kept": world.dropped.total,
                       **({"parquet_rows": world.spill.rows, "parquet_file": PARQUET} if world.spill is not None else {})}
    meta["sim"]["load"] = offered_load(scenario, cal, options.driver)
    warning = overload_warning(meta["sim"]["load"])
    if warning:
        meta["sim"]["load"]["warning"] = warning
    perf = {"wall_s": wall, "paid": paid, "requests": total + world.in_flight,
            "requests_per_wall_s": (total + world.in_flight) / wall if wall > 0 else 0.0, "paid_per_wall_s": paid / wall if wall > 0 else 0.0,
            "events": clock.events, "events_per_wall_s": clock.events / wall if wall > 0 else 0.0}
    result = SimResult(scenario, requests, settlements, reconciliation, meta, perf, events)
    if world.dropped.total or kept > RECORDS_CAP:
        _tally_kept(world, tally)
        result.tally = tally
    meta["records"]["metrics_from"] = "records" if result.tally is None else "tally"
    if channels is not None:
        result.channels = channels.channel_records()
        result.channel_txs = channels.channel_tx_records()
    return result


def _tally_kept(world: World, tally: RequestTally) -> None:
    """Add the rows that were kept to a tally that already counted the dropped ones (numpy, one pass)."""
    c = world.requests
    status = np.frombuffer(c.status, dtype=np.uint16)
    t_end = np.frombuffer(c.t_end, dtype=np.float64)
    paid = status == 200
    cols = {"challenge": c.challenge, "sign": c.sign, "paid": c.paid, "verify": c.verify, "handler": c.handler,
            "settle": c.settle}
    tally.add_paid(np.frombuffer(c.t_start, dtype=np.float64)[paid], t_end[paid],
                   np.frombuffer(c.amount, dtype=np.int64)[paid],
                   {k: np.frombuffer(v, dtype=np.float64)[paid] for k, v in cols.items()})
    failed = ~paid
    key = status[failed].astype(np.int64) * 256 + np.frombuffer(c.error, dtype=np.uint8)[failed]
    starts = np.frombuffer(c.t_start, dtype=np.float64)[failed]
    ends = t_end[failed]
    for k in np.unique(key).tolist():
        mask = key == k
        tally.add_failed(reason_of(k // 256, k % 256), starts[mask], ends[mask])


def _ms(duration: Any) -> Any:
    from sim.world import _ms as ms

    return ms(duration)


def _exact_rows(world: World, route: np.ndarray) -> np.ndarray:
    """Which rows (given each row's route) belong to exact routes."""
    exact = np.array([not c for c in world.channel_routes], dtype=bool)
    return exact[route] if route.size else np.zeros(0, dtype=bool)


def _channel_paid(world: World) -> int:
    rq = world.requests
    status = np.frombuffer(rq.status, dtype=np.uint16)
    route = np.frombuffer(rq.route, dtype=np.uint16)
    return int(np.count_nonzero((status == 200) & ~_exact_rows(world, route)))


def _request_order(world: World) -> list[int]:
    """Records sorted by (t_start, agent), as the live runner sorts them."""
    cols = world.requests
    if not len(cols):
        return []
    t = np.frombuffer(cols.t_start, dtype=np.float64)
    agent = np.frombuffer(cols.agent, dtype=np.int64 if cols.agent.itemsize == 8 else np.int32)
    return np.lexsort((agent, t)).tolist()


def money_events(world: World) -> list[MoneyEvent]:
    """The run's money events (x402bench.results.money), keyed by payment seq, times in run seconds.

    served: the payment's 200; sent: its first send (its record's t_start); settlements: its block;
    pending: acceptance of a claim still open at the end. A paid_unserved is dated at its settlement,
    so a crash's victims fall in its window when their txs land while it is down, and just after it
    when the restart re-sends them (the per-fault table's "after").

    A payment served and settled exactly once is no event in any category, so it is left out of
    classify's inputs: an hour of payments would otherwise become dicts of hundreds of thousands of
    entries for nothing (a payment settled twice is kept, so double_settled still counts it)."""
    rq, st = world.requests, world.settlements
    status = np.frombuffer(rq.status, dtype=np.uint16)
    seq = np.frombuffer(rq.seq, dtype=np.int64)
    t_end = np.frombuffer(rq.t_end, dtype=np.float64)
    t_start = np.frombuffer(rq.t_start, dtype=np.float64)
    s_state = np.frombuffer(st.state, dtype=np.uint8)
    s_seq = np.frombuffer(st.seq, dtype=np.int64)
    s_t_accepted = np.frombuffer(st.t_accepted, dtype=np.float64)
    s_t_included = np.frombuffer(st.t_included, dtype=np.float64)
    if world.channels is not None:  # batch-settlement payments are in the channel books, as live (exact_view)
        keep = _exact_rows(world, np.frombuffer(rq.route, dtype=np.uint16))
        status, seq, t_end, t_start = status[keep], seq[keep], t_end[keep], t_start[keep]
        s_keep = _exact_rows(world, np.frombuffer(st.payee, dtype=np.uint16))
        s_state, s_seq = s_state[s_keep], s_seq[s_keep]
        s_t_accepted, s_t_included = s_t_accepted[s_keep], s_t_included[s_keep]
    served = status == 200
    settled = s_state == SETTLED
    settled_seq = s_seq[settled]
    once, times = np.unique(settled_seq, return_counts=True)
    quiet = np.intersect1d(seq[served], once[times == 1], assume_unique=True)
    loud_served = served & ~np.isin(seq, quiet, assume_unique=True)
    loud_settled = ~np.isin(settled_seq, quiet)
    t_included = s_t_included[settled]
    open_ = s_state == PENDING
    settlements: dict[int, list[float]] = {}
    for key, t in zip(settled_seq[loud_settled].tolist(), t_included[loud_settled].tolist()):
        settlements.setdefault(key, []).append(t)
    return classify(
        served=dict(zip(seq[loud_served].tolist(), t_end[loud_served].tolist())),
        sent=dict(zip(seq[~served].tolist(), t_start[~served].tolist())),
        settlements=settlements,
        pending=dict(zip(s_seq[open_].tolist(), s_t_accepted[open_].tolist())),
    )


_FINDINGS = {"served_unpaid": "payment(s) served 200 but never settled on chain (the seller's loss)",
             "paid_unserved": "payment(s) settled on chain whose client never got a 200 (the payer's loss)",
             "double_settled": "authorization(s) settled more than once"}


def _reconcile(world: World, events: list[MoneyEvent]) -> dict[str, Any]:
    """The sim's ground truth in the live reconciliation's terms, its loss counts from the money events."""
    rq, st = world.requests, world.settlements
    status = np.frombuffer(rq.status, dtype=np.uint16)
    amount = np.frombuffer(rq.amount, dtype=np.int64)
    s_state = np.frombuffer(st.state, dtype=np.uint8)
    s_amount = np.frombuffer(st.amount, dtype=np.int64)
    if world.channels is not None:  # exact payments only, as live (loadtest/runner.py exact_view)
        keep = _exact_rows(world, np.frombuffer(rq.route, dtype=np.uint16))
        status, amount = status[keep], amount[keep]
        s_keep = _exact_rows(world, np.frombuffer(st.payee, dtype=np.uint16))
        s_state, s_amount = s_state[s_keep], s_amount[s_keep]
    served = status == 200
    settled_mask = s_state == SETTLED
    settled_amount = int(s_amount[settled_mask].sum())
    tally = counts(events)
    expected = int(amount[served].sum())
    findings = [f"{tally[c]} {_FINDINGS[c]}" for c in LOSS_KEYS if tally[c]]
    if settled_amount != expected:
        findings.append(f"the payees received {settled_amount} atomic units for {expected} served")
    return {
        "findings": findings,
        "paid_responses": int(served.sum()),
        "settled": int(settled_mask.sum()),
        "ledger_settled": int(settled_mask.sum()),
        **tally,
        "failed": int(np.count_nonzero(s_state == FAILED)),
        "examples": {c: [nonce_hex(int(e.key)) for e in events if e.category == c][:20] for c in LOSS_KEYS},
        "payee_balance_delta": settled_amount,
        "payee_transfers_in": settled_amount,
        "expected_payee_delta": expected,
    }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sim_run_id(scenario: Scenario, cal: Calibration, options: SimOptions) -> str:
    """Content-addressed: the same inputs give the same id, hence the same folder and summary."""
    records = [options.records, options.records_cap]  # the default keeps the ids runs had before it existed
    key = json.dumps([scenario.model_dump(mode="json"), cal.model_dump(mode="json"), options.driver,
                      options.drain_s, *([True] if options.refund_at_end else []),
                      *([records] if records != ["capped", RECORDS_CAP] else [])], sort_keys=True)
    return f"sim-s{scenario.seed}-{_digest(key)[:10]}"


def build_sim_summary(result: SimResult) -> dict[str, Any]:
    from x402bench.results.summary import build_summary

    if result.tally is None:
        requests, settlements = result.records()
        return build_summary(result.scenario, requests, settlements, result.reconciliation, "sim", result.meta,
                             money_events=result.money_events, **_channel_kwargs(result))
    # not every record kept: request figures from the tally, settlements read lazily (never all in memory)
    return build_summary(result.scenario, result.requests, result.settlements, result.reconciliation, "sim",
                         result.meta, money_events=result.money_events, tally=result.tally,
                         **_channel_kwargs(result))


def _channel_kwargs(result: SimResult) -> dict[str, Any]:
    """channels= / channel_txs= for the results package, only for a world with batch-settlement routes."""
    if not result.scenario.batch_settlement_services:
        return {}
    return {"channels": result.channels, "channel_txs": result.channel_txs}


def simulate(scenario: Scenario, calibration: Calibration | None = None, options: SimOptions = SimOptions(),
             out_root: Path | str = "results", run_id: str | None = None,
             progress: Callable[[float, float], None] | None = None) -> tuple[Path, dict[str, Any], SimResult]:
    """run_sim, then summary.json, CSVs, plots and report.html under out_root/<scenario>/<run id>/.
    A run that kept every record writes them as lists (as a live run); one that did not writes the
    kept ones straight from the columns (`records: none`: no request rows)."""
    from x402bench.results.rundir import write_run

    cal = calibration or default_calibration()
    run_id = run_id or sim_run_id(effective_scenario(scenario, options), cal, options)
    parquet = None
    if options.records == "parquet":
        folder = Path(out_root) / effective_scenario(scenario, options).name / run_id
        folder.mkdir(parents=True, exist_ok=True)
        parquet = folder / PARQUET
    result = run_sim(scenario, cal, options, progress, parquet)
    result.meta["run_id"] = run_id
    summary = build_sim_summary(result)
    if result.tally is None:
        requests, settlements = result.records()
    else:
        requests = result.requests if options.records != "none" else []  # type: ignore[assignment]
        settlements = result.settlements  # type: ignore[assignment]
    run_dir = write_run(Path(out_root), result.scenario.name, run_id, summary, requests, settlements,
                        **_channel_kwargs(result))
    return run_dir, summary, result


__all__ = ["SimOptions", "SimResult", "run_sim", "simulate", "offered_load", "overload_warning", "effective_scenario", "build_sim_summary",
           "sim_run_id", "RequestRecord", "SettlementRecord"]

"""Measure a calibration from a live run folder (summary.json + requests.csv + settlements.csv).

What each figure is taken from (steady window, paid requests, settled payments):
- client.sign_s          <- RequestRecord.sign_s (quantiles)
- network.rtt_s          <- paid_s - verify_s - handler_s - settle_s - service CPU per request
- service.cpu_s          <- summary metrics.cpu.ms_per_paid_request.services (summed over every services
                            process: services, services.2, ... when service_processes > 1)
- client.cpu_s           <- metrics.cpu.ms_per_paid_request.loadgen minus signing
- strategy CPU           <- sdk: its worker threads' CPU clocks per verify, per settle and per receipt
                            poll (meta.facilitator.sdk_threads), the process's remaining CPU (event
                            loop, HTTP) split over the two calls; ours: metrics.cpu.ms_per_paid_request
                            .facilitator, split verify:settle as the defaults
- strategy verify_io_s   <- verify_s - 2 hops - verify CPU (median)
- strategy settle_io_s   <- SettlementRecord t_submitted - t_accepted - settle CPU - submit (median;
                            sync and pipelined only: the sdk engine stamps "submitted" before it starts)
  Both are waits on RPC, and only a quiet world shows them: when the facilitator's CPU was busy over
  BUSY of the run, or the host's cores over MACHINE_BUSY (every process of the world together: a
  process waiting for a core looks like one waiting for an answer), every latency sample holds
  queueing the model adds itself, so they keep their defaults (the model would otherwise count the
  queue twice). The round trip (network.rtt_s) too.
- strategy submit_s      <- ours: the signer lock's eth_sendRawTransaction round trip less the event loop's
                            lag, medians (meta.facilitator.timing, services/facilitator/loop_probe.py): the model
                            places the loop's wait for the answer itself (sim/facilitator.py _locked)
- machine_cores          <- meta.machine.cpus: the live world shared one host's cores
- machine_idle_cores     <- metrics.cpu.idle_cores (the world's CPU while it waited for Locust's first
                            request), summed; every CPU per paid request below is taken less its role's
                            idle CPU over the traffic (metrics.cpu.traffic_s)
- chain.node_cpu_s       <- metrics.cpu.ms_per_paid_request.anvil (the node's share of that host)
- chain.block_tx_s       <- interval mining, shared host: the pause in sending around each block (from the
                            last send of a block to the first of the next, less the usual gap between two
                            sends), median over blocks, over the median txs per block (_block_tx_s)
- gas                    <- gas_used of single-payment txs (existing / new payee) and a least-squares
                            fit gas = fixed + per_item * size over batch txs
- batch-settlement gas   <- channel_txs.csv: deposits (new channel / top-up, told apart by gas), a
                            least-squares fit claim = fixed + per_channel*n + per_channel_sq*n^2 over
                            claims of different sizes (fixed alone from one size), settle and refund medians
- service.voucher_wait_s <- voucher-paid requests (batch-settlement, no deposit tx): paid_s - handler_s
                            - settle_s less the round trip and the service's CPU per request, plus the
                            handler's median lateness beyond the scenario's work (quantiles); the check's
                            CPU (voucher_verify_s) is 0 then, being inside the measured CPU per request
  The round trip and the facilitator's verify wait are taken from requests that went through the
  facilitator (exact payments and deposits) only, and its CPU per paid request is spread over those.
  When vouchers are most of the paid requests, the round trip is one figure: that residual's median,
  capped by what the fastest vouchers show (see _voucher_service).
- t_included = "receipt" (the live ledger stamps inclusion when the facilitator sees the receipt)
- measured               <- the run's throughput and latency percentiles, for `validate`
Work times are not calibrated: they are the scenario's definition of the service.
"""

from __future__ import annotations

import statistics
from collections import Counter
from statistics import NormalDist
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.calibration import Calibration, Dist, StrategyTiming, default_calibration
from x402bench.results.compare import dig
from x402bench.results.records import ChannelTxRecord, RequestRecord, SettlementRecord

QUANTILES = 21  # q0, q5, ..., q100
BUSY = 0.5  # facilitator CPU utilization above which its latencies are mostly queueing
MACHINE_BUSY = 0.5  # the host's utilization (all the world's processes) above which they are too
#: A voucher's wait is long-tailed (a few requests caught behind a claim wait hundreds of ms): percentiles,
#: so its top 5% is not spread evenly up to the slowest request, as 21 points would (p95 +45% then)
WAIT_QUANTILES = 101


def quantile_dist(values: Sequence[float]) -> Dist | None:
    """An empirical Dist from samples (None when there are none)."""
    xs = np.asarray([v for v in values if v == v and v >= 0], dtype=float)
    if xs.size == 0:
        return None
    qs = np.quantile(xs, np.linspace(0, 1, QUANTILES))
    return Dist(quantiles=[round(float(q), 9) for q in np.maximum.accumulate(qs)])


def _ms_per_paid(summary: dict[str, Any], role: str) -> float | None:
    """A role's CPU per paid request, in seconds, less what it spends idle (metrics.cpu.idle_cores: paid per
    second whatever the load, and placed as such, machine_idle_cores)."""
    value = dig(summary, f"metrics.cpu.ms_per_paid_request.{role}")
    if value is None:
        return None
    spent = dig(summary, f"metrics.cpu.seconds.{role}")
    idle = dig(summary, f"metrics.cpu.idle_cores.{role}")
    window = dig(summary, "metrics.cpu.traffic_s")
    if all(isinstance(v, (int, float)) for v in (spent, idle, window)) and spent > 0:
        value *= max(0.0, 1.0 - idle * window / spent)
    return float(value) / 1000


def _idle_cores(summary: dict[str, Any]) -> float | None:
    """The world's idle CPU, in cores (the load generator's is not idle work: it is its start)."""
    idle = dig(summary, "metrics.cpu.idle_cores")
    if not isinstance(idle, dict):
        return None
    return sum(float(v) for role, v in idle.items() if role != "loadgen" and isinstance(v, (int, float)))


def _services_cpu(summary: dict[str, Any]) -> float | None:
    """The services' CPU per paid request, summed over every services process: the world names them
    "services", "services.2", ... (service_processes), and a paid request costs CPU in whichever one served it,
    so per request is the sum of each one's CPU per paid request (not any one process's)."""
    per_paid = dig(summary, "metrics.cpu.ms_per_paid_request") or {}
    values = [_ms_per_paid(summary, role) for role, v in per_paid.items()
              if (role == "services" or role.startswith("services.")) and v is not None]
    return sum(v for v in values if v is not None) if values else None


def _facilitator_busy(summary: dict[str, Any]) -> float | None:
    """The facilitator process's CPU utilization over the run (None when unknown)."""
    seconds = dig(summary, "metrics.cpu.seconds.facilitator")
    duration = dig(summary, "scenario.config.run.duration_s")
    if seconds is None or not duration:
        return None
    return float(seconds) / float(duration)


def _machine_busy(summary: dict[str, Any]) -> float | None:
    """The host's utilization by the world's processes together over the run (None when unknown)."""
    seconds = dig(summary, "metrics.cpu.total_seconds")
    duration = dig(summary, "scenario.config.run.duration_s")
    cores = dig(summary, "meta.machine.cpus")
    if seconds is None or not duration or not cores:
        return None
    return float(seconds) / (float(duration) * int(cores))


def _quiet(summary: dict[str, Any]) -> bool:
    """Whether the run's latencies are waits on answers rather than on CPU (BUSY, MACHINE_BUSY)."""
    busy = _facilitator_busy(summary)
    machine = _machine_busy(summary)
    return busy is not None and busy <= BUSY and (machine is None or machine <= MACHINE_BUSY)


def _submit_s(summary: dict[str, Any]) -> float | None:
    """The send's round trip under the signer lock, net of the event loop's lag (None when not measured)."""
    timing = dig(summary, "meta.facilitator.timing") or {}
    rpc, lag = timing.get("lane_rpc_s") or {}, timing.get("loop_lag_s") or {}
    if not rpc.get("count"):
        return None
    # medians: both have a long tail of the process waiting for a core, which the model places itself; their
    # means on a saturated host are the tail's (measured: lag mean 3.9 ms above the round trip's 3.2 ms)
    return max(0.0001, float(rpc["p50"]) - float(lag.get("p50") or 0.0))


def _sdk_cpu(summary: dict[str, Any], fac_cpu: float | None) -> tuple[float, float, float] | None:
    """(verify, settle before the receipt wait, one receipt poll) CPU seconds from the sdk probe."""
    probe = dig(summary, "meta.facilitator.sdk_threads") or {}
    cpu, calls, rpc = probe.get("cpu_s") or {}, probe.get("calls") or {}, probe.get("rpc_calls") or {}
    verifies, settles, polls = calls.get("verify", 0), calls.get("settle", 0), rpc.get("eth_getTransactionReceipt", 0)
    if not (verifies and settles and polls):
        return None
    verify = cpu.get("verify", 0.0) / verifies
    settle = (cpu.get("settle", 0.0) - cpu.get("receipt_wait", 0.0)) / settles
    poll = cpu.get("receipt_wait", 0.0) / polls
    threads_per_payment = verify + settle + poll * polls / settles
    loop = max(0.0, fac_cpu - threads_per_payment) / 2 if fac_cpu is not None else 0.0
    return verify + loop, max(0.0, settle) + loop, poll


def _fit_batches(txs: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    sizes = np.array([s for s, _ in txs.values()], dtype=float)
    gas = np.array([g for _, g in txs.values()], dtype=float)
    if len(set(sizes.tolist())) < 2:
        return None
    per_item, fixed = np.polyfit(sizes, gas, 1)
    return int(round(fixed)), int(round(per_item))


def calibration_from_run(summary: dict[str, Any], requests: Sequence[RequestRecord],
                         settlements: Sequence[SettlementRecord], source: str = "live run",
                         base: Calibration | None = None,
                         channel_txs: Sequence[ChannelTxRecord] = ()) -> Calibration:
    """A calibration measured on one live run, starting from `base` (defaults) for what it cannot see."""
    base = base or default_calibration()
    config = (summary.get("scenario") or {}).get("config") or {}
    strategy = (config.get("facilitator") or {}).get("strategy", "sync")
    warmup = float((config.get("run") or {}).get("warmup_s", 0.0))
    paid_all = [r for r in requests if r.status == 200]
    paid = [r for r in paid_all if r.t_start >= warmup]
    # a voucher never reaches the facilitator: round trips and verify waits come from the others
    facilitated = [r for r in paid if _through_facilitator(r)]
    vouchers = [r for r in paid if not _through_facilitator(r)]
    settled = [s for s in settlements if s.state == "settled" and s.t_accepted >= warmup]
    timing = base.strategy(strategy)
    hop = base.network.hop_s.mean
    data = base.model_dump(mode="python", exclude_none=True)

    svc_cpu = _services_cpu(summary)
    if svc_cpu is not None:
        data["service"]["cpu_s"] = Dist.const(svc_cpu).model_dump()
    svc = svc_cpu if svc_cpu is not None else base.service.cpu_s.mean
    sign = quantile_dist([r.sign_s for r in paid])
    if sign is not None:
        data["client"]["sign_s"] = sign.model_dump(exclude_none=True)
    loadgen = _ms_per_paid(summary, "loadgen")
    if loadgen is not None:
        sign_mean = sign.mean if sign is not None else 0.0
        data["client"]["cpu_s"] = Dist.const(max(0.0, loadgen - sign_mean)).model_dump()
    quiet = _quiet(summary)
    rtt = quantile_dist([max(0.0, r.paid_s - r.verify_s - r.handler_s - r.settle_s - svc) for r in facilitated])
    if rtt is not None and quiet:
        data["network"]["rtt_s"] = rtt.model_dump(exclude_none=True)
    if vouchers:
        window = dig(summary, "metrics.window.duration_s")
        rate = len(paid) / float(window) if isinstance(window, (int, float)) and window > 0 else 0.0
        fields, rtt_v = _voucher_service(vouchers, facilitated, svc, rate, base, config)
        data["service"].update(fields)
        if len(vouchers) > len(facilitated):
            # a world paid by vouchers: their round trip, one figure (the few deposits' spread is the service's
            # contention, which voucher_wait_s carries already; counted twice, it put deferred.yaml's request
            # p50 21% over the live run's)
            data["network"]["rtt_s"] = Dist.const(rtt_v).model_dump()

    fac_cpu = _ms_per_paid(summary, "facilitator")
    fac_paid = sum(1 for r in paid_all if _through_facilitator(r))
    if fac_cpu is not None and fac_paid and fac_paid < len(paid_all):  # its CPU went to these payments alone
        fac_cpu *= len(paid_all) / fac_paid
    t = timing.model_dump(mode="python", exclude_none=True)
    v_cpu, s_cpu = timing.verify_cpu_s.mean, timing.settle_cpu_s.mean
    probed = _sdk_cpu(summary, fac_cpu) if strategy == "sdk" else None
    if probed is not None:
        v_cpu, s_cpu, poll = probed
        t["poll_cpu_s"] = Dist.const(poll).model_dump()
    elif fac_cpu is not None and v_cpu + s_cpu > 0:
        share = v_cpu / (v_cpu + s_cpu)
        v_cpu, s_cpu = fac_cpu * share, fac_cpu * (1 - share)
    # Our engines' calls are event-loop steps of widely varying cost (SQLite writes, JSON, a GC pass): exponential
    # with the measured mean, not constant; a FIFO's wait grows with its jobs' variance (Pollaczek-Khinchine: twice a
    # constant job's), and on sim-saturated that moved throughput from +16.6% to +12.5% of the live run's
    shape = Dist.const if probed is not None else Dist.exponential
    t["verify_cpu_s"] = shape(v_cpu).model_dump(exclude_none=True)
    t["settle_cpu_s"] = shape(s_cpu).model_dump(exclude_none=True)
    submit = _submit_s(summary)
    if submit is not None and strategy != "sdk":
        t["submit_s"] = Dist.const(submit).model_dump()
    verifies = [r.verify_s for r in facilitated if r.verify_s > 0]
    if verifies and quiet:
        t["verify_io_s"] = Dist.const(max(0.0, statistics.median(verifies) - 2 * hop - v_cpu)).model_dump()
    pre = [s.t_submitted - s.t_accepted for s in settled if s.t_submitted >= 0]
    if pre and quiet and strategy in ("sync", "pipelined"):  # the sdk engine stamps "submitted" before its thread starts
        io = statistics.median(pre) - s_cpu - (submit if submit is not None else timing.submit_s.mean)
        t["settle_io_s"] = Dist.const(max(0.0, io)).model_dump()
    data["strategies"] = {strategy: StrategyTiming.model_validate(t).model_dump(exclude_none=True)}

    singles = [s.gas_used for s in settled if s.batch_size == 1 and s.gas_used > 0]
    if singles:
        low = [g for g in singles if g < base.gas.transfer_existing + 8_000]
        high = [g for g in singles if g >= base.gas.transfer_existing + 8_000]
        if low:
            data["gas"]["transfer_existing"] = int(statistics.median(low))
        if high:
            data["gas"]["transfer_new"] = int(statistics.median(high))
    batches = {s.tx_hash: (s.batch_size, s.gas_used) for s in settled if s.batch_size > 1 and s.gas_used > 0}
    fit = _fit_batches(batches)
    if fit is not None:
        data["gas"]["batch_fixed"], data["gas"]["batch_per_item"] = max(21_000, fit[0]), max(0, fit[1])

    data["gas"].update(_channel_gas(channel_txs, base))

    cpus = dig(summary, "meta.machine.cpus")
    if isinstance(cpus, int) and cpus > 0:
        data["machine_cores"] = cpus
        idle = _idle_cores(summary)
        if idle is not None:
            data["machine_idle_cores"] = idle
        node = _ms_per_paid(summary, "anvil")
        if node is not None:
            data["chain"]["node_cpu_s"] = node
            if (config.get("chain") or {}).get("mining") == "interval" and _sender_queued(summary):
                mine = _block_mining(settled)
                if mine is not None:
                    data["chain"]["block_tx_s"], data["chain"]["block_history_s"] = min(mine[0], node), mine[1]

    m = summary.get("metrics") or {}
    measured = {"throughput_rps": m.get("throughput_rps"),
                **{f"request_{k}_s": (m.get("request_latency_s") or {}).get(k) for k in ("p50", "p95", "p99")},
                **{f"settlement_{k}_s": (m.get("settlement_latency_s") or {}).get(k) for k in ("p50", "p95", "p99")},
                "gas_per_payment": m.get("gas_per_payment") if m.get("gas_per_payment") is not None
                else dig(summary, "channels.economics.gas_per_payment")}
    data["measured"] = {k: float(v) for k, v in measured.items() if isinstance(v, (int, float))}
    data["t_included"] = "receipt"
    data["source"] = source
    data["scenario"] = (summary.get("scenario") or {}).get("name")
    return Calibration.model_validate(data)


def _sender_queued(summary: dict[str, Any]) -> bool:
    """Whether payments queued at the signer lock all run long (its wait's median over 5x its hold's): then the
    sender is never idle, and a pause in its sends is the node's (see _block_mining)."""
    timing = dig(summary, "meta.facilitator.timing") or {}
    wait, hold = (timing.get("lane_wait_s") or {}).get("p50"), (timing.get("lane_hold_s") or {}).get("p50")
    return isinstance(wait, (int, float)) and isinstance(hold, (int, float)) and hold > 0 and wait > 5 * hold


def _block_mining(settled: Sequence[SettlementRecord]) -> tuple[float, float] | None:
    """The node's time to mine a block: per tx in it, and per tx already in the chain, read off the sends.

    While the node mines it answers no send, so a sender that is never idle stops: the gap from a block's last
    send to the next block's first is the mining plus one ordinary gap between sends. A least-absolute-deviation
    fit of that pause on (txs in the block, txs before it) over consecutive blocks holding our txs, since a few
    pauses hold a wait for a core that the model places itself. None when too few blocks show it."""
    sends: dict[int, list[float]] = {}
    txs: dict[int, set[str]] = {}
    for s in settled:
        if s.block_number > 0 and s.t_submitted >= 0:
            sends.setdefault(s.block_number, []).append(s.t_submitted)
            txs.setdefault(s.block_number, set()).add(s.tx_hash)
    every = np.unique(np.asarray([t for ts in sends.values() for t in ts]))
    if len(every) < 100:
        return None
    usual = float(np.median(np.diff(every)))
    rows, pauses, before = [], [], 0
    for number in sorted(sends):
        n = len(txs[number])
        following = sends.get(number + 1)
        if following:
            rows.append((n, before))
            pauses.append(min(following) - max(sends[number]) - usual)
        before += n
    if len(pauses) < 20:
        return None
    x, y = np.asarray(rows, dtype=float), np.asarray(pauses)
    weights = np.ones_like(y)
    for _ in range(50):  # iteratively reweighted least squares towards the L1 fit
        root = np.sqrt(weights)
        coef = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)[0]
        weights = 1.0 / np.maximum(np.abs(y - x @ coef), 1e-4)
    per_tx, per_before = float(coef[0]), float(coef[1])
    if per_before < 0:  # no growth to see: the pause per tx alone
        return max(0.0, float(np.median(y))) / float(np.median(x[:, 0])), 0.0
    return max(0.0, per_tx), per_before


def _voucher_service(vouchers: Sequence[RequestRecord], facilitated: Sequence[RequestRecord], svc: float,
                     rate: float, base: Calibration, config: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """service.voucher_verify_s and voucher_wait_s from voucher-paid requests, and the round trip they imply.

    A live service's CPU per paid request (cpu_s, measured on the process) already holds its voucher
    checks, so the check's own CPU is set to 0 and everything else a voucher spends at the service is
    voucher_wait_s, quantile by quantile: the quantiles of each voucher's paid round trip (paid_s -
    settle_s, its route's handler included) less the scenario's work at that quantile (the model draws
    wait and work with one uniform, sim.dists.comonotone, so the two add back up to the measured
    quantile), less the round trip and cpu_s, less the mean wait the model's own queue for the
    service's CPU will add at the measured paid rate (M/D/1: rho * cpu_s / (2 (1 - rho))), which the
    measured waits already hold. Work quantiles are those of the vouchers' most paid route.

    The round trip: the deposits' residual (as for exact payments), but never more than the fastest
    vouchers (5th percentile) spent outside their route beyond cpu_s: a deposit's residual also holds
    the service's extra work on a deposit, which a voucher never waits for."""
    outside = sorted(r.paid_s - r.handler_s - r.settle_s for r in vouchers)
    rtts = [max(0.0, r.paid_s - r.verify_s - r.handler_s - r.settle_s - svc) for r in facilitated]
    base_rtt = base.network.rtt_s.mean if base.network.rtt_s is not None else 0.0
    rtt = statistics.median(rtts) if rtts else base_rtt
    rtt = min(rtt, max(0.0, outside[len(outside) // 20] - svc))
    servers = int(config.get("service_processes") or 1) * base.service.cores
    queue = _mdc_wait(rate, svc, servers)
    routes = Counter(r.route for r in vouchers)
    main_route = routes.most_common(1)[0][0]
    spec = next((s for s in config.get("services") or [] if isinstance(s, dict) and s.get("name") == main_route), {})
    work = spec.get("work_ms") or {}
    work_dist = Dist.from_ms(float(work.get("median", 0.0)), work.get("p99"))
    grid = np.linspace(0.0, 1.0, WAIT_QUANTILES)
    # the quantiles of each request's own sum (outside + handler): adding the two parts' quantiles instead
    # would treat them as perfectly correlated and put the upper tail too high
    q_total = np.quantile(np.asarray([r.paid_s - r.settle_s for r in vouchers]), grid)
    z = np.array([NormalDist().inv_cdf(min(max(q, 0.001), 0.999)) for q in grid.tolist()])
    q_work = work_dist.median * np.exp(work_dist.sigma * z) if work_dist.median > 0 else np.zeros_like(grid)
    waits = np.maximum.accumulate(np.maximum(0.0, q_total - q_work - rtt - svc - queue))
    wait = Dist(quantiles=[round(float(x), 9) for x in waits])
    out: dict[str, Any] = {"voucher_verify_s": Dist.const(0.0).model_dump(),
                           "voucher_wait_s": wait.model_dump(exclude_none=True)}
    return out, rtt


def _mdc_wait(rate: float, svc: float, servers: int) -> float:
    """Mean queueing wait of the model's service CPU station (`servers` FIFO servers, one per services process,
    deterministic service `svc`, Poisson arrivals at `rate`): half the M/M/c wait (Erlang C), the usual M/D/c
    approximation; for one server exactly M/D/1's rho * svc / (2 (1 - rho)). 0 at 95% utilization or more."""
    a = rate * svc
    rho = a / servers
    if rho >= 0.95 or a <= 0:
        return 0.0
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= a / k
        total += term
    last = term * a / servers / (1 - rho)
    erlang_c = last / (total + last)
    return erlang_c * svc / (servers - a) / 2


def _median(dist: Dist) -> float:
    return float(np.median(dist.quantiles)) if dist.quantiles else dist.median


def _through_facilitator(r: RequestRecord) -> bool:
    """An exact payment, or a batch-settlement request that carried a deposit (it names the deposit tx)."""
    return r.scheme != "batch-settlement" or bool(r.tx_hash)


def _channel_gas(txs: Sequence[ChannelTxRecord], base: Calibration) -> dict[str, Any]:
    """The escrow's gas figures a run's channel txs show (those it has no tx for keep base's)."""
    g = base.gas
    out: dict[str, Any] = {}
    deposits = [t.gas_used for t in txs if t.kind == "deposit" and t.gas_used > 0]
    split = (g.channel_deposit_new + g.channel_deposit_topup) / 2
    new = [x for x in deposits if x >= split]
    topup = [x for x in deposits if x < split]
    if new:
        out["channel_deposit_new"] = int(statistics.median(new))
    if topup:
        out["channel_deposit_topup"] = int(statistics.median(topup))
    for kind, key in (("settle", "channel_settle"), ("refund", "channel_refund")):
        values = [t.gas_used for t in txs if t.kind == kind and t.gas_used > 0]
        if values:
            out[key] = int(statistics.median(values))
    claims = [(t.channels, t.gas_used) for t in txs if t.kind == "claim" and t.gas_used > 0 and t.channels > 0]
    sizes = sorted({n for n, _ in claims})
    if claims:
        n = np.array([c for c, _ in claims], dtype=float)
        gas = np.array([x for _, x in claims], dtype=float)
        # a fit needs sizes far apart (a run's claims are mostly of one size, its channel count): otherwise keep
        # the shape and move the base so the model meets the sizes seen
        wide = sizes[-1] >= 2 * sizes[0]
        if wide and len(sizes) >= 3:
            sq, per, fixed = np.polyfit(n, gas, 2)
        elif wide:
            (per, fixed), sq = np.polyfit(n, gas, 1), 0.0
        else:
            per, sq = g.channel_claim_per_channel, g.channel_claim_per_channel_sq
            fixed = float(np.mean(gas - per * n - sq * n * n))
        if per >= 0 and sq >= 0 and fixed >= 0:
            out.update(channel_claim_fixed=int(round(fixed)), channel_claim_per_channel=int(round(per)),
                       channel_claim_per_channel_sq=round(float(sq), 4))
    return out


def calibrate_from_run_dir(run_dir: Path | str) -> Calibration:
    """Read a live run folder and measure its calibration (its channel txs too, when it has them)."""
    from x402bench.results.rundir import load_channels, load_records, load_summary

    summary = load_summary(run_dir)
    requests, settlements = load_records(run_dir)
    _, channel_txs = load_channels(run_dir)
    return calibration_from_run(summary, requests, settlements, source=str(run_dir), channel_txs=channel_txs)

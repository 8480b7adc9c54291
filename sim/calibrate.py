"""Measure a calibration from a live run folder (summary.json + requests.csv + settlements.csv).

What each figure is taken from (steady window, paid requests, settled payments):
- client.sign_s          <- RequestRecord.sign_s (quantiles)
- network.rtt_s          <- paid_s - verify_s - handler_s - settle_s - service CPU per request
- service.cpu_s          <- summary metrics.cpu.ms_per_paid_request.services
- client.cpu_s           <- metrics.cpu.ms_per_paid_request.loadgen minus signing
- strategy CPU           <- sdk: its worker threads' CPU clocks per verify, per settle and per receipt
                            poll (meta.facilitator.sdk_threads), the process's remaining CPU (event
                            loop, HTTP) split over the two calls; ours: metrics.cpu.ms_per_paid_request
                            .facilitator, split verify:settle as the defaults
- strategy verify_io_s   <- verify_s - 2 hops - verify CPU (median)
- strategy settle_io_s   <- SettlementRecord t_submitted - t_accepted - settle CPU - submit (median;
                            sync and pipelined only: the sdk engine stamps "submitted" before it starts)
  Both are waits on RPC, and only a quiet facilitator shows them: when its CPU was busy over
  BUSY of the run, every latency sample holds queueing the model adds itself, so they keep
  their defaults (the model would otherwise count the queue twice).
- machine_cores          <- meta.machine.cpus: the live world shared one host's cores
- chain.node_cpu_s       <- metrics.cpu.ms_per_paid_request.anvil (the node's share of that host)
- gas                    <- gas_used of single-payment txs (existing / new payee) and a least-squares
                            fit gas = fixed + per_item * size over batch txs
- t_included = "receipt" (the live ledger stamps inclusion when the facilitator sees the receipt)
- measured               <- the run's throughput and latency percentiles, for `validate`
Work times are not calibrated: they are the scenario's definition of the service.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.calibration import Calibration, Dist, StrategyTiming, default_calibration
from x402bench.results.compare import dig
from x402bench.results.records import RequestRecord, SettlementRecord

QUANTILES = 21  # q0, q5, ..., q100
BUSY = 0.5  # facilitator CPU utilization above which its latencies are mostly queueing


def quantile_dist(values: Sequence[float]) -> Dist | None:
    """An empirical Dist from samples (None when there are none)."""
    xs = np.asarray([v for v in values if v == v and v >= 0], dtype=float)
    if xs.size == 0:
        return None
    qs = np.quantile(xs, np.linspace(0, 1, QUANTILES))
    return Dist(quantiles=[round(float(q), 9) for q in np.maximum.accumulate(qs)])


def _ms_per_paid(summary: dict[str, Any], role: str) -> float | None:
    value = dig(summary, f"metrics.cpu.ms_per_paid_request.{role}")
    return None if value is None else float(value) / 1000


def _facilitator_busy(summary: dict[str, Any]) -> float | None:
    """The facilitator process's CPU utilization over the run (None when unknown)."""
    seconds = dig(summary, "metrics.cpu.seconds.facilitator")
    duration = dig(summary, "scenario.config.run.duration_s")
    if seconds is None or not duration:
        return None
    return float(seconds) / float(duration)


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
                         base: Calibration | None = None) -> Calibration:
    """A calibration measured on one live run, starting from `base` (defaults) for what it cannot see."""
    base = base or default_calibration()
    config = (summary.get("scenario") or {}).get("config") or {}
    strategy = (config.get("facilitator") or {}).get("strategy", "sync")
    warmup = float((config.get("run") or {}).get("warmup_s", 0.0))
    paid = [r for r in requests if r.status == 200 and r.t_start >= warmup]
    settled = [s for s in settlements if s.state == "settled" and s.t_accepted >= warmup]
    timing = base.strategy(strategy)
    hop = base.network.hop_s.mean
    data = base.model_dump(mode="python", exclude_none=True)

    svc_cpu = _ms_per_paid(summary, "services")
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
    rtt = quantile_dist([max(0.0, r.paid_s - r.verify_s - r.handler_s - r.settle_s - svc) for r in paid])
    if rtt is not None:
        data["network"]["rtt_s"] = rtt.model_dump(exclude_none=True)

    fac_cpu = _ms_per_paid(summary, "facilitator")
    t = timing.model_dump(mode="python", exclude_none=True)
    v_cpu, s_cpu = timing.verify_cpu_s.mean, timing.settle_cpu_s.mean
    probed = _sdk_cpu(summary, fac_cpu) if strategy == "sdk" else None
    if probed is not None:
        v_cpu, s_cpu, poll = probed
        t["poll_cpu_s"] = Dist.const(poll).model_dump()
    elif fac_cpu is not None and v_cpu + s_cpu > 0:
        share = v_cpu / (v_cpu + s_cpu)
        v_cpu, s_cpu = fac_cpu * share, fac_cpu * (1 - share)
    t["verify_cpu_s"] = Dist.const(v_cpu).model_dump()
    t["settle_cpu_s"] = Dist.const(s_cpu).model_dump()
    busy = _facilitator_busy(summary)
    quiet = busy is not None and busy <= BUSY
    verifies = [r.verify_s for r in paid if r.verify_s > 0]
    if verifies and quiet:
        t["verify_io_s"] = Dist.const(max(0.0, statistics.median(verifies) - 2 * hop - v_cpu)).model_dump()
    pre = [s.t_submitted - s.t_accepted for s in settled if s.t_submitted >= 0]
    if pre and quiet and strategy in ("sync", "pipelined"):  # the sdk engine stamps "submitted" before its thread starts
        io = statistics.median(pre) - s_cpu - timing.submit_s.mean
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

    cpus = dig(summary, "meta.machine.cpus")
    if isinstance(cpus, int) and cpus > 0:
        data["machine_cores"] = cpus
        node = _ms_per_paid(summary, "anvil")
        if node is not None:
            data["chain"]["node_cpu_s"] = node

    m = summary.get("metrics") or {}
    measured = {"throughput_rps": m.get("throughput_rps"),
                **{f"request_{k}_s": (m.get("request_latency_s") or {}).get(k) for k in ("p50", "p95", "p99")},
                **{f"settlement_{k}_s": (m.get("settlement_latency_s") or {}).get(k) for k in ("p50", "p95", "p99")},
                "gas_per_payment": m.get("gas_per_payment")}
    data["measured"] = {k: float(v) for k, v in measured.items() if isinstance(v, (int, float))}
    data["t_included"] = "receipt"
    data["source"] = source
    data["scenario"] = (summary.get("scenario") or {}).get("name")
    return Calibration.model_validate(data)


def calibrate_from_run_dir(run_dir: Path | str) -> Calibration:
    """Read a live run folder and measure its calibration."""
    from x402bench.results.rundir import load_records, load_summary

    summary = load_summary(run_dir)
    requests, settlements = load_records(run_dir)
    return calibration_from_run(summary, requests, settlements, source=str(run_dir))

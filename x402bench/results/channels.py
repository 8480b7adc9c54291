"""summary.json's `channels` section: the books and economics of the `batch-settlement` scheme.

Deferred settlement moves money in three steps (deposit into an escrow channel, claim of the
payers' signed cumulative vouchers, settle of the claimed total to the receiver), so a voucher-paid
request is judged per channel, from ChannelRecords and ChannelTxRecords that live runs
(loadtest/reconcile.py: channel_books) and the sim produce alike. Definitions, one each:

- a voucher's position: its cumulative amount less the channel's cumulative before this run
  (`max cumulative - charged`), so positions run from 0 to `charged`;
- a voucher is settled by the first claim whose totalClaimed reaches its cumulative amount;
  **settlement latency** of a voucher-paid request: its 200 (t_end) to that claim's block time,
  requests that started in the steady window (the exact path's settlement latency, in metrics,
  runs from acceptance to the block holding the transfer: both end at the block that made the
  seller's money its own);
- `served_unpaid`: a voucher served whose position no claim reached (beyond the deposit, a channel
  never deposited, or left unclaimed after the final claim) — `pending` instead when the run says
  claims were still due (`final=False`); `paid_unserved`: a channel claimed beyond what its clients
  were served (one event per such channel, at the claim that passed it); `double_settled`: a claim
  that covered a range already claimed (the contract forbids it; counted from the chain's events by
  the live books);
- **seller exposure** at time t: charged by t (vouchers served) minus claimed by t, in USD;
  **locked capital** at t: deposited by t minus claimed and refunded by t (the payers' money in
  escrow that is not yet the seller's);
- gas per payment: gasUsed of every deposit, claim, settle, refund and withdraw tx / voucher-paid
  requests; cost per payment adds the scenario's L1 fee per tx (economics.py's model explains the
  figure by payments per channel, claim interval and settle interval).

The key tree is ChannelsSection below; every amount named `*_usd` is dollars, every other amount
atomic token units.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypedDict

from x402bench.results import economics as econ
from x402bench.results.money import LOSS_KEYS, MoneyEvent, counts
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord
from x402bench.results.stats import distribution

SCHEME = "batch-settlement"
#: Cost fractions for break-even prices (the same as metrics.BREAK_EVEN_FRACTIONS).
BREAK_EVEN_FRACTIONS = (0.01, 0.05, 0.1)
#: Most points kept of the exposure series in summary.json (evenly thinned, last point kept).
SERIES_POINTS = 400
#: Grid of the model's sensitivity table: payments per channel x payments per claim.
SENSITIVITY_PER_CHANNEL = (10, 100, 1000)
SENSITIVITY_PER_CLAIM = (1, 10, 100)


class ChannelTotals(TypedDict):
    channels: int
    payers: int
    deposited: int
    charged: int
    claimed: int
    refunded: int
    unclaimed: int            # charged - claimed: the seller's exposure at the end
    refundable: int           # deposited - claimed - refunded: the payers' unspent deposits
    vouchers: int             # voucher-paid requests (200s) on these channels
    deposits: int             # deposit txs


class ChannelReconciliation(TypedDict, total=False):
    exact: bool               # no loss, nothing pending, every check true
    served_unpaid: int
    paid_unserved: int
    double_settled: int
    pending: int
    served_unpaid_amount: int  # atomic units served and never claimed
    paid_unserved_amount: int  # atomic units claimed beyond what was served
    checks: dict[str, bool]   # live books: payee delta == settled, settled == claimed, escrow covers refunds...
    findings: list[str]
    examples: dict[str, list[str]]
    settled: int              # live books: Settled to the payees (atomic)
    payee_balance_delta: int  # live books: the payees' balance change that came from the escrow


class ChannelCapital(TypedDict):
    deposited_usd: float      # all deposits: the capital the payers locked
    per_payer_mean_usd: float | None
    per_payer_max_usd: float | None
    peak_locked_usd: float | None
    deposit_per_paid_request_usd: float | None


class ChannelExposure(TypedDict):
    peak_usd: float | None
    mean_usd: float | None    # time-weighted over [first event, last event]
    final_usd: float          # unclaimed at the end
    series: dict[str, list[float]]  # t_s, exposure_usd, locked_usd (step series, value from t on)


class SchemeRow(TypedDict):
    scheme: str               # exact | batch-settlement
    strategy: str             # sync | pipelined | batched | batch-settlement | batch-settlement (model)
    gas_per_payment: float | None
    txs_per_payment: float | None
    cost_per_payment_usd: float | None
    break_even_price_usd: dict[str, float | None]
    source: str               # "measured" (this run) or "model" (economics.py reference figures)


class ChannelEconomics(TypedDict):
    txs: dict[str, dict[str, float]]      # kind -> {count, gas}
    gas_per_payment: float | None         # measured
    txs_per_payment: float | None
    cost_per_payment_usd: float | None
    cost_fraction_of_price: float | None
    break_even_price_usd: dict[str, float | None]
    usage: dict[str, float] | None        # economics.ChannelUsage measured on the run
    fitted_gas: dict[str, float | None]   # economics.ChannelGas fitted on the run's txs
    reference_gas: dict[str, float | None]
    model_gas_per_payment: float | None   # fitted gas, measured usage (refunds left out)
    sensitivity: list[dict[str, float]]   # model gas per payment over SENSITIVITY_* (fitted gas)
    comparison: list[SchemeRow]


class ChannelsSection(TypedDict):
    totals: ChannelTotals
    reconciliation: ChannelReconciliation
    settlement_latency_s: dict[str, float | None]
    unsettled_vouchers: int
    capital: ChannelCapital
    exposure: ChannelExposure
    economics: ChannelEconomics


# --- vouchers -------------------------------------------------------------------------------------


def voucher_requests(requests: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Paid batch-settlement requests with a channel, one per (channel, cumulative): a retry of the
    same voucher is one payment, its first 200 counts."""
    seen: dict[tuple[str, int], RequestRecord] = {}
    for r in sorted((r for r in requests if r.paid and r.scheme == SCHEME and r.channel),
                    key=lambda r: (r.t_end, r.channel, r.cumulative)):
        seen.setdefault((r.channel.lower(), r.cumulative), r)
    return list(seen.values())


def _by_channel(channels: Sequence[ChannelRecord]) -> dict[str, ChannelRecord]:
    return {c.channel.lower(): c for c in channels}


def _base(requests: Sequence[RequestRecord], channel: ChannelRecord | None) -> int:
    """The channel's cumulative amount before this run: max cumulative served - charged."""
    top = max((r.cumulative for r in requests), default=0)
    return top - (channel.charged if channel else top)


def channel_money_events(requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                         final: bool = True) -> list[MoneyEvent]:
    """served_unpaid / pending per voucher and paid_unserved per over-claimed channel (module docstring);
    keys are (channel, cumulative) and (channel, "overclaim")."""
    books = _by_channel(channels)
    vouchers: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in voucher_requests(requests):
        vouchers[r.channel.lower()].append(r)
    events = []
    for cid, rs in vouchers.items():
        ch = books.get(cid)
        base = _base(rs, ch)
        claimed = ch.claimed if ch else 0
        room = (ch.deposited - ch.refunded) if ch else 0
        for r in rs:
            position = r.cumulative - base
            if position <= claimed:
                continue
            due = not final and ch is not None and position <= room
            events.append(MoneyEvent("pending" if due else "served_unpaid", r.t_end, (cid, r.cumulative)))
    for ch in channels:
        if ch.claimed > ch.charged:
            cid = ch.channel.lower()
            base = _base(vouchers.get(cid, []), ch)
            passed = [t for t, total in ch.claim_history() if total - base > ch.charged]
            t = passed[0] if passed else ch.t_claimed
            events.append(MoneyEvent("paid_unserved", t, (cid, "overclaim")))
    events.sort(key=lambda e: (e.t, e.category, str(e.key)))
    return events


def channel_reconciliation(requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                           events: Sequence[MoneyEvent] | None = None,
                           chain: Mapping[str, Any] | None = None) -> ChannelReconciliation:
    """The books' verdict from the records (and, live, from what the chain said: `chain` holds
    double_settled, checks, findings and the chain's figures; its keys win)."""
    events = list(channel_money_events(requests, channels) if events is None else events)
    tally = counts(events)
    unserved_amount = sum(max(0, c.claimed - c.charged) for c in channels)
    vouchers = {(r.channel.lower(), r.cumulative): r for r in voucher_requests(requests)}
    unpaid_amount = 0
    for e in events:
        if e.category == "served_unpaid" and e.key in vouchers:
            unpaid_amount += vouchers[e.key].amount
    rec: dict[str, Any] = {**tally, "served_unpaid_amount": unpaid_amount, "paid_unserved_amount": unserved_amount,
                           "checks": {}, "findings": []}
    words = {"served_unpaid": "voucher(s) served that no claim covered (the seller's loss)",
             "paid_unserved": "channel(s) claimed beyond what their clients were served (the payers' loss)",
             "double_settled": "claim(s) of an already claimed range"}
    for key in LOSS_KEYS:
        if tally[key]:
            rec["findings"].append(f"{tally[key]} {words[key]}")
    rec["examples"] = {k: [str(e.key) for e in events if e.category == k][:20] for k in LOSS_KEYS}
    if chain:
        extra = dict(chain)
        rec["checks"] = {**rec["checks"], **extra.pop("checks", {})}
        rec["findings"] = [*rec["findings"], *extra.pop("findings", [])]
        double = int(extra.pop("double_settled", 0))
        rec["double_settled"] = rec["double_settled"] + double
        if double and not any("already claimed" in f for f in rec["findings"]):
            rec["findings"].append(f"{double} {words['double_settled']}")
        rec.update(extra)
    rec["exact"] = (all(rec.get(k) == 0 for k in LOSS_KEYS) and rec.get("pending", 0) == 0
                    and all(rec["checks"].values()))
    return rec  # type: ignore[return-value]


def settlement_latencies(requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                         start: float = 0.0) -> tuple[list[float], int]:
    """Per voucher-paid request started at or after `start`: its 200 to the claim that covered it;
    also how many such vouchers no claim covered."""
    books = _by_channel(channels)
    vouchers: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in voucher_requests(requests):
        vouchers[r.channel.lower()].append(r)
    out, unsettled = [], 0
    for cid, rs in vouchers.items():
        ch = books.get(cid)
        history = ch.claim_history() if ch else []
        base = _base(rs, ch)
        for r in rs:
            if r.t_start < start:
                continue
            t = next((t for t, total in history if total >= r.cumulative), None)
            if t is None and ch is not None and not history and ch.t_claimed >= 0 and r.cumulative - base <= ch.claimed:
                t = ch.t_claimed
            if t is None:
                unsettled += 1
            else:
                out.append(max(0.0, t - r.t_end))
    return out, unsettled


# --- exposure and capital -------------------------------------------------------------------------


def _claims_over_time(channels: Sequence[ChannelRecord]) -> list[tuple[float, int]]:
    """(time, amount) of every claim of these channels, from their histories (or t_claimed when a
    producer kept none)."""
    out = []
    for ch in channels:
        history = ch.claim_history()
        if history:
            previous = history[-1][1] - ch.claimed
            for t, total in history:
                if total > previous:
                    out.append((t, total - previous))
                    previous = total
        elif ch.claimed > 0 and ch.t_claimed >= 0:
            out.append((ch.t_claimed, ch.claimed))
    return out


def exposure_series(requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                    txs: Sequence[ChannelTxRecord]) -> tuple[list[float], list[int], list[int]]:
    """Step series (t, exposure, locked) in atomic units at every event time (module docstring)."""
    books = _by_channel(channels)
    deltas: dict[float, list[int]] = defaultdict(lambda: [0, 0])  # t -> [exposure delta, locked delta]
    vouchers: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in voucher_requests(requests):
        vouchers[r.channel.lower()].append(r)
    for cid, rs in vouchers.items():
        previous = _base(rs, books.get(cid))
        for r in sorted(rs, key=lambda r: r.cumulative):
            if r.cumulative > previous:
                deltas[r.t_end][0] += r.cumulative - previous
                previous = r.cumulative
    for t, amount in _claims_over_time(channels):
        deltas[t][0] -= amount
        deltas[t][1] -= amount
    for tx in txs:
        if tx.kind == "deposit":
            deltas[tx.t_included][1] += tx.amount
        elif tx.kind in ("refund", "withdraw"):
            deltas[tx.t_included][1] -= tx.amount
    ts, exposure, locked = [], [], []
    e = l = 0
    for t in sorted(deltas):
        e += deltas[t][0]
        l += deltas[t][1]
        ts.append(t)
        exposure.append(e)
        locked.append(l)
    return ts, exposure, locked


def _time_mean(ts: Sequence[float], values: Sequence[float]) -> float | None:
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return float(values[-1]) if values else None
    area = math.fsum(v * (b - a) for a, b, v in zip(ts, ts[1:], values))
    return area / (ts[-1] - ts[0])


def _thin(ts: list[float], *series: list[Any]) -> tuple[list[float], ...]:
    if len(ts) <= SERIES_POINTS:
        return (ts, *series)
    step = math.ceil(len(ts) / SERIES_POINTS)
    keep = list(range(0, len(ts), step))
    if keep[-1] != len(ts) - 1:
        keep.append(len(ts) - 1)
    return tuple([s[i] for i in keep] for s in (ts, *series))


# --- economics ------------------------------------------------------------------------------------


def measured_usage(vouchers: int, channels: Sequence[ChannelRecord],
                   txs: Sequence[ChannelTxRecord]) -> econ.ChannelUsage | None:
    """The model's inputs as this run used its channels (None without a paid voucher)."""
    used = [c for c in channels if c.vouchers > 0] or list(channels)
    claims = [t for t in txs if t.kind == "claim"]
    settles = [t for t in txs if t.kind == "settle"]
    if not vouchers or not used:
        return None
    channel_claims = sum(max(1, t.channels) for t in claims)
    return econ.ChannelUsage(
        payments_per_channel=vouchers / len(used),
        payments_per_claim=vouchers / channel_claims if channel_claims else math.inf,
        payments_per_settle=vouchers / len(settles) if settles else math.inf,
        channels_per_claim=channel_claims / len(claims) if claims else 1.0,
        deposits_per_channel=max(1.0, sum(c.deposits for c in used) / len(used)),
    )


def _row(scheme: str, strategy: str, gas: float | None, txs: float | None, economics: Any,
         source: str) -> SchemeRow:
    cost = econ.cost_per_payment_usd(gas, economics, txs or 0.0) if gas is not None else None
    return {"scheme": scheme, "strategy": strategy, "gas_per_payment": gas, "txs_per_payment": txs,
            "cost_per_payment_usd": cost,
            "break_even_price_usd": {f"{f:g}": (econ.break_even_price_usd(cost, f) if cost is not None else None)
                                     for f in BREAK_EVEN_FRACTIONS},
            "source": source}


def scheme_comparison(scenario: Any, metrics: Mapping[str, Any], measured: SchemeRow,
                      model: SchemeRow | None) -> list[SchemeRow]:
    """Exact strategies against batch-settlement: this run's own figure where it ran that way, the
    economics model's (reference figures) for the others."""
    strategy = scenario.facilitator.strategy
    batch = scenario.facilitator.batch.max_size if scenario.facilitator.batch else econ.REFERENCE_BATCH_SIZE
    gas_stats = metrics.get("gas") or {}
    rows = []
    ran = "sync" if strategy == "sdk" else strategy  # the SDK facilitator settles one payment per tx, like sync
    for name in econ.EXACT_STRATEGIES:
        if name == ran and metrics.get("gas_per_payment") is not None:
            paid = gas_stats.get("payments_with_gas") or 0
            txs = (gas_stats.get("tx_equivalents") or 0) / paid if paid else None
            label = name if strategy == name else f"{name} ({strategy})"
            rows.append(_row("exact", label, metrics["gas_per_payment"], txs, scenario.economics, "measured"))
            continue
        size = batch if name == "batched" else 1
        rows.append(_row("exact", name if name != "batched" else f"batched ({size})",
                         econ.exact_gas_per_payment(size), 1 / size, scenario.economics, "model"))
    rows.append(measured)
    if model is not None:
        rows.append(model)
    return rows


def channels_section(scenario: Any, requests: Sequence[RequestRecord], channels: Sequence[ChannelRecord],
                     txs: Sequence[ChannelTxRecord], metrics: Mapping[str, Any],
                     reconciliation: Mapping[str, Any] | None = None) -> ChannelsSection:
    """The whole `channels` section. `reconciliation`: what the live books read from the chain
    (channel_books); without it (the sim) the verdict comes from the records alone."""
    decimals = scenario.token.decimals
    usd = lambda amount: econ.atomic_to_usd(amount, decimals)  # noqa: E731
    vouchers = voucher_requests(requests)
    start = float((metrics.get("window") or {}).get("start_s") or 0.0)
    totals: ChannelTotals = {
        "channels": len(channels), "payers": len({c.payer.lower() for c in channels if c.payer}),
        "deposited": sum(c.deposited for c in channels), "charged": sum(c.charged for c in channels),
        "claimed": sum(c.claimed for c in channels), "refunded": sum(c.refunded for c in channels),
        "unclaimed": sum(c.unclaimed for c in channels), "refundable": sum(c.refundable for c in channels),
        "vouchers": len(vouchers), "deposits": sum(c.deposits for c in channels),
    }
    rec = channel_reconciliation(requests, channels, chain=reconciliation)
    latencies, unsettled = settlement_latencies(requests, channels, start)

    ts, exposure, locked = exposure_series(requests, channels, txs)
    per_payer: dict[str, int] = defaultdict(int)
    for c in channels:
        per_payer[c.payer.lower()] += c.deposited
    payer_usd = [usd(v) for v in per_payer.values()]
    capital: ChannelCapital = {
        "deposited_usd": usd(totals["deposited"]),
        "per_payer_mean_usd": math.fsum(payer_usd) / len(payer_usd) if payer_usd else None,
        "per_payer_max_usd": max(payer_usd, default=None),
        "peak_locked_usd": usd(max(locked)) if locked else None,
        "deposit_per_paid_request_usd": usd(totals["deposited"]) / len(vouchers) if vouchers else None,
    }
    thin_t, thin_e, thin_l = _thin(ts, [usd(v) for v in exposure], [usd(v) for v in locked])
    exposure_block: ChannelExposure = {
        "peak_usd": usd(max(exposure)) if exposure else None,
        "mean_usd": (lambda m: None if m is None else usd(m))(_time_mean(ts, exposure)),
        "final_usd": usd(totals["unclaimed"]),
        "series": {"t_s": list(thin_t), "exposure_usd": list(thin_e), "locked_usd": list(thin_l)},
    }

    kinds: dict[str, dict[str, float]] = {}
    for tx in txs:
        block = kinds.setdefault(tx.kind, {"count": 0, "gas": 0})
        block["count"] += 1
        block["gas"] += tx.gas_used
    total_gas = math.fsum(t.gas_used for t in txs)
    gas = total_gas / len(vouchers) if vouchers and txs else None
    txs_per = len(txs) / len(vouchers) if vouchers and txs else None
    mean_price = (usd(math.fsum(r.amount for r in vouchers) / len(vouchers))
                  if vouchers and all(r.amount > 0 for r in vouchers) else None)
    measured = _row(SCHEME, SCHEME, gas, txs_per, scenario.economics, "measured")
    new_channels = sum(1 for c in channels if c.deposits > 0 and c.t_deposit >= 0)
    fitted = econ.fit_channel_gas(txs, new_channels if txs else None)
    usage = measured_usage(len(vouchers), channels, txs)
    model_row = None
    model_gas = None
    if usage is not None:
        model_gas = econ.channel_gas_per_payment(usage, fitted)
        model_row = _row(SCHEME, f"{SCHEME} (model)", model_gas, econ.channel_txs_per_payment(usage),
                         scenario.economics, "model")
    m_settle = usage.payments_per_settle if usage else 1000.0
    c_claim = usage.channels_per_claim if usage else 1.0
    sensitivity = [{"payments_per_channel": n, "payments_per_claim": k,
                    "gas_per_payment": econ.channel_gas_per_payment(
                        econ.ChannelUsage(n, k, m_settle, c_claim), fitted)}
                   for n in SENSITIVITY_PER_CHANNEL for k in SENSITIVITY_PER_CLAIM if k <= n]
    economics: ChannelEconomics = {
        "txs": dict(sorted(kinds.items())),
        "gas_per_payment": gas,
        "txs_per_payment": txs_per,
        "cost_per_payment_usd": measured["cost_per_payment_usd"],
        "cost_fraction_of_price": (measured["cost_per_payment_usd"] / mean_price
                                   if measured["cost_per_payment_usd"] is not None and mean_price else None),
        "break_even_price_usd": measured["break_even_price_usd"],
        "usage": asdict(usage) if usage else None,
        "fitted_gas": asdict(fitted),
        "reference_gas": asdict(econ.REFERENCE_CHANNEL_GAS),
        "model_gas_per_payment": model_gas,
        "sensitivity": sensitivity,
        "comparison": scheme_comparison(scenario, metrics, measured, model_row),
    }
    return {
        "totals": totals,
        "reconciliation": rec,
        "settlement_latency_s": distribution(latencies),
        "unsettled_vouchers": unsettled,
        "capital": capital,
        "exposure": exposure_block,
        "economics": economics,
    }

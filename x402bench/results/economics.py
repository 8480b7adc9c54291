"""Gas and money per payment: what a seller pays to settle one x402 call.

Gas per payment is the gasUsed of the distinct settlement transactions divided by the
payments they settled, so a batch of 100 authorizations in one tx counts once, shared
by its 100 payments. Money uses the scenario's economics (gas price, ETH/USD, L1 data
fee), never Anvil's own gas price, so a local run prices like the chain it models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, TypedDict

from x402bench.results.records import SettlementRecord
from x402bench.scenario import Economics

GWEI = 1e-9  # ETH per gwei


@dataclass(frozen=True)
class TxGas:
    """One settlement transaction: its whole gasUsed and how many of our payments it settled."""

    tx_hash: str
    gas_used: int
    payments: int

    @property
    def gas_per_payment(self) -> float:
        return self.gas_used / self.payments


@dataclass(frozen=True)
class GasStats:
    """Amortised gas over a run. `tx_equivalents` may be fractional: a settled record without
    a tx hash counts as 1/batch_size of a transaction."""

    payments: int = 0
    total_gas: float = 0.0
    tx_equivalents: float = 0.0
    txs: list[TxGas] = field(default_factory=list)

    @property
    def gas_per_payment(self) -> float | None:
        return self.total_gas / self.payments if self.payments else None

    @property
    def txs_per_payment(self) -> float | None:
        return self.tx_equivalents / self.payments if self.payments else None

    @property
    def mean_batch_size(self) -> float | None:
        return self.payments / self.tx_equivalents if self.tx_equivalents else None


def gas_stats(settlements: Iterable[SettlementRecord]) -> GasStats:
    """Amortised gas of the settled payments whose gas is known (gas_used > 0).

    Records sharing a tx hash are one transaction (counted once, shared by the distinct
    payments in it); a record without a hash stands for gas_used / batch_size of its tx.
    """
    by_tx: dict[str, tuple[int, set[tuple[str, str]]]] = {}
    loose: list[SettlementRecord] = []
    for s in settlements:
        if s.state != "settled" or s.gas_used <= 0:
            continue
        if not s.tx_hash:
            loose.append(s)
            continue
        key = s.tx_hash.lower()
        gas, payments = by_tx.get(key, (0, set()))
        payments.add((s.payer.lower(), s.nonce.lower()))
        by_tx[key] = (max(gas, s.gas_used), payments)
    txs = [TxGas(h, gas, len(p)) for h, (gas, p) in sorted(by_tx.items())]
    shares = [(s.gas_used / max(1, s.batch_size), 1 / max(1, s.batch_size)) for s in loose]
    total = math.fsum([t.gas_used for t in txs] + [g for g, _ in shares])
    tx_eq = math.fsum([float(len(txs))] + [f for _, f in shares])
    return GasStats(sum(t.payments for t in txs) + len(loose), total, tx_eq, txs)


def gas_cost_usd(gas: float, economics: Economics) -> float:
    """USD cost of `gas` units at the scenario's gas price and ETH price (L2 execution only)."""
    return gas * economics.gas_price_gwei * GWEI * economics.eth_usd


def cost_per_payment_usd(gas_per_payment: float, economics: Economics, txs_per_payment: float = 1.0) -> float:
    """Execution gas cost plus this payment's share of the per-tx L1 data fee."""
    return gas_cost_usd(gas_per_payment, economics) + economics.l1_fee_usd_per_tx * txs_per_payment


class CostSplit(TypedDict):
    """summary.json `metrics.cost_breakdown_usd`: what one payment's settlement cost is made of."""

    execution_gas_usd: float   # gas per payment x gas price x ETH/USD (the L2 execution)
    l1_fee_usd: float          # this payment's share of the per-tx L1 data fee (l1_fee_usd_per_tx x txs per payment)
    total_usd: float           # their sum: metrics.cost_per_payment_usd


def cost_split_usd(gas_per_payment: float, economics: Economics, txs_per_payment: float = 1.0) -> CostSplit:
    """cost_per_payment_usd in its two parts: on an L2 the L1 data fee is often most of it, and batching
    shares it (and the tx's base gas) while the per-authorization gas stays."""
    gas = gas_cost_usd(gas_per_payment, economics)
    l1 = economics.l1_fee_usd_per_tx * txs_per_payment
    return {"execution_gas_usd": gas, "l1_fee_usd": l1, "total_usd": gas + l1}


def atomic_to_usd(amount: float, decimals: int) -> float:
    """Token units to dollars (the token is a USD stablecoin)."""
    return amount / 10**decimals


def break_even_price_usd(cost_usd: float, fraction: float) -> float:
    """The price at which settling costs `fraction` of the price (cost = fraction x price)."""
    if not 0 < fraction:
        raise ValueError("fraction must be positive")
    return cost_usd / fraction


def max_gas_for_fraction(price_usd: float, fraction: float, economics: Economics,
                         txs_per_payment: float = 1.0) -> float | None:
    """The most gas per payment that keeps cost at or below `fraction` of `price_usd`
    (None when the L1 fee alone already exceeds it, or gas is free)."""
    budget = price_usd * fraction - economics.l1_fee_usd_per_tx * txs_per_payment
    per_gas = gas_cost_usd(1.0, economics)
    if budget < 0 or per_gas <= 0:
        return None
    return budget / per_gas


# --- batch-settlement (deferred settlement through an escrow channel) ---------------------------
#
# Reference figures, the one place they are kept. Measured on this repository's contracts on Anvil
# (services/contracts/, driven by the official SDK): gasUsed of whole transactions.

#: Exact scheme, gas per payment: one transferWithAuthorization per payment (`sync`, `pipelined`,
#: also the SDK facilitator), and `batched` at REFERENCE_BATCH_SIZE authorizations per tx.
EXACT_SINGLE_GAS = 85_014.0
EXACT_BATCHED_GAS = 48_185.0
REFERENCE_BATCH_SIZE = 50
#: The exact strategies the economics table compares with batch-settlement, in display order.
EXACT_STRATEGIES = ("sync", "pipelined", "batched")


def exact_gas_per_payment(batch_size: float = 1.0) -> float:
    """Exact-scheme gas per payment settling `batch_size` authorizations per tx. A straight line through
    the two reference figures, gas = per_payment + per_tx / batch_size: a lone authorization pays both,
    a batch shares the tx overhead (base cost, calldata head, the batch call itself)."""
    per_tx = (EXACT_SINGLE_GAS - EXACT_BATCHED_GAS) / (1 - 1 / REFERENCE_BATCH_SIZE)
    return EXACT_SINGLE_GAS - per_tx + per_tx / max(1.0, batch_size)


@dataclass(frozen=True)
class ChannelGas:
    """Gas of each batch-settlement transaction. Defaults are the reference figures measured on these
    contracts; fit_channel_gas replaces them with a run's own."""

    deposit_new: float = 139_278.0        # first deposit: creates the channel
    deposit_topup: float = 118_479.0      # a deposit into an existing channel
    claim_base: float = 72_404.0          # claimWithSignature of one channel
    claim_per_extra: float = 17_900.0     # each further channel in the same claim tx
    settle: float = 57_285.0              # settle(receiver, token): one transfer of everything claimed
    refund: float | None = None           # cooperative refund (none measured by default: not in the model)

    def claim_tx(self, channels: float) -> float:
        return self.claim_base + max(0.0, channels - 1) * self.claim_per_extra

    def claim_per_channel(self, channels: float) -> float:
        """A channel's share of one claim tx covering `channels` channels."""
        return self.claim_tx(channels) / max(1.0, channels)

    def deposits(self, per_channel: float) -> float:
        """Deposit gas of one channel making `per_channel` deposits (the first creates it)."""
        return self.deposit_new + max(0.0, per_channel - 1) * self.deposit_topup


REFERENCE_CHANNEL_GAS = ChannelGas()


@dataclass(frozen=True)
class ChannelUsage:
    """How a run uses its channels; the model's inputs, in payments (paid requests).

    payments_per_channel: payments a channel serves over its life (between its first deposit and its end);
    payments_per_claim: payments a channel accrues between two claims of it (its claim interval);
    payments_per_settle: payments of all channels between two settle txs (the settle interval);
    channels_per_claim: channels one claim tx covers; deposits_per_channel: 1 + top-ups.
    """

    payments_per_channel: float
    payments_per_claim: float
    payments_per_settle: float
    channels_per_claim: float = 1.0
    deposits_per_channel: float = 1.0


def channel_gas_per_payment(usage: ChannelUsage, gas: ChannelGas = REFERENCE_CHANNEL_GAS) -> float:
    """The model: deposit gas / payments per channel + claim gas per channel / payments per channel per
    claim interval + settle gas / payments per settle interval. Refunds are left out: a payer that keeps
    its channel open never pays one; measured figures include them."""
    return (gas.deposits(usage.deposits_per_channel) / usage.payments_per_channel
            + gas.claim_per_channel(usage.channels_per_claim) / usage.payments_per_claim
            + gas.settle / usage.payments_per_settle)


def channel_txs_per_payment(usage: ChannelUsage) -> float:
    """Transactions per payment under the same model (what the per-tx L1 fee multiplies)."""
    return (usage.deposits_per_channel / usage.payments_per_channel
            + 1 / (usage.payments_per_claim * max(1.0, usage.channels_per_claim))
            + 1 / usage.payments_per_settle)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def fit_channel_gas(txs: Iterable[Any], new_channels: int | None = None,
                    reference: ChannelGas = REFERENCE_CHANNEL_GAS) -> ChannelGas:
    """The model's gas figures from a run's own ChannelTxRecords; a kind the run never sent keeps its
    reference figure.

    Claims: least squares of gas on channels per tx (intercept at one channel) when the run's claims
    covered at least two distinct channel counts, else the mean intercept under the reference slope.
    Deposits: a tx record does not say whether it created its channel, so with `new_channels` (how many
    of the deposits did) the total is split keeping the reference top-up/new ratio; without it every
    deposit is taken as a new channel.
    """
    txs = [t for t in txs if t.gas_used > 0]
    by = {kind: [t for t in txs if t.kind == kind] for kind in ("deposit", "claim", "settle", "refund")}
    deposit_new, deposit_topup = reference.deposit_new, reference.deposit_topup
    if by["deposit"]:
        total = math.fsum(t.gas_used for t in by["deposit"])
        n_new = len(by["deposit"]) if new_channels is None else min(max(new_channels, 0), len(by["deposit"]))
        ratio = reference.deposit_topup / reference.deposit_new
        deposit_new = total / (n_new + (len(by["deposit"]) - n_new) * ratio)
        deposit_topup = deposit_new * ratio if n_new < len(by["deposit"]) or new_channels is not None else deposit_topup
    claim_base, claim_extra = reference.claim_base, reference.claim_per_extra
    claims = [(max(1, t.channels) - 1, float(t.gas_used)) for t in by["claim"]]
    if len({x for x, _ in claims}) >= 2:
        mx, my = _mean([x for x, _ in claims]), _mean([y for _, y in claims])
        sxx = math.fsum((x - mx) ** 2 for x, _ in claims)
        claim_extra = math.fsum((x - mx) * (y - my) for x, y in claims) / sxx
        claim_base = my - claim_extra * mx
    elif claims:
        claim_base = _mean([y - claim_extra * x for x, y in claims])
    settle = _mean([float(t.gas_used) for t in by["settle"]]) or reference.settle
    refund = _mean([float(t.gas_used) for t in by["refund"]]) or reference.refund
    return ChannelGas(deposit_new, deposit_topup, claim_base, claim_extra, settle, refund)

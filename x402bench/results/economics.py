"""Gas and money per payment: what a seller pays to settle one x402 call.

Gas per payment is the gasUsed of the distinct settlement transactions divided by the
payments they settled, so a batch of 100 authorizations in one tx counts once, shared
by its 100 payments. Money uses the scenario's economics (gas price, ETH/USD, L1 data
fee), never Anvil's own gas price, so a local run prices like the chain it models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

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

"""The raw records every run produces, live or simulated: the one contract between
traffic (Locust or SimPy) and the summary, plots and report built from them.

Times are seconds. `t_*` fields are relative to the run's start (time zero is when
traffic began), so live and simulated runs line up on the same axes.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, TypeVar


@dataclass(slots=True)
class RequestRecord:
    """One payment by one agent, from its first byte to its final answer; a payment retried with the same
    signed authorization (agents.retry) is still one record, its sends counted in `attempts`."""

    t_start: float                 # first byte sent, seconds since run start
    t_end: float                   # final response received
    route: str                     # service name from the scenario
    agent: int                     # agent index
    status: int                    # final HTTP status (200 paid, 402, 400, 500; 0 = transport error)
    error: str = ""                # x402 reason code or harness error code; "" when paid
    challenge_s: float = 0.0       # the unpaid 402 round trip, 0 when requirements were cached
    sign_s: float = 0.0            # building and signing the EIP-3009 authorization
    paid_s: float = 0.0            # the paid round trip (PAYMENT-SIGNATURE request to response)
    verify_s: float = 0.0          # facilitator /verify as seen by the service (Server-Timing)
    handler_s: float = 0.0         # the route's own work (Server-Timing)
    settle_s: float = 0.0          # facilitator /settle as seen by the service (Server-Timing)
    amount: int = 0                # atomic units paid (0 when not paid); batch-settlement: this request's charge
                                   # (the voucher's increment over the last one), never the deposit
    payer: str = ""                # agent address
    nonce: str = ""                # EIP-3009 nonce, 0x-hex: the payment's identity
    tx_hash: str = ""              # settlement tx from PAYMENT-RESPONSE
    attempts: int = 1              # sends of this payment: 1 + retries of the same signed authorization
    scheme: str = "exact"          # the route's x402 scheme: exact | batch-settlement
    channel: str = ""              # batch-settlement: the channel id (0x-hex) the voucher drew on; "" for exact
    cumulative: int = 0            # batch-settlement: the voucher's signed cumulative amount (maxClaimableAmount)

    @property
    def latency_s(self) -> float:
        return self.t_end - self.t_start

    @property
    def paid(self) -> bool:
        return self.status == 200


@dataclass(slots=True)
class SettlementRecord:
    """One payment the facilitator accepted, and what became of it on chain."""

    nonce: str                     # EIP-3009 nonce, 0x-hex
    payer: str
    payee: str
    amount: int                    # atomic units
    t_accepted: float              # facilitator accepted the payment for settlement (run clock)
    t_submitted: float = -1.0      # tx broadcast (-1: never)
    t_included: float = -1.0       # timestamp of the block holding the transfer (-1: not included)
    state: str = "pending"         # settled | pending | failed
    tx_hash: str = ""
    block_number: int = -1
    gas_used: int = 0              # gasUsed of the tx that settled it (whole tx, not amortized)
    effective_gas_price: int = 0   # wei
    batch_size: int = 1            # payments settled by that tx (gas per payment = gas_used / batch_size)
    error: str = ""                # reason code when failed

    @property
    def settlement_latency_s(self) -> float | None:
        if self.t_included < 0:
            return None
        return self.t_included - self.t_accepted


@dataclass(slots=True)
class ChannelRecord:
    """One batch-settlement channel at the end of a run. Deferred settlement moves money in three steps
    (deposit into escrow, claim of vouchers, settle to the receiver), so its books are kept per channel:
    a voucher is only money once a claim covers it, and `charged - claimed` is the seller's exposure."""

    channel: str                   # channel id, 0x-hex
    payer: str
    receiver: str                  # the payee the channel pays
    deposited: int = 0             # atomic units put into escrow (first deposit and every top-up)
    charged: int = 0               # what the clients were served during the run, from their vouchers
    claimed: int = 0               # claimed on chain during the run (the channel's totalClaimed when it opened in it)
    refunded: int = 0              # returned to the payer (cooperative refunds and finalized withdrawals)
    vouchers: int = 0              # requests served with a voucher (or deposit) of this channel
    deposits: int = 0              # deposit transactions (1 + top-ups)
    t_deposit: float = -1.0        # block time of the first deposit, run clock (-1: none)
    t_claimed: float = -1.0        # block time of the claim that covered the last charged amount (-1: not yet)
    claims: str = ""               # the channel's claims in order, "t:totalClaimed" space-separated (run clock,
                                   # absolute on-chain totals): what dates each voucher's settlement (see claim_history)

    @property
    def unclaimed(self) -> int:
        """Served but not yet claimed: what the seller would lose if it never claimed."""
        return self.charged - self.claimed

    @property
    def refundable(self) -> int:
        """The payer's unspent deposit still in escrow."""
        return self.deposited - self.claimed - self.refunded

    def claim_history(self) -> list[tuple[float, int]]:
        """(block time, totalClaimed after it) of each claim, oldest first; a voucher of cumulative amount c
        was settled by the first claim whose total reaches c."""
        return [(float(t), int(total)) for t, total in (item.split(":") for item in self.claims.split())]


def format_claims(history: Iterable[tuple[float, int]]) -> str:
    """The text of ChannelRecord.claims for (block time, totalClaimed) pairs; repr keeps floats exact."""
    return " ".join(f"{float(t)!r}:{int(total)}" for t, total in history)


@dataclass(slots=True)
class ChannelTxRecord:
    """One on-chain transaction of the batch-settlement scheme; its gas is what deferred settlement costs."""

    kind: str                      # deposit | claim | settle | refund | withdraw
    tx_hash: str
    t_included: float              # block time, run clock
    gas_used: int = 0
    effective_gas_price: int = 0   # wei
    channels: int = 1              # channels the tx touched (a claim covers many)
    amount: int = 0                # atomic units it moved (deposited, claimed, settled or refunded)
    block_number: int = -1


R = TypeVar("R", RequestRecord, SettlementRecord, ChannelRecord, ChannelTxRecord)


def write_csv(path: Path, records: Iterable[R], kind: type[R]) -> None:
    names = [f.name for f in fields(kind)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for record in records:
            writer.writerow(asdict(record))


def read_csv(path: Path, kind: type[R]) -> list[R]:
    types = {f.name: f.type for f in fields(kind)}
    casts = {"int": int, "float": float, "str": str}
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            out.append(kind(**{k: casts[str(types[k])](v) for k, v in row.items()}))
    return out

"""What each part of the model needs from the parts that call it back.

The world calls the facilitator (verify, settle) and the facilitator answers the world (verified,
finish, rejected); the channel model asks the world to carry deposits and vouchers and the world
tells it how they ended. Naming those call-backs here, as Protocols, lets each module be read,
tested and replaced against the few methods it really uses, without importing the other (an
import cycle would hide which side owns what).
"""

from __future__ import annotations

from typing import Callable, Protocol

from sim.engine import Clock, Machine, Station
from sim.faults import FaultPlan
from sim.payment import Req
from sim.store import RequestColumns, SettlementColumns, TxColumns
from x402bench.scenario import Retry


class Driver(Protocol):
    """Who decides when an agent pays next (sim/agents.py): told when each request's answer is in."""

    def done(self, r: Req, t_end: float) -> None: ...


class PaymentHost(Protocol):
    """The world as the facilitator sees it: where answers go and where settlements are written."""

    settlements: SettlementColumns
    txs: TxColumns
    machine: Machine | None
    plan: FaultPlan | None
    retry: Retry | None

    def verified(self, r: Req, t: float) -> None: ...

    def finish(self, r: Req, t_service: float) -> None: ...

    def rejected(self, r: Req, error: int, t: float) -> None: ...

    def fac_lost(self, r: Req, t: float) -> None: ...


class ChannelHost(Protocol):
    """The world as the channel model (sim/channels.py) sees it: the agents' one spend cap and wallets,
    the service's CPU and route workers, the two ways a paid request can travel, and the facilitator's
    settlement columns and txs (where a deposit's block is read)."""

    clock: Clock
    prices: list[int]
    cap: int  # atomic units an agent may commit: min(funding, budget), the world's one definition
    spent: list[int]  # per agent: exact payments in flight or made, plus channel deposits made
    requests: RequestColumns  # its `cumulative` column is the channel model's to fill
    svc_cpu: Station
    svc_busy: bool
    gates: list[Station | None]  # each route's workers (None: unlimited)
    svc_cpu_s: Callable[[], float]
    settlements: SettlementColumns
    txs: TxColumns
    started: int
    in_flight: int

    def mark_broke(self, agent: int) -> None:
        """The agent cannot pay any more: it stops, as an exact-path agent out of money does."""

    def launch(self, r: Req, service: Callable[[Req, float], None], at_service: Callable[[Req], None]) -> None:
        """Client side of one paid request (402 round trip, signing, the way there), then service(r, t) at the
        service (at_service(r) as an event when the service's CPU queues)."""

    def pay_exact_way(self, r: Req, t: float) -> None:
        """The request reaches the service at t and travels the exact path (verify, route, /settle, receipt)."""

    def pay_exact_way_now(self, r: Req) -> None:
        """pay_exact_way from an event at the request's arrival."""

    def record(self, r: Req, t_end: float, status: int, error: int, verify: float, handler: float, settle: float,
               amount: int, tx: int) -> None:
        """Write the request's record and tell the driver."""

"""A request in flight, as every part of the model sees it (world, facilitator, channels, drivers).

Kept apart from sim/world.py so the facilitator and the channel model can name the type without
importing the world that calls them back (their view of the world is sim/interfaces.py).
"""

from __future__ import annotations

from typing import Any


class Req:
    """A request in flight (agent, route, and the times its record needs)."""

    __slots__ = ("seq", "agent", "route", "amount", "user", "t0", "challenge", "sign", "t_send", "half",
                 "valid_before", "t_verify", "verify", "handler", "t_settle", "row", "tx")

    def __init__(self, seq: int, agent: int, route: int, amount: int, user: Any, t0: float) -> None:
        self.seq = seq
        self.agent = agent
        self.route = route
        self.amount = amount
        self.user = user
        self.t0 = t0
        self.row = -1
        self.tx = -1
        self.verify = -1.0
        self.handler = 0.0
        self.t_settle = -1.0

    #: Gas of the tx that settles this payment when it is not an exact transfer (a batch-settlement
    #: deposit sets it on its own slot, sim/channels.py); 0: the facilitator's transfer gas.
    deposit_gas = 0


class FaultReq(Req):
    """One attempt of a payment in a run with faults or retries: what the fault paths track besides Req."""

    __slots__ = ("t_svc", "tries", "closed", "deadline", "answered", "epoch", "waiters")

    def __init__(self, seq: int, agent: int, route: int, amount: int, user: Any, t0: float) -> None:
        super().__init__(seq, agent, route, amount, user, t0)
        self.t_svc = 0.0  # reached the service
        self.tries = 0  # retries before this attempt
        self.closed = False  # its client has its outcome (or gave up on it)
        self.deadline = float("inf")  # when its client gives up (agents.retry.timeout_s)
        self.answered = False  # the facilitator gave (or lost) its /settle answer
        self.epoch = 0  # the facilitator process that holds its claim
        self.waiters: list[FaultReq] | None = None  # repeats of its payment waiting for its claim to close

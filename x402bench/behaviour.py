"""What an agent does and when, written once: pacing, route mix, per-agent seeding, and which
answers are worth the same payment again. (The spend cap is Scenario.spend_cap_atomic.)

The live harness (loadtest/locustfile.py) and the sim (sim/agents.py, sim/world.py) both read
these definitions instead of keeping their own. That is what lets `x402bench validate` compare the
two at all: if each side said for itself what "bursts" or a route weight or a retryable answer
means, a gap between them could be a difference in the model or in the drivers, and nothing would
tell which. With one definition, a Locust user and the sim's locust driver given the same seed
draw the same waits and the same routes (tests/test_behaviour_shared.py checks it). The module is
pure logic on `random.Random` and stays in the x402bench package because the sim must not import
`loadtest` (nor Locust, which monkey-patches the process on import).

An arrival kind is a subclass of :class:`Kind`, registered in :data:`KINDS` under the name that
`Arrivals.kind` takes (and accepted there, in x402bench/scenario.py). Subclasses define the kind by
supplying:

- ``wait(rate, rng, elapsed_s, answered)``: the gap a closed-loop user waits after each answer
  (Locust's users, and the sim's locust driver), for a user offering `rate` requests/s in all, its
  `answered`-th answer in at `elapsed_s` since it started, drawn from `rng` only. The default is a
  Poisson stream of `burst()`-request events at `event_rate` scaled by `share`; override it only
  for a kind that is not one (``constant``, ``closed``);
- ``burst()``: requests an arrival event brings back to back from one agent (1 unless bursty);
- ``share(elapsed_s)``: the fraction of the peak rate offered at `elapsed_s` (1 unless it ramps),
  and ``time_at(expected, rate)``, the inverse of its cumulative intensity, for open streams;
- the class attributes ``closed`` (agents loop back to back, no clock of their own) and
  ``periodic`` (every gap is ``period(rate)``, no draws).

The sim's open driver (sim/agents.py OpenDriver) draws whole-population streams with numpy for
speed; it takes every number (event rate, burst size, ramp clock, period) from the kind, and needs
an event handler for a new kind's shape.

The retry rule is stated on a vocabulary both sides have: the HTTP status, the reason string (an
x402 reason code, a client-side code, or a service's words) and whether a payment was sent. The live
client reads them off its PaymentResult (`answer_worth_retrying`); the sim names its error codes
with sim/store.py's ERRORS, which are those same reason codes.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from x402bench.scenario import Arrivals, Scenario

# ---- seeding ----------------------------------------------------------------------------------


def agent_rng(seed: int, agent: int) -> random.Random:
    """Each user's (or agent's) own stream, independent of how agents are spread over users and workers."""
    return random.Random(seed * 1_000_003 + agent)


def agents_of_user(index: int, users: int, agents: int) -> range:
    """The agents one Locust user speaks for: every agent index congruent to the user's modulo the user count,
    none for a user beyond the agents. Live users and the sim's locust driver split the population by it."""
    return range(index % users, agents, users) if index < agents else range(0)


def request_rng(seed: int, agent: int, sent: int) -> random.Random:
    """The stream of an agent's `sent`-th payment (its route, its client_disconnect draw): keyed by the
    agent and its count, not by the user or the moment, so which route a payment takes does not depend
    on how many users share the agents or in what order their answers come back."""
    return agent_rng(seed, agent * 7_919 + sent)


# ---- arrival kinds ----------------------------------------------------------------------------


class Kind:
    """What one arrival kind means; see the module docstring for what a subclass supplies."""

    name: ClassVar[str]
    closed: ClassVar[bool] = False
    periodic: ClassVar[bool] = False

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    def burst(self) -> int:
        return 1

    def share(self, elapsed_s: float) -> float:
        return 1.0

    def event_rate(self, rate: float) -> float:
        """Arrival events per second of a stream offering `rate` requests/s at full rate."""
        return rate / self.burst()

    def period(self, rate: float) -> float:
        """The mean gap between requests of a stream offering `rate` requests/s at full rate."""
        return 1.0 / rate

    def time_at(self, expected: float, rate: float) -> float:
        """When a stream of peak event rate `rate` has offered `expected` events on average (the inverse
        of its cumulative intensity): a unit-rate Poisson clock mapped through it is this kind's stream."""
        return expected / rate

    def wait(self, rate: float, rng: random.Random, elapsed_s: float, answered: int) -> float:
        if answered % self.burst():
            return 0.0
        return rng.expovariate(self.event_rate(rate) * self.share(elapsed_s))


class Poisson(Kind):
    """Exponential gaps: k Poisson agents of rate r are one Poisson stream of rate k*r (superposition),
    which is why one user may speak for many agents without changing the offered load."""

    name = "poisson"


class Bursts(Kind):
    """`burst_size` requests back to back from one agent, then a Poisson pause keeping the mean rate."""

    name = "bursts"

    def burst(self) -> int:
        return self.arrivals.burst_size


class Ramp(Kind):
    """Poisson at a rate climbing linearly from zero to the full rate over `ramp_s`, then steady."""

    name = "ramp"

    def share(self, elapsed_s: float) -> float:
        return min(1.0, max(elapsed_s, 1e-3) / self.arrivals.ramp_s)  # floored: a zero rate never answers

    def time_at(self, expected: float, rate: float) -> float:
        ramp_s = self.arrivals.ramp_s
        knee = rate * ramp_s / 2  # what the climb offers
        if expected < knee:
            return math.sqrt(2 * ramp_s * expected / rate)
        return ramp_s + (expected - knee) / rate


class Constant(Kind):
    """One request per period, no randomness in the gaps (an open population is given random phases)."""

    name = "constant"
    periodic = True

    def wait(self, rate: float, rng: random.Random, elapsed_s: float, answered: int) -> float:
        return self.period(rate)


class Closed(Kind):
    """The next request as soon as the last one answered: offered load is whatever comes back."""

    name = "closed"
    closed = True

    def wait(self, rate: float, rng: random.Random, elapsed_s: float, answered: int) -> float:
        return 0.0


KINDS: dict[str, type[Kind]] = {k.name: k for k in (Poisson, Bursts, Ramp, Constant, Closed)}


def kind_of(arrivals: Arrivals) -> Kind:
    return KINDS[arrivals.kind](arrivals)


@dataclass
class Pacer:
    """Waits between one user's requests, for a user that speaks for `agents` agents: their rates add up."""

    arrivals: Arrivals
    agents: int
    rng: random.Random
    kind: Kind = field(init=False)
    _answered: int = field(default=0)

    def __post_init__(self) -> None:
        self.kind = kind_of(self.arrivals)

    @classmethod
    def for_user(cls, scenario: Scenario, index: int, agents: int) -> "Pacer":
        """User `index`'s pacer, seeded by the index alone (whatever worker runs it)."""
        return cls(scenario.agents.arrivals, max(1, agents), agent_rng(scenario.seed, index))

    @property
    def rate(self) -> float:
        return self.arrivals.rate_per_agent_s * self.agents

    def wait(self, elapsed_s: float) -> float:
        self._answered += 1
        return self.kind.wait(self.rate, self.rng, elapsed_s, self._answered)


# ---- route mix --------------------------------------------------------------------------------


def route_weights(scenario: Scenario, routes: list[str]) -> list[float]:
    """The scenario's mix over the routes a world really offers, in their order; uniform when none of
    them is named there (outside services take their names from their URLs)."""
    weights = scenario.mix_weights()
    known = [weights.get(r, 0.0) for r in routes]
    return known if any(w > 0 for w in known) else [1.0] * len(routes)


@dataclass
class RouteChooser:
    names: list[str]
    cumulative: list[float]

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "RouteChooser":
        return cls.for_routes(scenario, [s.name for s in scenario.services])

    @classmethod
    def for_routes(cls, scenario: Scenario, routes: list[str]) -> "RouteChooser":
        chosen = [(r, w) for r, w in zip(routes, route_weights(scenario, routes)) if w > 0]
        return cls([r for r, _ in chosen], list(itertools.accumulate(w for _, w in chosen)))

    def choose(self, rng: random.Random) -> str:
        index = bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])
        return self.names[min(index, len(self.names) - 1)]


# ---- retries ----------------------------------------------------------------------------------

#: Reasons that mean "the answer is not in yet", not "refused": the same payment is worth sending again.
RETRY_REASONS = frozenset({"settlement_pending", "transport_error", "unexpected_settle_error"})
#: Free-text refusals that are verdicts on the payment's terms, not a lost answer.
TERMS_REFUSALS = frozenset({"No matching payment requirements"})


def worth_retrying(status: int, reason: str, paid: bool = True) -> bool:
    """Is the same signed payment worth sending again (agents.retry)? When a payment was sent (`paid`)
    and got no answer (status 0), a server error, or a 402 that is not a verdict on the payment: the
    settlement is still under way, or the service lost its facilitator mid-settle and says so in words
    rather than with an x402 reason code (the payment may have settled; only the same payment again can
    tell). `reason`: the x402 reason code or the client's own ("" on 200)."""
    if not paid:
        return False
    reason = reason or ""
    if status == 0 or status >= 500:
        return True
    return status == 402 and (reason in RETRY_REASONS or (" " in reason and reason not in TERMS_REFUSALS))


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> str: ...
    @property
    def payment(self) -> object | None: ...


def answer_worth_retrying(result: _Answer) -> bool:
    """worth_retrying of a live client's PaymentResult (services/payer/client.py), read by its fields so
    that this module imports nothing of the client."""
    return worth_retrying(result.status, result.error, result.payment is not None)

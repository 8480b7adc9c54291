"""Agent behaviour is written once (x402bench/behaviour.py): a live Locust user and the sim's locust
driver, given the same scenario and seed, draw the same (agent, route, wait) sequence for every
arrival kind, and the live client and the sim agree on which answers are worth the same payment
again. Pure logic, no Anvil, no Locust.

loadtest/locustfile.py and loadtest/paying.py are not imported: Locust monkey-patches the whole
process on import (tests/test_batch_settlement_load.py keeps away for the same reason), and the
locustfile reads its world at import. The live side is therefore built here from the same calls
the locustfile makes, and `test_the_live_side_is_built_as_mirrored` pins those calls in its
source, so a change there fails here until the mirror follows it.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from sim.agents import LocustDriver
from sim.store import ERRORS
from sim.world import _worth_retrying as sim_worth_retrying
from x402bench.behaviour import Pacer, RouteChooser, agents_of_user, answer_worth_retrying, request_rng
from x402bench.scenario import Scenario, validate_scenario

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("poisson", "constant", "bursts", "ramp", "closed")
AGENTS, USERS, SPAWN = 7, 3, 2.0
CAP = 6  # payments an agent makes before it can afford no more (then it is broke, as when funds run out)
LATENCY_S = 0.25


def scenario(kind: str, seed: int = 4242) -> Scenario:
    """Several agents per user (one not a multiple of the other), a weighted mix with a route left out."""
    services = [{"name": n, "path": f"/{n}", "price": 1000} for n in ("weather", "news", "quote", "free")]
    return validate_scenario({
        "name": "shared", "seed": seed, "chain": {"mining": "interval", "block_time_s": 2.0},
        "services": services,
        "agents": {"count": AGENTS, "funding_usdc": 1000, "mix": {"weather": 3, "news": 1, "quote": 0.5},
                   "arrivals": {"kind": kind, "rate_per_agent_s": 0.5, "burst_size": 3, "ramp_s": 5.0}},
        "run": {"duration_s": 60, "users": USERS, "spawn_rate": SPAWN},
    }, source="test")


# ---- the sim side: the real LocustDriver against a stub clock and world -------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.queue: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self.order = itertools.count()
        self.on_at: Callable[[float, Callable[[Any], None], Any], None] = lambda delay, fn, arg: None

    def at(self, delay: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        self.on_at(delay, fn, arg)
        heapq.heappush(self.queue, (self.now + delay, next(self.order), fn, arg))

    def run(self) -> None:
        while self.queue:
            self.now, _, fn, arg = heapq.heappop(self.queue)
            fn(arg)


class _World:
    """Answers every payment LATENCY_S later; refuses an agent's payment past CAP (and marks it broke)."""

    def __init__(self, s: Scenario, clock: _Clock) -> None:
        self.routes = [v.name for v in s.services]
        self.agents = s.agents.count
        self.broke = bytearray(self.agents)
        self.paid = [0] * self.agents
        self.clock = clock
        self.driver: LocustDriver | None = None
        self.started: list[tuple[Any, int, str]] = []

    def start(self, agent: int, route: int, user: Any = None) -> bool:
        self.started.append((user, agent, self.routes[route]))
        if self.paid[agent] >= CAP:
            self.broke[agent] = 1
            return False
        self.paid[agent] += 1
        self.clock.at(LATENCY_S, self._answer, SimpleNamespace(user=user, agent=agent))
        return True

    def _answer(self, r: SimpleNamespace) -> None:
        assert self.driver is not None
        self.driver.done(r, self.clock.now)  # type: ignore[arg-type]


def sim_draws(s: Scenario) -> list[list[tuple[int, str, float, float]]]:
    """Each sim user's (agent, route, wait, elapsed at the wait) in order, as LocustDriver drew them.

    The wait is read off the delay the driver schedules its user's next task with: the answer comes
    at the clock's now, so that delay is the wait itself, exactly."""
    clock = _Clock()
    world = _World(s, clock)
    driver = LocustDriver(clock, world, s, SimpleNamespace(open=lambda now: True))  # type: ignore[arg-type]
    world.driver = driver
    users = {id(u): i for i, u in enumerate(driver.users)}
    t0 = [i / SPAWN for i in range(len(driver.users))]
    waits: list[list[tuple[float, float]]] = [[] for _ in driver.users]
    started_at = len(driver.users)  # the first `at` per user is its spawn, not a wait

    def on_at(delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        nonlocal started_at
        if getattr(fn, "__func__", None) is LocustDriver._task:
            if started_at:
                started_at -= 1
                return
            i = users[id(arg)]
            waits[i].append((delay, clock.now - t0[i]))

    clock.on_at = on_at
    driver.start()
    clock.run()
    out: list[list[tuple[int, str, float, float]]] = [[] for _ in driver.users]
    starts: list[list[tuple[int, str]]] = [[] for _ in driver.users]
    for user, agent, route in world.started:
        starts[users[id(user)]].append((agent, route))
    for i, (begun, waited) in enumerate(zip(starts, waits)):
        assert len(begun) == len(waited), "one wait per task until the user stops"
        out[i] = [(a, r, w, e) for (a, r), (w, e) in zip(begun, waited)]
    return out


# ---- the live side: a PayingAgent's objects, built as loadtest/locustfile.py builds them ----------


def live_draws(s: Scenario, index: int, elapsed: list[float]) -> list[tuple[int, str, float]]:
    """User `index`'s (agent, route, wait) for answers in at `elapsed`: PayingAgent.on_start, then
    pay_once and wait_time in turn, with the world stubbed as the sim's is (CAP payments per agent)."""
    users, agents = s.run.users, s.agents.count
    mine = agents_of_user(index, users, agents)
    pacer = Pacer.for_user(s, index, len(mine))
    routes = RouteChooser.for_routes(s, [v.name for v in s.services])
    turn = itertools.cycle(range(len(mine)))
    sent = dict.fromkeys(mine, 0)
    broke: set[int] = set()
    out = []
    for t in elapsed:
        wallet = next((w for w in (mine[next(turn)] for _ in mine) if w not in broke), None)
        if wallet is None:
            break
        route = routes.choose(request_rng(s.seed, wallet, sent[wallet]))
        if sent[wallet] >= CAP:  # can_afford fails: broke, no payment sent
            broke.add(wallet)
        else:
            sent[wallet] += 1
        out.append((wallet, route, pacer.wait(t)))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_live_and_sim_users_draw_the_same_sequence(kind: str) -> None:
    s = scenario(kind)
    sim = sim_draws(s)
    assert len(sim) == USERS
    for index, drawn in enumerate(sim):
        assert len(drawn) >= CAP * 2  # every agent of the user paid to its cap, then was refused once
        live = live_draws(s, index, [e for *_, e in drawn])
        assert live == [(a, r, w) for a, r, w, _ in drawn], f"user {index} ({kind}) drew differently"
    routes = {r for user in sim for _, r, _, _ in user}
    assert routes == {"weather", "news", "quote"}  # the mix is drawn, and "free" (weight 0) never
    if kind not in ("constant", "closed"):
        assert len({w for user in sim for _, _, w, _ in user if w > 0}) > 10  # waits are random draws


def test_the_comparison_sees_a_different_seed() -> None:
    """The live mirror with another seed does not match: the equality above is not vacuous."""
    s = scenario("poisson")
    drawn = sim_draws(s)[1]
    other = live_draws(scenario("poisson", seed=4243), 1, [e for *_, e in drawn])
    assert [w for *_, w in other] != [w for _, _, w, _ in drawn]
    assert [r for _, r, _ in other] != [r for _, r, _, _ in drawn]


def test_the_live_side_is_built_as_mirrored() -> None:
    source = (ROOT / "loadtest" / "locustfile.py").read_text()
    for call in ("agents_of_user(index, users, len(agents))",
                 "Pacer.for_user(SCENARIO, index, len(self.wallets))",
                 "self.pacer.wait(time.monotonic() - self.started)",
                 "RouteChooser.for_routes(SCENARIO, list(PRICES))",
                 "rng = request_rng(SCENARIO.seed, wallet.index, wallet.sent)\n        route = ROUTES.choose(rng)"):
        assert call in source, f"loadtest/locustfile.py no longer does {call!r}: update live_draws to match"
    paying = (ROOT / "loadtest" / "paying.py").read_text()
    assert "answer_worth_retrying(result)" in paying and "def _worth_retrying" not in paying


# ---- the retry rule --------------------------------------------------------------------------------


@dataclass
class _Result:
    """The fields of services.payer.client.PaymentResult the retry rule reads."""

    status: int
    error: str
    payment: object | None


#: (status, reason, a payment was sent, worth the same payment again)
OUTCOMES = [
    (200, "", True, False),
    (0, "", True, True),  # no answer (a timeout, a dropped connection)
    (0, "transport_error", True, True),
    (500, "", True, True),
    (503, "unexpected_settle_error", True, True),
    (402, "settlement_pending", True, True),
    (402, "transport_error", True, True),
    (402, "unexpected_settle_error", True, True),
    (402, "Facilitator unreachable while settling", True, True),  # words, not a reason code
    (402, "No matching payment requirements", True, False),  # a verdict on the terms
    (402, "invalid_exact_evm_payload_authorization_valid_before", True, False),
    (402, "unexpected_verify_error", True, False),
    (402, "transaction_failed", True, False),
    (402, "", True, False),
    (400, "settlement_pending", True, False),
    (0, "", False, False),  # nothing was signed: nothing to send again
    (500, "", False, False),
]


@pytest.mark.parametrize(("status", "reason", "paid", "expected"), OUTCOMES)
def test_the_retry_rule_on_a_table(status: int, reason: str, paid: bool, expected: bool) -> None:
    assert answer_worth_retrying(_Result(status, reason, object() if paid else None)) is expected
    if paid and reason in ERRORS:
        assert sim_worth_retrying(status, ERRORS.index(reason)) is expected


def test_sim_and_live_agree_on_every_sim_outcome() -> None:
    for status in (0, 200, 402, 404, 500, 502, 503):
        for code, reason in enumerate(ERRORS):
            live = answer_worth_retrying(_Result(status, reason, object()))
            assert sim_worth_retrying(status, code) is live, (status, reason)

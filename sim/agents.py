"""Who pays when: arrival streams for the whole population, without an object per idle agent.

Two drivers:
- `open` (default): agents act on their own clocks, the world as it is. N Poisson agents of
  rate r are one Poisson stream of rate N*r with a uniformly drawn agent (superposition),
  constant agents are one sorted cycle of phases, bursts are a Poisson stream of bursts,
  ramp is a Poisson stream with a time-changed clock. An agent whose payment is in flight
  may start another (it does not wait), except `closed` agents, which loop back to back.
  Memory is a few bytes per agent whatever N is.
- `locust`: what the live harness does, for validation: `run.users` users spawned at
  `run.spawn_rate`, each speaking for every agent congruent to it modulo the user count,
  one request at a time. Its waits and routes are drawn by the live users' own objects
  (x402bench/behaviour.py's Pacer, RouteChooser and seeds), so a sim user and a Locust user
  given the same seed draw the same sequence (tests/test_behaviour_shared.py).

What each arrival kind means (its rate, burst, ramp clock, period) is x402bench/behaviour.py's
`Kind`; the open driver only draws it for the whole population at once.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from sim.dists import _Blocked, choice, exponential, integers, stream, uniform
from sim.engine import Clock
from sim.world import Req, World
from x402bench.behaviour import Pacer, RouteChooser, agents_of_user, kind_of, request_rng, route_weights
from x402bench.scenario import Scenario


#: Simulated seconds of arrivals handed over at once while a saturated service can only refuse them.
BULK_S = 0.5


class Stopper:
    """When arrivals stop: the run's duration, its request cap, or nobody able to pay."""

    def __init__(self, world: World, duration: float, max_requests: int | None) -> None:
        self.world = world
        self.duration = duration
        self.max_requests = max_requests

    def open(self, now: float) -> bool:
        w = self.world
        if now >= self.duration or w.broke_count >= w.agents:
            return False
        return self.max_requests is None or w.started < self.max_requests


class OpenDriver:
    """Open arrivals of the whole population as one stream of events."""

    #: The kinds it has an event handler for (a new x402bench.behaviour.Kind needs one here too).
    STREAMS = frozenset({"poisson", "bursts", "ramp", "constant", "closed"})

    def __init__(self, clock: Clock, world: World, scenario: Scenario, stopper: Stopper) -> None:
        self.clock = clock
        self.world = world
        self.stop = stopper
        arrivals = scenario.agents.arrivals
        self.shape = kind_of(arrivals)  # what the kind means; the handlers below only draw it
        self.kind = arrivals.kind
        if self.kind not in self.STREAMS:
            raise ValueError(f"the open driver has no stream for arrival kind {self.kind!r}")
        self.n = world.agents
        self.rate = arrivals.rate_per_agent_s
        self.full = self.n * self.rate  # requests/s of the whole population at its full rate
        seed = scenario.seed
        self.route = _route_draw(world, seed)
        self.pick = integers(stream(seed, "arrivals.agent"), self.n)
        self.burst = self.shape.burst()
        if not (self.shape.closed or self.shape.periodic):
            self.gap = exponential(stream(seed, "arrivals.gap"), 1.0 / self.shape.event_rate(self.full))
        self._cycle = 0
        self._unit = 0.0  # ramp: arrivals on the unit-rate clock
        self.bulk = self.kind == "poisson" and isinstance(self.pick, _Blocked) and isinstance(self.gap, _Blocked)

    def start(self) -> None:
        if self.kind == "constant":
            rng = stream(self.world.scenario.seed, "arrivals.phase")
            period = self.shape.period(self.rate)
            phases = rng.random(self.n) * period
            self.order = np.argsort(phases, kind="stable").tolist()
            self.phases = np.sort(phases).tolist()
            self.period = period
            self.clock.at(self.phases[0], self._constant, 0)
        elif self.kind == "closed":
            starts = uniform(stream(self.world.scenario.seed, "arrivals.phase"))
            for agent in range(self.n):
                self.clock.at(starts(), self._closed, agent)
        elif self.kind == "ramp":
            self._unit = self.gap() * self.n * self.rate
            self.clock.at(self.shape.time_at(self._unit, self.full), self._ramp)
        else:
            self.clock.at(self.gap(), self._poisson if self.kind == "poisson" else self._bursts)

    def done(self, r: Req, t_end: float) -> None:
        if self.kind == "closed":
            self.clock.at(t_end - self.clock.now, self._closed, r.agent)

    def _try(self, agent: int) -> None:
        if not self.world.broke[agent]:
            self.world.start(agent, self.route())

    def _poisson(self, _: object) -> None:
        now = self.clock.now
        if not self.stop.open(now):
            return
        if self.bulk and self.world.refusal_horizon() > now and self._bulk(now):
            return
        self._try(self.pick())
        self.clock.at(self.gap(), self._poisson)

    def _bulk(self, now: float) -> bool:
        """This arrival and those of the next BULK_S, handed to World.bulk_refuse as arrays while the
        service can only refuse them; the first arrival it leaves is the next event, with its agent and
        route as drawn. True when it handled this arrival (always, once it is called with arrays).
        (The gaps, agents and routes come from the same streams as one at a time, drawn in blocks.)"""
        stop = self.stop
        end = min(now + BULK_S, stop.duration)
        if stop.max_requests is not None:
            room = stop.max_requests - self.world.started
            if room <= 0:
                return True
        else:
            room = None
        mean = self.n * self.rate * (end - now)
        count = int(mean + 6 * math.sqrt(mean) + 16)
        gaps = np.asarray(self.gap.fill(self.gap.rng, count), dtype=np.float64)  # type: ignore[attr-defined]
        times = now + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
        inside = int(np.searchsorted(times, end, side="left"))
        if room is not None:
            inside = min(inside, room)
        t = times[:inside]
        agents = np.asarray(self.pick.fill(self.pick.rng, inside), dtype=np.int64)  # type: ignore[attr-defined]
        routes = self._routes(inside)
        cut, agent, route = self.world.bulk_refuse(t, agents, routes)
        if agent >= 0:  # the arrival at `cut` keeps its agent and route: it starts the ordinary way
            if cut <= now:
                if not self.world.broke[agent]:
                    self.world.start(agent, route)
                self.clock.at(self.gap(), self._poisson)
            else:
                self.clock.at(cut - now, self._pending, (agent, route))
        elif cut != float("inf"):
            self.clock.at(cut - now, self._poisson)
        elif inside < times.size:
            self.clock.at(float(times[inside]) - now, self._poisson)
        else:
            self.clock.at(float(times[-1] + gaps[-1]) - now, self._poisson)
        return True

    def _pending(self, arrival: tuple[int, int]) -> None:
        """An arrival a bulk batch left (its agent near its cap, or past the refusal horizon): started
        as drawn, so leaving it to the ordinary path does not re-draw who arrives."""
        if not self.stop.open(self.clock.now):
            return
        agent, route = arrival
        if not self.world.broke[agent]:
            self.world.start(agent, route)
        self.clock.at(self.gap(), self._poisson)

    def _routes(self, n: int) -> np.ndarray:
        draw = self.route
        if isinstance(draw, _Blocked):
            return np.asarray(draw.fill(draw.rng, n), dtype=np.int64)
        return np.full(n, draw(), dtype=np.int64)

    def _bursts(self, _: object) -> None:
        if not self.stop.open(self.clock.now):
            return
        agent = self.pick()
        for _ in range(self.burst):
            if self.world.broke[agent] or not self.stop.open(self.clock.now):
                break
            self.world.start(agent, self.route())
        self.clock.at(self.gap(), self._bursts)

    def _ramp(self, _: object) -> None:
        if not self.stop.open(self.clock.now):
            return
        self._try(self.pick())
        self._unit += self.gap() * self.n * self.rate
        self.clock.at(self.shape.time_at(self._unit, self.full) - self.clock.now, self._ramp)

    def _constant(self, i: int) -> None:
        if not self.stop.open(self.clock.now):
            return
        self._try(self.order[i])
        i += 1
        if i == self.n:
            i = 0
            self._cycle += 1
        self.clock.at(self.phases[i] + self._cycle * self.period - self.clock.now, self._constant, i)

    def _closed(self, agent: int) -> None:
        if self.stop.open(self.clock.now) and not self.world.broke[agent]:
            if not self.world.start(agent, self.route()):
                return


class _User:
    __slots__ = ("agents", "turn", "t0", "pacer")

    def __init__(self, agents: range, t0: float, pacer: Pacer) -> None:
        self.agents = agents
        self.turn = 0
        self.t0 = t0
        self.pacer = pacer


class LocustDriver:
    """Locust's users: closed loops, one request at a time, as the live load mode runs them.

    Each user is built as loadtest/locustfile.py builds its PayingAgent: the same agents, the same
    Pacer seeded by the user's index, and each payment's route drawn from that agent's payment
    count (request_rng), so the draws do not depend on the order answers come back in."""

    def __init__(self, clock: Clock, world: World, scenario: Scenario, stopper: Stopper) -> None:
        self.clock = clock
        self.world = world
        self.stop = stopper
        self.seed = scenario.seed
        self.routes = RouteChooser.for_routes(scenario, world.routes)
        self.route_index = {name: i for i, name in enumerate(world.routes)}
        n = world.agents
        self.sent = [0] * n  # payments each agent has started: the key of its next route draw
        spawn = scenario.run.spawn_rate
        mine = [agents_of_user(u, scenario.run.users, n) for u in range(min(scenario.run.users, n))]
        self.users = [_User(m, u / spawn, Pacer.for_user(scenario, u, len(m))) for u, m in enumerate(mine)]

    def start(self) -> None:
        for user in self.users:
            self.clock.at(user.t0, self._task, user)

    def done(self, r: Req, t_end: float) -> None:
        user: _User = r.user
        self.clock.at(t_end - self.clock.now + user.pacer.wait(t_end - user.t0), self._task, user)

    def _task(self, user: _User) -> None:
        now = self.clock.now
        if not self.stop.open(now):
            return
        agents = user.agents
        for _ in range(len(agents)):
            agent = agents[user.turn % len(agents)]
            user.turn += 1
            if not self.world.broke[agent]:
                break
        else:
            return  # every agent of this user is out of money: the user stops
        route = self.route_index[self.routes.choose(request_rng(self.seed, agent, self.sent[agent]))]
        if self.world.start(agent, route, user):
            self.sent[agent] += 1
        else:  # it cannot afford it: broke, and its user waits as after an answer
            self.clock.at(user.pacer.wait(now - user.t0), self._task, user)


def _route_draw(world: World, seed: int) -> Callable[[], int]:
    """The open driver's routes, one numpy stream for the population, weighted by the shared mix."""
    return choice(stream(seed, "arrivals.route"), route_weights(world.scenario, world.routes))


DRIVERS = {"open": OpenDriver, "locust": LocustDriver}

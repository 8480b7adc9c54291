"""What an agent does and when: arrival processes and route choice, seeded per agent.

Pure logic on purpose: the same functions pace Locust users live, and the rerun of a
scenario with the same seed replays the same request stream.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field

from x402bench.scenario import Arrivals, Scenario


def agent_rng(seed: int, agent: int) -> random.Random:
    """Each agent's own stream, independent of how agents are spread over users and workers."""
    return random.Random(seed * 1_000_003 + agent)


@dataclass
class RouteChooser:
    names: list[str]
    cumulative: list[float]

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> "RouteChooser":
        weights = scenario.mix_weights()
        names = [n for n, w in weights.items() if w > 0]
        return cls(names, list(itertools.accumulate(weights[n] for n in names)))

    @classmethod
    def for_routes(cls, scenario: Scenario, routes: list[str]) -> "RouteChooser":
        """The scenario's mix over the routes a world really offers; uniform when none of them is named there
        (outside services take their names from their URLs)."""
        weights = scenario.mix_weights()
        known = {r: weights[r] for r in routes if weights.get(r, 0) > 0}
        chosen = known or {r: 1.0 for r in routes}
        names = list(chosen)
        return cls(names, list(itertools.accumulate(chosen[n] for n in names)))

    def choose(self, rng: random.Random) -> str:
        index = bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])
        return self.names[min(index, len(self.names) - 1)]


@dataclass
class Pacer:
    """Waits between one user's requests, for a user that speaks for `agents` agents.

    A user driving k Poisson agents of rate r is one Poisson stream of rate k*r (the
    superposition of Poisson processes is Poisson), so one user per several agents
    keeps the offered load right without a greenlet per idle agent.
    """

    arrivals: Arrivals
    agents: int
    rng: random.Random
    _in_burst: int = field(default=0)

    @property
    def rate(self) -> float:
        return self.arrivals.rate_per_agent_s * self.agents

    def wait(self, elapsed_s: float) -> float:
        a = self.arrivals
        if a.kind == "closed":
            return 0.0
        if a.kind == "constant":
            return 1.0 / self.rate
        if a.kind == "poisson":
            return self.rng.expovariate(self.rate)
        if a.kind == "ramp":
            fraction = min(1.0, max(elapsed_s, 1e-3) / a.ramp_s)
            return self.rng.expovariate(self.rate * fraction)
        # bursts: burst_size back to back, then a pause keeping the mean rate
        self._in_burst += 1
        if self._in_burst < a.burst_size:
            return 0.0
        self._in_burst = 0
        return self.rng.expovariate(self.rate / a.burst_size)

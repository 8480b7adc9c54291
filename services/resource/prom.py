"""The priced services' own figures: answers per route and status, and the Server-Timing phases as histograms.

One `ServiceStats` per process is fed at each answer's start, from the very timings the Server-Timing header
carries, and read by both `GET /_metrics` (JSON) and `GET /_metrics/prometheus` (a collector on the app's own
registry), so the two always agree. Per process: with several services processes on one address, each scrape
reaches whichever process the kernel picks (the `pid` label says which).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

PREFIX = "x402bench_service"
#: Phase buckets, seconds: a 2 ms handler to a settle that waits out a slow block.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
#: Server-Timing names and what each one times.
PHASES = {
    "verify": "the facilitator's /verify round trip",
    "handler": "the route's own work",
    "settle": "the facilitator's /settle round trip",
}


@dataclass
class Histogram:
    """Fixed buckets (non-cumulative counts, the last one above every bound) and the sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def json(self) -> dict[str, Any]:
        return {"count": self.count, "sum_s": self.total_s,
                "buckets": {**{repr(b): n for b, n in zip(BUCKETS, self.counts)}, "+Inf": self.counts[-1]}}

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip([*map(repr, BUCKETS), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out


class ServiceStats:
    """What this process answered on its priced routes. Updated on the event loop only."""

    def __init__(self, routes_by_path: dict[str, str]) -> None:
        self.routes_by_path = routes_by_path
        self.pid = os.getpid()
        self.responses: dict[tuple[str, int], int] = {}
        self.phases: dict[tuple[str, str], Histogram] = {}

    def route_of(self, path: str) -> str | None:
        return self.routes_by_path.get(path)

    def answered(self, route: str, status: int, timings: dict[str, float]) -> None:
        key = (route, status)
        self.responses[key] = self.responses.get(key, 0) + 1
        for phase, seconds in timings.items():
            if phase in PHASES:
                self.phases.setdefault((route, phase), Histogram()).add(seconds)

    def json(self) -> dict[str, Any]:
        routes: dict[str, Any] = {}
        for (route, status), n in sorted(self.responses.items()):
            routes.setdefault(route, {"responses": {}, "phases_s": {}})["responses"][str(status)] = n
        for (route, phase), h in sorted(self.phases.items()):
            routes.setdefault(route, {"responses": {}, "phases_s": {}})["phases_s"][phase] = h.json()
        return {"pid": self.pid, "routes": routes}


class ServiceCollector:
    def __init__(self, stats: ServiceStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        pid = str(self.stats.pid)
        responses = CounterMetricFamily(f"{PREFIX}_responses", "Answers on priced routes, per route and HTTP status "
                                        "(402: payment asked for, 200: paid and served)",
                                        labels=["route", "status", "pid"])
        for (route, status), n in sorted(self.stats.responses.items()):
            responses.add_metric([route, str(status), pid], n)
        yield responses
        for phase, what in PHASES.items():
            family = HistogramMetricFamily(f"{PREFIX}_{phase}_seconds", f"Per paid request: {what} (Server-Timing "
                                           f"{phase})", labels=["route", "pid"])
            for (route, p), h in sorted(self.stats.phases.items()):
                if p == phase:
                    family.add_metric([route, pid], h.cumulative(), sum_value=h.total_s)
            yield family


def service_registry(stats: ServiceStats) -> CollectorRegistry:
    """The app's own registry, never the process-global one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(stats))
    return registry

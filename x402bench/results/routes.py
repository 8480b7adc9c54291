"""The per-route breakdown (summary.json `routes`, the report's Routes table): the run's figures
split by the scenario's service, so a slow or failing route is not averaged away by a busy cheap one.

The same rules as the run's metrics (x402bench.results.metrics): counts cover the whole run,
throughput and latency the paid requests answered in the steady window. They come from the request
records; a run that did not keep every record (a long sim, meta.records) counts the failed requests
it dropped without their route, so per-route errors are then those of the kept records (`complete`).
"""

from __future__ import annotations

from typing import Sequence, TypedDict

from x402bench.results.metrics import in_window
from x402bench.results.records import RequestRecord
from x402bench.results.stats import percentile


class RouteFigures(TypedDict):
    """One route of summary.json `routes` (keyed by the scenario's service name)."""

    requests: int                      # whole run
    paid: int                          # whole run
    errors: int                        # failed requests, whole run
    steady_paid: int                   # paid answers in the steady window
    throughput_rps: float | None       # steady_paid / window length
    error_rate: float | None           # failed share of the requests answered in the window
    request_p50_s: float | None        # latency of the paid answers in the window
    request_p95_s: float | None
    complete: bool                     # every request of the run is in the records (else errors are a floor)


def route_table(requests: Sequence[RequestRecord], window: tuple[float, float], names: Sequence[str] = (),
                complete: bool = True) -> dict[str, RouteFigures]:
    """Per route, in the scenario's order (`names`), then any other route the records name."""
    start, end = window
    length = end - start
    order = list(dict.fromkeys([*names, *sorted({r.route for r in requests})]))
    out: dict[str, RouteFigures] = {}
    for name in order:
        mine = [r for r in requests if r.route == name]
        answered = [r for r in mine if in_window(r.t_end, start, end)]
        steady = [r.latency_s for r in answered if r.paid]
        failed_in_window = sum(1 for r in answered if not r.paid)
        out[name] = {
            "requests": len(mine),
            "paid": sum(1 for r in mine if r.paid),
            "errors": sum(1 for r in mine if not r.paid),
            "steady_paid": len(steady),
            "throughput_rps": len(steady) / length if length > 0 else None,
            "error_rate": failed_in_window / len(answered) if answered else None,
            "request_p50_s": percentile(steady, 50),
            "request_p95_s": percentile(steady, 95),
            "complete": complete,
        }
    return out

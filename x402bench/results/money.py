"""Where money went astray, named the same way for live and simulated runs, and per fault window.

Every payment is keyed by its authorization (payer, nonce) and falls in at most one category:

- `served_unpaid`: a 200 was served for it and no transfer landed: the seller's loss;
- `paid_unserved`: its transfer landed and no attempt got a 200: the payer's loss;
- `double_settled`: its authorization was used, or its ledger row settled, more than once;
- `pending`: accepted by the facilitator and still open when the run ended (neither yet).

Live runs build the three inputs from client records, the facilitator's ledger and the chain's
logs (loadtest/reconcile.py); the sim from its own ground truth (sim/run.py). Each event carries
the run time at which it happened, so a fault's window can say what it caused: a
`served_unpaid` at its 200, a `paid_unserved` at its settlement (when the payer lost the money),
a `double_settled` at its second settlement, a `pending` at acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from x402bench.results.records import RequestRecord

#: The three counts our own strategies must keep at zero, in the order every report shows them.
LOSS_KEYS = ("served_unpaid", "paid_unserved", "double_settled")
CATEGORIES = (*LOSS_KEYS, "pending")


@dataclass(frozen=True, slots=True)
class MoneyEvent:
    category: str  # one of CATEGORIES
    t: float  # run seconds
    key: Hashable  # the payment's identity, e.g. (payer, nonce)


def classify(served: Mapping[Hashable, float], sent: Mapping[Hashable, float],
             settlements: Mapping[Hashable, Sequence[float]], pending: Mapping[Hashable, float]) -> list[MoneyEvent]:
    """The events of one run.

    served: key -> time of its (first) 200; sent: key -> time it was sent (kept for callers' symmetry and
    for payments no settlement time is known of); settlements: key ->
    times of every settlement of it (chain uses and settled ledger rows, deduplicated by the caller);
    pending: key -> acceptance time of payments still open at the end.
    """
    events = []
    for key, t in served.items():
        if not settlements.get(key) and key not in pending:
            events.append(MoneyEvent("served_unpaid", t, key))
    for key, times in settlements.items():
        if not times:
            continue
        if key not in served:
            events.append(MoneyEvent("paid_unserved", min(times), key))
        if len(times) > 1:
            events.append(MoneyEvent("double_settled", sorted(times)[1], key))
    for key, t in pending.items():
        events.append(MoneyEvent("pending", t, key))
    events.sort(key=lambda e: (e.t, e.category))
    return events


def counts(events: Sequence[MoneyEvent]) -> dict[str, int]:
    return {c: sum(1 for e in events if e.category == c) for c in CATEGORIES}


def _paid_rps(requests: Sequence[RequestRecord], start: float, end: float) -> float | None:
    if not math.isfinite(end) or end <= start:
        return None
    return sum(1 for r in requests if r.status == 200 and start <= r.t_end < end) / (end - start)


def fault_table(faults: Sequence[Any], events: Sequence[MoneyEvent], requests: Sequence[RequestRecord],
                end_s: float) -> list[dict[str, Any]]:
    """One row per fault of the scenario: its window, what each category counted during it and after
    it (up to the next fault's start, so causes are not mixed), and paid throughput before, during and
    after, with the dip as the fraction of the before-rate lost during the window."""
    starts = sorted(f.at_s for f in faults)
    rows = []
    for fault in faults:
        start, end = fault.window
        end = min(end, end_s)
        later = [s for s in starts if s > start and s >= end]
        after_end = min(later[0] if later else end_s, end_s)
        earlier = [s for s in starts if s < start]
        before_start = max([0.0, *[f.window[1] for f in faults if f.window[1] <= start]]) if earlier else 0.0
        during = [e for e in events if start <= e.t < end]
        after = [e for e in events if end <= e.t < after_end]
        before_rps = _paid_rps(requests, before_start, start)
        during_rps = _paid_rps(requests, start, end)
        dip = None if not before_rps or during_rps is None else max(0.0, 1.0 - during_rps / before_rps)
        rows.append({
            "kind": fault.kind, "at_s": start, "end_s": end,
            "params": fault.model_dump(exclude={"kind", "at_s"}),
            "during": {**counts(during), "paid_rps": during_rps},
            "after": {**counts(after), "paid_rps": _paid_rps(requests, end, after_end), "until_s": after_end},
            "paid_rps_before": before_rps,
            "throughput_dip": dip,
        })
    return rows

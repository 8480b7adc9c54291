"""How busy the facilitator's event loop is, and how long its signer locks are held: measured, not guessed.

A saturated world's latencies are mostly waiting, and where the wait sits decides what a model must hold.
Two figures tell it apart from outside:
- `loop_lag_s`: a probe task asks to wake every PERIOD_S and records how late it woke. A coroutine whose
  RPC answer has arrived waits about that long before it runs again: the ready queue of a busy loop.
- `lanes`: per send, how long it waited for its key's nonce lock (`wait_s`), how long it held it (`hold_s`:
  signing, the eth_sendRawTransaction round trip including the node's own processing, and the loop's delay
  in resuming the sender), the round trip alone (`rpc_s`), and for a send that was queued when the lock was
  released, how long the lock then stayed free before it ran (`handoff_s`: the loop's delay in waking it).
  With one key, a lock held h seconds and handed over in d caps the facilitator at 1/(h + d) txs per second,
  whatever its CPU.
Both cost a few microseconds per sample, so they are always on (`/metrics`, section `timing`). Both read
time.perf_counter(): uvloop's loop.time() is cached once per loop iteration at millisecond resolution, which
would round every figure here to whole milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

from hdrh.histogram import HdrHistogram

from services.background import stop_tasks

#: How often the probe asks to wake. Short enough to sample a 60 s run thousands of times, long enough
#: that the probe's own CPU (one wake-up) is noise next to a payment's.
PERIOD_S = 0.01


class Percentiles(TypedDict):
    count: int
    mean: float
    p50: float
    p95: float
    p99: float


class TimingMetrics(TypedDict):
    """`/metrics` `timing`: `loop_lag_s` (how late the loop ran a due wake-up), and per send over every key
    `lane_wait_s` (waiting for the nonce lock), `lane_hold_s` (holding it), `lane_rpc_s` (the send's
    round trip) and `lane_handoff_s` (free between a release and a queued sender's start). Seconds; a section
    with no samples has count 0 and zeros."""

    loop_lag_s: Percentiles
    lane_wait_s: Percentiles
    lane_hold_s: Percentiles
    lane_rpc_s: Percentiles
    lane_handoff_s: Percentiles


@dataclass
class Timer:
    """One distribution in fixed memory (HdrHistogram, microseconds, 3 significant figures)."""

    _h: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 600_000_000, 3))
    _sum: float = 0.0

    def add(self, seconds: float) -> None:
        self._sum += seconds
        self._h.record_value(max(1, min(600_000_000, int(seconds * 1e6))))

    def summary(self) -> Percentiles:
        n = self._h.get_total_count()
        if not n:
            return Percentiles(count=0, mean=0.0, p50=0.0, p95=0.0, p99=0.0)
        q = self._h.get_value_at_percentile
        return Percentiles(count=n, mean=self._sum / n, p50=q(50) / 1e6, p95=q(95) / 1e6, p99=q(99) / 1e6)


@dataclass
class LaneTimers:
    """Shared by every signer lane of one facilitator: the figures are per send, whichever key sent it."""

    wait: Timer = field(default_factory=Timer)
    hold: Timer = field(default_factory=Timer)
    rpc: Timer = field(default_factory=Timer)
    handoff: Timer = field(default_factory=Timer)


class LoopLag:
    """A task that wakes every PERIOD_S and records how late each wake-up ran."""

    def __init__(self) -> None:
        self.lag = Timer()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:  # perf_counter, not loop.time(): uvloop's clock is cached per iteration, in milliseconds
            due = time.perf_counter() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            self.lag.add(max(0.0, time.perf_counter() - due))


def timing_metrics(lag: LoopLag, lanes: LaneTimers) -> dict[str, Any]:
    out = TimingMetrics(loop_lag_s=lag.lag.summary(), lane_wait_s=lanes.wait.summary(),
                        lane_hold_s=lanes.hold.summary(), lane_rpc_s=lanes.rpc.summary(),
                        lane_handoff_s=lanes.handoff.summary())
    return dict(out)

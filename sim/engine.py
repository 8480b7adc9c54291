"""The event machinery under the model: SimPy's clock and heap, plus cheap resources.

SimPy processes (generators) and `simpy.Resource` cost three or four events per use;
at tens of thousands of payments per second that is most of the budget. The model
instead schedules plain callbacks on SimPy's own event heap (`Clock.at`) and uses:

- `Station`: FIFO servers whose service time is known when a job arrives. Lindley's
  recursion gives each job its start time at arrival, so queueing costs no event at
  all; only the arrival itself has to happen at its true time, in time order.
- `Pool`: a semaphore for holds of unknown length (a thread waiting for its block),
  with a FIFO queue of continuations run when a holder releases.
- `SharedCpu`: a processor shared by its jobs (a Python process's threads under the GIL,
  which switch every few milliseconds and at every socket wait): n jobs in progress each
  run at 1/n speed, so a 2 ms receipt poll is not stuck behind a queue of 15 ms verifies as
  it would be in a FIFO. Completion times depend on later arrivals, so this one needs events.
- `Machine`: the host's cores, when the stations' processes share one host (a live run):
  CPU jobs draw on a timeline of core capacity, so processes that each have a free server
  still slow one another down once together they want more cores than the host has.
"""

from __future__ import annotations

import heapq
from collections import deque
from heapq import heappush
from typing import Any, Callable

import simpy
from simpy.core import NORMAL


Callback = Callable[[Any], None]


class Clock:
    """SimPy's environment with a fast "call fn(arg) after delay" and an event counter.

    A call is a plain tuple on SimPy's own event heap, next to any SimPy event (`env`), and `run` pops the
    heap itself: a call runs at once, a SimPy event goes through SimPy's own step. Each Event object and
    step() per call (its callbacks list and failure checks) cost ~25% of a sim's time; the model's stages
    are all calls. Calls and events due at the same time run in the order they were scheduled."""

    __slots__ = ("env", "events", "_queue", "_eid")

    def __init__(self) -> None:
        self.env = simpy.Environment()
        self.events = 0
        self._queue = self.env._queue
        self._eid = self.env._eid

    @property
    def now(self) -> float:
        return self.env._now

    def at(self, delay: float, fn: Callback, arg: Any = None) -> None:
        """Run fn(arg) `delay` seconds from now (delay >= 0)."""
        heappush(self._queue, (self.env._now + delay, NORMAL, next(self._eid), fn, arg))
        self.events += 1

    def run(self, until: float) -> None:
        """Everything due before `until` (as SimPy's run(until): what is due at `until` itself is left for
        the next run), then the clock at `until`."""
        env = self.env
        if until <= env._now:
            return
        queue, pop = self._queue, heapq.heappop
        try:
            while queue and queue[0][0] < until:
                if len(queue[0]) == 5:
                    t, _, _, fn, arg = pop(queue)
                    env._now = t
                    fn(arg)
                else:  # a SimPy event: its own step
                    env.step()
        finally:
            if not queue or queue[0][0] >= until:
                env._now = until


class Station:
    """`servers` FIFO servers; `enter(t, s)` returns when a job arriving at t starts service.

    Jobs must enter in order of their arrival time t (call it from an event at time t).
    """

    __slots__ = ("servers", "_free", "_next", "busy_s", "jobs", "wait_s", "machine")

    def __init__(self, servers: int, machine: "Machine | None" = None) -> None:
        if servers < 1:
            raise ValueError("a station needs at least one server")
        self.servers = servers
        self.machine = machine
        self._free = [0.0] * servers  # heap of the times each server becomes free (servers > 1)
        self._next = 0.0  # the single server's free time (servers == 1)
        self.busy_s = 0.0
        self.jobs = 0
        self.wait_s = 0.0

    def enter(self, t: float, service: float) -> float:
        """When a job arriving at t starts; it ends `service` later, or later still on a saturated machine."""
        self.busy_s += service
        self.jobs += 1
        machine = self.machine
        if self.servers == 1:
            start = self._next if self._next > t else t
            end = machine.run(start, service) if machine is not None else start + service
            self._next = end
        else:
            free = self._free[0]
            start = free if free > t else t
            end = machine.run(start, service) if machine is not None else start + service
            heapq.heapreplace(self._free, end)
        self.wait_s += start - t
        if machine is not None:
            start = end - service  # callers add `service` to get the end: hand back the stretch as a late start
        return start

    def enter_within(self, t: float, service: float, longest_wait: float) -> float:
        """Like `enter`, but a job that would wait longer than `longest_wait` runs after that wait, ahead of the
        queue, which it delays by its service; returns when it ends (not when it starts)."""
        ahead = (self._next if self.servers == 1 else self._free[0]) - t
        if ahead <= longest_wait:
            return self.enter(t, service) + service
        self.busy_s += service
        self.jobs += 1
        if self.servers == 1:
            self._next += service
        else:
            heapq.heapreplace(self._free, self._free[0] + service)
        start = t + longest_wait
        return self.machine.run(start, service) if self.machine is not None else start + service

    def free_at(self, t: float) -> float:
        """Single server: when a job arriving at t would start (to size a job by its start time)."""
        return self._next if self._next > t else t

    def reset(self, t: float) -> None:
        """The process behind it died and came back at t: the work it had queued is gone, every server is free."""
        self._next = t
        self._free = [t] * self.servers

    def hold_until(self, t: float) -> None:
        """Single server: keep it busy until t (a lock held past its own work, e.g. automine)."""
        if t > self._next:
            self.busy_s += t - self._next
            self._next = t


class SharedCpu:
    """Processor sharing on `cores` cores: `run(work, fn, arg)` calls fn(arg) when the job's CPU is done.

    Virtual time `v` counts the CPU-seconds every job in progress has received so far; it
    advances at min(1, cores/n) per second with n jobs in progress (a job is one thread: one
    core at most), and a job submitted at virtual time v0 is done when v reaches v0 + work.
    Only the next completion is ever scheduled.
    """

    __slots__ = ("clock", "servers", "busy_s", "jobs", "wait_s", "_v", "_t", "_heap", "_seq", "_gen")

    def __init__(self, clock: Clock, cores: int = 1) -> None:
        if cores < 1:
            raise ValueError("a shared CPU needs at least one core")
        self.clock = clock
        self.servers = cores
        self.busy_s = 0.0
        self.jobs = 0
        self.wait_s = 0.0  # time in the processor beyond the job's own CPU time
        self._v = 0.0
        self._t = 0.0
        self._heap: list[tuple[float, int, float, float, Callback, Any]] = []
        self._seq = 0
        self._gen = 0

    def _rate(self) -> float:
        n = len(self._heap)
        return 1.0 if n <= self.servers else self.servers / n

    def _advance(self) -> None:
        now = self.clock.now
        if self._heap:
            self._v += (now - self._t) * self._rate()
        self._t = now

    def run(self, work: float, fn: Callback, arg: Any) -> None:
        self._advance()
        self.busy_s += work
        self.jobs += 1
        self._seq += 1
        heappush(self._heap, (self._v + work, self._seq, self.clock.now, work, fn, arg))
        self._schedule()

    def _schedule(self) -> None:
        self._gen += 1
        if self._heap:
            delay = max(0.0, (self._heap[0][0] - self._v) / self._rate())
            self.clock.at(delay, self._complete, self._gen)

    def _complete(self, generation: int) -> None:
        if generation != self._gen:
            return  # an arrival since re-planned the next completion
        self._advance()
        heap, done = self._heap, []
        while heap and heap[0][0] <= self._v + 1e-12:
            done.append(heapq.heappop(heap))
        self._schedule()
        now = self.clock.now
        for _, _, submitted, work, fn, arg in done:
            self.wait_s += now - submitted - work
            fn(arg)


class Machine:
    """Core capacity over time, in slots of `slot_s`: each slot holds `cores * slot_s` CPU-seconds.

    A job running from `start` takes what it can of each slot in turn (never more than one core's
    worth: a job is one thread) until its CPU time is done; a slot the jobs already placed have
    filled stretches it into later ones. This is work-conserving (no core idles while a job waits
    for it) and needs no events; jobs are placed in the order their processes start them, which
    near saturation favours a little the ones placed first.
    """

    __slots__ = ("cores", "slot_s", "_used", "_base", "_idle")

    def __init__(self, cores: int, slot_s: float = 0.005, idle_cores: float = 0.0) -> None:
        """`idle_cores`: CPU the processes spend whatever the load (polling, mining empty blocks), taken from
        every slot before any job's."""
        if cores < 1:
            raise ValueError("a machine needs at least one core")
        self.cores = cores
        self.slot_s = slot_s
        self._used: list[float] = []  # CPU-seconds placed per slot, from slot `_base` on
        self._base = 0
        self._idle = min(float(idle_cores), float(cores)) * slot_s

    def busy_at(self, t: float) -> float:
        """The share of the cores already taken in the slot holding t (0..1)."""
        k = int(t / self.slot_s) - self._base
        if k < 0 or k >= len(self._used):
            return self._idle / (self.cores * self.slot_s)
        return min(1.0, self._used[k] / (self.cores * self.slot_s))

    def run(self, start: float, cpu: float) -> float:
        """Place `cpu` seconds of one thread's work from `start`; return when it is done."""
        if cpu <= 0:
            return start
        slot_s, capacity = self.slot_s, self.cores * self.slot_s
        used, base = self._used, self._base
        index = int(start / slot_s)
        if index < base:  # earlier than anything kept: treat as the oldest kept slot
            index = base
        t = start
        left = cpu
        while True:
            k = index - base
            while k >= len(used):
                used.append(self._idle)
            slot_end = (index + 1) * slot_s
            room = capacity - used[k]
            span = slot_end - t  # one thread cannot use more of this slot than remains of it
            if room > 1e-12 and span > 0:
                take = min(left, room, span)
                used[k] += take
                left -= take
                if left <= 1e-12:
                    # done: as far into the slot as the share it got implies
                    return t + take * span / min(room, span) if take < span else t + take
            index += 1
            t = slot_end


class Pool:
    """A counting semaphore with FIFO waiters: `acquire(fn, arg)` runs fn(arg) once a slot is free."""

    __slots__ = ("size", "free", "waiting", "peak_waiting")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.waiting: deque[tuple[Callback, Any]] = deque()
        self.peak_waiting = 0

    def acquire(self, fn: Callback, arg: Any) -> None:
        if self.free:
            self.free -= 1
            fn(arg)
        else:
            self.waiting.append((fn, arg))
            if len(self.waiting) > self.peak_waiting:
                self.peak_waiting = len(self.waiting)

    def release(self) -> None:
        if self.waiting:
            fn, arg = self.waiting.popleft()
            fn(arg)
        else:
            self.free += 1

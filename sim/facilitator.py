"""The facilitator: verify and settle service times, per strategy, on one process's resources.

Resources: one CPU (`Calibration.facilitator_cores` servers; a Python process and its
GIL is one), an optional handler pool (the SDK facilitator's 40 threads, each /settle
holding its thread until the receipt), and one lane per signer key whose nonce lock is
held while a tx is signed and sent (so a key pushes at most 1/submit_s txs per second).

Flows (times are what the strategy's `StrategyTiming` says):
  /verify: [thread] -> CPU verify_cpu -> RPC verify_io -> answer
  /settle: accept -> [thread] -> CPU settle_cpu -> RPC settle_io ->
      sdk/sync/pipelined: the least busy lane signs and sends one tx
      batched: into the batch, sent as one tx when max_size is reached or max_age_s passed
  and answers after the receipt ("included", x402's default flow), after the send
  ("submitted"), or at once ("accepted"). Receipts are seen by one watcher polling every
  receipt_poll_s ("watcher") or by each /settle polling from its own send ("poll", web3).
  When polls cost CPU (poll_cpu_s), each is a job on the facilitator's CPU, so a busy
  process sees its receipts late and its waiting threads slow everything else down, as
  web3's wait_for_transaction_receipt does live: poll, and if nothing yet, sleep receipt_poll_s.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from sim.calibration import Calibration
from sim.chain import Chain, Tx
from sim.dists import sampler, stream
from sim.engine import Clock, Pool, SharedCpu, Station
from sim.store import SETTLED
from x402bench.scenario import Scenario

if TYPE_CHECKING:
    from sim.world import Req, World

#: The SDK facilitator refuses an authorization whose validBefore is less than this far away.
VALID_BEFORE_BUFFER_S = 6.0
ERR_VALID_BEFORE = 1


class Facilitator:
    def __init__(self, clock: Clock, scenario: Scenario, cal: Calibration, world: "World") -> None:
        self.clock = clock
        self.world = world
        strategy = scenario.facilitator.strategy
        self.strategy = strategy
        timing = cal.strategy(strategy)
        seed = scenario.seed
        self.threads = Pool(timing.threads) if timing.threads else None
        # A thread pool under the GIL shares its core (processor sharing); an event loop runs its
        # steps one after another (a FIFO server). Only the latter takes part in a shared host's
        # core timeline (machine_cores): processor sharing would need it at every event.
        self.shared = SharedCpu(clock, cal.facilitator_cores) if timing.threads else None
        self.cpu = self.shared or Station(cal.facilitator_cores, world.machine)
        self.node_cpu = cal.chain.node_cpu_s if world.machine is not None else 0.0
        self.node = Station(1, world.machine) if self.node_cpu else None  # the node's work on a shared host
        self.verify_cpu = sampler(timing.verify_cpu_s, stream(seed, "fac.verify_cpu"))
        self.verify_io = sampler(timing.verify_io_s, stream(seed, "fac.verify_io"))
        self.settle_cpu = sampler(timing.settle_cpu_s, stream(seed, "fac.settle_cpu"))
        self.settle_io = sampler(timing.settle_io_s, stream(seed, "fac.settle_io"))
        self.submit = sampler(timing.submit_s, stream(seed, "fac.submit"))
        self.hop = sampler(cal.network.hop_s, stream(seed, "net.hop"))
        self.answer_after = timing.answer_after
        self.poll_each = timing.receipt == "poll"
        self.poll_cpu = sampler(timing.poll_cpu_s, stream(seed, "fac.poll_cpu"))
        self.polls_cost_cpu = self.poll_each and not timing.poll_cpu_s.is_zero
        self.polls = 0
        self.poll_s = timing.receipt_poll_s or scenario.facilitator.receipt_poll_s
        phase_rng = stream(seed, "fac.phase")
        self.watch_phase = float(phase_rng.random()) * self.poll_s
        self.receipt_delay = cal.chain.receipt_delay_s
        self.receipt_at_block = cal.t_included == "block"
        keys = scenario.facilitator.signer_keys
        self.lanes = [Station(1) for _ in range(keys)]
        self.in_flight = [0] * keys
        self._turn = itertools.cycle(range(keys))
        gas = cal.gas
        self.gas = gas
        self.new_payee = [not gas.payees_prefunded] * len(scenario.services)
        self.batched = strategy == "batched"
        # Stages that cost nothing are skipped; a stage that can queue must be entered in time order (an event).
        self.cpu_busy = not (timing.verify_cpu_s.is_zero and timing.settle_cpu_s.is_zero) or self.node is not None
        self.submit_busy = not timing.submit_s.is_zero
        self.verify_queues = self.cpu_busy or self.threads is not None
        self.settle_queues = self.cpu_busy or self.threads is not None
        batch = scenario.facilitator.batch
        self.batch_size = batch.max_size if (self.batched and batch) else 1
        self.batch_age = batch.max_age_s if (self.batched and batch) else 0.0
        self._batch: list[Req] = []
        self._batch_gen = 0
        phase = cal.chain.block_phase_s
        if phase is None and scenario.chain.block_time_s:
            phase = float(phase_rng.random()) * scenario.chain.block_time_s
        self.chain = Chain(clock, scenario, cal, phase or 0.0, self._included)
        self.send_queues = self.submit_busy or (scenario.chain.mining == "auto" and self.chain.mines_in_order)
        if self.batched:
            worst = gas.batch_fixed + self.batch_size * (gas.batch_per_item + gas.batch_new_recipient_extra)
            if worst > scenario.chain.gas_limit:
                raise ValueError(f"a full batch of {self.batch_size} may need {worst} gas, over the block gas limit "
                                 f"{scenario.chain.gas_limit}: lower facilitator.batch.max_size")

    # ---- /verify -------------------------------------------------------------------------

    def verify(self, r: "Req", t: float) -> None:
        """A /verify request arrives at t (>= now); an event only if it meets a queue there."""
        if self.verify_queues:
            self.clock.at(t - self.clock.now, self._verify_arrives, r)
        else:
            self._verify_at(r, t)

    def _verify_arrives(self, r: "Req") -> None:
        if self.threads is None:
            self._verify_at(r, self.clock.now)
        else:
            self.threads.acquire(self._verify_now, r)

    def _verify_now(self, r: "Req") -> None:
        self._verify_at(r, self.clock.now)

    def _verify_at(self, r: "Req", t: float) -> None:
        if t + VALID_BEFORE_BUFFER_S > r.valid_before:
            self._release_thread_at(t)
            self.world.rejected(r, ERR_VALID_BEFORE, t + self.hop())
            return
        if self.shared is not None:  # in a thread (t is now): the rest once its CPU is done
            self.shared.run(self.verify_cpu(), self._verify_cpu_done, r)
            return
        if self.cpu_busy:
            cpu = self.verify_cpu()
            t = self.cpu.enter(t, cpu) + cpu
        done = t + self.verify_io()
        if self.threads is None:
            self.world.verified(r, done + self.hop())
        else:
            self.clock.at(done - self.clock.now, self._verify_release, r)

    def _verify_cpu_done(self, r: "Req") -> None:
        self.clock.at(self.verify_io(), self._verify_release, r)

    def _verify_release(self, r: "Req") -> None:
        self.threads.release()  # type: ignore[union-attr]
        self.world.verified(r, self.clock.now + self.hop())

    def _release_thread_at(self, t: float) -> None:
        if self.threads is not None:
            self.clock.at(t - self.clock.now, self._release, None)

    def _release(self, _: object) -> None:
        self.threads.release()  # type: ignore[union-attr]

    # ---- /settle -------------------------------------------------------------------------

    def settle(self, r: "Req", t: float) -> None:
        """A /settle request arrives at t (>= now): the payment is accepted for settlement."""
        if self.settle_queues:
            self.clock.at(t - self.clock.now, self._settle_arrives, r)
        else:
            self._accept(r, t)

    def _settle_arrives(self, r: "Req") -> None:
        self._accept(r, self.clock.now)

    def _accept(self, r: "Req", t: float) -> None:
        if t + VALID_BEFORE_BUFFER_S > r.valid_before:
            self.world.rejected(r, ERR_VALID_BEFORE, t + self.hop())
            return
        r.row = self.world.settlements.accept(r.seq, r.agent, r.route, r.amount, t)
        if self.node is not None:  # the node's share of this payment's work, on the host's cores
            self.node.enter(t, self.node_cpu)
        if self.threads is None:
            self._settle_at(r, t)
        else:
            self.threads.acquire(self._settle_now, r)

    def _settle_now(self, r: "Req") -> None:
        self._settle_at(r, self.clock.now)

    def _settle_at(self, r: "Req", t: float) -> None:
        if self.shared is not None:  # in a thread (t is now): the rest once its CPU is done
            self.shared.run(self.settle_cpu(), self._settle_cpu_done, r)
            return
        if self.cpu_busy:
            cpu = self.settle_cpu()
            t = self.cpu.enter(t, cpu) + cpu
        self._after_settle_cpu(r, t)

    def _settle_cpu_done(self, r: "Req") -> None:
        self._after_settle_cpu(r, self.clock.now)

    def _after_settle_cpu(self, r: "Req", t: float) -> None:
        ready = t + self.settle_io()
        if self.answer_after == "accepted":
            self._answer(r, ready)
        if self.batched:
            self.clock.at(ready - self.clock.now, self._batch_add, r)
        elif self.send_queues:
            self.clock.at(ready - self.clock.now, self._send_one_now, r)
        else:
            self._send_one(r, ready)

    def _send_one_now(self, r: "Req") -> None:
        self._send_one(r, self.clock.now)

    def _send_one(self, r: "Req", t: float) -> None:
        route = r.route
        if self.new_payee[route]:
            self.new_payee[route] = False
            gas = self.gas.transfer_new
        else:
            gas = self.gas.transfer_existing
        self._send([r], gas, t)

    def _batch_add(self, r: "Req") -> None:
        batch = self._batch
        batch.append(r)
        if len(batch) >= self.batch_size:
            self._flush()
        elif len(batch) == 1:
            self.clock.at(self.batch_age, self._batch_timer, self._batch_gen)

    def _batch_timer(self, generation: int) -> None:
        if generation == self._batch_gen and self._batch:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._batch_gen += 1
        g = self.gas
        gas = g.batch_fixed + len(batch) * g.batch_per_item
        for r in batch:
            if self.new_payee[r.route]:
                self.new_payee[r.route] = False
                gas += g.batch_new_recipient_extra
        self._send(batch, gas, self.clock.now)

    def _pick_lane(self) -> int:
        """The lane with the fewest txs in flight, ties in turn (as the live LanePool)."""
        start = next(self._turn)
        flights = self.in_flight
        n = len(flights)
        best = start
        for k in range(1, n):
            i = (start + k) % n
            if flights[i] < flights[best]:
                best = i
        return best

    def _send(self, requests: list["Req"], gas: int, t: float) -> None:
        """The chosen lane signs and sends one tx at t (after its queue)."""
        lane = self._pick_lane()
        self.in_flight[lane] += 1
        station = self.lanes[lane]
        if self.submit_busy:
            submit = self.submit()
            sent = station.enter(t, submit) + submit
        else:
            sent = t
        tx_id = self.world.txs.new(gas, len(requests))
        tx = Tx(tx_id, gas, lane, sent, requests)
        for r in requests:
            r.tx = tx_id
        returned = self.chain.send(tx)  # with automine the send returns once mined: the lock is held till then
        if returned > sent and self.submit_busy:
            station.hold_until(returned)
        if self.answer_after == "submitted":
            for r in requests:
                self._answer(r, returned)
        if self.chain.mining != "auto":
            cols = self.world.settlements
            for r in requests:
                cols.t_submitted[r.row] = returned
        if self.polls_cost_cpu:
            self.clock.at(returned - self.clock.now, self._poll, tx)

    def _poll(self, tx: Tx) -> None:
        """One receipt poll on the facilitator's CPU: found, or try again receipt_poll_s later."""
        self.polls += 1
        cpu = self.poll_cpu()
        if self.shared is not None:
            self.shared.run(cpu, self._poll_done, tx)
        else:
            now = self.clock.now
            self.clock.at(self.cpu.enter(now, cpu) + cpu - now, self._poll_done, tx)

    def _poll_done(self, tx: Tx) -> None:
        """The poll's answer: the receipt if its block is in by now, else another poll receipt_poll_s later."""
        now = self.clock.now
        if tx.ready <= now:
            self._settled(tx, now)
        else:
            self.clock.at(self.poll_s, self._poll, tx)

    def _included(self, tx: Tx, block_time: float, number: int) -> None:
        self.in_flight[tx.lane] -= 1
        self.world.txs.block[tx.id] = number
        tx.block_time = block_time
        ready = block_time + self.receipt_delay
        if self.polls_cost_cpu:
            tx.ready = ready  # its own poll chain finds it
            return
        if self.poll_each:
            start = tx.t_sent
            seen = start + math.ceil(max(0.0, ready - start) / self.poll_s - 1e-9) * self.poll_s
        else:
            phase = self.watch_phase
            seen = phase + math.ceil((ready - phase) / self.poll_s - 1e-9) * self.poll_s
        self._settled(tx, seen)

    def _settled(self, tx: Tx, seen: float) -> None:
        """The facilitator saw the receipt at `seen`: record the settlement, answer if it waits for it."""
        block_time = tx.block_time
        t_included = block_time if self.receipt_at_block else seen
        cols = self.world.settlements
        auto = self.chain.mining == "auto"
        for r in tx.requests:
            row = r.row
            if auto:
                cols.t_submitted[row] = block_time
            cols.t_included[row] = t_included
            cols.state[row] = SETTLED
            cols.tx[row] = tx.id
        if self.answer_after == "included":
            for r in tx.requests:
                self._answer(r, seen)

    def _answer(self, r: "Req", t: float) -> None:
        """/settle answers at t (>= now); the service hears it one hop later."""
        if self.threads is None:
            self.world.finish(r, t + self.hop())
        else:
            self.clock.at(t - self.clock.now, self._settle_release, r)

    def _settle_release(self, r: "Req") -> None:
        self.threads.release()  # type: ignore[union-attr]
        self.world.finish(r, self.clock.now + self.hop())

    def stats(self, elapsed: float) -> dict[str, float]:
        span = max(elapsed, 1e-9)
        out = {
            "cpu_utilization": self.cpu.busy_s / (span * self.cpu.servers),
            "cpu_mean_wait_s": self.cpu.wait_s / max(1, self.cpu.jobs),
            "lane_utilization_max": max(l.busy_s for l in self.lanes) / span,
            "txs": sum(l.jobs for l in self.lanes),
        }
        if self.polls_cost_cpu:
            out["receipt_polls"] = self.polls
        if self.threads is not None:
            out["threads"] = self.threads.size
            out["threads_peak_waiting"] = self.threads.peak_waiting
        return out

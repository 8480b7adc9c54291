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

Faults (sim/faults.py) take their own paths, chosen once at construction (`faulty`), so a run
without faults runs exactly the code above. With a facilitator_crash every stage of a payment
is an event at its true time and carries the process epoch it started in: a crash bumps the
epoch, answers every open claim's client with a dead connection, and keeps the claims (the
ledger is durable); the restart re-sends the unsent ones (OwnEngine._recover). A claim is in
`open` from acceptance until it settles, fails or is released. With agents.retry the ledger
also answers repeats (`claims`: every claim not released): a settled one with its original
tx, a failed one with its reason, an open one once it closes (its `waiters`).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

from sim.calibration import Calibration
from sim.chain import Chain, Tx
from sim.dists import sampler, stream
from sim.engine import Clock, Pool, SharedCpu, Station
from sim.faults import RECEIPT_TIMEOUT_S, RETRY_WAIT_S, FaultPlan, crash_in
from sim.interfaces import PaymentHost
from sim.payment import Req
from sim.store import (ERR_SETTLEMENT_PENDING, ERR_TRANSACTION_FAILED, ERR_UNEXPECTED_VERIFY, ERR_VALID_BEFORE, FAILED,
                       RELEASED, SETTLED)
from x402bench.registry import register
from x402bench.scenario import Scenario


#: The SDK facilitator refuses an authorization whose validBefore is less than this far away.
VALID_BEFORE_BUFFER_S = 6.0
#: Of our engines' CPU per /settle, the parts run while the signer key's lock is held: signing and writing the
#: eth_sendRawTransaction request, then reading its answer. Each is a step of its own on the event loop, so
#: each waits for the loop's ready queue, with the lock held (services/facilitator/signers.py SignerLane.send).
SEND_CPU_SHARE = 0.15
RESUME_CPU_SHARE = 0.05
#: ... and the part run when the receipt watcher sees the tx's block: every receipt of a block is handled in one
#: burst of the loop (futures resolved, ledger rows written), which a lock step arriving then waits behind.
RECEIPT_CPU_SHARE = 0.25
#: Of the node's CPU per payment, the part spent answering eth_sendRawTransaction (recovering the signer,
#: validating, pooling the tx): inside the send's round trip, so on a busy host the round trip stretches with it.
NODE_SEND_SHARE = 0.5


class Facilitator:
    def __init__(self, clock: Clock, scenario: Scenario, cal: Calibration, world: PaymentHost) -> None:
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
        plan = world.plan
        self.plan = plan
        self.chain = Chain(clock, scenario, cal, phase or 0.0, self._included, plan, node=self.node)
        # the node's CPU per payment besides mining it (Chain places that), split between its verify reads and the send
        mining = cal.chain.block_tx_s / self.batch_size if self.chain.node is not None else 0.0  # the history term
        # is Anvil's work that grows with the run, kept out of the measured mean per payment for simplicity
        self.node_cpu = max(0.0, self.node_cpu - mining)
        # the receipt watcher's loop (interval mining): ask for the head, fetch the new blocks' receipts, sleep
        # receipt_poll_s; its round of two RPCs makes its period drift across the block ticks, so each block waits
        # a fresh fraction of a period (a period that is a whole fraction of the block time would lock the phase)
        self.watch_drift = scenario.chain.mining == "interval" and not self.poll_each
        self.watch_round = 2.0 * max(timing.submit_s.mean, cal.network.hop_s.mean)
        self._watch_next = self.watch_phase  # the watcher's next poll
        self._watch_block = -1  # the last block it found, and when
        self._watch_seen = 0.0
        self.send_queues = self.submit_busy or (scenario.chain.mining == "auto" and self.chain.mines_in_order)
        # ---- faults: none of this is read on a run without faults or retries
        self.crashes = plan.facilitator_down if plan is not None and plan.facilitator_down else None
        self.rpc_faults = plan is not None and plan.touches_rpc
        self.retrying = world.retry is not None
        self.faulty = self.crashes is not None or self.rpc_faults or self.retrying
        self.up = True
        self.epoch = 0  # the process: a crash starts a new one
        self.open: dict[int, Req] = {}  # seq -> the request holding its claim, until it settles, fails or is released
        self.claims: dict[int, int] = {}  # seq -> settlement row of every claim not released (agents.retry only)
        self.unsent: list[Req] = []  # claims a crash left unsent, for the restart to resume
        self._restarts = 0  # restarts still to come
        if self.crashes is not None:  # every stage an event at its time, so a crash can stop it
            self.verify_queues = self.settle_queues = self.send_queues = True
            for start, end in self.crashes:
                clock.at(start, self._crash)
                if math.isfinite(end):
                    self._restarts += 1
                    clock.at(end, self._restart)
        if self.rpc_faults:  # a held send holds its key's lock: sends must reach the lanes in time order
            self.send_queues = True
        # ---- our engines' signer lock on their event loop (see _locked); the sdk's threads keep the lane as one
        # FIFO server holding submit_s
        self.loop_lock = timing.threads is None and isinstance(self.cpu, Station)
        if self.loop_lock:
            self.send_queues = True
            self.locks = [Pool(1) for _ in range(keys)]
            self.lock_busy = [0.0] * keys
            self.lock_jobs = [0] * keys
            settle_cpu = timing.settle_cpu_s.mean
            self.send_cpu = settle_cpu * SEND_CPU_SHARE
            self.resume_cpu = settle_cpu * RESUME_CPU_SHARE
            self.receipt_cpu = settle_cpu * RECEIPT_CPU_SHARE
            self.pre_lock_cpu = 1.0 - SEND_CPU_SHARE - RESUME_CPU_SHARE - RECEIPT_CPU_SHARE
            self.loop_round = cal.loop_round_s
            self.wakeup = cal.wakeup_s
        if self.batched:
            worst = gas.batch_fixed + self.batch_size * (gas.batch_per_item + gas.batch_new_recipient_extra)
            if worst > scenario.chain.gas_limit:
                raise ValueError(f"a full batch of {self.batch_size} may need {worst} gas, over the block gas limit "
                                 f"{scenario.chain.gas_limit}: lower facilitator.batch.max_size")

    # ---- /verify -------------------------------------------------------------------------

    def verify(self, r: "Req", t: float) -> None:
        """A /verify request arrives at t (>= now); an event only if it meets a queue there.

        One that will arrive too late for its validBefore is refused now, with the times it would get
        then, instead of waiting in the event heap: behind a saturated service that is almost every
        request, and holding each until its far-off arrival is what made memory grow with the run.
        (With a thread pool the refusal comes when a thread takes it up, which only its queue knows,
        and faults can change what happens on the way: those keep the event.)"""
        if self.verify_queues:
            if t + VALID_BEFORE_BUFFER_S > r.valid_before and self.threads is None and not self.faulty:
                self._verify_at(r, t)
                return
            self.clock.at(t - self.clock.now, self._verify_arrives, r)
        else:
            self._verify_at(r, t)

    def _verify_arrives(self, r: "Req") -> None:
        if not self.up:  # connection refused: the service hears it at once
            self.world.fac_lost(r, self.clock.now + self.hop())
            return
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
            if t + VALID_BEFORE_BUFFER_S > r.valid_before and not self.faulty:
                # its turn on the CPU came too late: the check runs when the handler does, after the queue
                # (as live), so a saturated facilitator refuses it here rather than after the route's work
                self.world.rejected(r, ERR_VALID_BEFORE, t + self.hop())
                return
        if self.faulty:
            self._verify_faulty(r, t)
            return
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
            self.clock.at(t - self.clock.now, self._release_thread, None)

    def _release_thread(self, _: object) -> None:
        # not `_release`: that name is the faults' claim release below, which shadowed this one, so an
        # sdk facilitator refusing a late /verify raised TypeError
        self.threads.release()  # type: ignore[union-attr]

    # ---- /settle -------------------------------------------------------------------------

    def settle(self, r: "Req", t: float) -> None:
        """A /settle request arrives at t (>= now): the payment is accepted for settlement. One that will
        arrive too late for its validBefore (behind a saturated route's workers) is refused now, with the
        times it gets then, rather than held in the event heap until its arrival (as `verify`)."""
        if self.settle_queues:
            if t + VALID_BEFORE_BUFFER_S > r.valid_before and not self.faulty:
                self.world.rejected(r, ERR_VALID_BEFORE, t + self.hop())
                return
            self.clock.at(t - self.clock.now, self._settle_arrives, r)
        else:
            self._accept(r, t)

    def _settle_arrives(self, r: "Req") -> None:
        if not self.up:
            self.world.fac_lost(r, self.clock.now + self.hop())
            return
        self._accept(r, self.clock.now)

    def _accept(self, r: "Req", t: float) -> None:
        if t + VALID_BEFORE_BUFFER_S > r.valid_before:
            self.world.rejected(r, ERR_VALID_BEFORE, t + self.hop())
            return
        if self.retrying and r.seq in self.claims:
            self._repeat(r, t)
            return
        r.row = self.world.settlements.accept(r.seq, r.agent, r.route, r.amount, t)
        if self.faulty:
            self._claimed(r)
        if self.node is not None:  # the node's share of this payment's work, on the host's cores
            self.node.enter(t, self.node_cpu * (1.0 - NODE_SEND_SHARE) if self.loop_lock else self.node_cpu)
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
            if self.loop_lock:  # the lock's own steps are placed when the lock is held
                cpu *= self.pre_lock_cpu
            t = self.cpu.enter(t, cpu) + cpu
        self._after_settle_cpu(r, t)

    def _settle_cpu_done(self, r: "Req") -> None:
        self._after_settle_cpu(r, self.clock.now)

    def _after_settle_cpu(self, r: "Req", t: float) -> None:
        if self.faulty:
            self._after_settle_cpu_faulty(r, t)
            return
        ready = t + self.settle_io()
        if self.answer_after == "accepted":
            self._answer(r, ready)
        if self.batched and not r.deposit_gas:  # a deposit is its own contract call: never in a transfer batch
            self.clock.at(ready - self.clock.now, self._batch_add, r)
        elif self.send_queues or self.batched:
            self.clock.at(ready - self.clock.now, self._send_one_now, r)
        else:
            self._send_one(r, ready)

    def _send_one_now(self, r: "Req") -> None:
        self._send_one(r, self.clock.now)

    def _send_one(self, r: "Req", t: float) -> None:
        if r.deposit_gas:  # a batch-settlement deposit: a call into the escrow, not a transfer to the payee
            self._send([r], r.deposit_gas, t)
            return
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
        if self.loop_lock:  # t is now
            self.locks[lane].acquire(self._locked, (requests, gas, lane, self.epoch))
            return
        station = self.lanes[lane]
        if self.faulty:
            sent = self._submit_faulty(requests, lane, station, t)
            if sent < 0:
                return
        elif self.submit_busy:
            submit = self.submit()
            sent = station.enter(t, submit) + submit
        else:
            sent = t
        tx, returned = self._broadcast(requests, gas, lane, sent)
        if returned > sent and self.submit_busy:
            station.hold_until(returned)
        self._after_send(tx, returned)

    def _locked(self, arg: tuple[list["Req"], int, int, int]) -> None:
        """The key's lock is ours (now): the sign-and-send step waits its turn on the loop, then the round trip.

        A saturated event loop is where a CPU-bound world's payments wait, and they wait here: the lock is held
        across two loop steps (the send, and reading its answer), each behind the loop's ready queue, and is
        handed to the next sender only when that one's step runs. So with one key, the facilitator's tx rate is
        1 / (its steps + their waits + the round trip), and it falls as the loop gets busier. Measured live,
        /metrics `timing`: lane_wait_s is the queue at the lock, lane_hold_s its hold, loop_lag_s the ready
        queue's wait."""
        requests, gas, lane, epoch = arg
        if epoch != self.epoch:
            return  # queued for a lock of a process that died: its claims are among the unsent, for the restart
        now = self.clock.now
        signed = self._step(now, self.send_cpu)
        if self.chain.node is not None:  # the node takes it in its order: behind a block it is mining (Chain._block)
            self.clock.at(signed - now, self._at_node, (requests, gas, lane, now))
            return
        self._sent_at(requests, gas, lane, now, signed, self._round_trip(signed))

    def _at_node(self, arg: tuple[list["Req"], int, int, float]) -> None:
        """The signed send reaches the node (now), in the node's order."""
        requests, gas, lane, held = arg
        now = self.clock.now
        self._sent_at(requests, gas, lane, held, now, self._round_trip(now))

    def _round_trip(self, signed: float) -> float:
        """The send's round trip from `signed`: with the node's part on the host's cores (the rest is the wire)."""
        submit = self.submit() if self.submit_busy else 0.0
        if self.node is not None:
            work = self.node_cpu * NODE_SEND_SHARE
            submit = max(0.0, submit - work) + (self.node.enter(signed, work) + work - signed)
        return submit

    def _sent_at(self, requests: list["Req"], gas: int, lane: int, held: float, signed: float, submit: float) -> None:
        """The send's round trip from `signed` takes `submit`; the lock was taken at `held`."""
        now = self.clock.now
        if self.rpc_faults:  # the lock is held for the whole call, stall or latency included
            reply, failed = self.plan.rpc(signed, submit)  # type: ignore[union-attr]
        else:
            reply, failed = signed + submit, False
        pool = self.locks[lane]
        if self.crashes is not None and crash_in(self.crashes, held, reply) is not None:
            self.in_flight[lane] -= 1  # died before the tx left: its claims stay unsent
            return
        if failed:
            self.in_flight[lane] -= 1
            self.clock.at(reply - now, self._send_failed, requests)
            self.clock.at(reply - now, self._unlock, (lane, pool))
            return
        self.clock.at(reply - now, self._replied, (requests, gas, lane, held, reply, pool))

    def _replied(self, arg: tuple[list["Req"], int, int, float, float, Pool]) -> None:
        requests, gas, lane, held, reply, pool = arg
        now = self.clock.now
        resumed = self._step(now, self.resume_cpu)
        tx, returned = self._broadcast(requests, gas, lane, reply)  # the node had it when it answered
        done = max(resumed, returned)  # with automine the answer comes once mined
        self.lock_busy[lane] += done - held
        self.lock_jobs[lane] += 1
        self.clock.at(done - now, self._unlock, (lane, pool))
        self._after_send(tx, done)

    def _step(self, now: float, cpu: float) -> float:
        """When a step of the lock holder that became ready at `now` is done on the loop.

        FIFO behind the ready work, as asyncio's ready queue is, but for at most `loop_round_s`: the FIFO
        station holds every request that has arrived, and under overload most of those would still be unread
        in the kernel's socket buffers live, which a resumed step does not wait behind (measured: 150 and 600
        closed-loop users on a saturated facilitator gave the same loop lag, 7-9 ms mean, while the lock's
        queue grew fourfold). Beyond the round, the step runs ahead of that backlog, which it delays by its CPU.
        On a shared host a woken step first waits for a core when every core is taken (`wakeup_s`, with the
        probability that all are busy in the machine's slot): the kernel's wake-up latency, small per step but
        paid three times per lock cycle."""
        station = self.cpu
        machine = station.machine
        if machine is not None and self.wakeup:  # woken by its answer: a core must be free for it first
            now += self.wakeup * machine.busy_at(now - machine.slot_s) ** machine.cores  # the last slot placed whole
        return station.enter_within(now, cpu, self.loop_round)

    def _unlock(self, arg: tuple[int, Pool]) -> None:
        lane, pool = arg
        if pool is self.locks[lane]:  # a dead process's lock is nobody's
            pool.release()

    def _broadcast(self, requests: list["Req"], gas: int, lane: int, sent: float) -> tuple[Tx, float]:
        """The tx reaches the node at `sent`; with when the send returns (later than `sent` only with automine)."""
        tx_id = self.world.txs.new(gas, len(requests))
        tx = Tx(tx_id, gas, lane, sent, requests)
        if self.crashes is not None:
            tx.epoch = self.epoch
        for r in requests:
            r.tx = tx_id
        return tx, self.chain.send(tx)  # with automine the send returns once mined: the lock is held till then

    def _after_send(self, tx: Tx, returned: float) -> None:
        """The facilitator knows the tx is sent (`returned`): answer if the strategy says so, stamp, poll."""
        requests = tx.requests
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
        if tx.epoch == self.epoch:  # a restarted process does not count its predecessor's txs
            self.in_flight[tx.lane] -= 1
        self.world.txs.block[tx.id] = number
        tx.block_time = block_time
        ready = block_time + self.receipt_delay
        if self.polls_cost_cpu:
            tx.ready = ready  # its own poll chain finds it
            return
        if self.rpc_faults:
            plan: FaultPlan = self.plan  # type: ignore[assignment]
            seen = (plan.receipt_seen(ready, tx.t_sent, self.poll_s, False) if self.poll_each
                    else plan.receipt_seen(ready, self.watch_phase, self.poll_s, True))
        elif self.poll_each:
            start = tx.t_sent
            seen = start + math.ceil(max(0.0, ready - start) / self.poll_s - 1e-9) * self.poll_s
        elif self.watch_drift:
            seen = self._watcher_sees(number, ready)
        else:
            phase = self.watch_phase
            seen = phase + math.ceil((ready - phase) / self.poll_s - 1e-9) * self.poll_s
        self._settled(tx, seen)

    def _watcher_sees(self, number: int, ready: float) -> float:
        """When the watcher's loop has block `number`'s receipts (ready at `ready`, mined from chain.tick).

        Its first poll at or after the tick finds it: a poll started while the node was mining is answered once
        the block is in (the node answers in order). Blocks come in order, so the loop is followed lazily."""
        if number == self._watch_block:
            return self._watch_seen
        tick = min(self.chain.tick, ready)
        period = self.poll_s + self.watch_round
        if self._watch_next < tick:
            self._watch_next += math.ceil((tick - self._watch_next) / period) * period
        seen = max(self._watch_next, ready) + self.watch_round
        self._watch_block, self._watch_seen = number, seen
        self._watch_next = seen + self.poll_s
        return seen

    def _receipt_burst(self, tx: Tx) -> None:
        """The loop handles the receipt (now): its CPU, in line with everything else the loop has ready."""
        cpu = self.receipt_cpu * len(tx.requests)
        self.cpu.enter(self.clock.now, cpu)

    def _settled(self, tx: Tx, seen: float) -> None:
        """The facilitator saw the receipt at `seen`: record the settlement, answer if it waits for it."""
        if self.loop_lock and self.receipt_cpu and self.up:
            self.clock.at(max(0.0, seen - self.clock.now), self._receipt_burst, tx)
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
        if self.faulty:
            for r in tx.requests:
                self.open.pop(r.seq, None)
                self._answer_faulty(r, seen)  # its client if it still waits for this, and any repeat
            return
        if self.answer_after == "included":
            for r in tx.requests:
                self._answer(r, seen)

    def _answer(self, r: "Req", t: float) -> None:
        """/settle answers at t (>= now); the service hears it one hop later."""
        if self.faulty:
            self._answer_faulty(r, t)
            return
        if self.threads is None:
            self.world.finish(r, t + self.hop())
        else:
            self.clock.at(t - self.clock.now, self._settle_release, r)

    def _settle_release(self, r: "Req") -> None:
        self.threads.release()  # type: ignore[union-attr]
        self.world.finish(r, self.clock.now + self.hop())

    # ---- faults and retries (only with `faulty`; sim/faults.py says what each kind does) --------

    def _verify_faulty(self, r: "Req", t: float) -> None:
        """The chain read of /verify from t (its CPU done), under RPC faults and crashes; a repeat needs none."""
        row = self.claims.get(r.seq) if self.retrying else None
        failed = False
        if row is not None:  # the ledger knows this authorization: /settle will answer it from there
            cols = self.world.settlements
            if cols.state[row] == FAILED:
                self.world.rejected(r, cols.error[row], t + self.hop())
                return
            done = t
        elif self.rpc_faults:
            done, failed = self.plan.rpc(t, self.verify_io())  # type: ignore[union-attr]
        else:
            done = t + self.verify_io()
        if self.crashes is not None:
            crash = crash_in(self.crashes, self.clock.now, done)
            if crash is not None:
                self.world.fac_lost(r, crash + self.hop())
                return
        if failed:
            self.world.rejected(r, ERR_UNEXPECTED_VERIFY, done + self.hop())
        else:
            self.world.verified(r, done + self.hop())

    def _claimed(self, r: "Req") -> None:
        r.epoch = self.epoch
        r.answered = False
        self.open[r.seq] = r
        if self.retrying:
            self.claims[r.seq] = r.row

    def _after_settle_cpu_faulty(self, r: "Req", t: float) -> None:
        """The chain read before the send, then the send (or the batch) as an event carrying the epoch."""
        failed = False
        if self.rpc_faults:
            ready, failed = self.plan.rpc(t, self.settle_io())  # type: ignore[union-attr]
        else:
            ready = t + self.settle_io()
        if self.answer_after == "accepted" and not failed:
            self._answer(r, ready)
        self.clock.at(ready - self.clock.now, self._settle_ready, (r, self.epoch, failed))

    def _settle_ready(self, arg: tuple["Req", int, bool]) -> None:
        r, epoch, failed = arg
        if epoch != self.epoch:
            return  # the process died since: the claim is among the unsent, for the restart
        if failed:  # the chain read failed: check_chain refuses, the claim is given back
            self._release(r, ERR_UNEXPECTED_VERIFY)
        elif self.batched:
            self._batch_add(r)
        else:
            self._send_one(r, self.clock.now)

    def _submit_faulty(self, requests: list["Req"], lane: int, station: Station, t: float) -> float:
        """Sign and send under the key's lock from t (now): when the tx left, or -1 when none did."""
        submit = self.submit() if self.submit_busy else 0.0
        failed = False
        if self.rpc_faults:  # the lock is held for the whole call, stall or latency included
            start = station.free_at(t)
            sent, failed = self.plan.rpc(start, submit)  # type: ignore[union-attr]
            station.enter(t, sent - start)
        elif self.submit_busy:
            sent = station.enter(t, submit) + submit
        else:
            sent = t
        if self.crashes is not None and crash_in(self.crashes, self.clock.now, sent) is not None:
            self.in_flight[lane] -= 1  # died before the tx left: its claims stay unsent
            return -1.0
        if failed:
            self.in_flight[lane] -= 1
            self.clock.at(sent - self.clock.now, self._send_failed, requests)
            return -1.0
        return sent

    def _send_failed(self, requests: list["Req"]) -> None:
        """The send was refused (the nonce is not used): each claim is released with transaction_failed."""
        for r in requests:
            self._release(r, ERR_TRANSACTION_FAILED)

    def _release(self, r: "Req", error: int) -> None:
        """Give a claim back before any tx (the live ledger deletes its row): its client and repeats hear why."""
        cols = self.world.settlements
        cols.state[r.row] = RELEASED
        cols.error[r.row] = error
        self.open.pop(r.seq, None)
        self.claims.pop(r.seq, None)
        self._refuse(r, error, self.clock.now)

    def _refuse(self, r: "Req", error: int, t: float) -> None:
        hop = self.hop()
        if not r.answered:
            r.answered = True
            self.world.rejected(r, error, t + hop)
        waiters, r.waiters = r.waiters, None
        for w in waiters or ():
            if not w.answered:
                w.answered = True
                self.world.rejected(w, error, t + hop)

    def _answer_faulty(self, r: "Req", t: float) -> None:
        """Success for r's claim at t (>= now): to its client if it still waits, and to every repeat waiting on it."""
        if self.crashes is not None:
            crash = crash_in(self.crashes, self.clock.now, t)
            if crash is not None:
                self._lost(r, crash)
                return
        hop = self.hop()

        def served(w: "Req") -> None:
            w.tx = r.tx
            self.world.finish(w, t + hop)

        self._to_all(r, served)

    def _lost(self, r: "Req", crash: float) -> None:
        """The process died at `crash` owing r's client (and r's repeats) an answer: their connections break."""
        hop = self.hop()
        self._to_all(r, lambda w: self.world.fac_lost(w, crash + hop))

    @staticmethod
    def _to_all(r: "Req", deliver: "Callable[[Req], None]") -> None:
        """One outcome to r's client and to every repeat of r waiting on it, each at most once."""
        waiters, r.waiters = r.waiters, None
        for w in (r, *(waiters or ())):
            if not w.answered:
                w.answered = True
                deliver(w)

    def _repeat(self, r: "Req", t: float) -> None:
        """/settle of an authorization the ledger holds (a retry): checked (CPU), then answered from the ledger."""
        if self.cpu_busy:
            cpu = self.settle_cpu()
            t = self.cpu.enter(t, cpu) + cpu
        if self.crashes is not None:
            crash = crash_in(self.crashes, self.clock.now, t)
            if crash is not None:
                self.world.fac_lost(r, crash + self.hop())
                return
        self.clock.at(t - self.clock.now, self._answer_repeat, r)

    def _answer_repeat(self, r: "Req") -> None:
        now = self.clock.now
        row = self.claims.get(r.seq)
        if row is None:  # released since the check: this repeat claims it afresh
            self._accept(r, now)
            return
        cols = self.world.settlements
        state = cols.state[row]
        self.plan_count("repeats_answered_from_ledger")
        if state == SETTLED:
            r.answered = True
            r.tx = cols.tx[row]
            self.world.finish(r, now + self.hop())
        elif state == FAILED:
            r.answered = True
            self.world.rejected(r, cols.error[row], now + self.hop())
        else:  # still being settled: wait for its outcome, as long as the live engine would
            holder = self.open[r.seq]
            if holder.waiters is None:
                holder.waiters = []
            holder.waiters.append(r)
            r.answered = False
            # this process's own settlement is awaited up to the receipt timeout; a tx it only follows (a
            # crashed predecessor's, or pipelined's once sent) is read from the ledger up to RETRY_WAIT_S
            running = holder.epoch == self.epoch and (holder.tx < 0 or self.answer_after == "included")
            self.clock.at(RECEIPT_TIMEOUT_S if running else RETRY_WAIT_S, self._repeat_gave_up, r)

    def _repeat_gave_up(self, r: "Req") -> None:
        if r.answered:
            return
        r.answered = True
        holder = self.open.get(r.seq)
        if holder is not None and holder.waiters and r in holder.waiters:
            holder.waiters.remove(r)
        self.world.rejected(r, ERR_SETTLEMENT_PENDING, self.clock.now + self.hop())

    def _crash(self, _: object = None) -> None:
        """SIGKILL: every answer owed dies, the batch in memory is gone; the ledger keeps every claim."""
        now = self.clock.now
        self.up = False
        self.epoch += 1
        unsent = 0
        for r in self.open.values():
            self._lost(r, now)
            if r.tx < 0:
                self.unsent.append(r)
                unsent += 1
        self._batch = []
        self._batch_gen += 1
        self.plan_count("facilitator_crashes")
        self.plan_count("claims_unsent_at_crash", unsent)
        self.plan_count("claims_sent_at_crash", len(self.open) - unsent)

    def _restart(self, _: object = None) -> None:
        """Back on the same ledger: resume every claim the crash left unsent while its validBefore allows."""
        now = self.clock.now
        self.up = True
        self._restarts -= 1
        if isinstance(self.cpu, Station):
            self.cpu.reset(now)
        for lane in self.lanes:
            lane.reset(now)
        if self.loop_lock:
            self.locks = [Pool(1) for _ in self.lanes]
        self.in_flight = [0] * len(self.lanes)
        claims, self.unsent = self.unsent, []
        cols = self.world.settlements
        for r in claims:
            if r.valid_before <= now:
                cols.state[r.row] = FAILED
                cols.error[r.row] = ERR_VALID_BEFORE
                self.open.pop(r.seq, None)
                self._refuse(r, ERR_VALID_BEFORE, now)
                self.plan_count("claims_expired_at_restart")
                continue
            r.epoch = self.epoch
            self.plan_count("claims_resent_at_restart")
            if self.batched:
                self._batch_add(r)
            else:
                self._send_one(r, now)

    @property
    def awaiting_restart(self) -> bool:
        """Claims a crash left unsent that a restart still to come will resume (the run must wait for it)."""
        return bool(self.unsent) and self._restarts > 0

    def plan_count(self, what: str, n: int = 1) -> None:
        if self.plan is not None:
            self.plan.count(what, n)

    def stats(self, elapsed: float) -> dict[str, float]:
        span = max(elapsed, 1e-9)
        out = {
            "cpu_utilization": self.cpu.busy_s / (span * self.cpu.servers),
            "cpu_mean_wait_s": self.cpu.wait_s / max(1, self.cpu.jobs),
            "lane_utilization_max": max(self.lock_busy if self.loop_lock else [l.busy_s for l in self.lanes]) / span,
            "txs": sum(self.lock_jobs) if self.loop_lock else sum(l.jobs for l in self.lanes),
        }
        if self.polls_cost_cpu:
            out["receipt_polls"] = self.polls
        if self.threads is not None:
            out["threads"] = self.threads.size
            out["threads_peak_waiting"] = self.threads.peak_waiting
        return out


# One model serves every strategy: what differs (when a claim is answered, whether sends wait in a
# batch) is the strategy's StrategyTiming and the scenario's batch terms, read in __init__.
for _name in ("sdk", "sync", "pipelined", "batched"):
    register("strategy", "sim", _name, Facilitator)

"""One paid request's journey, and the service that sells it.

client: [402 round trip unless cached] -> sign -> half a round trip ->
service: middleware CPU -> /verify -> route worker (queue, work) -> /settle ->
client: half a round trip back. The facilitator and the chain are in their own modules; a
batch-settlement route's requests (deposits take this path, vouchers stop at the service) and its
channels' books are sim/channels.py's, which the world plugs in only when the scenario has one.

Only arrivals at a contended resource are events; pure delays are added up, and FIFO
queues are resolved at arrival (sim/engine.py), so a payment costs a handful of events.

With faults or agents.retry (`faulty`) every answer goes through `_client`: a crashed or
unreachable part answers with a dead connection (status 0 from the service, 502 from a
service whose facilitator is gone), and an agent whose paid request got no answer (those, a
settlement_pending, or nothing within retry.timeout_s) sends the same signed payment again
after retry.backoff_s, up to retry.attempts times. A payment is one record whatever its
attempts: its first send, its last answer, its final status (as the live harness writes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sim.calibration import Calibration, Dist
from sim.dists import _Blocked, sampler, stream
from sim.engine import Clock, Machine, Station
from sim.facilitator import VALID_BEFORE_BUFFER_S, Facilitator
from sim.faults import FaultPlan, crash_in, down_at
from sim.interfaces import Driver
from sim.payment import FaultReq, Req
from sim.store import ERR_VALID_BEFORE, ERRORS, FailedTally, ParquetSpill, RequestColumns, SettlementColumns, TxColumns
from x402bench.behaviour import worth_retrying
from x402bench.registry import register
from x402bench.scenario import Duration, Scenario

if TYPE_CHECKING:
    from sim.channels import Channels

MS = 0.001


def _worth_retrying(status: int, error: int) -> bool:
    """The one retry rule live agents follow too (x402bench.behaviour), read on the sim's error codes."""
    return worth_retrying(status, ERRORS[error])


class World:
    """Agents' wallets, the service, the facilitator and the chain of one scenario."""

    def __init__(self, clock: Clock, scenario: Scenario, cal: Calibration, agents: int, loadgen: bool,
                 plan: FaultPlan | None = None, refund_at_end: bool = False,
                 failed_cap: int | None = None) -> None:
        self.clock = clock
        self.scenario = scenario
        seed = scenario.seed
        a = scenario.agents
        self.routes = [s.name for s in scenario.services]
        self.prices = [scenario.price_atomic(s) for s in scenario.services]
        self.agents = agents
        self.cap = scenario.spend_cap_atomic()  # the one spend cap live agents use too
        self.spent = [0] * agents
        self.broke = bytearray(agents)
        self.broke_count = 0
        self.broke_first_t = -1.0
        self.cached = bytearray(agents * len(self.routes)) if a.cache_requirements else None
        # measured (calibration) when given, else the scenario's own figures
        self.rtt = sampler(cal.network.rtt_s or _ms(a.rtt_ms), stream(seed, "net.rtt"))
        self.sign = sampler(cal.client.sign_s or _ms(a.sign_ms), stream(seed, "client.sign"))
        self.machine = Machine(cal.machine_cores, idle_cores=cal.machine_idle_cores) if cal.machine_cores else None
        self.loadgen = Station(cal.client.cores, self.machine) if loadgen else None
        self.loadgen_cpu = sampler(cal.client.cpu_s, stream(seed, "client.cpu"))
        # one CPU server per services process (scenario.service_processes), each at most one core of the host
        self.svc_cpu = Station(cal.service.cores * scenario.service_processes, self.machine)
        self.svc_cpu_s = sampler(cal.service.cpu_s, stream(seed, "svc.cpu"))
        self.svc_busy = not cal.service.cpu_s.is_zero or self.machine is not None
        self.challenge_cpu = sampler(cal.service.challenge_cpu_s, stream(seed, "svc.challenge"))
        self.gates = [Station(s.workers) if s.workers else None for s in scenario.services]
        self.work = [sampler(_ms(s.work_ms), stream(seed, f"svc.work.{s.name}")) for s in scenario.services]
        self.max_timeout = cal.max_timeout_s
        self.requests = RequestColumns()
        # Failed requests past `failed_cap` are counted, not stored (sim/store.py FailedTally): under
        # overload they are almost every request, and none of them moves money. Only the plain exact
        # world drops rows: retries and channels key side tables by row index.
        self.failed_cap = failed_cap
        self.failed_kept = 0
        self.spill: ParquetSpill | None = None  # every finished request to a Parquet file (`--records parquet`)
        self.dropped = FailedTally()
        self.settlements = SettlementColumns()
        self.txs = TxColumns()
        self.started = 0
        self.in_flight = 0
        self.driver: Driver | None = None
        self.plan = plan
        self.retry = a.retry if a.retry.attempts > 0 else None
        self.faulty = plan is not None or self.retry is not None
        self.svc_down = plan.service_down if plan is not None and plan.service_down else None
        self._req = FaultReq if self.faulty else Req
        for _, end in self.svc_down or ():
            if end != float("inf"):
                clock.at(end, self._service_back)
        self.facilitator = Facilitator(clock, scenario, cal, self)
        self.hop = self.facilitator.hop
        fac = self.facilitator
        # batch-settlement routes: their own model; the exact-only world keeps its plain start and record
        self.channel_routes = [s.scheme == "batch-settlement" for s in scenario.services]
        self.channels: Channels | None = None
        if any(self.channel_routes):
            from sim.channels import Channels

            self.channels = Channels(self, scenario, cal, self.facilitator.chain, refund_at_end)
            self.start = self._start_mixed  # type: ignore[method-assign]
            self._record = self.channels.record  # type: ignore[method-assign]
        if self.faulty or self.channels is not None:
            self.failed_cap = None
        # bulk_refuse writes out the plain exact path: a single service CPU on its own host, a facilitator
        # without a thread pool whose /verify is an event (it refuses late arrivals at once), no loadgen
        self.bulk_ok = (self.svc_busy and self.svc_cpu.servers == 1 and self.machine is None and not self.faulty
                        and self.channels is None and fac.threads is None and fac.verify_queues
                        and self.loadgen is None)

    # ---- the client -------------------------------------------------------------------------

    def start(self, agent: int, route: int, user: Any = None) -> bool:
        """Agent pays for one request of `route` now; False (and broke) when it cannot afford it.

        Its client side is `launch`'s, written out here: the call and its two bound methods cost 4% of the
        exact path's speed (bench/bench_sim.py). tests/test_sim_channels.py checks the two stay one."""
        price = self.prices[route]
        spent = self.spent[agent]
        if spent + price > self.cap:
            self.mark_broke(agent)
            return False
        self.spent[agent] = spent + price
        now = self.clock.now
        r = self._req(self.started, agent, route, price, user, now)
        self.started += 1
        self.in_flight += 1
        challenge = 0.0
        cached = self.cached
        if cached is None:
            challenge = self.rtt() + self.challenge_cpu()
        else:
            key = agent * len(self.prices) + route
            if not cached[key]:
                cached[key] = 1
                challenge = self.rtt() + self.challenge_cpu()
        sign = self.sign()
        t_send = now + challenge + sign
        if self.loadgen is not None:  # see launch
            cpu = sign + self.loadgen_cpu()
            t_send = self.loadgen.enter(now, cpu) + sign + challenge
        half = self.rtt() * 0.5
        r.challenge = challenge
        r.sign = sign
        r.t_send = t_send
        r.half = half
        r.valid_before = t_send + self.max_timeout
        if self.retry is not None:
            self._arm(r, t_send)  # type: ignore[arg-type]
        if self.svc_busy:
            self.clock.at(t_send + half - now, self._at_service, r)
        else:
            self._service(r, t_send + half)
        return True

    def _start_mixed(self, agent: int, route: int, user: Any = None) -> bool:
        """`start` of a world with batch-settlement routes: those go to the channel model."""
        if self.channel_routes[route]:
            return self.channels.start(agent, route, user)  # type: ignore[union-attr]
        return World.start(self, agent, route, user)

    def mark_broke(self, agent: int) -> None:
        if not self.broke[agent]:
            self.broke[agent] = 1
            self.broke_count += 1
            if self.broke_first_t < 0:
                self.broke_first_t = self.clock.now

    def launch(self, r: Req, service: Callable[[Req, float], None], at_service: Callable[[Req], None]) -> None:
        """The client's side of a paid request started now: the 402 round trip unless cached, signing, the
        way there; the service takes it with service(r, t), or at_service(r) as an event when its CPU queues."""
        now = self.clock.now
        agent, route = r.agent, r.route
        challenge = 0.0
        cached = self.cached
        if cached is None:
            challenge = self.rtt() + self.challenge_cpu()
        else:
            key = agent * len(self.prices) + route
            if not cached[key]:
                cached[key] = 1
                challenge = self.rtt() + self.challenge_cpu()
        sign = self.sign()
        t_send = now + challenge + sign
        if self.loadgen is not None:
            # The load generator's own CPU (Locust's loop, records) keeps its core busy and delays the
            # requests queued behind it, but a request only waits for its own signing: its HTTP work is
            # already inside the round trip measured live (calibration's rtt_s).
            cpu = sign + self.loadgen_cpu()
            t_send = self.loadgen.enter(now, cpu) + sign + challenge
        half = self.rtt() * 0.5
        r.challenge = challenge
        r.sign = sign
        r.t_send = t_send
        r.half = half
        r.valid_before = t_send + self.max_timeout
        if self.retry is not None:
            self._arm(r, t_send)  # type: ignore[arg-type]
        if self.svc_busy:
            self.clock.at(t_send + half - now, at_service, r)
        else:
            service(r, t_send + half)

    # ---- requests a saturated service can only refuse, in bulk ---------------------------------------

    def refusal_horizon(self) -> float:
        """Requests reaching the service before this time are refused at /verify whatever else happens:
        its CPU queue already holds more than their validBefore allows (-inf when that shortcut does not apply).

        With one CPU server the queue's end F only grows while it is busy, so a request reaching it at
        a < F + buffer - max_timeout starts after F and reaches /verify later than validBefore - buffer
        (validBefore = its send + max_timeout <= a + max_timeout). Every request that reaches the
        service between now and a is refused too, so the order such requests enter the queue in moves
        no request that gets through. Only for the plain exact world (no faults, retries, channels,
        thread pool or shared host), whose paths are the ones written out in `bulk_refuse`."""
        if not self.bulk_ok:
            return float("-inf")
        return self.svc_cpu._next + VALID_BEFORE_BUFFER_S - self.max_timeout

    def bulk_refuse(self, t: np.ndarray, agents: np.ndarray,
                    routes: np.ndarray) -> tuple[float, int, int]:
        """Start the requests arriving at times t (ascending, >= now) of agents on routes, refused at /verify
        behind the saturated service (`refusal_horizon`). Returns (cut, agent, route): every arrival before
        `cut` was taken (inf: all of them); the one at `cut`, that agent's on that route, is the caller's
        to start the ordinary way (agent -1: none). Their numbers are drawn an array at a time and none is
        an event: at 20,000 offered req/s that is nearly the whole run. Each gets what `start`, `_service`,
        the facilitator's refusal and `rejected` give one request."""
        horizon = self.refusal_horizon()
        if not t.size:
            return float("inf"), -1, -1
        if t[0] >= horizon:
            return float(t[0]), int(agents[0]), int(routes[0])
        n = int(t.size)
        # Budgets. An agent close to its cap is left to the ordinary path (the batch stops before its
        # arrival): there, each request holds its price from its start until the service refuses it, and
        # whether a later one finds the money depends on such holds, which only the events see. An agent
        # three prices or more from its cap cannot go broke within a batch; a broke one starts nothing.
        prices = np.asarray(self.prices, dtype=np.int64)[routes]
        spent = np.fromiter((self.spent[a] for a in agents.tolist()), dtype=np.int64, count=n)
        broke = np.frombuffer(self.broke, dtype=np.uint8)[agents] != 0
        near = np.flatnonzero(~broke & (spent + prices + 3 * max(self.prices) > self.cap))
        limit: tuple[float, int, int] = (float("inf"), -1, -1)
        if near.size:
            first = int(near[0])
            limit = (float(t[first]), int(agents[first]), int(routes[first]))
            if first == 0:
                return limit
            t, agents, routes, broke = t[:first], agents[:first], routes[:first], broke[:first]
        keep = ~broke
        kt, ka, kr = t[keep], agents[keep], routes[keep]
        m = int(kt.size)
        challenge = np.zeros(m)
        cached = np.frombuffer(self.cached, dtype=np.uint8) if self.cached is not None else None
        if cached is None:
            challenge = _many(self.rtt, m) + _many(self.challenge_cpu, m)
        pay = np.zeros(0, dtype=np.int64)
        if cached is not None and m:
            keys = ka.astype(np.int64) * len(self.prices) + kr
            new = np.flatnonzero(cached[keys] == 0)
            if new.size:
                _, first_new = np.unique(keys[new], return_index=True)
                pay = np.sort(new[first_new])
                challenge[pay] = _many(self.rtt, pay.size) + _many(self.challenge_cpu, pay.size)
        sign = _many(self.sign, m)
        t_send = kt + challenge + sign
        half = _many(self.rtt, m) * 0.5
        arrive = t_send + half
        beyond = np.flatnonzero(arrive >= horizon)
        took = int(beyond[0]) if beyond.size else m
        cut = (float(kt[took]), int(ka[took]), int(kr[took])) if took < m else limit
        if not took:
            return cut
        if cached is not None and pay.size:
            cached[(ka.astype(np.int64) * len(self.prices) + kr)[pay[pay < took]]] = 1
        kt, ka, kr = kt[:took], ka[:took], kr[:took]
        challenge, sign, t_send, half, arrive = challenge[:took], sign[:took], t_send[:took], half[:took], arrive[:took]
        cpu = _many(self.svc_cpu_s, took)
        station = self.svc_cpu
        ends = station._next + np.cumsum(cpu)
        station._next = float(ends[-1])
        station.busy_s += float(cpu.sum())
        station.jobs += took
        station.wait_s += float((ends - cpu - arrive).sum())
        t_refused = ends + _many(self.hop, took) + _many(self.hop, took)  # to /verify, and its answer back
        t_end = t_refused + half
        seq0 = self.started
        self.started += took
        self._keep_refused(kt, t_end, challenge, sign, t_end - t_send, t_refused - ends, kr, ka, seq0)
        return cut

    def _keep_refused(self, t: "np.ndarray", t_end: "np.ndarray", challenge: "np.ndarray", sign: "np.ndarray",
                      paid: "np.ndarray", verify: "np.ndarray", routes: "np.ndarray", agents: "np.ndarray",
                      seq0: int) -> None:
        """Refused requests as records up to failed_cap, counted past it (as `_record` does one at a time)."""
        m = int(t.size)
        if self.spill is not None:
            z = np.zeros(m)
            self.spill.add_arrays(t_start=t, t_end=t_end, challenge=challenge, sign=sign, paid=paid, verify=verify,
                                  handler=z, settle=z, route=routes, agent=agents, status=np.full(m, 402),
                                  error=np.full(m, ERR_VALID_BEFORE), amount=np.zeros(m, dtype=np.int64),
                                  seq=np.arange(seq0, seq0 + m), tx=np.full(m, -1))
        room = m if self.failed_cap is None else max(0, min(m, self.failed_cap - self.failed_kept))
        if room:
            c = self.requests
            c.t_start.extend(t[:room].tolist())
            c.t_end.extend(t_end[:room].tolist())
            c.challenge.extend(challenge[:room].tolist())
            c.sign.extend(sign[:room].tolist())
            c.paid.extend(paid[:room].tolist())
            c.verify.extend(verify[:room].tolist())
            zeros = [0.0] * room
            c.handler.extend(zeros)
            c.settle.extend(zeros)
            c.route.extend(routes[:room].tolist())
            c.agent.extend(agents[:room].tolist())
            c.status.extend([402] * room)
            c.error.extend([ERR_VALID_BEFORE] * room)
            c.amount.extend([0] * room)
            c.seq.extend(range(seq0, seq0 + room))
            c.tx.extend([-1] * room)
            if self.failed_cap is not None:
                self.failed_kept += room
        if room < m:
            self.dropped.add_many(t[room:], t_end[room:], 402, ERR_VALID_BEFORE)

    # ---- the service --------------------------------------------------------------------------

    def _at_service(self, r: Req) -> None:
        self._service(r, self.clock.now)

    def pay_exact_way(self, r: Req, t: float) -> None:
        self._service(r, t)

    def pay_exact_way_now(self, r: Req) -> None:
        self._service(r, self.clock.now)

    def _service(self, r: Req, t: float) -> None:
        """The paid request reaches the service at t: middleware CPU, then /verify."""
        if self.faulty:
            r.t_svc = t  # type: ignore[attr-defined]
            if self.svc_down is not None and down_at(self.svc_down, t):  # connection refused
                self._client(r, t + r.half, 0, 0, 0.0, 0.0, 0.0)  # type: ignore[arg-type]
                return
        if self.svc_busy:
            cpu = self.svc_cpu_s()
            t = self.svc_cpu.enter(t, cpu) + cpu
        r.t_verify = t
        self.facilitator.verify(r, t + self.hop())

    def verified(self, r: Req, t: float) -> None:
        """The verify answer is back at t (>= now); a route without a worker limit needs no event."""
        if self.svc_down is not None and self._service_died(r, t):  # type: ignore[arg-type]
            return
        if self.gates[r.route] is None:
            self._run_route(r, t)
        else:
            self.clock.at(t - self.clock.now, self._after_verify, r)

    def _after_verify(self, r: Req) -> None:
        self._run_route(r, self.clock.now)

    def _run_route(self, r: Req, t: float) -> None:
        """Run the route from t (queueing for a worker), then /settle."""
        r.verify = t - r.t_verify
        work = self.work[r.route]()
        gate = self.gates[r.route]
        end = (gate.enter(t, work) if gate is not None else t) + work
        r.handler = end - t
        r.t_settle = end
        if self.svc_down is not None and self._service_died(r, end):  # type: ignore[arg-type]
            return  # died before sending /settle: nothing was claimed
        self.facilitator.settle(r, end + self.hop())

    def finish(self, r: Req, t_service: float) -> None:
        """The settle answer reaches the service at t_service (>= now): the client gets its 200."""
        if self.faulty:
            if self.svc_down is None or not self._service_died(r, t_service):  # type: ignore[arg-type]
                self._client(r, t_service + r.half, 200, 0, r.verify, r.handler,  # type: ignore[arg-type]
                             t_service - r.t_settle, r.amount, r.tx)
            return
        t_end = t_service + r.half
        self._record(r, t_end, 200, 0, verify=r.verify, handler=r.handler, settle=t_service - r.t_settle,
                     amount=r.amount, tx=r.tx)

    def rejected(self, r: Req, error: int, t: float) -> None:
        """A facilitator refusal reaches the service at t: the client gets a 402 with the reason."""
        if r.t_settle < 0:  # refused at /verify
            verify, settle = t - r.t_verify, 0.0
        else:
            verify, settle = r.verify, t - r.t_settle
        if self.faulty:
            if self.svc_down is None or not self._service_died(r, t):  # type: ignore[arg-type]
                self._client(r, t + r.half, 402, error, verify, r.handler, settle)  # type: ignore[arg-type]
            return
        self.spent[r.agent] -= r.amount
        self._record(r, t + r.half, 402, error, verify=verify, handler=r.handler, settle=settle, amount=0, tx=-1)

    # ---- faults and retries (only with `faulty`) --------------------------------------------------

    def fac_lost(self, r: FaultReq, t: float) -> None:
        """The service's call to the facilitator broke (refused, or the process died) at t: it answers 502."""
        if self.svc_down is None or not self._service_died(r, t):
            self._client(r, t + r.half, 502, 0, max(r.verify, 0.0), r.handler, 0.0)

    def _service_died(self, r: FaultReq, t: float) -> bool:
        """Did the service crash while holding r (from its arrival to t)? Then the client's connection broke."""
        crash = crash_in(self.svc_down, r.t_svc, t)  # type: ignore[arg-type]
        if crash is None:
            return False
        if not r.closed:
            self.plan.count("service_answers_lost")  # type: ignore[union-attr]
        self._client(r, max(crash, self.clock.now) + r.half, 0, 0, max(r.verify, 0.0), r.handler, 0.0)
        return True

    def _service_back(self, _: object = None) -> None:
        """The service restarts: the work it had queued died with it."""
        now = self.clock.now
        self.svc_cpu.reset(now)
        for gate in self.gates:
            if gate is not None:
                gate.reset(now)

    def _arm(self, r: FaultReq, t_send: float) -> None:
        """The client gives up on this attempt retry.timeout_s after sending it."""
        r.deadline = t_send + self.retry.timeout_s  # type: ignore[union-attr]
        self.clock.at(r.deadline - self.clock.now, self._deadline, r)

    def _deadline(self, r: FaultReq) -> None:
        if not r.closed:
            self.plan_count("client_timeouts")
            self._client(r, r.deadline, 0, 0, max(r.verify, 0.0), r.handler, 0.0)

    def _client(self, r: FaultReq, t_end: float, status: int, error: int, verify: float, handler: float,
                settle: float, amount: int = 0, tx: int = -1) -> None:
        """What this attempt's client got at t_end: retry the payment, or its final record."""
        if r.closed:
            return  # an attempt its client already gave up on
        retry = self.retry
        if retry is not None and t_end > r.deadline:
            return  # the client gave up first: its deadline decides
        r.closed = True
        now = self.clock.now
        if t_end < now:
            t_end = now
        if status != 200 and retry is not None and r.tries < retry.attempts and _worth_retrying(status, error):
            self.plan_count("retries")
            self.clock.at(t_end + retry.backoff_s - now, self._retry, r)
            return
        if status != 200:
            self.spent[r.agent] -= r.amount
        if r.tries:
            self.requests.attempts[len(self.requests)] = r.tries + 1
        self._record(r, t_end, status, error, verify=verify, handler=handler, settle=settle, amount=amount, tx=tx)

    def _retry(self, prev: FaultReq) -> None:
        """The same signed payment again (no 402 round trip, no signing): a new attempt of the same seq.
        (The locust driver's load generator CPU is not charged for a resend: it is a few per cent of a payment's.)"""
        now = self.clock.now
        r = FaultReq(prev.seq, prev.agent, prev.route, prev.amount, prev.user, prev.t0)
        r.challenge = prev.challenge
        r.sign = prev.sign
        r.t_send = prev.t_send  # the payment's first send: its record's paid round trip spans every attempt
        r.valid_before = prev.valid_before
        r.tries = prev.tries + 1
        r.half = self.rtt() * 0.5
        self._arm(r, now)
        if self.svc_busy:
            self.clock.at(r.half, self._at_service, r)
        else:
            self._service(r, now + r.half)

    def plan_count(self, what: str) -> None:
        if self.plan is not None:
            self.plan.count(what)

    def record(self, r: Req, t_end: float, status: int, error: int, verify: float, handler: float,
               settle: float, amount: int, tx: int) -> None:
        World._record(self, r, t_end, status, error, verify, handler, settle, amount, tx)

    def _record(self, r: Req, t_end: float, status: int, error: int, verify: float, handler: float,
                settle: float, amount: int, tx: int) -> None:
        if self.spill is not None:
            self.spill.add(r.t0, t_end, r.challenge, r.sign, t_end - r.t_send, verify, handler, settle, r.route,
                           r.agent, status, error, amount, r.seq, tx)
        if status != 200 and self.failed_cap is not None:
            if self.failed_kept >= self.failed_cap:
                self.dropped.add(r.t0, t_end, status, error)
                self.in_flight -= 1
                if self.driver is not None:
                    self.driver.done(r, t_end)
                return
            self.failed_kept += 1
        c = self.requests
        c.t_start.append(r.t0)
        c.t_end.append(t_end)
        c.challenge.append(r.challenge)
        c.sign.append(r.sign)
        c.paid.append(t_end - r.t_send)
        c.verify.append(verify)
        c.handler.append(handler)
        c.settle.append(settle)
        c.route.append(r.route)
        c.agent.append(r.agent)
        c.status.append(status)
        c.error.append(error)
        c.amount.append(amount)
        c.seq.append(r.seq)
        c.tx.append(tx)
        self.in_flight -= 1
        if self.driver is not None:
            self.driver.done(r, t_end)


def _many(draw: Callable[[], float], n: int) -> np.ndarray:
    """n numbers from a sampler at once (its generator's next block, not its buffered list)."""
    if isinstance(draw, _Blocked):
        return np.asarray(draw.fill(draw.rng, n), dtype=np.float64)
    return np.full(n, draw(), dtype=np.float64)


def _ms(duration: Duration) -> Dist:
    """A scenario Duration (milliseconds) as a calibration Dist (seconds)."""
    return Dist(median=duration.median * MS, p99=None if duration.p99 is None else duration.p99 * MS)


register("scheme", "sim", "exact", World)  # the exact path is the world's own (World.start); channels plug in

"""The x402 `batch-settlement` scheme in the sim: channels, deposits, vouchers, claims, settles, refunds.

What it needs from the world it plugs into (sim/interfaces.ChannelHost, which sim/world.World is):
the agents' one spend cap (`cap`, min(funding, budget)) and what each has committed (`spent`), a way
to stop a broke agent (`mark_broke`), the client's side of a paid request (`launch`: 402 round trip,
signing, the way there), the exact path for deposits (`pay_exact_way`: middleware CPU, facilitator
/verify, the route, /settle as a tx answered after its receipt), the service's CPU station and route
workers for vouchers, and `record` to write a request's record. From the chain it needs only `send`
(a Tx whose `owner` is told of its inclusion, so claims, settles and refunds come back here).

Per agent and route one channel:
- Its first request carries a deposit (channel.deposit_usdc, or the SDK server's default minDeposit of
  10 prices) and the first voucher. The deposit is an ERC-3009 authorization the facilitator settles
  like an exact payment (its verify, its /settle, one tx, the answer after the receipt) but with the
  escrow's gas (a new channel, or a top-up) and never inside a transfer batch.
- Each later request signs a voucher for cumulative + price. The service checks it locally: its CPU
  per paid request (service.cpu_s) and the voucher check (service.voucher_verify_s) on its CPU, then
  what a live service was measured to wait besides (service.voucher_wait_s), then the route; no
  facilitator call, no tx. The wait and the route's work are drawn together (sim.dists.comonotone):
  a live service's busy event loop delays both. The record's verify_s is the check and that wait.
- When the next voucher would pass what was deposited, that request carries a top-up. A deposit is
  never more than the agent may still commit (cap - spent, the live agents' deposit_limit in
  loadtest/paying.py), and counts as spent when it is made; an agent whose remainder cannot cover the
  voucher's gap stops, as an exact-path agent out of money does.
- A request for a channel whose deposit is still in flight waits for that answer: the client cannot sign
  a voucher against a balance it does not know yet. (Only open arrivals meet this: the Locust-like
  driver sends one request at a time per agent.)
- Every claim_every_s the services claim what they served and have not claimed, claims_per_tx channels
  per claimWithSignature tx; every settle_every_s they settle what the claims brought in, one tx per
  receiver. At the end of the run a last claim covers everything served, a last settle pays it out,
  and (SimOptions.refund_at_end) each channel's unclaimed rest is refunded to its payer.

Not modelled: the SDK server's on-chain resync (a voucher arriving when its channel's on-chain state is
older than withdraw_delay_s / 3, within [30 s, 300 s], goes to the facilitator's /verify once): runs
shorter than that never meet it; withdrawals; and the corrective 402, which needs a voucher the server
does not expect (the model's vouchers are always right). Facilitator and service crashes and RPC errors
are refused on these routes (sim/faults.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.calibration import Calibration, Dist
from sim.chain import Chain, Tx
from sim.dists import comonotone, sampler, stream
from sim.interfaces import ChannelHost
from sim.payment import FaultReq, Req
from sim.store import address_hex, channel_hex, tx_hex
from x402bench.registry import register
from x402bench.results.records import ChannelRecord, ChannelTxRecord, format_claims
from x402bench.scenario import Scenario

SCHEME = "batch-settlement"
#: The SDK server's minDeposit when the route names none: DEFAULT_SERVER_MIN_DEPOSIT_MULTIPLIER prices.
DEFAULT_DEPOSIT_PRICES = 10


def channel_tx_hex(tx_id: int) -> str:
    """Claims, settles and refunds: their own hash space (a deposit keeps its facilitator tx's hash)."""
    return f"0x{0xc1a1:04x}{tx_id:060x}"


class Channel:
    """One channel's books, in atomic units."""

    __slots__ = ("agent", "route", "deposited", "cumulative", "charged", "claim_sent", "claimed", "refunded",
                 "vouchers", "deposits", "t_deposit", "t_claimed", "pending", "waiters", "dirty", "history")

    def __init__(self, agent: int, route: int) -> None:
        self.agent = agent
        self.route = route
        self.deposited = 0  # deposits whose answer came back 200 (their tx is mined)
        self.cumulative = 0  # the last voucher signed
        self.charged = 0  # served: what the vouchers of 200 answers add up to
        self.claim_sent = 0  # covered by claims sent
        self.claimed = 0  # covered by claims mined (the channel's totalClaimed)
        self.refunded = 0
        self.vouchers = 0
        self.deposits = 0
        self.t_deposit = -1.0
        self.t_claimed = -1.0
        self.pending = False  # a deposit of this channel is in flight
        self.waiters: list[tuple[float, Any]] = []  # (arrival, driver's user) held until that deposit's answer
        self.dirty = False  # charged > claim_sent, and in the claim list
        self.history: list[tuple[float, int]] = []  # (block time, totalClaimed) of each claim mined


class ChannelReq(FaultReq):
    """A paid request of a batch-settlement route. `amount` stays 0 so the world's exact-path cap
    bookkeeping leaves it alone: the channel model commits deposits against the cap itself."""

    __slots__ = ("book", "price", "cumulative", "deposit", "deposit_gas", "work")

    def __init__(self, seq: int, agent: int, route: int, user: Any, t0: float, book: Channel, price: int,
                 cumulative: int, deposit: int, deposit_gas: int) -> None:
        super().__init__(seq, agent, route, 0, user, t0)
        self.book = book
        self.price = price
        self.cumulative = cumulative
        self.deposit = deposit  # atomic units this request deposits (0: a voucher alone)
        self.deposit_gas = deposit_gas
        self.work = 0.0  # a voucher's route work, drawn with its wait


class _Receiver:
    __slots__ = ("claimed", "settle_sent", "settled")

    def __init__(self) -> None:
        self.claimed = 0
        self.settle_sent = 0
        self.settled = 0


class Channels:
    """The batch-settlement routes of one world: their channels, the services' cadence, their txs."""

    def __init__(self, world: ChannelHost, scenario: Scenario, cal: Calibration, chain: Chain,
                 refund_at_end: bool = False) -> None:
        self.world = world
        self.clock = world.clock
        self.chain = chain
        terms = scenario.channel
        if terms is None:
            raise ValueError(f"{scenario.name}: batch-settlement routes need the top-level `channel` section")
        self.terms = terms
        decimals = scenario.token.decimals
        self.deposit_target = [int(round(terms.deposit_usdc * 10**decimals)) if terms.deposit_usdc is not None
                               else DEFAULT_DEPOSIT_PRICES * price for price in world.prices]
        self.routes = len(world.prices)
        self.gas = cal.gas
        self.gas_price_wei = int(round(scenario.economics.gas_price_gwei * 1e9))
        worst = self.gas.channel_claim(terms.claims_per_tx)
        if worst > scenario.chain.gas_limit:
            raise ValueError(f"a claim of {terms.claims_per_tx} channels needs {worst} gas, over the block gas limit "
                             f"{scenario.chain.gas_limit}: lower channel.claims_per_tx")
        seed = scenario.seed
        self.voucher_cpu = sampler(cal.service.voucher_verify_s, stream(seed, "svc.voucher"))
        # a voucher's wait and its route's work, drawn together: both are slow when the service is busy
        self.voucher_wait_work = [comonotone(cal.service.voucher_wait_s, Dist.from_ms(s.work_ms.median, s.work_ms.p99),
                                             stream(seed, f"svc.voucher_wait.{s.name}")) for s in scenario.services]
        # the voucher check is CPU on the service's station: it queues whenever that station can
        self.cpu_queues = world.svc_busy or not cal.service.voucher_verify_s.is_zero
        self.hop = sampler(cal.network.hop_s, stream(seed, "channels.hop"))
        self.refund_at_end = refund_at_end
        self.duration = scenario.run.duration_s
        self.by_key: dict[int, Channel] = {}
        self.books: list[Channel] = []
        self.receivers = [_Receiver() for _ in world.prices]
        self._dirty: list[Channel] = []
        self._txs: list[ChannelTxRecord] = []  # claims, settles and refunds, as mined
        self._deposit_txs: list[tuple[Channel, int, int, int, int]] = []  # (channel, settlement row, tx, gas, amount)
        # tx id -> (kind, amount, [(channel, its claimed total after it)], receiver of a settle)
        self._sent: dict[int, tuple[str, int, list[tuple[Channel, int]], int]] = {}
        self._ids = 0
        self.outstanding = 0  # channel txs sent, not yet mined
        self.stage = 0  # 0 running, 1 last claim, 2 last settle, 3 refunds, 4 done
        # the services' cadence started before the run: its phase is the seed's
        phase = stream(seed, "channels.phase")
        first_claim = float(phase.random()) * terms.claim_every_s
        first_settle = float(phase.random()) * terms.settle_every_s
        if first_claim < self.duration:
            self.clock.at(first_claim, self._claim_tick)
        if first_settle < self.duration:
            self.clock.at(first_settle, self._settle_tick)

    # ---- requests ------------------------------------------------------------------------------

    def start(self, agent: int, route: int, user: Any = None) -> bool:
        """The agent pays for one request of a batch-settlement route now; False when it cannot."""
        key = agent * self.routes + route
        ch = self.by_key.get(key)
        if ch is None:
            ch = self.by_key[key] = Channel(agent, route)
            self.books.append(ch)
        now = self.clock.now
        if ch.pending:
            ch.waiters.append((now, user))
            return True
        return self._dispatch(ch, user, now)

    def _dispatch(self, ch: Channel, user: Any, t0: float) -> bool:
        w = self.world
        agent, route = ch.agent, ch.route
        price = w.prices[route]
        need = ch.cumulative + price
        deposit = gas = 0
        if need > ch.deposited:
            left = w.cap - w.spent[agent]
            gap = need - ch.deposited
            if gap > left:
                w.mark_broke(agent)
                return False
            deposit = min(max(self.deposit_target[route], gap), left)
            gas = self.gas.channel_deposit_topup if ch.deposits else self.gas.channel_deposit_new
            w.spent[agent] += deposit
            ch.pending = True
        ch.cumulative = need
        r = ChannelReq(w.started, agent, route, user, t0, ch, price, need, deposit, gas)
        w.started += 1
        w.in_flight += 1
        if deposit:
            w.launch(r, w.pay_exact_way, w.pay_exact_way_now)
        else:
            w.launch(r, self._voucher, self._voucher_now)
        return True

    def _voucher(self, r: Req, t: float) -> None:
        """The voucher reaches the service at t (launch's direct path: the service's CPU does not queue)."""
        if self.cpu_queues:
            self.clock.at(t - self.clock.now, self._voucher_now, r)
            return
        r.t_verify = t
        wait, r.work = self.voucher_wait_work[r.route]()
        self._checked(r, t + wait)

    def _voucher_now(self, r: Req) -> None:
        """At the service now: its CPU per request, then the local voucher check, as one CPU job."""
        w = self.world
        now = self.clock.now
        mw, check = w.svc_cpu_s(), self.voucher_cpu()
        start = w.svc_cpu.enter(now, mw + check)
        r.t_verify = start + mw
        wait, r.work = self.voucher_wait_work[r.route]()
        self._checked(r, start + mw + check + wait)

    def _checked(self, r: Req, t: float) -> None:
        """The voucher is good at t: the route runs (queueing for a worker: an event), then the answer."""
        r.verify = t - r.t_verify
        if self.world.gates[r.route] is None:
            self._route(r, t)
        else:
            self.clock.at(t - self.clock.now, self._route_now, r)

    def _route_now(self, r: Req) -> None:
        self._route(r, self.clock.now)

    def _route(self, r: Req, t: float) -> None:
        w = self.world
        work = r.work
        gate = w.gates[r.route]
        end = (gate.enter(t, work) if gate is not None else t) + work
        r.handler = end - t
        self.record(r, end + r.half, 200, 0, verify=r.verify, handler=r.handler, settle=0.0, amount=0, tx=-1)

    def record(self, r: Req, t_end: float, status: int, error: int, verify: float, handler: float, settle: float,
               amount: int, tx: int) -> None:
        """Every record of the world passes here (it replaces World._record): a channel request's also
        moves its channel's books, and a deposit's answer lets the requests waiting on it go."""
        w = self.world
        if type(r) is not ChannelReq:
            w.record(r, t_end, status, error, verify, handler, settle, amount, tx)
            return
        ch: Channel = r.book
        row = len(w.requests)
        if status == 200:
            w.record(r, t_end, 200, error, verify, handler, settle, r.price, r.tx if r.deposit else -1)
            ch.charged += r.price
            ch.vouchers += 1
            if not ch.dirty:
                ch.dirty = True
                self._dirty.append(ch)
        else:
            w.record(r, t_end, status, error, verify, handler, settle, 0, -1)
            if ch.cumulative == r.cumulative:  # the last voucher signed: the next one re-signs this amount
                ch.cumulative -= r.price
        w.requests.cumulative[row] = r.cumulative
        if r.deposit:
            if status == 200:
                self._deposited(r, ch)
            else:
                w.spent[r.agent] -= r.deposit
            # the client learns the deposit's outcome with its answer (t_end, maybe still ahead): only then
            # may the requests it held sign against the new balance
            self.clock.at(max(0.0, t_end - self.clock.now), self._deposit_answered, ch)

    def _deposit_answered(self, ch: Channel) -> None:
        ch.pending = False
        waiters, ch.waiters = ch.waiters, []
        for k, (t0, user) in enumerate(waiters):
            if ch.pending:  # a top-up went out: the rest wait for it
                ch.waiters.extend(waiters[k:])
                break
            if not self._dispatch(ch, user, t0):
                break  # the agent is broke: its held requests are never sent

    def _deposited(self, r: ChannelReq, ch: Channel) -> None:
        ch.deposited += r.deposit
        ch.deposits += 1
        # its block is read at the end: a pipelined facilitator answers once the tx is sent, before it is mined
        self._deposit_txs.append((ch, r.row, r.tx, r.deposit_gas, r.deposit))

    def _deposit_records(self) -> list[ChannelTxRecord]:
        """The deposits as channel txs (dating each channel's first deposit on the way)."""
        w = self.world
        out = []
        for ch, row, tx, gas, amount in self._deposit_txs:
            t_included = w.settlements.t_included[row] if row >= 0 else -1.0
            if t_included >= 0 and (ch.t_deposit < 0 or t_included < ch.t_deposit):
                ch.t_deposit = t_included
            out.append(ChannelTxRecord(kind="deposit", tx_hash=tx_hex(tx) if tx >= 0 else "", t_included=t_included,
                                       gas_used=gas, effective_gas_price=self.gas_price_wei, channels=1,
                                       amount=amount, block_number=w.txs.block[tx] if tx >= 0 else -1))
        return out

    # ---- the services' cadence -------------------------------------------------------------------

    def _claim_tick(self, _: object = None) -> None:
        nxt = self.clock.now + self.terms.claim_every_s
        if nxt < self.duration:
            self.clock.at(self.terms.claim_every_s, self._claim_tick)
        if self.stage == 0:
            self._claim()

    def _settle_tick(self, _: object = None) -> None:
        nxt = self.clock.now + self.terms.settle_every_s
        if nxt < self.duration:
            self.clock.at(self.terms.settle_every_s, self._settle_tick)
        if self.stage == 0:
            self._settle()

    def _claim(self) -> int:
        """Claim every channel served beyond its claims, claims_per_tx channels per tx; returns the txs sent."""
        dirty, self._dirty = self._dirty, []
        todo = [ch for ch in dirty if ch.charged > ch.claim_sent]
        for ch in dirty:
            ch.dirty = False
        per = self.terms.claims_per_tx
        sent = 0
        for i in range(0, len(todo), per):
            chunk = todo[i:i + per]
            items = [(ch, ch.charged) for ch in chunk]
            amount = sum(to - ch.claim_sent for ch, to in items)
            for ch, to in items:
                ch.claim_sent = to
            self._send("claim", self.gas.channel_claim(len(chunk)), amount, items)
            sent += 1
        return sent

    def _settle(self) -> int:
        """One settle tx per receiver whose mined claims brought in more than it has settled."""
        sent = 0
        for route, rc in enumerate(self.receivers):
            amount = rc.claimed - rc.settle_sent
            if amount > 0:
                rc.settle_sent = rc.claimed
                self._send("settle", self.gas.channel_settle, amount, [], receiver=route)
                sent += 1
        return sent

    def _refund(self) -> int:
        sent = 0
        for ch in self.books:
            rest = ch.deposited - ch.claimed - ch.refunded
            if rest > 0:
                self._send("refund", self.gas.channel_refund, rest, [(ch, rest)])
                sent += 1
        return sent

    def _send(self, kind: str, gas: int, amount: int, items: list[tuple[Channel, int]], receiver: int = -1) -> None:
        """The services' call reaches the facilitator one hop later, which sends the tx."""
        tx_id = self._ids
        self._ids += 1
        self._sent[tx_id] = (kind, amount, items, receiver)  # before send: automine reports inclusion at once
        self.outstanding += 1
        self.chain.send(Tx(tx_id, gas, -1, self.clock.now + self.hop(), owner=self._included))

    def _included(self, tx: Tx, block_time: float, number: int) -> None:
        kind, amount, items, receiver = self._sent.pop(tx.id)
        self.outstanding -= 1
        self._txs.append(ChannelTxRecord(kind=kind, tx_hash=channel_tx_hex(tx.id), t_included=block_time,
                                         gas_used=tx.gas, effective_gas_price=self.gas_price_wei,
                                         channels=len(items), amount=amount,
                                         block_number=number))
        if kind == "claim":
            for ch, to in items:
                if to > ch.claimed:
                    self.receivers[ch.route].claimed += to - ch.claimed
                    ch.claimed = to
                ch.t_claimed = block_time
                ch.history.append((block_time, ch.claimed))
        elif kind == "settle":
            self.receivers[receiver].settled += amount
        else:
            ch, rest = items[0]
            ch.refunded += rest
        if self.stage and not self.outstanding:
            self._next_stage()

    # ---- the end of the run ----------------------------------------------------------------------

    def close(self) -> None:
        """Arrivals are over and every request answered: the last claim, settle and (optionally) refunds."""
        if self.stage == 0:
            self._next_stage()

    def _next_stage(self) -> None:
        """Run the next closing step that has work; each waits for the previous one's txs to be mined."""
        steps: list[Callable[[], int]] = [self._claim, self._settle, self._refund if self.refund_at_end else _none]
        while self.stage < 3:
            self.stage += 1
            if steps[self.stage - 1]():
                return
        self.stage = 4

    @property
    def busy(self) -> bool:
        """Closing work still to do (run_sim keeps the clock going for it)."""
        return 0 < self.stage < 4 or self.outstanding > 0

    # ---- records ---------------------------------------------------------------------------------

    def channel_records(self) -> list[ChannelRecord]:
        self._deposit_records()  # dates t_deposit
        out = []
        for ch in self.books:
            if not (ch.deposits or ch.vouchers):
                continue
            out.append(ChannelRecord(
                channel=channel_hex(ch.agent, ch.route), payer=address_hex(0xA, ch.agent),
                receiver=address_hex(0xB, ch.route), deposited=ch.deposited, charged=ch.charged, claimed=ch.claimed,
                refunded=ch.refunded, vouchers=ch.vouchers, deposits=ch.deposits, t_deposit=ch.t_deposit,
                t_claimed=ch.t_claimed if ch.claimed == ch.charged and ch.charged else -1.0,
                claims=format_claims(ch.history)))
        return out

    def channel_tx_records(self) -> list[ChannelTxRecord]:
        return sorted(self._deposit_records() + self._txs, key=lambda t: (t.t_included, t.block_number))

    def stats(self, paid: int) -> dict[str, Any]:
        """The books and the gas, for summary meta (sim.channels)."""
        txs = self._deposit_records() + self._txs
        kinds: dict[str, int] = {}
        gas: dict[str, int] = {}
        for t in txs:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
            gas[t.kind] = gas.get(t.kind, 0) + t.gas_used
        scheme_gas = sum(g for k, g in gas.items() if k != "refund")
        return {
            "channels": sum(1 for ch in self.books if ch.deposits),
            "vouchers": sum(ch.vouchers for ch in self.books),
            "deposited": sum(ch.deposited for ch in self.books),
            "charged": sum(ch.charged for ch in self.books),
            "claimed": sum(ch.claimed for ch in self.books),
            "settled": sum(rc.settled for rc in self.receivers),
            "refunded": sum(ch.refunded for ch in self.books),
            "txs": dict(sorted(kinds.items())),
            "gas": dict(sorted(gas.items())),
            # what paying by channel cost per served request: deposits, claims and settles (refunds are
            # the payer's choice at the end, and none is needed while the channel stays open)
            "gas_per_payment": scheme_gas / paid if paid else None,
        }


def _none() -> int:
    return 0


register("scheme", "sim", "batch-settlement", Channels)

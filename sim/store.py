"""Records kept as columns, handed out as RequestRecord / SettlementRecord on demand.

A simulated hour of 100,000 agents is millions of payments; as Python objects (boxed
floats, 66-character hex strings) they would take about a kilobyte each. Columns of
machine numbers take about 150 bytes, and the hex identities (nonce, payer, tx hash)
are derived from indices only when a record is read.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from x402bench.results.records import RequestRecord, SettlementRecord

#: Error codes the sim can produce, stored as a small index (the facilitator's reason codes).
ERRORS = ["", "invalid_exact_evm_payload_authorization_valid_before", "unexpected_verify_error",
          "transaction_failed", "settlement_pending"]
ERR_VALID_BEFORE, ERR_UNEXPECTED_VERIFY, ERR_TRANSACTION_FAILED, ERR_SETTLEMENT_PENDING = 1, 2, 3, 4
#: `released`: a claim given back before any tx was sent (a refused send, a failed chain read at
#: /settle). The live ledger deletes such a row, so released rows are left out of the records.
STATES = ["pending", "settled", "failed", "released"]
PENDING, SETTLED, FAILED, RELEASED = 0, 1, 2, 3


def nonce_hex(seq: int) -> str:
    return f"0x{seq:064x}"


def address_hex(kind: int, index: int) -> str:
    """Fake but well-formed addresses: kind 0xa = agent, 0xb = payee."""
    return f"0x{kind:x}{index:039x}"


def tx_hex(tx_id: int) -> str:
    return f"0x{0xfeed:04x}{tx_id:060x}"


def channel_hex(agent: int, route: int) -> str:
    """A fake but well-formed batch-settlement channel id (bytes32), one per agent and route."""
    return f"0x{0xcc:02x}{agent:031x}{route:031x}"


class RequestColumns:
    """One row per finished payment: a payment retried with the same signed authorization is one row,
    from its first send to its final answer (as the live harness records it), its sends in `attempts`."""

    def __init__(self) -> None:
        self.t_start = array("d")
        self.t_end = array("d")
        self.challenge = array("d")
        self.sign = array("d")
        self.paid = array("d")
        self.verify = array("d")
        self.handler = array("d")
        self.settle = array("d")
        self.route = array("H")
        self.agent = array("l")
        self.status = array("H")
        self.error = array("B")
        self.amount = array("q")
        self.seq = array("q")
        self.tx = array("q")
        self.attempts: dict[int, int] = {}  # row -> sends, only for rows sent more than once
        self.cumulative: dict[int, int] = {}  # row -> the voucher's signed cumulative, batch-settlement rows only

    def __len__(self) -> int:
        return len(self.t_start)


class FailedTally:
    """Failed requests that are counted, not stored: each one's start and answer times and reason, appended to
    machine arrays and handed to a RequestTally (x402bench.results.metrics) a block at a time, so a
    run that refuses millions of requests holds a few hundred kilobytes for them."""

    BLOCK = 1 << 16

    def __init__(self) -> None:
        self.t_start = array("d")
        self.t_end = array("d")
        self.key = array("l")  # status * 256 + error index
        self.total = 0
        self.sink: "Callable[[str, Any, Any], None] | None" = None  # RequestTally.add_failed, once the run sets it
        self._held: list[tuple[Any, Any, Any]] = []  # blocks waiting for a sink

    def add(self, t_start: float, t_end: float, status: int, error: int) -> None:
        self.t_start.append(t_start)
        self.t_end.append(t_end)
        self.key.append(status * 256 + error)
        self.total += 1
        if len(self.t_end) >= self.BLOCK:
            self.flush()

    def add_many(self, t_start: "Any", t_end: "Any", status: int, error: int) -> None:
        """A block of requests refused alike (the sim's bulk path for requests that cannot be served)."""
        import numpy as np

        n = int(np.size(t_start))
        if not n:
            return
        self.total += n
        self._deliver(np.asarray(t_start, dtype=np.float64), np.asarray(t_end, dtype=np.float64),
                      np.full(n, status * 256 + error, dtype=np.int64))

    def flush(self) -> None:
        import numpy as np

        if not len(self.t_end):
            return
        t = np.frombuffer(self.t_start, dtype=np.float64).copy()
        e = np.frombuffer(self.t_end, dtype=np.float64).copy()
        k = np.frombuffer(self.key, dtype=np.int64 if self.key.itemsize == 8 else np.int32).astype(np.int64)
        self.t_start = array("d")
        self.t_end = array("d")
        self.key = array("l")
        self._deliver(t, e, k)

    def _deliver(self, t: "Any", e: "Any", k: "Any") -> None:
        if self.sink is None:
            self._held.append((t, e, k))
            return
        for held in self._held:
            self._give(*held)
        self._held.clear()
        self._give(t, e, k)

    def _give(self, t: "Any", e: "Any", k: "Any") -> None:
        import numpy as np

        for key in np.unique(k).tolist():
            mask = k == key
            self.sink(reason_of(key // 256, key % 256), t[mask], e[mask])  # type: ignore[misc]


class ParquetSpill:
    """Every finished request, written to a Parquet file a row group at a time as the run goes
    (`--records parquet`): all of them, in fixed memory, for runs whose refused requests are too many
    for requests.csv. One row per request in completion order (not sorted), with the same times and
    codes as the records but numbers, not hex: seq (the nonce's number), agent and tx id; route and
    error as names. Needs pyarrow (imported only here)."""

    BLOCK = 1 << 16

    def __init__(self, path: "str | Any", routes: list[str]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("--records parquet needs pyarrow (pip install pyarrow)") from None
        self._pa, self._pq = pa, pq
        self.path = path
        self.routes = routes
        self.cols = RequestColumns()
        self.rows = 0
        self._writer: Any = None

    def add(self, t_start: float, t_end: float, challenge: float, sign: float, paid: float, verify: float,
            handler: float, settle: float, route: int, agent: int, status: int, error: int, amount: int,
            seq: int, tx: int) -> None:
        c = self.cols
        c.t_start.append(t_start)
        c.t_end.append(t_end)
        c.challenge.append(challenge)
        c.sign.append(sign)
        c.paid.append(paid)
        c.verify.append(verify)
        c.handler.append(handler)
        c.settle.append(settle)
        c.route.append(route)
        c.agent.append(agent)
        c.status.append(status)
        c.error.append(error)
        c.amount.append(amount)
        c.seq.append(seq)
        c.tx.append(tx)
        if len(c) >= self.BLOCK:
            self.flush()

    def add_arrays(self, **columns: "Any") -> None:
        """A block given as arrays (the sim's bulk refusals), every RequestColumns field by name."""
        self.flush()
        self._write({k: columns[k] for k in _PARQUET_FIELDS})

    def flush(self) -> None:
        import numpy as np

        c = self.cols
        if not len(c):
            return
        data = {k: np.frombuffer(getattr(c, k), dtype=np.dtype(getattr(c, k).typecode)).copy()
                for k in _PARQUET_FIELDS}
        self.cols = RequestColumns()
        self._write(data)

    def _write(self, data: dict[str, "Any"]) -> None:
        import numpy as np

        pa = self._pa
        n = len(data["t_start"])
        if not n:
            return
        route = pa.DictionaryArray.from_arrays(np.asarray(data["route"], dtype=np.int32), pa.array(self.routes))
        error = pa.DictionaryArray.from_arrays(np.asarray(data["error"], dtype=np.int32), pa.array(ERRORS))
        table = pa.table({
            **{k: pa.array(np.asarray(data[k], dtype=np.float64)) for k in
               ("t_start", "t_end", "challenge", "sign", "paid", "verify", "handler", "settle")},
            "route": route, "agent": pa.array(np.asarray(data["agent"], dtype=np.int64)),
            "status": pa.array(np.asarray(data["status"], dtype=np.int16)), "error": error,
            "amount": pa.array(np.asarray(data["amount"], dtype=np.int64)),
            "seq": pa.array(np.asarray(data["seq"], dtype=np.int64)),
            "tx": pa.array(np.asarray(data["tx"], dtype=np.int64)),
        })
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(str(self.path), table.schema)
        self._writer.write_table(table)
        self.rows += n

    def close(self) -> None:
        self.flush()
        if self._writer is None:  # no request at all: an empty file with the schema still says so
            self._write({k: [] for k in _PARQUET_FIELDS})
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_PARQUET_FIELDS = ("t_start", "t_end", "challenge", "sign", "paid", "verify", "handler", "settle", "route", "agent",
                   "status", "error", "amount", "seq", "tx")


def reason_of(status: int, error: int) -> str:
    """x402bench.results.metrics.error_reason for a stored status and error index."""
    if error:
        return ERRORS[error]
    return "transport_error" if status == 0 else f"http_{status}"


class SettlementColumns:
    """One row per payment the facilitator accepted (row index = acceptance order)."""

    def __init__(self) -> None:
        self.seq = array("q")
        self.agent = array("l")
        self.payee = array("H")
        self.amount = array("q")
        self.t_accepted = array("d")
        self.t_submitted = array("d")
        self.t_included = array("d")
        self.state = array("B")
        self.tx = array("q")
        self.error = array("B")

    def __len__(self) -> int:
        return len(self.seq)

    def accept(self, seq: int, agent: int, payee: int, amount: int, t: float) -> int:
        row = len(self.seq)
        self.seq.append(seq)
        self.agent.append(agent)
        self.payee.append(payee)
        self.amount.append(amount)
        self.t_accepted.append(t)
        self.t_submitted.append(-1.0)
        self.t_included.append(-1.0)
        self.state.append(PENDING)
        self.tx.append(-1)
        self.error.append(0)
        return row


class TxColumns:
    """One row per settlement tx (row index = tx id)."""

    def __init__(self) -> None:
        self.block = array("q")
        self.gas = array("q")
        self.size = array("l")

    def new(self, gas: int, size: int) -> int:
        self.block.append(-1)
        self.gas.append(gas)
        self.size.append(size)
        return len(self.gas) - 1


class Names:
    """Hex identities made once and shared: a payer's address by all its records, a nonce by the
    request and the settlement it paid for, a tx hash by every payment in the tx."""

    def __init__(self) -> None:
        self._agents: dict[int, str] = {}
        self._payees: dict[int, str] = {}
        self._nonces: dict[int, str] = {}
        self._txs: dict[int, str] = {}
        self._ints: dict[int, int] = {}
        self._channels: dict[tuple[int, int], str] = {}

    def channel(self, agent: int, route: int) -> str:
        name = self._channels.get((agent, route))
        if name is None:
            name = self._channels[(agent, route)] = channel_hex(agent, route)
        return name

    def num(self, value: int) -> int:
        """One int object per value (agent indices, amounts, gas, block numbers repeat across records)."""
        return self._ints.setdefault(value, value)

    def agent(self, i: int) -> str:
        name = self._agents.get(i)
        if name is None:
            name = self._agents[i] = address_hex(0xA, i)
        return name

    def payee(self, i: int) -> str:
        name = self._payees.get(i)
        if name is None:
            name = self._payees[i] = address_hex(0xB, i)
        return name

    def nonce(self, seq: int, keep: bool) -> str:
        """keep=True while the other record of this payment is still to be made."""
        name = self._nonces.pop(seq, None)
        if name is None:
            name = nonce_hex(seq)
            if keep:
                self._nonces[seq] = name
        return name

    def tx(self, tx_id: int, keep: bool = True) -> str:
        """keep=False for the last record expected to name this tx (a settlement), so the table stays small."""
        if tx_id < 0:
            return ""
        name = self._txs.pop(tx_id, None) if not keep else self._txs.get(tx_id)
        if name is None:
            name = tx_hex(tx_id)
            if keep:
                self._txs[tx_id] = name
        return name


class RequestView(Sequence[RequestRecord]):
    """Request records in (t_start, agent) order, built on access."""

    def __init__(self, cols: RequestColumns, routes: list[str], order: Sequence[int],
                 names: Names | None = None) -> None:
        self.cols = cols
        self.routes = routes
        self.order = order
        self.names = names or Names()

    def __len__(self) -> int:
        return len(self.order)

    def _make(self, i: int, keep: bool = False) -> RequestRecord:
        c = self.cols
        n = self.names
        if c.cumulative:
            cumulative = c.cumulative.get(i)
            if cumulative is not None:
                return self._make_channel(i, cumulative)
        return RequestRecord(
            t_start=c.t_start[i], t_end=c.t_end[i], route=self.routes[c.route[i]], agent=n.num(c.agent[i]),
            status=c.status[i], error=ERRORS[c.error[i]], challenge_s=c.challenge[i], sign_s=c.sign[i],
            paid_s=c.paid[i], verify_s=c.verify[i], handler_s=c.handler[i], settle_s=c.settle[i],
            amount=n.num(c.amount[i]),
            payer=n.agent(c.agent[i]), nonce=n.nonce(c.seq[i], keep), tx_hash=n.tx(c.tx[i]),
            attempts=c.attempts.get(i, 1) if c.attempts else 1,
        )

    def _make_channel(self, i: int, cumulative: int) -> RequestRecord:
        """A batch-settlement request: no nonce of its own (a voucher is not an authorization), its channel
        and the voucher's cumulative; a deposit names its deposit tx."""
        c = self.cols
        n = self.names
        agent, route = c.agent[i], c.route[i]
        return RequestRecord(
            t_start=c.t_start[i], t_end=c.t_end[i], route=self.routes[route], agent=n.num(agent),
            status=c.status[i], error=ERRORS[c.error[i]], challenge_s=c.challenge[i], sign_s=c.sign[i],
            paid_s=c.paid[i], verify_s=c.verify[i], handler_s=c.handler[i], settle_s=c.settle[i],
            amount=n.num(c.amount[i]), payer=n.agent(agent), nonce="", tx_hash=n.tx(c.tx[i]),
            attempts=c.attempts.get(i, 1) if c.attempts else 1,
            scheme="batch-settlement", channel=n.channel(agent, route), cumulative=cumulative,
        )

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        if isinstance(index, slice):
            return [self._make(i) for i in self.order[index]]
        return self._make(self.order[index])

    def __iter__(self) -> Iterator[RequestRecord]:
        make = self._make
        for i in self.order:
            yield make(i)


class SettlementView(Sequence[SettlementRecord]):
    """Settlement records in acceptance order (t_accepted, then row), built on access."""

    def __init__(self, cols: SettlementColumns, txs: TxColumns, gas_price_wei: int, order: Sequence[int],
                 names: Names | None = None) -> None:
        self.cols = cols
        self.txs = txs
        self.gas_price_wei = gas_price_wei
        self.order = order
        self.names = names or Names()

    def __len__(self) -> int:
        return len(self.order)

    def _make(self, i: int) -> SettlementRecord:
        c = self.cols
        tx = c.tx[i]
        t = self.txs
        n = self.names
        return SettlementRecord(
            nonce=n.nonce(c.seq[i], False), payer=n.agent(c.agent[i]), payee=n.payee(c.payee[i]),
            amount=n.num(c.amount[i]), t_accepted=c.t_accepted[i], t_submitted=c.t_submitted[i],
            t_included=c.t_included[i], state=STATES[c.state[i]],
            tx_hash=n.tx(tx, t.size[tx] > 1 if tx >= 0 else False),
            block_number=n.num(t.block[tx]) if tx >= 0 else -1, gas_used=n.num(t.gas[tx]) if tx >= 0 else 0,
            effective_gas_price=self.gas_price_wei if tx >= 0 else 0, batch_size=t.size[tx] if tx >= 0 else 1,
            error=ERRORS[c.error[i]],
        )

    @overload
    def __getitem__(self, index: int) -> SettlementRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[SettlementRecord]: ...

    def __getitem__(self, index: int | slice) -> SettlementRecord | list[SettlementRecord]:
        if isinstance(index, slice):
            return [self._make(i) for i in self.order[index]]
        return self._make(self.order[index])

    def __iter__(self) -> Iterator[SettlementRecord]:
        make = self._make
        for i in self.order:
            yield make(i)


def materialize(requests: RequestView,
                settlements: SettlementView) -> tuple[list[RequestRecord], list[SettlementRecord]]:
    """Both record lists at once, sharing every hex string between them (about a third less memory)."""
    names = Names()
    requests.names = settlements.names = names
    accepted = set(settlements.cols.seq.tolist())
    seq = requests.cols.seq
    rq = [requests._make(i, seq[i] in accepted) for i in requests.order]
    st = list(settlements)
    names._nonces.clear()
    names._txs.clear()
    names._ints.clear()
    return rq, st

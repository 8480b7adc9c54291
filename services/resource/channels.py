"""The services' claim and settle cadence for batch-settlement channels.

A service holds its payers' latest vouchers; the money reaches the payee only when they are claimed
(claimWithSignature, `claims_per_tx` channels per tx) and the claimed total settled (one settle tx
per receiver and token). The keeper does both in the background, every `claim_every_s` and
`settle_every_s`, around the SDK channel manager's own claim and settle.

Why not the manager's auto timers (`start(AutoSettlementConfig)`): their intervals are integer
seconds by contract, and their jobs do not share a lock with calls made from outside (the harness
route, the shutdown flush), so a timer's claim and a harness claim of the same vouchers could both
go out. Here one lock serialises every claim and settle of the service.

Why a settle can happen without a new claim: a claim that landed but whose settle failed (the
facilitator died between the two) is on chain, claimed and unsettled; the keeper remembers that a
settle is owed (and assumes one is at start, since it cannot know what its predecessor left) and
settles at the next tick, until the facilitator says there is nothing to settle.

On shutdown the keeper claims and settles what it holds, within `flush_s`.

Several services processes (Scenario.service_processes > 1) share one channel store (SqliteChannelStorage's
shared mode) and must act as one keeper, or each would claim on its own cadence (twice the claim txs, and
two claims of one voucher racing). `ProcessLocks` holds two OS file locks (fcntl.flock) in the channel dir:
- `keeper.lock`, the election: only the process holding it runs the cadence. It is taken without blocking
  and kept until the process exits (the OS releases it then, however the process ends: SIGKILL included);
  every other process tries again at each tick, so when the keeper dies another takes over within a tick.
  A process that becomes keeper assumes a settle is owed, as a keeper does at start.
- `claims.lock`, a mutex around every claim and settle, whichever process runs it: the keeper's ticks, the
  harness route (answered by whichever process the kernel gave the connection to) and each process's
  shutdown flush. A claim reads the channels, submits, and writes totalClaimed back: two at once would claim
  one voucher twice. The flush runs in every process as it stops; after the first, nothing is unclaimed
  (unless that process served vouchers since), so only one flush sends txs.
The counts the status and the harness route report (claim txs, vouchers and amount claimed, settles, errors,
whether a settle is owed, which process is keeper) then live in the shared SQLite file (its `books` table),
updated in one transaction each, so every process answers the same figures.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from services.background import stop_tasks

log = logging.getLogger("x402bench.resource.channels")

NOTHING_TO_SETTLE = "invalid_batch_settlement_evm_nothing_to_settle"
#: How often a process waiting for the claims lock looks again.
CLAIM_LOCK_POLL_S = 0.01


def _initial_book() -> dict[str, Any]:
    # settle_owed: unknown at start, a predecessor may have claimed without settling
    return {"claim_txs": 0, "claimed_vouchers": 0, "claimed_amount": 0, "settle_txs": 0, "errors": 0,
            "last_error": None, "last_claim_at": None, "last_settle_at": None, "settle_owed": True,
            "keeper_pid": None}


class MemoryBook:
    """The keeper's counts in this process (one services process)."""

    def __init__(self) -> None:
        self._value = _initial_book()

    def read(self) -> dict[str, Any]:
        return dict(self._value)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        change(self._value)
        return dict(self._value)


class SharedBook:
    """The keeper's counts in the shared channel store, changed in one transaction each (several processes)."""

    KEY = "keeper"

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def read(self) -> dict[str, Any]:
        return {**_initial_book(), **(self.storage.read_book(self.KEY) or {})}

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        def apply(value: Any) -> dict[str, Any]:
            book = {**_initial_book(), **copy.deepcopy(value or {})}
            change(book)
            return book
        return self.storage.update_book(self.KEY, apply)


class ProcessLocks:
    """The keeper election and the claims mutex of several services processes (module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._keeper = os.open(Path(directory) / "keeper.lock", os.O_CREAT | os.O_RDWR, 0o600)
        self._claims = os.open(Path(directory) / "claims.lock", os.O_CREAT | os.O_RDWR, 0o600)
        self.leading = False

    def try_lead(self) -> bool:
        """True if this process is the keeper (taking the lock if it is free); never waits."""
        if not self.leading:
            try:
                fcntl.flock(self._keeper, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.leading = True
        return True

    @asynccontextmanager
    async def claiming(self) -> AsyncIterator[None]:
        """Hold the claims lock (waiting without blocking the event loop while another process holds it)."""
        while True:
            try:
                fcntl.flock(self._claims, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(CLAIM_LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(self._claims, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._keeper, self._claims):
            try:
                os.close(fd)  # releases the locks (the OS does it at exit anyway)
            except OSError:
                pass
        self.leading = False


@dataclass
class ChannelKeeper:
    manager: Any  # the SDK's BatchSettlementChannelManager
    scheme: Any  # the SDK's server BatchSettlementEvmScheme (its storage holds the channels)
    claims_per_tx: int
    claim_every_s: float
    settle_every_s: float
    flush_s: float = 5.0
    locks: ProcessLocks | None = None  # several services processes: the election and the claims mutex
    book: Any = field(default_factory=MemoryBook)  # MemoryBook, or SharedBook with `locks`
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        book = self.book.read()
        book.pop("settle_owed")
        book.pop("keeper_pid")
        return book

    @property
    def settle_owed(self) -> bool:
        return bool(self.book.read()["settle_owed"])

    def start(self) -> None:
        self._lead()
        self._tasks = [asyncio.create_task(self._every(self.claim_every_s, self._claim_tick), name="bs-claim"),
                       asyncio.create_task(self._every(self.settle_every_s, self._settle_tick), name="bs-settle")]

    async def stop(self) -> None:
        """Stop the timers, then claim and settle what is held (at most `flush_s`)."""
        await stop_tasks(*self._tasks)
        self._tasks = []
        try:
            await asyncio.wait_for(self.claim_and_settle(), self.flush_s)
        except Exception as exc:  # noqa: BLE001 - a shutdown must end; the vouchers stay in the durable storage
            log.warning("shutdown claim/settle did not finish: %r", exc)
        if self.locks is not None:
            self.locks.close()

    def _lead(self) -> bool:
        """Whether this process runs the cadence: always with one process; with several, if it holds (or now
        takes) the keeper lock. A new keeper assumes a settle is owed: its predecessor may have died between
        a claim and its settle."""
        if self.locks is None:
            return True
        was = self.locks.leading
        if not self.locks.try_lead():
            return False
        if not was:
            pid = os.getpid()

            def became(book: dict[str, Any]) -> None:
                book["keeper_pid"], book["settle_owed"] = pid, True
            self.book.update(became)
            log.info("process %d is the channel keeper", pid)
        return True

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """This process's lock, then (several processes) the claims lock: one claim or settle at a time."""
        async with self._lock:
            if self.locks is None:
                yield
            else:
                async with self.locks.claiming():
                    yield

    async def _every(self, interval_s: float, job: Any) -> None:
        """Run `job` on a fixed grid of `interval_s` (a late run does not shift the next one; missed ones are
        skipped, not queued)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + interval_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed tick (facilitator down) is retried next tick
                self._count_error(exc)
                log.warning("channel %s failed: %s", getattr(job, "__name__", "job"), exc)
            now = loop.time()
            due += interval_s * max(1, int((now - due) // interval_s) + 1)

    def _count_error(self, exc: BaseException) -> None:
        def failed(book: dict[str, Any]) -> None:
            book["errors"] += 1
            book["last_error"] = str(exc)[:300]
        self.book.update(failed)

    def unclaimed(self) -> dict[str, int]:
        return {c.channel_id: int(c.charged_cumulative_amount) - int(c.total_claimed)
                for c in self.scheme.get_storage().list() if int(c.charged_cumulative_amount) > int(c.total_claimed)}

    async def _claim_tick(self) -> None:
        if not self._lead():
            return
        async with self._exclusive():
            await self._claim()

    async def _settle_tick(self) -> None:
        if not self._lead():
            return
        async with self._exclusive():
            await self._settle()

    async def _claim(self, owed: dict[str, int] | None = None) -> list[Any]:
        """Claim every channel's charged-but-unclaimed vouchers. `owed` (filled in when given): what each
        claimed channel owed, read from the very records the manager claimed from (so a voucher charged by
        another request while the claim is out is neither counted as claimed nor lost)."""
        from x402.mechanisms.evm.batch_settlement.server import ClaimOptions

        owed = {} if owed is None else owed
        if not self.unclaimed():
            return []

        def targets(channels: list[Any], _context: Any) -> list[Any]:
            owed.update({c.channel_id: int(c.charged_cumulative_amount) - int(c.total_claimed)
                         for c in channels if int(c.charged_cumulative_amount) > int(c.total_claimed)})
            return channels

        results = await self.manager.claim(ClaimOptions(max_claims_per_batch=self.claims_per_tx,
                                                        select_claim_channels=targets))
        if results:
            def claimed(book: dict[str, Any]) -> None:
                book["settle_owed"] = True
                book["claim_txs"] += len(results)
                book["claimed_vouchers"] += sum(r.vouchers for r in results)
                book["claimed_amount"] += sum(owed.values())
                book["last_claim_at"] = time.time()
            self.book.update(claimed)
        return results

    async def _settle(self) -> Any:
        if not self.settle_owed:
            return None
        try:
            result = await self.manager.settle()
        except RuntimeError as exc:
            if NOTHING_TO_SETTLE in str(exc):
                self.book.update(lambda book: book.update(settle_owed=False))
                return None
            raise

        def settled(book: dict[str, Any]) -> None:
            book["settle_owed"] = False
            book["settle_txs"] += 1
            book["last_settle_at"] = time.time()
        self.book.update(settled)
        return result

    async def claim_and_settle(self) -> dict[str, Any]:
        """Claim every channel's charged-but-unclaimed vouchers, then settle what is owed (also a settle
        an earlier claim left owed)."""
        owed: dict[str, int] = {}
        async with self._exclusive():
            claims = await self._claim(owed)
            settle = await self._settle()
        return {
            "claims": [{"transaction": c.transaction, "vouchers": c.vouchers} for c in claims],
            "channels": {cid: str(amount) for cid, amount in owed.items()},
            "claimed": str(sum(owed.values())),
            "settle_transaction": settle.transaction if settle is not None else None,
        }

    def status(self) -> dict[str, Any]:
        unclaimed = self.unclaimed()
        channels = self.scheme.get_storage().list()
        book = self.book.read()
        if self.locks is None:
            book.pop("keeper_pid")
            keeper: dict[str, Any] = {}
        else:
            keeper = {"pid": os.getpid(), "keeper": self.locks.leading}
        return {**book, "channels": len(channels),
                "charged": {c.channel_id: c.charged_cumulative_amount for c in channels},
                "unclaimed_channels": len(unclaimed), "unclaimed_amount": str(sum(unclaimed.values())),
                "claim_every_s": self.claim_every_s, "settle_every_s": self.settle_every_s, **keeper}

"""Where the priced services keep their batch-settlement channels: durable, and cheap on the voucher path.

A service's channel records are money: each holds the latest voucher a payer signed, the only
thing the service can claim with. A service restarted mid-run with its channels in memory would
have served those vouchers for nothing. So the records are written through to a file on every
change, and read back at start.

Why not the SDK's FileChannelStorage: it writes one JSON file per channel through a lock file made
with O_EXCL and polls for it forever, so a service killed while holding one (SIGKILL mid-update)
hangs on that channel after its restart; its `list()`, which every claim runs, reads and parses every
file; and every access is blocking file I/O on the event loop.

`SqliteChannelStorage` keeps the working set in a dict (reads and `list()` cost what the SDK's
InMemoryChannelStorage costs) and writes each change that matters after a restart to SQLite in WAL mode
with synchronous=NORMAL before the update returns: a change survives the process being killed at any
instant (the WAL is in the OS's hands once written); only a power loss may take the last few. What
does not matter after a restart is not written: a request's reservation (pendingRequest), which dies
with the process anyway, so a paid voucher request costs one write (its charge), not two. It implements the SDK's
ChannelStorage protocol with the in-memory storage's semantics (copies in and out; an update
returning the same object changes nothing, returning None deletes).

WAL checkpoints (copying the log back into the database, with an fsync) run in a thread of the storage's
own, every CHECKPOINT_EVERY_S, instead of inside whichever write crosses SQLite's 1,000-page threshold:
that write, on the event loop, stalled the whole service for the checkpoint (measured here, 20,000 upserts
of a channel-sized record: mean 32 us, but up to 44 ms each for the ~1% that checkpointed, half of all
write time). A checkpoint changes nothing about durability: the WAL is in the OS's hands at every write.

Measured (`python -m services.facilitator.bench_channels --only storage`, one services process, a
shared 2-core machine, ranges over three runs of best-of-3 rounds): storage work per paid voucher
request in process, memory 18-25 us, FileChannelStorage 1.6-2.8 ms, this one 53-59 us; a voucher
request's p50 over HTTP 3.4-4.8 ms, 5.2-6.3 ms and 3.5-4.3 ms; voucher requests/s with 8 payers at once
256-353, 171-217 and 298-335. Durable at about the in-memory storage's cost (the gap is within the
machine's noise); the SDK's file storage costs a third of the throughput.

Shared mode (`shared=True`, used whenever Scenario.service_processes > 1): several services processes serve
one address and a payer's consecutive vouchers may land on different ones, so no process may trust a copy
of a channel it holds: every `get` and `list` reads the record from SQLite, and every `update_channel` is one
`BEGIN IMMEDIATE` transaction (read the current record, apply the SDK's update callback, write, commit), so
two processes updating one channel are serialised by SQLite's write lock. The in-flight reservation
(pendingRequest) is then written too, because it is how the SDK keeps one channel to one request at a time:
its after_verify refuses a request as busy when the stored record holds another live reservation, and its
before_settle charges only when the stored record still holds *this* request's reservation. Kept in one
process's memory, another process would see no reservation, reserve the same cumulative amount, and the
commit of each would read a record without its own reservation (`channel_busy` for both, or, for a record
read before the other's commit, a double reservation of one voucher). A reservation names the process that
made it (`pending_pid`): one of a process that is gone (killed mid-request) is dropped when read, so a crash
does not hold its channels busy for the reservation's whole TTL (up to 5 minutes).

In shared mode a channel's totalClaimed never goes down: a request reads its snapshot in before_verify and
writes the snapshot's totalClaimed back in after_verify; in one process nothing runs between the two hooks,
but across processes another one's claim may land in between, and writing the older figure back would make
the next claim claim (and count) that channel again.

Why our own retry around BEGIN IMMEDIATE instead of SQLite's busy timeout alone: SQLite's busy handler sleeps
1 ms at its first retry, on the event loop, while the other process holds the write lock for some tens of
microseconds; so the begin is retried here from 20 us, doubling to 1 ms, up to BUSY_TIMEOUT_S (after which the
error is raised: the SDK's hook answers it as verification state unavailable). Plain reads never wait in WAL mode.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from typing import Any

from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelUpdate,
    ChannelUpdateResult,
    InMemoryChannelStorage,
)
from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

STORAGE_KINDS = ("sqlite", "file", "memory")
#: How often the checkpoint thread copies the WAL back into the database file.
CHECKPOINT_EVERY_S = 1.0
#: Shared mode: how long a write waits for another process's transaction before it gives up.
BUSY_TIMEOUT_S = 10.0


class SqliteChannelStorage:
    """The SDK's ChannelStorage, held in memory and written through to one SQLite file; with `shared`, held in
    the file alone, for several processes at once (module docstring)."""

    def __init__(self, path: str | Path, shared: bool = False) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.shared = shared
        self._lock = threading.RLock()  # the SDK's hooks may call in from threads; one lock, held microseconds
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_S)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it, off the event loop
        with self._write():
            self._db.execute("CREATE TABLE IF NOT EXISTS channels (id TEXT PRIMARY KEY, record TEXT NOT NULL)")
            if "pending_pid" not in {r[1] for r in self._db.execute("PRAGMA table_info(channels)")}:
                # which process holds a record's reservation (shared mode; NULL otherwise)
                self._db.execute("ALTER TABLE channels ADD COLUMN pending_pid INTEGER")
            self._db.execute("CREATE TABLE IF NOT EXISTS books (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._pid = os.getpid()
        self._dead: set[int] = set()  # processes seen gone: their reservations are dropped when read
        self._channels: dict[str, Channel] = {}
        self._written: dict[str, dict[str, Any]] = {}
        if not shared:
            self._channels = {cid: Channel.from_dict(json.loads(record))
                              for cid, record in self._db.execute("SELECT id, record FROM channels")}
            for channel in self._channels.values():
                channel.pending_request = None  # a reservation of a process that is gone
            self._written = {cid: _durable_part(c) for cid, c in self._channels.items()}
        self._path = str(path)
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="channel-checkpoints", daemon=True)
        self._checkpointer.start()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One BEGIN IMMEDIATE transaction (SQLite's write lock, across processes), committed on success and
        rolled back on any error; the begin is retried quickly while another process holds the lock."""
        with self._lock:
            wait, deadline = 20e-6, time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    busy = "locked" in str(exc) or "busy" in str(exc)
                    if not busy or time.monotonic() > deadline:
                        raise
                    time.sleep(wait)
                    wait = min(2 * wait, 1e-3)
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _gone(self, pid: int | None) -> bool:
        """True when the process that made a reservation no longer exists (checked once per process id)."""
        if pid is None or pid == self._pid:
            return False
        if pid in self._dead:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self._dead.add(pid)
            return True
        except PermissionError:
            return False
        return False

    def _read(self, key: str) -> Channel | None:
        """Shared mode: the stored record, its reservation dropped when the reserving process is gone."""
        row = self._db.execute("SELECT record, pending_pid FROM channels WHERE id = ?", (key,)).fetchone()
        return self._decode(row) if row else None

    def _decode(self, row: tuple[str, int | None]) -> Channel:
        channel = Channel.from_dict(json.loads(row[0]))
        if channel.pending_request is not None and self._gone(row[1]):
            channel.pending_request = None
        return channel

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints on a connection of this thread: they never block the writer, and the GIL is
        released while SQLite copies and syncs."""
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            while not self._closing.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or closing: the next one catches up
        finally:
            db.close()

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join(timeout=5)
        with self._lock:
            self._db.close()

    def get(self, channel_id: str) -> Channel | None:
        key = normalize_channel_id(channel_id)
        with self._lock:
            if self.shared:
                return self._read(key)
            channel = self._channels.get(key)
            return channel.copy() if channel else None

    def list(self) -> list[Channel]:
        with self._lock:
            if self.shared:
                return [self._decode(row) for row in self._db.execute("SELECT record, pending_pid FROM channels")]
            return [c.copy() for c in self._channels.values()]

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        key = normalize_channel_id(channel_id)
        if self.shared:
            return self._update_shared(key, update)
        with self._lock:  # one lock for all channels: updates are microseconds, and the update callback is pure
            current = self._channels.get(key)
            following, unchanged = _applied(update, current)
            if unchanged is not None:
                return unchanged
            if following is None:
                self._db.execute("DELETE FROM channels WHERE id = ?", (key,))
                del self._channels[key]
                self._written.pop(key, None)
                return ChannelUpdateResult(channel=None, status="deleted")
            durable = _durable_part(following)
            if durable != self._written.get(key):  # a reservation alone (every request's first update) is not written
                record = {**durable, "lastRequestTimestamp": following.last_request_timestamp}
                self._db.execute("INSERT INTO channels (id, record) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
                                 "record = excluded.record", (key, json.dumps(record, separators=(",", ":"))))
                self._written[key] = durable
            self._channels[key] = following
            return ChannelUpdateResult(channel=following.copy(), status="updated")

    def _update_shared(self, key: str, update: ChannelUpdate) -> ChannelUpdateResult:
        """Read, apply, write and commit in one transaction: no other process changes the record in between."""
        with self._write():
            row = self._db.execute("SELECT record, pending_pid FROM channels WHERE id = ?", (key,)).fetchone()
            current = self._decode(row) if row else None
            following, unchanged = _applied(update, current)
            if unchanged is not None:
                return unchanged
            if following is None:
                self._db.execute("DELETE FROM channels WHERE id = ?", (key,))
                return ChannelUpdateResult(channel=None, status="deleted")
            if current is not None and int(following.total_claimed) < int(current.total_claimed):
                following = following.copy()  # a snapshot read before another process's claim landed
                following.total_claimed = current.total_claimed
            # the reservation's maker: this process for a new one, the same as before for one carried over (a claim
            # updating a channel another process has reserved must not make the reservation this process's)
            pending, before = following.pending_request, current.pending_request if current else None
            kept = pending is not None and before is not None and pending.pending_id == before.pending_id
            pid = (row[1] if kept and row else self._pid) if pending is not None else None
            self._db.execute("INSERT INTO channels (id, record, pending_pid) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                             "SET record = excluded.record, pending_pid = excluded.pending_pid",
                             (key, json.dumps(following.to_dict(), separators=(",", ":")), pid))
            return ChannelUpdateResult(channel=following.copy(), status="updated")

    # --- small shared books beside the channels (the keeper's counts, in shared mode) -------------------

    def read_book(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM books WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def read_books(self, prefix: str) -> dict[str, Any]:
        """Every value whose key starts with `prefix`."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM books WHERE key >= ? AND key < ?",
                                    (prefix, prefix + "\uffff")).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def update_book(self, key: str, update: Callable[[Any], Any]) -> Any:
        """Apply `update` to the value under `key` (None when absent) in one transaction; returns the new value."""
        with self._write():
            row = self._db.execute("SELECT value FROM books WHERE key = ?", (key,)).fetchone()
            value = update(json.loads(row[0]) if row else None)
            self._db.execute("INSERT INTO books (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", (key, json.dumps(value, separators=(",", ":"))))
            return value


def _applied(update: ChannelUpdate, current: Channel | None) -> tuple[Channel | None, ChannelUpdateResult | None]:
    """The SDK's update callback on a copy of `current`, with the in-memory storage's semantics: (record, None) to
    write the new record, (None, None) to delete the current one, (_, result) when nothing changes (the callback
    returned its argument, or deleted what was not there)."""
    snapshot = current.copy() if current else None
    following = update(snapshot)
    if following is snapshot:
        return None, ChannelUpdateResult(channel=current.copy() if current else None, status="unchanged")
    if following is None and current is None:
        return None, ChannelUpdateResult(channel=None, status="unchanged")
    return following, None


def _durable_part(channel: Channel) -> dict[str, Any]:
    """What must survive the process: everything but the in-flight reservation (a request in flight dies with
    the process; kept, it would hold the channel busy for its whole TTL after a restart) and the last request's
    timestamp (only idle-refund selection reads it; it is written along with every other change)."""
    record = channel.to_dict()
    record.pop("pendingRequest", None)
    record.pop("lastRequestTimestamp", None)
    return record


def make_storage(kind: str, directory: str | Path, shared: bool = False) -> Any:
    """`sqlite` (durable, the default), `file` (the SDK's FileChannelStorage, for comparison) or `memory`
    (the SDK's InMemoryChannelStorage: lost on restart). `shared`: several processes use the channels at once
    (only `sqlite` can; the others would give each process channels of its own, or lock files with no wait)."""
    if shared and kind != "sqlite":
        raise ValueError(f"channel storage {kind!r} cannot be shared by several services processes; use sqlite")
    if kind == "sqlite":
        return SqliteChannelStorage(Path(directory) / "channels.sqlite", shared=shared)
    if kind == "file":
        from x402.mechanisms.evm.batch_settlement.server.file_storage import FileChannelStorage

        return FileChannelStorage(str(directory))
    if kind == "memory":
        return InMemoryChannelStorage()
    raise ValueError(f"channel storage {kind!r}: choose one of {', '.join(STORAGE_KINDS)}")

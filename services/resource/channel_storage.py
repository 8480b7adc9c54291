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
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
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


class SqliteChannelStorage:
    """The SDK's ChannelStorage, held in memory and written through to one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it, off the event loop
        self._db.execute("CREATE TABLE IF NOT EXISTS channels (id TEXT PRIMARY KEY, record TEXT NOT NULL)")
        self._channels: dict[str, Channel] = {
            cid: Channel.from_dict(json.loads(record)) for cid, record in self._db.execute("SELECT id, record FROM channels")}
        self._written: dict[str, dict[str, Any]] = {cid: _durable_part(c) for cid, c in self._channels.items()}
        self._lock = threading.RLock()  # the SDK's hooks may call in from threads; one lock, held microseconds
        self._path = str(path)
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="channel-checkpoints", daemon=True)
        self._checkpointer.start()

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
            channel = self._channels.get(key)
            return channel.copy() if channel else None

    def list(self) -> list[Channel]:
        with self._lock:
            return [c.copy() for c in self._channels.values()]

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        key = normalize_channel_id(channel_id)
        with self._lock:  # one lock for all channels: updates are microseconds, and the update callback is pure
            current = self._channels.get(key)
            snapshot = current.copy() if current else None
            following = update(snapshot)
            if following is snapshot:
                return ChannelUpdateResult(channel=current.copy() if current else None, status="unchanged")
            if following is None:
                if current is None:
                    return ChannelUpdateResult(channel=None, status="unchanged")
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


def _durable_part(channel: Channel) -> dict[str, Any]:
    """What must survive the process: everything but the in-flight reservation (a request in flight dies with
    the process; kept, it would hold the channel busy for its whole TTL after a restart) and the last request's
    timestamp (only idle-refund selection reads it; it is written along with every other change)."""
    record = channel.to_dict()
    record.pop("pendingRequest", None)
    record.pop("lastRequestTimestamp", None)
    return record


def make_storage(kind: str, directory: str | Path) -> Any:
    """`sqlite` (durable, the default), `file` (the SDK's FileChannelStorage, for comparison) or `memory`
    (the SDK's InMemoryChannelStorage: lost on restart)."""
    if kind == "sqlite":
        return SqliteChannelStorage(Path(directory) / "channels.sqlite")
    if kind == "file":
        from x402.mechanisms.evm.batch_settlement.server.file_storage import FileChannelStorage

        return FileChannelStorage(str(directory))
    if kind == "memory":
        return InMemoryChannelStorage()
    raise ValueError(f"channel storage {kind!r}: choose one of {', '.join(STORAGE_KINDS)}")

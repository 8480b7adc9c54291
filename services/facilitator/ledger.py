"""The facilitator's ledger: every payment it accepted for settlement, and what became of it.

SQLite in WAL mode, because a facilitator that crashes mid-batch must find on restart
exactly which authorizations it promised to settle, and because the UNIQUE key on
(token, payer, nonce) is what makes "the same authorization never settles twice" hold
even when twenty copies race each other: only one INSERT can win.

States: accepted (claimed, no tx yet) -> submitted (tx hash written just before its broadcast, then again with
its nonce once the node took it) -> settled | failed.
Rejected payments never enter the ledger; they are counted by reason in `rejections`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    payee TEXT NOT NULL,
    amount INTEGER NOT NULL,
    valid_after INTEGER NOT NULL DEFAULT 0,
    valid_before INTEGER NOT NULL,
    signature TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    submitted_at REAL,
    included_at REAL,
    state TEXT NOT NULL,
    signer TEXT,
    tx_nonce INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    gas_used INTEGER,
    effective_gas_price INTEGER,
    batch_size INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    UNIQUE (token, payer, nonce)
);
CREATE INDEX IF NOT EXISTS payments_state ON payments (state);
CREATE INDEX IF NOT EXISTS payments_tx ON payments (tx_hash);
CREATE TABLE IF NOT EXISTS rejections (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""

OPEN_STATES = ("accepted", "submitted")


@dataclass(frozen=True, slots=True)
class Claim:
    """What a settlement needs to know about the authorization it claimed."""

    id: int
    token: str
    payer: str
    nonce: str
    payee: str
    amount: int
    valid_after: int  # signed, so the transfer must carry it as signed: 0 in its place fails the signature
    valid_before: int
    signature: str


class Ledger:
    """A thread-safe handle on the ledger file (one connection, serialized by a lock).

    SQLite writes here take tens of microseconds; one lock is cheaper than a pool and
    keeps the claim (check + insert) atomic for callers on any thread or event loop.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(payments)")}
        if "valid_after" not in columns:  # a ledger written before validAfter was kept: every such claim signed 0
            self._db.execute("ALTER TABLE payments ADD COLUMN valid_after INTEGER NOT NULL DEFAULT 0")
        self._reserved: Counter[str] = Counter()
        for payer, amount in self._db.execute(
            "SELECT payer, SUM(amount) FROM payments WHERE state IN (?, ?) GROUP BY payer", OPEN_STATES
        ):
            self._reserved[payer] = amount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def claim(
        self, token: str, payer: str, nonce: str, payee: str, amount: int, valid_after: int, valid_before: int,
        signature: str,
    ) -> Claim | None:
        """Record the payment as accepted; None when this authorization was claimed before."""
        token, payer, payee, nonce = token.lower(), payer.lower(), payee.lower(), nonce.lower()
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO payments (token, payer, nonce, payee, amount, valid_after, valid_before, signature, "
                    "accepted_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'accepted')",
                    (token, payer, nonce, payee, amount, valid_after, valid_before, signature, time.time()),
                )
            except sqlite3.IntegrityError:
                return None
            self._reserved[payer] += amount
            return Claim(cursor.lastrowid, token, payer, nonce, payee, amount, valid_after, valid_before, signature)

    def find(self, token: str, payer: str, nonce: str) -> dict[str, object] | None:
        """The ledger row of this authorization, if it was ever accepted: how a retry is recognised."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT * FROM payments WHERE token = ? AND payer = ? AND nonce = ?",
                (token.lower(), payer.lower(), nonce.lower()),
            )
            row = cursor.fetchone()
            return None if row is None else dict(zip((d[0] for d in cursor.description), row))

    def is_claimed(self, token: str, payer: str, nonce: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM payments WHERE token = ? AND payer = ? AND nonce = ?",
                (token.lower(), payer.lower(), nonce.lower()),
            ).fetchone()
        return row is not None

    def release(self, claim: Claim, reason: str, refused_tx: str = "") -> None:
        """Forget a claim that was rejected before any tx was sent (it was never really accepted).

        `refused_tx`: the hash `sending` recorded for a tx the node then refused; a row naming any other tx
        (one that may be on the chain) is kept."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM payments WHERE id = ? AND (state = 'accepted' OR (state = 'submitted' "
                "AND COALESCE(tx_hash, '') IN ('', ?)))",  # no tx named, or only the refused one
                (claim.id, refused_tx.lower()))
            if cursor.rowcount:  # a kept row stays reserved until it closes
                self._unreserve(claim.payer, claim.amount)
            self._count_rejection(reason)

    def reject(self, reason: str) -> None:
        with self._lock:
            self._count_rejection(reason)

    def sending(self, ids: list[int], signer: str, tx_hash: str) -> None:
        """Write ahead, before the broadcast: the hash of the signed tx about to carry these claims.

        A process killed after the node took the tx but before `submitted` leaves this hash, so its
        successor looks the tx up instead of sending the authorization again (a second tx that can only
        revert, and would close a paid claim as failed). tx_nonce stays unknown until `submitted`."""
        with self._lock:
            self._db.executemany(
                "UPDATE payments SET state = 'submitted', submitted_at = ?, signer = ?, tx_hash = ?, batch_size = ? "
                "WHERE id = ? AND state IN (?, ?)",
                [(time.time(), signer, tx_hash.lower(), len(ids), i, *OPEN_STATES) for i in ids],
            )

    def submitted(self, ids: list[int], signer: str, tx_nonce: int, tx_hash: str) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE payments SET state = 'submitted', submitted_at = ?, signer = ?, tx_nonce = ?, tx_hash = ?, "
                "batch_size = ? WHERE id = ?",
                [(time.time(), signer, tx_nonce, tx_hash, len(ids), i) for i in ids],
            )

    def finished(
        self,
        claims: list[Claim],
        *,
        ok: bool,
        tx_hash: str | None = None,
        block_number: int | None = None,
        gas_used: int | None = None,
        effective_gas_price: int | None = None,
        included_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """Close claims as settled or failed, releasing their balance reservation."""
        state = "settled" if ok else "failed"
        with self._lock:
            self._db.executemany(
                "UPDATE payments SET state = ?, tx_hash = COALESCE(?, tx_hash), block_number = ?, gas_used = ?, "
                "effective_gas_price = ?, included_at = ?, error = ? WHERE id = ? AND state IN (?, ?)",
                [
                    (state, tx_hash, block_number, gas_used, effective_gas_price, included_at, error, c.id, *OPEN_STATES)
                    for c in claims
                ],
            )
            for claim in claims:
                self._unreserve(claim.payer, claim.amount)

    def reserved(self, payer: str) -> int:
        """Atomic units of this payer's accepted but unsettled payments (not yet off its balance)."""
        return self._reserved.get(payer.lower(), 0)

    def open_claims(self) -> list[tuple[Claim, str, str | None]]:
        """Claims left open by a previous process: (claim, state, tx_hash), for recovery."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, token, payer, nonce, payee, amount, valid_after, valid_before, signature, state, tx_hash "
                "FROM payments WHERE state IN (?, ?) ORDER BY id",
                OPEN_STATES,
            ).fetchall()
        return [(Claim(*row[:9]), row[9], row[10]) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM payments GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def rejections(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT reason, count FROM rejections").fetchall())

    def _unreserve(self, payer: str, amount: int) -> None:
        left = self._reserved[payer] - amount
        if left > 0:
            self._reserved[payer] = left
        else:
            self._reserved.pop(payer, None)

    def _count_rejection(self, reason: str) -> None:
        self._db.execute(
            "INSERT INTO rejections (reason, count) VALUES (?, 1) "
            "ON CONFLICT(reason) DO UPDATE SET count = count + 1",
            (reason,),
        )


def read_payments(path: str | Path) -> list[dict[str, object]]:
    """Every ledger row as a dict, read-only: how load runs and reconciliation read the ledger."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM payments ORDER BY id")]
    finally:
        db.close()

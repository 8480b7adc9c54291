"""The ledger's payments as they close, read incrementally by a reader that is not the facilitator.

Two readers want each closed payment once, while the facilitator keeps writing: its Prometheus endpoint
(the settlement latency histogram) and Locust's web UI (the settlement latency row). Rows close out of order
(pipelined, batched), so the tail keeps a low-water mark below which every row is closed and seen, and the ids
above it already seen; each read asks for the rows above the mark only, over a read-only connection (WAL: a
reader never blocks the writer). A row a reorg reopens after it was seen is not seen again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

CLOSED = ("settled", "failed")


@dataclass(frozen=True, slots=True)
class Closed:
    """One payment that closed: its state, and for a settled one accepted-to-included seconds (else None)."""

    state: str
    latency_s: float | None


class LedgerTail:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._low = 0
        self._seen: set[int] = set()

    def read(self) -> list[Closed]:
        """The payments that closed since the last read (all closed ones at the first)."""
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, state, included_at - accepted_at FROM payments WHERE id > ? ORDER BY id",
                              (self._low,)).fetchall()
        except sqlite3.OperationalError:  # the facilitator has not created its tables yet
            return []
        finally:
            db.close()
        out: list[Closed] = []
        contiguous = True
        for row_id, state, seconds in rows:
            closed = state in CLOSED
            if closed and row_id not in self._seen:
                out.append(Closed(state, max(0.0, float(seconds)) if state == "settled" and seconds is not None
                                  else None))
                self._seen.add(row_id)
            if contiguous and closed:
                self._low = row_id
                self._seen.discard(row_id)
            else:
                contiguous = False
        return out

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
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("x402bench.resource.channels")

NOTHING_TO_SETTLE = "invalid_batch_settlement_evm_nothing_to_settle"


@dataclass
class ChannelKeeper:
    manager: Any  # the SDK's BatchSettlementChannelManager
    scheme: Any  # the SDK's server BatchSettlementEvmScheme (its storage holds the channels)
    claims_per_tx: int
    claim_every_s: float
    settle_every_s: float
    flush_s: float = 5.0
    settle_owed: bool = True  # unknown at start: a predecessor may have claimed without settling
    counts: dict[str, Any] = field(default_factory=lambda: {
        "claim_txs": 0, "claimed_vouchers": 0, "claimed_amount": 0, "settle_txs": 0, "errors": 0,
        "last_error": None, "last_claim_at": None, "last_settle_at": None})
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._every(self.claim_every_s, self._claim_tick), name="bs-claim"),
                       asyncio.create_task(self._every(self.settle_every_s, self._settle_tick), name="bs-settle")]

    async def stop(self) -> None:
        """Stop the timers, then claim and settle what is held (at most `flush_s`)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        try:
            await asyncio.wait_for(self.claim_and_settle(), self.flush_s)
        except Exception as exc:  # noqa: BLE001 - a shutdown must end; the vouchers stay in the durable storage
            log.warning("shutdown claim/settle did not finish: %r", exc)

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
                self.counts["errors"] += 1
                self.counts["last_error"] = str(exc)[:300]
                log.warning("channel %s failed: %s", getattr(job, "__name__", "job"), exc)
            now = loop.time()
            due += interval_s * max(1, int((now - due) // interval_s) + 1)

    def unclaimed(self) -> dict[str, int]:
        return {c.channel_id: int(c.charged_cumulative_amount) - int(c.total_claimed)
                for c in self.scheme.get_storage().list() if int(c.charged_cumulative_amount) > int(c.total_claimed)}

    async def _claim_tick(self) -> None:
        async with self._lock:
            await self._claim()

    async def _settle_tick(self) -> None:
        async with self._lock:
            await self._settle()

    async def _claim(self) -> list[Any]:
        from x402.mechanisms.evm.batch_settlement.server import ClaimOptions

        owed = self.unclaimed()
        if not owed:
            return []
        results = await self.manager.claim(ClaimOptions(max_claims_per_batch=self.claims_per_tx))
        if results:
            self.settle_owed = True
            self.counts["claim_txs"] += len(results)
            self.counts["claimed_vouchers"] += sum(r.vouchers for r in results)
            self.counts["claimed_amount"] += sum(owed.values()) - sum(self.unclaimed().values())
            self.counts["last_claim_at"] = time.time()
        return results

    async def _settle(self) -> Any:
        if not self.settle_owed:
            return None
        try:
            result = await self.manager.settle()
        except RuntimeError as exc:
            if NOTHING_TO_SETTLE in str(exc):
                self.settle_owed = False
                return None
            raise
        self.settle_owed = False
        self.counts["settle_txs"] += 1
        self.counts["last_settle_at"] = time.time()
        return result

    async def claim_and_settle(self) -> dict[str, Any]:
        """Claim every channel's charged-but-unclaimed vouchers, then settle what is owed (also a settle
        an earlier claim left owed)."""
        async with self._lock:
            owed = self.unclaimed()
            claims = await self._claim()
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
        return {**self.counts, "settle_owed": self.settle_owed, "channels": len(channels),
                "charged": {c.channel_id: c.charged_cumulative_amount for c in channels},
                "unclaimed_channels": len(unclaimed), "unclaimed_amount": str(sum(unclaimed.values())),
                "claim_every_s": self.claim_every_s, "settle_every_s": self.settle_every_s}

"""The settlement guard: every settlement tx is watched until the chain has kept it, and sent again
when the chain lost it.

Two ways a sent transaction vanishes without an error anyone sees:
- dropped: it left the node's pool unmined (evicted, `anvil_dropTransaction`, its sender briefly
  unable to pay for gas). Its receipt never comes, and its nonce leaves a gap that stalls every
  later transaction of that key.
- reorged: it was mined, its receipt was read and its payment answered, then the block holding it
  was replaced. The authorization it used is unused again on the new chain.

In both cases the payment's signed authorization is still valid and still unused, so the same
calldata is sent again, from the same key at a freshly read nonce. Whoever waits for the lost
transaction's receipt gets the new one's instead (so a `sync` answer still comes, one block later),
and a payment already answered is closed in the ledger from the new receipt. Nothing is sent again
while the lost transaction could still land: a dropped one is unknown to the node, a reorged one
has no receipt on the new chain.

What the engine supplies (`GuardedEngine`): its RPC client, its receipt watcher, a way to send
calldata on a lane, and `reclose(claims, receipt)` for payments whose first receipt was undone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.background import stop_tasks
from services.facilitator.evm import SEL_AUTHORIZATION_STATE, AsyncRpc, ReceiptWatcher, RpcError, call_data
from services.facilitator.ledger import Claim
from services.facilitator.signers import SentTx, SignerLane

log = logging.getLogger("x402bench.facilitator.guard")

#: A tx without a receipt this long after its send is asked about (the node knows a pending tx).
DROP_CHECK_AFTER_S = 3.0
#: Blocks a mined settlement is watched for: the deepest reorg it survives.
KEEP_BLOCKS = 64
TICK_S = 1.0


class GuardedEngine(Protocol):
    config: Any  # its token address: config.token.address
    rpc: AsyncRpc
    watcher: ReceiptWatcher
    ledger: Any

    async def reclose(self, claims: list[Claim], receipt: dict[str, Any]) -> None: ...


@dataclass
class Tracked:
    """One sent settlement tx: enough to send it again."""

    claims: list[Claim]
    lane: SignerLane
    to: str
    data: str
    gas: int | None
    sent_at: float
    block: int | None = None
    block_hash: str | None = None
    answered: bool = False  # its receipt was read: the payments were closed in the ledger
    resent: int = 0


@dataclass
class SettlementGuard:
    engine: GuardedEngine
    txs: dict[str, Tracked] = field(default_factory=dict)
    resends: int = 0
    reorgs: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_tasks(self._task)

    def sent(self, tx: SentTx, claims: list[Claim], lane: SignerLane, to: str, data: str, gas: int | None) -> None:
        self.txs[tx.tx_hash.lower()] = Tracked(claims, lane, to, data, gas, time.monotonic())

    def mined(self, receipt: dict[str, Any]) -> None:
        tracked = self.txs.get(receipt["transactionHash"].lower())
        if tracked is not None:
            tracked.block, tracked.block_hash = int(receipt["blockNumber"], 16), receipt["blockHash"].lower()
            tracked.answered = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed look (RPC fault) is retried next tick
                log.debug("guard tick failed: %s", exc)

    async def _tick(self) -> None:
        rpc = self.engine.rpc
        head = int(await rpc.call("eth_blockNumber"), 16)
        now = time.monotonic()
        for tx_hash in [h for h, t in self.txs.items() if t.block is not None and t.block < head - KEEP_BLOCKS]:
            del self.txs[tx_hash]
        unmined = [h for h, t in self.txs.items() if t.block is None and now - t.sent_at > DROP_CHECK_AFTER_S]
        if unmined:
            known = await rpc.batch([("eth_getTransactionByHash", [h]) for h in unmined])
            for tx_hash, tx in zip(unmined, known):
                if tx is None:  # not pending, not mined: the node lost it
                    await self._send_again(tx_hash, "dropped")
        blocks = sorted({t.block for t in self.txs.values() if t.block is not None})
        if blocks:
            found = await rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in blocks])
            current = {b: (blk or {}).get("hash", "").lower() if not isinstance(blk, RpcError) else None
                       for b, blk in zip(blocks, found)}
            undone = [h for h, t in self.txs.items() if t.block is not None and current.get(t.block) is not None
                      and current[t.block] != t.block_hash]
            if undone:
                self.reorgs += 1
                fork = min(self.txs[h].block for h in undone)  # type: ignore[type-var]
                self.engine.watcher.rewind(fork)
                # The token's state decides, not the receipt: a node may go on answering receipts of the
                # blocks it replaced. A tx any of whose authorizations is unused again is sent again.
                token = self.engine.config.token.address
                for tx_hash in undone:
                    claims = self.txs[tx_hash].claims
                    states = await rpc.batch([("eth_call", [{"to": token, "data": call_data(
                        SEL_AUTHORIZATION_STATE, c.payer, c.nonce)}, "latest"]) for c in claims])
                    if any(isinstance(s, RpcError) for s in states):
                        continue  # ask again next tick
                    if any(int(s, 16) == 0 for s in states):
                        await self._send_again(tx_hash, "reorged")
                    else:
                        del self.txs[tx_hash]  # every authorization it carried is used on the new chain

    async def _send_again(self, tx_hash: str, why: str) -> None:
        tracked = self.txs[tx_hash]
        lane = tracked.lane
        lane.forget_nonce()  # the chain's nonce for this key moved back: read it again
        replacement: list[asyncio.Future[dict[str, Any]]] = []
        write_ahead = getattr(self.engine.ledger, "sending", None)  # the payments ledger's; channel rows have none

        def on_hash(h: str) -> None:
            if write_ahead is not None:  # killed mid-send, the successor looks this hash up (see Ledger.sending)
                write_ahead([c.id for c in tracked.claims], lane.address, h)
            replacement.append(self.engine.watcher.expect(h))

        try:
            sent = await lane.send(tracked.to, tracked.data, gas=tracked.gas, on_hash=on_hash)
        except Exception as exc:  # noqa: BLE001 - e.g. the key cannot pay for gas yet: try again next tick
            log.warning("settlement tx %s %s; sending it again failed (%s), will retry", tx_hash, why, exc)
            return
        del self.txs[tx_hash]
        # whoever still waits for the lost receipt (a sync answer, a tracked pipelined payment) gets the new one
        waiting = None if tracked.answered else self.engine.watcher.expect(tx_hash)
        self.resends += 1
        log.warning("settlement tx %s %s: sent again as %s (%d payment(s))", tx_hash, why, sent.tx_hash,
                    len(tracked.claims))
        self.engine.watcher.sent()
        self.engine.ledger.submitted([c.id for c in tracked.claims], sent.signer, sent.nonce, sent.tx_hash)
        self.txs[sent.tx_hash.lower()] = Tracked(tracked.claims, lane, tracked.to, tracked.data, tracked.gas,
                                                 time.monotonic(), resent=tracked.resent + 1)
        answered = tracked.answered

        def relay(done: "asyncio.Future[dict[str, Any]]") -> None:
            if done.cancelled() or done.exception() is not None:
                return
            receipt = done.result()
            self.mined(receipt)
            if waiting is not None and not waiting.done():
                waiting.set_result(receipt)
            if answered:  # its payments were closed from the undone receipt: close them again
                asyncio.ensure_future(self.engine.reclose(tracked.claims, receipt))

        replacement[-1].add_done_callback(relay)

"""Signer lanes: one per facilitator key, each owning its account nonce locally.

Asking the node for the pending nonce before every tx costs a round trip and races
with our own in-flight txs; a lane hands out nonces from a local counter and sends
under a lock, so txs reach the node in nonce order and several can be in flight
per key. A rejected send does not consume its nonce, so no gap can stall the lane.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from coincurve import PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from services.facilitator.evm import AsyncRpc, RpcError
from services.facilitator.loop_probe import LaneTimers
from services.facilitator.txsign import sign_legacy


@dataclass
class SentTx:
    tx_hash: str
    nonce: int
    signer: str


class SignerLane:
    def __init__(self, private_key: str, rpc: AsyncRpc, chain_id: int, gas_price_wei: int, gas_limit: int,
                 timers: LaneTimers | None = None) -> None:
        self.account: LocalAccount = Account.from_key(private_key)
        self._key = PrivateKey(bytes(self.account.key))
        self.rpc = rpc
        self.chain_id = chain_id
        self.gas_price_wei = gas_price_wei
        self.gas_limit = gas_limit
        self._next_nonce: int | None = None
        self._lock = asyncio.Lock()
        self.in_flight = 0
        self.timers = timers or LaneTimers()
        self._released = 0.0

    @property
    def address(self) -> str:
        return self.account.address

    def forget_nonce(self) -> None:
        """The chain lost transactions of this key (dropped, reorged): read the nonce again before the next send."""
        self._next_nonce = None

    async def _sync_nonce(self) -> None:
        self._next_nonce = int(await self.rpc.call("eth_getTransactionCount", self.address, "pending"), 16)

    def _sign(self, to: str, data: str, nonce: int, gas: int) -> tuple[str, str]:
        raw, tx_hash = sign_legacy(self._key, nonce=nonce, gas_price=self.gas_price_wei, gas=gas,
                                   to=bytes.fromhex(to.removeprefix("0x")), value=0,
                                   data=bytes.fromhex(data.removeprefix("0x")), chain_id=self.chain_id)
        return "0x" + raw.hex(), "0x" + tx_hash.hex()

    async def send(self, to: str, data: str, on_hash=None, gas: int | None = None) -> SentTx:
        """Sign and broadcast; `on_hash(tx_hash)` runs before the send so a watcher cannot miss the block."""
        clock = time.perf_counter  # not loop.time(): uvloop's is cached per iteration, in whole milliseconds
        asked = clock()
        async with self._lock:
            held = clock()
            self.timers.wait.add(held - asked)
            if asked < self._released:  # it was queued when the lock was let go
                self.timers.handoff.add(held - self._released)
            try:
                if self._next_nonce is None:
                    await self._sync_nonce()
                for attempt in range(2):
                    nonce = self._next_nonce
                    raw, tx_hash = self._sign(to, data, nonce, gas or self.gas_limit)
                    if on_hash is not None:
                        on_hash(tx_hash)
                    sent_at = clock()
                    try:
                        await self.rpc.call("eth_sendRawTransaction", raw)
                    except RpcError as exc:
                        if attempt == 0 and "nonce" in str(exc).lower():
                            await self._sync_nonce()  # someone else used this key: resync once and retry
                            continue
                        raise
                    self.timers.rpc.add(clock() - sent_at)
                    self._next_nonce = nonce + 1
                    return SentTx(tx_hash, nonce, self.address)
            finally:
                self._released = clock()
                self.timers.hold.add(self._released - held)
        raise AssertionError("unreachable")


class LanePool:
    """Spreads txs over keys: the lane with the fewest txs in flight, ties in turn."""

    def __init__(self, lanes: list[SignerLane]) -> None:
        self.lanes = lanes
        self._turn = itertools.cycle(range(len(lanes)))

    def pick(self) -> SignerLane:
        start = next(self._turn)
        ordered = self.lanes[start:] + self.lanes[:start]
        return min(ordered, key=lambda lane: lane.in_flight)

    @property
    def addresses(self) -> list[str]:
        return [lane.address for lane in self.lanes]

"""The chain: a mempool, blocks on a schedule (or one per tx with automine), a gas limit.

Interval mining: a block every `block_time_s`, filled in arrival order with every tx
sent by then until the next one would pass the block gas limit; the rest wait for the
next block. Automine (Anvil's default): each tx is mined into its own block when it
arrives, one at a time, a little slower as blocks pile up (measured: 651 tx/s at first, 181 tx/s
after 3,000 blocks).

Mining a block takes the node `block_tx_s` per tx in it plus `block_history_s` per tx already in the
chain (calibrated; Anvil slows as its state grows), on its own server on the shared host:
a block is in the chain (its receipts readable) only when that work is done, and the node answers no
RPC meanwhile, so a send that arrives then waits behind it (the facilitator's send shares that server:
`node`). Measured live on a saturated host (0.2 s blocks of ~50 txs): a one-key sender paused ~18 ms
around every block, and longer when the node waited for a core.

A chain_stall (sim/faults.py) stops interval mining for its window; when it ends the miner
starts again as a new one does in Anvil (its first block one block time later). Automine
needs nothing here: the sends themselves are held until the stall ends.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable

from sim.calibration import Calibration
from sim.engine import Clock, Station
from sim.faults import FaultPlan
from x402bench.scenario import Scenario


Included = Callable[["Tx", float, int], None]  # (tx, block time, block number)


@dataclass(slots=True)
class Tx:
    """One settlement tx: one payment (sync) or many (batched), or a channel tx of sim/channels.py (`owner`)."""

    id: int
    gas: int
    lane: int
    t_sent: float
    requests: list = field(default_factory=list)  # the in-flight requests it settles (sim.world.Req)
    ready: float = float("inf")  # when its receipt can be read (set once mined)
    block_time: float = 0.0
    epoch: int = 0  # the facilitator process that sent it (a restarted one does not count it in flight)
    owner: Included | None = None  # told of its inclusion instead of the facilitator (claims, settles, refunds)


class Chain:
    """Blocks and inclusion; calls `on_included(tx, block_time, number)` for every tx it mines."""

    def __init__(self, clock: Clock, scenario: Scenario, calibration: Calibration, phase: float,
                 on_included: Included, faults: FaultPlan | None = None, node: Station | None = None) -> None:
        self.clock = clock
        self.block_tx_s = calibration.chain.block_tx_s
        self.block_history_s = calibration.chain.block_history_s
        self.mining = scenario.chain.mining
        #: The node's server on a shared host (None: mining takes no time); the facilitator's sends queue on it.
        self.node = node if (self.block_tx_s > 0 or self.block_history_s > 0) and self.mining == "interval" else None
        if self.mining == "manual":
            raise ValueError("chain.mining 'manual' has no block schedule to simulate; use 'interval' or 'auto'")
        self.block_time = scenario.chain.block_time_s or 0.0
        self.gas_limit = scenario.chain.gas_limit
        self.cal = calibration.chain
        self.on_included = on_included
        self.number = 0
        self._pool: list[tuple[float, int, Tx]] = []
        self._seq = itertools.count()
        self._miner = Station(1)
        self.blocks_with_txs = 0
        self.txs = 0
        self.gas_used = 0
        self.full_blocks = 0  # blocks that left txs behind for lack of gas
        self.max_block_gas = 0
        self._stopped = False
        self.stalls = faults if faults is not None and faults.stalls else None
        self._last_block = -1.0
        self.tick = 0.0  # the last interval block's tick (its txs are mined from then: `mined` in _block)
        self.stalled_blocks = 0  # ticks a stall swallowed
        #: Automine with a mining time is one FIFO server: sends must reach it in time order.
        self.mines_in_order = self.cal.automine_tx_s > 0 or self.cal.automine_slowdown_s_per_block > 0
        if self.mining == "interval":
            clock.at(phase % self.block_time, self._block)

    @property
    def pending(self) -> int:
        return len(self._pool)

    def stop(self) -> None:
        self._stopped = True

    def send(self, tx: Tx) -> float:
        """The tx reaches the node at tx.t_sent; returns when the send call returns (after mining with automine)."""
        if tx.gas > self.gas_limit:
            raise ValueError(f"a settlement tx of {tx.gas} gas can never fit the block gas limit {self.gas_limit}")
        if self.mining == "auto":
            if self.mines_in_order:
                mine_s = self.cal.automine_tx_s + self.cal.automine_slowdown_s_per_block * self.number
                mined = self._miner.enter(tx.t_sent, mine_s) + mine_s
            else:
                mined = tx.t_sent
            self.number += 1
            self._account(1, tx.gas)
            (tx.owner or self.on_included)(tx, mined, self.number)
            return mined
        heapq.heappush(self._pool, (tx.t_sent, next(self._seq), tx))
        return tx.t_sent

    def _block(self, _: object = None) -> None:
        now = self.clock.now
        if self.stalls is not None:
            resume = self.stalls.stall_resume(self._last_block, now)
            self._last_block = now
            if resume is not None:  # stopped for the stall: a new miner's first block comes a block time after it
                self.stalled_blocks += 1
                if not self._stopped:
                    self.clock.at(resume + self.block_time - now, self._block)
                return
        self.number += 1
        self.tick = now
        room = self.gas_limit
        pool = self._pool
        batch: list[Tx] = []
        while pool and pool[0][0] <= now and pool[0][2].gas <= room:
            _, _, tx = heapq.heappop(pool)
            room -= tx.gas
            batch.append(tx)
        included = len(batch)
        mined = now
        if included and self.node is not None:
            work = self.block_tx_s * included + self.block_history_s * self.txs  # self.txs: mined before this one
            mined = self.node.enter(now, work) + work
        for tx in batch:
            (tx.owner or self.on_included)(tx, mined, self.number)
        if pool and pool[0][0] <= now:
            self.full_blocks += 1
        if included:
            self._account(included, self.gas_limit - room)
        if not self._stopped:
            self.clock.at(self.block_time, self._block)

    def _account(self, txs: int, gas: int) -> None:
        self.blocks_with_txs += 1
        self.txs += txs
        self.gas_used += gas
        if gas > self.max_block_gas:
            self.max_block_gas = gas

    def stats(self) -> dict[str, float]:
        return {
            "blocks": self.number,
            "blocks_with_txs": self.blocks_with_txs,
            "txs": self.txs,
            "gas_used": self.gas_used,
            "max_block_gas_fraction": self.max_block_gas / self.gas_limit,
            "blocks_full": self.full_blocks,
            "mempool_left": len(self._pool),
            **({"blocks_stalled": self.stalled_blocks} if self.stalls is not None else {}),
        }

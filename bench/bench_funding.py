"""How long it takes to fund a population of agents with the mock USDC, per mining mode.

Why: every live run starts by funding its agents, so this is fixed overhead on each run. Prints
wall time for 1,000 and 10,000 agents with `fund` (mintBatch chunks) in automine, 0.2 s and 2 s
interval, and manual mining, and, as a reference measured in the same run, one plain `mint`
transaction per agent for 1,000 agents, with the ratio.

    .venv/bin/python bench/bench_funding.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_utils import to_checksum_address  # noqa: E402

from services.chain import DEV_PRIVATE_KEY, Anvil  # noqa: E402
from services.token import (  # noqa: E402
    balances_of,
    deploy_usdc,
    encode_call,
    fund,
    send_transactions,
    total_supply,
)

AMOUNT = 20_000_000  # 20 USDC at 6 decimals
MODES = {
    "automine": ("auto", None),
    "interval 0.2 s": ("interval", 0.2),
    # fund() waits for the interval miner here: 10,000 agents are ~256M gas, five 60M blocks.
    "interval 2 s": ("interval", 2.0),
    "manual": ("manual", None),
}


def agents(n: int) -> list[str]:
    return [to_checksum_address(os.urandom(20)) for _ in range(n)]


def time_fund(mining: str, block_time: float | None, n: int) -> float:
    """Seconds for `fund` to mint to `n` new agents, receipts included; checks the result."""
    with Anvil(mining=mining, block_time_s=block_time) as chain:
        token = deploy_usdc(chain.url)
        population = agents(n)
        started = time.perf_counter()
        fund(chain.url, token, population, AMOUNT)
        elapsed = time.perf_counter() - started
        assert total_supply(chain.url, token) == AMOUNT * n
        assert set(balances_of(chain.url, token, population[:: max(1, n // 100)])) == {AMOUNT}
        return elapsed


def time_one_mint_per_agent(n: int) -> float:
    """The naive reference: one `mint` transaction per agent, automine."""
    with Anvil() as chain:
        token = deploy_usdc(chain.url)
        txs = [{"to": token, "data": encode_call("mint(address,uint256)", a, AMOUNT), "gas": 120_000} for a in agents(n)]
        started = time.perf_counter()
        send_transactions(chain.url, DEV_PRIVATE_KEY, txs)
        elapsed = time.perf_counter() - started
        assert total_supply(chain.url, token) == AMOUNT * n
        return elapsed


def main() -> None:
    print(f"{'mining':<16}{'agents':>8}{'seconds':>10}{'agents/s':>12}")
    for label, (mining, block_time) in MODES.items():
        for n in (1_000, 10_000):
            seconds = time_fund(mining, block_time, n)
            print(f"{label:<16}{n:>8,}{seconds:>10.2f}{n / seconds:>12,.0f}")
    baseline = time_one_mint_per_agent(1_000)
    batched = time_fund("auto", None, 1_000)
    print(f"\none mint() tx per agent, 1,000 agents, automine: {baseline:.2f} s; "
          f"fund() (mintBatch) is {baseline / batched:.1f}x faster")


if __name__ == "__main__":
    main()

"""Gas per payment: one transferWithAuthorization per tx against BatchSettler batches of 1 to 200.

Why: the researcher's question "exact vs batched: where is the break-even price?" starts from
what a batch saves per payment. Real Anvil, the mock USDC and the BatchSettler, distinct funded
payers paying one merchant that already holds USDC (measured with real USDC: ~48,400 gas per payment
at 100; one transfer alone costs 85,704). Prints gas per payment, the ratio to a
single transfer, and the price below which gas is more than the payment at the scenario's economics.

    .venv/bin/python bench/bench_batch_gas.py [--sizes 1,10,50,100,200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.chain import Anvil  # noqa: E402
from services.facilitator.evm import (  # noqa: E402
    batch_gas_limit,
    batch_settle_data,
    transfer_with_authorization_data,
)
from services.payer.agents import derive_agents  # noqa: E402
from services.token import deploy_batch_settler, deploy_usdc, fund, send_transactions  # noqa: E402
from x402bench.results.economics import cost_per_payment_usd  # noqa: E402
from x402bench.scenario import load_scenario  # noqa: E402

VALUE = 1_000  # $0.001


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50,100,200")
    parser.add_argument("--scenario", default="scenarios/base-like.yaml", help="economics for the USD column")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    economics = load_scenario(args.scenario).economics
    agents = derive_agents(99, sum(sizes) + 2)
    payers, (merchant, relayer) = agents[:-2], agents[-2:]
    with Anvil(gas_limit=60_000_000) as anvil:
        token = deploy_usdc(anvil.url)
        settler = deploy_batch_settler(anvil.url)
        fund(anvil.url, token, [a.address for a in payers] + [merchant.address], 10_000_000)
        anvil.set_balances([relayer.address], 10**20)
        valid_before = int(time.time()) + 3600

        def authorization(agent):  # noqa: ANN001, ANN202
            nonce = "0x" + os.urandom(32).hex()
            signature = agent.signer().sign("USD Coin", "2", 31337, token, merchant.address, VALUE, 0,
                                            valid_before, nonce)
            return agent.address, merchant.address, VALUE, 0, valid_before, nonce, signature

        (single,) = send_transactions(anvil.url, relayer.key_hex, [
            {"to": token, "data": transfer_with_authorization_data(*authorization(payers[0])), "gas": 200_000}])
        single_gas = int(single["gasUsed"], 16)
        print(f"one transferWithAuthorization per tx: {single_gas:,} gas "
              f"(${cost_per_payment_usd(single_gas, economics, 1.0):.6f} at {economics.gas_price_gwei} gwei)")
        print(f"{'batch':>6}{'gas/payment':>14}{'x single':>10}{'USD/payment':>14}")
        start = 1
        for size in sizes:
            batch = [authorization(a) for a in payers[start:start + size]]
            start += size
            (receipt,) = send_transactions(anvil.url, relayer.key_hex, [
                {"to": settler, "data": batch_settle_data(token, batch), "gas": batch_gas_limit(size)}])
            per = int(receipt["gasUsed"], 16) / size
            print(f"{size:>6}{per:>14,.0f}{per / single_gas:>10.2f}"
                  f"{cost_per_payment_usd(per, economics, 1.0 / size):>14.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

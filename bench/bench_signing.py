"""How fast an agent can sign x402 payments: our signer vs eth_account and the official SDK client.

Why: every paid request signs one EIP-3009 authorization on the load generator, so signing
speed bounds how many payers one Locust process can drive (and the CPU per paid request).
Prints, all measured in this one run on one core:
  - signatures/s: ours (`AuthorizationSigner.sign`) vs eth_account's `sign_typed_data` on the
    same typed data, and the ratio;
  - payment headers/s: ours (`sign_payment`, the PAYMENT-SIGNATURE value) vs the SDK client's
    `create_payment_payload` alone and with `encode_payment_signature_header`, and the ratios;
  - our tamper (dict) path, for reference;
  - batch-settlement vouchers (services.payer.channel): our voucher signature and whole PAYMENT-SIGNATURE
    vs the SDK client's `sign_voucher` and its `create_payment_payload` on a funded channel, and the ratios;
  - settlement txs/s: the facilitator's coincurve signer (`sign_legacy`) vs eth_account's
    `sign_transaction` on the same transferWithAuthorization tx, and the ratio;
  - time to derive 100,000 agents (keys + checksummed addresses).
Each figure is the best of a few interleaved rounds, so a noisy neighbour hurts all sides alike.

    .venv/bin/python bench/bench_signing.py [--seconds 0.7] [--rounds 3] [--agents 100000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coincurve import PrivateKey  # noqa: E402
from eth_account import Account  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402
from x402 import x402ClientSync  # noqa: E402
from x402.http import x402HTTPClientSync  # noqa: E402
from x402.mechanisms.evm.exact import register_exact_evm_client  # noqa: E402
from x402.schemas import PaymentRequired  # noqa: E402

from services.facilitator.evm import transfer_with_authorization_data  # noqa: E402
from services.facilitator.txsign import sign_legacy  # noqa: E402
from services.payer.agents import derive_agents  # noqa: E402
from services.payer.hashing import KECCAK_BACKEND  # noqa: E402
from services.payer.signing import typed_data as eip712_typed_data  # noqa: E402
from services.payer.payload import Quote, Tamper, sign_payment  # noqa: E402
from services.payer.channel import ChannelPayer  # noqa: E402
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme  # noqa: E402
from x402.mechanisms.evm.batch_settlement.client.storage import BatchSettlementClientContext  # noqa: E402
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher  # noqa: E402
from x402.mechanisms.evm.signers import EthAccountSigner  # noqa: E402
from x402.schemas import PaymentRequirements  # noqa: E402

NETWORK = "eip155:31337"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
REQUIRED = {
    "x402Version": 2, "error": "Payment required",
    "resource": {"url": "http://127.0.0.1:8000/weather", "description": "weather", "mimeType": "application/json"},
    "accepts": [{"scheme": "exact", "network": NETWORK, "asset": TOKEN, "amount": "1000", "payTo": PAY_TO,
                 "maxTimeoutSeconds": 300, "extra": {"name": "USD Coin", "version": "2"}}],
}


BS_OFFER = {"scheme": "batch-settlement", "network": NETWORK, "asset": TOKEN, "amount": "1000", "payTo": PAY_TO,
            "maxTimeoutSeconds": 300, "extra": {"name": "USD Coin", "version": "2", "withdrawDelay": 900,
                                                "receiverAuthorizer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"}}


def typed_data(sender: str, nonce: bytes, valid_before: int) -> dict:
    return eip712_typed_data(
        {"name": "USD Coin", "version": "2", "chainId": 31337, "verifyingContract": TOKEN},
        {"from": sender, "to": PAY_TO, "value": 1000, "validAfter": 0, "validBefore": valid_before, "nonce": nonce},
    )


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn over about `seconds` of wall time (batches of growing size)."""
    fn()  # warm caches (domain separator, per-signer JSON head, imports)
    done, batch, start = 0, 8, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            fn()
        done += batch
        batch = min(batch * 2, 4096)
    return done / (time.perf_counter() - start) if elapsed else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.7, help="time per measurement per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--agents", type=int, default=100_000, help="population size for the derivation timing")
    args = parser.parse_args()
    logging.getLogger("x402").setLevel(logging.WARNING)  # the SDK signer logs at INFO per signature

    agent = derive_agents(1, 1)[0]
    signer, account = agent.signer(), Account.from_key(agent.key)
    quote = Quote.from_payment_required(REQUIRED, NETWORK)
    sdk = x402ClientSync()
    register_exact_evm_client(sdk, account, networks=NETWORK)
    sdk.set_spend_controls(False)
    sdk_http = x402HTTPClientSync(sdk)
    sdk_required = PaymentRequired.model_validate(REQUIRED)
    valid_before = int(time.time()) + 300

    def ours_signature() -> object:
        return signer.sign("USD Coin", "2", 31337, TOKEN, PAY_TO, 1000, 0, valid_before, os.urandom(32))

    def eth_account_signature() -> object:
        return account.sign_typed_data(full_message=typed_data(account.address, os.urandom(32), valid_before))

    def sdk_header() -> object:
        return sdk_http.encode_payment_signature_header(sdk.create_payment_payload(sdk_required))

    relayer = PrivateKey(agent.key)
    settle_data = bytes.fromhex(transfer_with_authorization_data(
        agent.address, PAY_TO, 1000, 0, valid_before, "0x" + "ab" * 32, "0x" + "cd" * 64 + "1b").removeprefix("0x"))
    tx = {"to": to_checksum_address(TOKEN), "data": "0x" + settle_data.hex(), "value": 0, "gas": 120_000,
          "gasPrice": 10**9, "nonce": 7, "chainId": 31337}

    tamper = Tamper()
    channels = ChannelPayer(signer, NETWORK)
    channel = channels.channel_quote({"x402Version": 2, "accepts": [BS_OFFER]})
    sdk_channels = BatchSettlementEvmScheme(EthAccountSigner(account))
    bs_requirements = PaymentRequirements.model_validate(BS_OFFER)
    # a funded channel, so the SDK client signs a voucher rather than a deposit (its storage, its own API)
    sdk_channels._storage.set(channel.channel_id.lower(), BatchSettlementClientContext(
        balance=str(10**18), charged_cumulative_amount="0"))
    cumulative = iter(range(1000, 10**15, 1000))
    cases: dict[str, Callable[[], object]] = {
        "ours: signature": ours_signature,
        "eth_account sign_typed_data": eth_account_signature,
        "ours: PAYMENT-SIGNATURE header": lambda: sign_payment(quote, signer),
        "ours: header via tamper (dict) path": lambda: sign_payment(quote, signer, tamper=tamper),
        "SDK create_payment_payload": lambda: sdk.create_payment_payload(sdk_required),
        "SDK payload + encode header": sdk_header,
        "ours: voucher signature": lambda: channels.sign_voucher(channel, next(cumulative)),
        "SDK sign_voucher": lambda: sign_voucher(EthAccountSigner(account), channel.channel_id, next(cumulative),
                                                 NETWORK),
        "ours: voucher PAYMENT-SIGNATURE header": lambda: channels.voucher_header(channel, next(cumulative)),
        "SDK batch-settlement voucher payload": lambda: sdk_channels.create_payment_payload(bs_requirements),
        "facilitator: settlement tx (coincurve)": lambda: sign_legacy(
            relayer, nonce=7, gas_price=10**9, gas=120_000, to=bytes.fromhex(TOKEN[2:]), value=0, data=settle_data,
            chain_id=31337),
        "eth_account sign_transaction": lambda: account.sign_transaction(tx),
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(args.rounds):
        for name, fn in cases.items():
            best[name] = max(best[name], rate(fn, args.seconds))

    start = time.perf_counter()
    population = derive_agents(42, args.agents)
    derive_s = time.perf_counter() - start
    assert len({a.address for a in population}) == args.agents

    print(f"keccak: {KECCAK_BACKEND}; best of {args.rounds} rounds x {args.seconds} s, one process")
    width = max(map(len, cases))
    for name, value in best.items():
        print(f"  {name:<{width}}  {value:>9,.0f} /s   {1e6 / value:8.1f} us each")
    print(f"  signature: ours / eth_account               = {best['ours: signature'] / best['eth_account sign_typed_data']:.1f}x")
    print(f"  header: ours / SDK create_payment_payload    = "
          f"{best['ours: PAYMENT-SIGNATURE header'] / best['SDK create_payment_payload']:.1f}x")
    print(f"  header: ours / SDK payload + encode header   = "
          f"{best['ours: PAYMENT-SIGNATURE header'] / best['SDK payload + encode header']:.1f}x")
    print(f"  voucher signature: ours / SDK sign_voucher   = "
          f"{best['ours: voucher signature'] / best['SDK sign_voucher']:.1f}x")
    print(f"  voucher header: ours / SDK voucher payload   = "
          f"{best['ours: voucher PAYMENT-SIGNATURE header'] / best['SDK batch-settlement voucher payload']:.1f}x")
    print(f"  settlement tx: ours / eth_account           = "
          f"{best['facilitator: settlement tx (coincurve)'] / best['eth_account sign_transaction']:.1f}x")
    print(f"  derive {args.agents:,} agents: {derive_s:.2f} s ({derive_s / args.agents * 1e6:.1f} us per agent)")


if __name__ == "__main__":
    main()

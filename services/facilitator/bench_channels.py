"""A short measurement of the batch-settlement scheme's settlement side, on one world (not a test).

Why: the figures behind two choices. Our facilitator engine against the SDK's own facilitator, on the
same chain and the same payloads: deposits/s (/settle of a fresh channel's deposit, each a tx through
the ERC-3009 collector) and vouchers verified/s (/verify of a voucher against the chain, what the
services ask when their copy of the chain state is stale). And the services' channel storage: a voucher
request's latency (one payer, back to back) and the most voucher requests/s (many payers at once) with
the SDK's in-memory storage, the SDK's FileChannelStorage and ours (SQLite write-through, the default).

    .venv/bin/python -m services.facilitator.bench_channels [--deposits 60] [--vouchers 600] [--concurrency 16]

Everything runs on this machine (Anvil automine, one facilitator process each, one services process
per storage); vouchers and deposits are signed before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml
from eth_account import Account
from x402 import x402ClientSync
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as ClientScheme
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import VoucherPayload
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from services.facilitator.config import FacilitatorConfig
from services.process import ServiceProcess
from services.resource.app import ResourceConfig
from services.stack import World
from x402bench.scenario import validate_scenario

ROOT = Path(__file__).resolve().parents[2]


def scenario() -> Any:
    data = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    data["facilitator"] = {"strategy": "sync", "signer_keys": 1}
    data["services"] = [{"name": "metered", "path": "/metered", "price": "$0.001", "scheme": "batch-settlement"}]
    data["channel"] = {"withdraw_delay_s": 1800, "deposit_usdc": 1.0, "claims_per_tx": 100,
                       "claim_every_s": 86_400, "settle_every_s": 86_400}
    data["agents"] = {**data["agents"], "mix": {}}
    return validate_scenario(data)


def decode(header: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(header))


class Channel:
    def __init__(self, key: str, network: str, required: PaymentRequired) -> None:
        self.account = Account.from_key(key)
        self.scheme = ClientScheme(EthAccountSigner(self.account))
        self.client = x402ClientSync()
        self.client.set_spend_controls(False)
        self.client.register(network, self.scheme)
        self.required = required
        self.requirements = required.accepts[0]
        self.config = self.scheme.build_channel_config(self.requirements)
        self.channel_id = compute_channel_id(self.config, network)
        self.network = network

    def deposit(self) -> PaymentPayload:
        payload = self.client.create_payment_payload(self.required)
        assert payload.payload["type"] == "deposit"
        return payload

    def voucher(self, cumulative: int) -> PaymentPayload:
        payload = VoucherPayload()
        payload.channel_config = self.config
        payload.voucher = sign_voucher(EthAccountSigner(self.account), self.channel_id, cumulative, self.network)
        return PaymentPayload(x402_version=2, accepted=self.requirements, payload=payload.to_dict())


async def post_all(url: str, bodies: list[bytes], concurrency: int, ok_key: str) -> tuple[float, int, list[Any]]:
    """POST every body, `concurrency` at a time: (seconds, successes, failures seen)."""
    queue = list(reversed(bodies))
    ok, bad = 0, []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def lane() -> None:
            nonlocal ok
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
                    answer = await reply.json()
                if answer.get(ok_key):
                    ok += 1
                else:
                    bad.append(answer)
        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return time.perf_counter() - start, ok, bad[:3]


def body(payload: PaymentPayload, requirements: PaymentRequirements) -> bytes:
    return json.dumps({"x402Version": 2, "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True),
                       "paymentRequirements": requirements.model_dump(by_alias=True, exclude_none=True)}).encode()


def facilitators(world: World, deposits: int, vouchers: int, concurrency: int, keys: list[str]) -> None:
    info = world.info
    sdk_config = replace(FacilitatorConfig.load(Path(info.workdir) / "facilitator.json"), strategy="sdk",
                         signer_keys=[info.facilitator_keys[0]], ledger_path=str(Path(info.workdir) / "sdk-ledger.sqlite"))
    sdk_config.dump(Path(info.workdir) / "sdk-facilitator.json")
    sdk = ServiceProcess("sdk-facilitator", "services.facilitator", Path(info.workdir) / "sdk-facilitator.json",
                         Path(info.workdir) / "sdk-facilitator.log").start()
    try:
        required = PaymentRequired.model_validate(decode(httpx.get(info.service_urls["metered"]).headers["payment-required"]))
        targets = {"ours (sync)": info.facilitator_url, "sdk": sdk.url}
        for name, url in targets.items():
            batch = keys[:deposits] if name.startswith("ours") else keys[deposits:2 * deposits]
            channels = [Channel(k, info.network, required) for k in batch]
            deposit_bodies = [body(c.deposit(), c.requirements) for c in channels]
            seconds, ok, bad = asyncio.run(post_all(url + "/settle", deposit_bodies, concurrency, "success"))
            print(f"{name:12s} deposits: {ok}/{len(deposit_bodies)} in {seconds:.2f} s = {ok / seconds:7.1f} deposits/s"
                  + (f"  failures: {bad}" if bad else ""))
            price = int(channels[0].requirements.amount)
            voucher_bodies = [body(channels[i % len(channels)].voucher(price * (2 + i // len(channels))), channels[0].requirements)
                              for i in range(vouchers)]
            seconds, ok, bad = asyncio.run(post_all(url + "/verify", voucher_bodies, concurrency, "isValid"))
            print(f"{name:12s} vouchers verified: {ok}/{len(voucher_bodies)} in {seconds:.2f} s = "
                  f"{ok / seconds:7.1f} /s" + (f"  failures: {bad}" if bad else ""))
    finally:
        sdk.stop()


def storages(world: World, keys: list[str], requests: int, payers: int) -> None:
    info = world.info
    base = ResourceConfig.load(Path(info.workdir) / "resource.json")
    for kind in ("memory", "file", "sqlite"):
        directory = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        path = Path(info.workdir) / f"resource-{kind}.json"
        replace(base, channel_storage=kind, channel_dir=directory).dump(path)
        service = ServiceProcess(f"services-{kind}", "services.resource", path, Path(info.workdir) / f"{kind}.log").start()
        try:
            url = service.url + "/metered"
            required = PaymentRequired.model_validate(decode(httpx.get(url).headers["payment-required"]))
            mine, keys = keys[:payers], keys[payers:]
            channels = [Channel(k, info.network, required) for k in mine]
            price = int(channels[0].requirements.amount)
            with httpx.Client(timeout=60) as client:
                for c in channels:  # the deposit through this service: it now holds the channel
                    reply = client.get(url, headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(c.deposit())})
                    assert reply.status_code == 200, reply.text
                headers = [[encode_payment_signature_header(c.voucher(price * n)) for n in range(2, 2 + requests)]
                           for c in channels]
                latencies = []
                for header in headers[0]:  # one payer, back to back
                    start = time.perf_counter()
                    reply = client.get(url, headers={"PAYMENT-SIGNATURE": header})
                    latencies.append(time.perf_counter() - start)
                    assert reply.status_code == 200, reply.text

            async def run_all() -> tuple[float, int]:
                done = 0
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=payers)) as session:
                    async def payer(lane: list[str]) -> None:
                        nonlocal done
                        for header in lane:
                            async with session.get(url, headers={"PAYMENT-SIGNATURE": header}) as reply:
                                await reply.read()
                                done += reply.status == 200
                    start = time.perf_counter()
                    await asyncio.gather(*(payer(lane) for lane in headers[1:]))
                    return time.perf_counter() - start, done

            seconds, done = asyncio.run(run_all())
            total = requests * (payers - 1)
            latencies.sort()
            print(f"storage {kind:6s}: voucher request p50 {statistics.median(latencies) * 1000:6.2f} ms, "
                  f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:6.2f} ms (1 payer, {len(latencies)} back to back); "
                  f"{done}/{total} paid with {payers - 1} payers at once in {seconds:.2f} s = {done / seconds:6.1f} req/s")
        finally:
            service.stop()
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deposits", type=int, default=60)
    parser.add_argument("--vouchers", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="voucher requests per payer (storage part)")
    parser.add_argument("--payers", type=int, default=9, help="payers of the storage part (one of them for latency)")
    parser.add_argument("--only", choices=("facilitator", "storage"))
    args = parser.parse_args()
    agents = 2 * args.deposits + 3 * args.payers
    with World(scenario(), agent_count=agents) as world:
        keys = [a.key_hex for a in world.agents]
        if args.only != "storage":
            facilitators(world, args.deposits, args.vouchers, args.concurrency, keys[:2 * args.deposits])
        if args.only != "facilitator":
            storages(world, keys[2 * args.deposits:], args.requests, args.payers)


if __name__ == "__main__":
    main()

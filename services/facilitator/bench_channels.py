"""A short measurement of the batch-settlement scheme's settlement side, on one world (not a test).

Why: the figures behind two choices. Our facilitator engine against the SDK's own facilitator, on the
same chain and the same payloads: deposits/s (/settle of a fresh channel's deposit, each a tx through
the ERC-3009 collector) and vouchers verified/s (/verify of a voucher against the chain, what the
services ask when their copy of the chain state is stale). And the services' channel storage: a voucher
request's latency (one payer, back to back) and the most voucher requests/s (many payers at once) with
the SDK's in-memory storage, the SDK's FileChannelStorage and ours (SQLite write-through, the default).

    .venv/bin/python -m services.facilitator.bench_channels [--rounds 3] [--deposits 50] [--vouchers 500]
        [--concurrency 16] [--requests 100] [--payers 9] [--only facilitator|storage]

Everything runs on this machine (Anvil automine, one facilitator process each, one services process
per storage); vouchers and deposits are signed before the clock starts. Rounds interleave the sides
compared and the best round of each is printed, so a noisy neighbour hurts all sides alike.
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
from coincurve import PrivateKey
import httpx
import yaml
from eth_account import Account
from x402 import x402ClientSync
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as ClientScheme
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from services.facilitator.channels import Voucher
from services.facilitator.config import FacilitatorConfig
from services.process import ServiceProcess
from services.resource.app import ResourceConfig
from services.stack import World
from x402bench.scenario import validate_scenario
from x402bench.shipped import SHIPPED_DIR  # the shipped scenarios: a checkout's scenarios/, or the wheel's copy


def scenario() -> Any:
    data = yaml.safe_load((SHIPPED_DIR / "smoke.yaml").read_text())
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
        self.chain_id = int(network.split(":")[1])
        self._key = PrivateKey(bytes(self.account.key))

    def deposit(self) -> PaymentPayload:
        payload = self.client.create_payment_payload(self.required)
        assert payload.payload["type"] == "deposit"
        return payload

    def voucher(self, cumulative: int) -> PaymentPayload:
        """A voucher signed here with coincurve over the scheme's digest (services.facilitator.channels): the
        SDK's sign_voucher costs ~2 ms, and thousands are signed before the clock starts."""
        digest = Voucher(self.channel_id, cumulative, "0x").digest(self.chain_id)
        raw = self._key.sign_recoverable(digest, hasher=None)
        signature = "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")
        return PaymentPayload(x402_version=2, accepted=self.requirements, payload={
            "type": "voucher", "channelConfig": self.config.to_dict(),
            "voucher": {"channelId": self.channel_id, "maxClaimableAmount": str(cumulative), "signature": signature}})


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


def facilitators(world: World, deposits: int, vouchers: int, concurrency: int, rounds: int, keys: list[str]) -> None:
    """Rounds alternate between the two facilitators (fresh payers for each round's deposits), best kept."""
    info = world.info
    sdk_config = replace(FacilitatorConfig.load(Path(info.workdir) / "facilitator.json"), strategy="sdk",
                         signer_keys=[info.facilitator_keys[0]], ledger_path=str(Path(info.workdir) / "sdk-ledger.sqlite"))
    sdk_config.dump(Path(info.workdir) / "sdk-facilitator.json")
    sdk = ServiceProcess("sdk-facilitator", "services.facilitator", Path(info.workdir) / "sdk-facilitator.json",
                         Path(info.workdir) / "sdk-facilitator.log").start()
    best: dict[tuple[str, str], float] = {}
    try:
        required = PaymentRequired.model_validate(decode(httpx.get(info.service_urls["metered"]).headers["payment-required"]))
        targets = {"ours (sync)": info.facilitator_url, "sdk": sdk.url}
        for r in range(rounds):
            for name, url in targets.items():
                batch, keys = keys[:deposits], keys[deposits:]
                channels = [Channel(k, info.network, required) for k in batch]
                deposit_bodies = [body(c.deposit(), c.requirements) for c in channels]
                seconds, ok, bad = asyncio.run(post_all(url + "/settle", deposit_bodies, concurrency, "success"))
                assert ok == len(deposit_bodies), bad
                best[(name, "deposits")] = max(best.get((name, "deposits"), 0.0), ok / seconds)
                price = int(channels[0].requirements.amount)
                voucher_bodies = [body(channels[i % len(channels)].voucher(price * (2 + i // len(channels))),
                                       channels[0].requirements) for i in range(vouchers)]
                seconds, ok, bad = asyncio.run(post_all(url + "/verify", voucher_bodies, concurrency, "isValid"))
                assert ok == len(voucher_bodies), bad
                best[(name, "vouchers")] = max(best.get((name, "vouchers"), 0.0), ok / seconds)
    finally:
        sdk.stop()
    for what, unit in (("deposits", "deposits/s (/settle, each a tx)"), ("vouchers", "vouchers verified/s (/verify)")):
        ours, theirs = best[("ours (sync)", what)], best[("sdk", what)]
        print(f"{unit:34s} ours {ours:7.1f}   sdk {theirs:7.1f}   ratio {ours / theirs:5.1f}x  "
              f"(best of {rounds}, {concurrency} at once)")


def storages(world: World, keys: list[str], requests: int, payers: int, rounds: int) -> None:
    """One services process per storage; each round runs every storage in turn (latency: one payer back to
    back; throughput: the other payers at once), the best round kept."""
    info = world.info
    base = ResourceConfig.load(Path(info.workdir) / "resource.json")
    kinds = ("memory", "file", "sqlite")
    services, directories, lanes = {}, [], {}
    try:
        for kind in kinds:
            directory = tempfile.mkdtemp(prefix=f"bench-{kind}-")
            directories.append(directory)
            path = Path(info.workdir) / f"resource-{kind}.json"
            replace(base, channel_storage=kind, channel_dir=directory).dump(path)
            services[kind] = ServiceProcess(f"services-{kind}", "services.resource", path,
                                            Path(info.workdir) / f"{kind}.log").start()
            url = services[kind].url + "/metered"
            required = PaymentRequired.model_validate(decode(httpx.get(url).headers["payment-required"]))
            mine, keys = keys[:payers], keys[payers:]
            channels = [Channel(k, info.network, required) for k in mine]
            price = int(channels[0].requirements.amount)
            with httpx.Client(timeout=60) as client:
                for c in channels:  # the deposit through this service: it now holds the channel
                    reply = client.get(url, headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(c.deposit())})
                    assert reply.status_code == 200, reply.text
            # every voucher of every round signed before any clock starts (cumulative: one price more each)
            lanes[kind] = [[encode_payment_signature_header(c.voucher(price * n)) for n in range(2, 2 + requests * rounds)]
                           for c in channels]
        best: dict[str, dict[str, float]] = {k: {"p50": float("inf"), "p95": float("inf"), "rps": 0.0} for k in kinds}
        for r in range(rounds):
            for kind in kinds:
                url = services[kind].url + "/metered"
                part = [lane[r * requests:(r + 1) * requests] for lane in lanes[kind]]
                latencies = []
                with httpx.Client(timeout=60) as client:
                    for header in part[0]:
                        start = time.perf_counter()
                        reply = client.get(url, headers={"PAYMENT-SIGNATURE": header})
                        latencies.append(time.perf_counter() - start)
                        assert reply.status_code == 200, reply.text
                latencies.sort()
                seconds, done = asyncio.run(pay_all(url, part[1:]))
                assert done == requests * (payers - 1)
                figures = best[kind]
                figures["p50"] = min(figures["p50"], statistics.median(latencies))
                figures["p95"] = min(figures["p95"], latencies[int(len(latencies) * 0.95)])
                figures["rps"] = max(figures["rps"], done / seconds)
        for kind in kinds:
            f = best[kind]
            print(f"storage {kind:6s}: {min(storage_cost(kind) for _ in range(rounds)):6.1f} us of storage work per "
                  f"voucher request in process; voucher request p50 {f['p50'] * 1000:5.2f} ms, p95 {f['p95'] * 1000:5.2f} ms "
                  f"(1 payer back to back); {f['rps']:6.1f} voucher req/s with {payers - 1} payers at once "
                  f"(best of {rounds} rounds of {requests} per payer)")
    finally:
        for service in services.values():
            service.stop()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def storage_cost(kind: str, requests: int = 3000) -> float:
    """Microseconds of storage work per paid voucher request, in process: the SDK server scheme's get, its
    reservation update and its charge update, on one channel."""
    from x402.mechanisms.evm.batch_settlement.server.storage import Channel as Record, PendingRequest
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

    from services.resource.channel_storage import make_storage

    directory = tempfile.mkdtemp(prefix=f"bench-cost-{kind}-")
    try:
        storage = make_storage(kind, directory)
        config = ChannelConfig(*(["0x" + "11" * 20] * 5), withdraw_delay=1800, salt="0x" + "00" * 32)
        cid = "0x" + "ab" * 32
        storage.update_channel(cid, lambda _: Record(cid, config, balance="1000000", signature="0x" + "cd" * 65))
        start = time.perf_counter()
        for i in range(requests):
            def reserve(current: Any, i: int = i) -> Any:
                following = current.copy()
                following.pending_request, following.last_request_timestamp = PendingRequest("p", str(i), 10**13), i
                return following

            def charge(current: Any, i: int = i) -> Any:
                following = current.copy()
                following.charged_cumulative_amount = following.signed_max_claimable = str(i)
                following.pending_request = None
                return following

            storage.get(cid)
            storage.update_channel(cid, reserve)
            storage.update_channel(cid, charge)
        return (time.perf_counter() - start) / requests * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def pay_all(url: str, lanes: list[list[str]]) -> tuple[float, int]:
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(lanes))) as session:
        async def payer(lane: list[str]) -> None:
            nonlocal done
            for header in lane:
                async with session.get(url, headers={"PAYMENT-SIGNATURE": header}) as reply:
                    await reply.read()
                    done += reply.status == 200
        start = time.perf_counter()
        await asyncio.gather(*(payer(lane) for lane in lanes))
        return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deposits", type=int, default=50, help="deposits per facilitator per round")
    parser.add_argument("--vouchers", type=int, default=500, help="vouchers verified per facilitator per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100, help="voucher requests per payer per round (storage part)")
    parser.add_argument("--payers", type=int, default=9, help="payers per storage (one of them for the latency)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("facilitator", "storage"))
    args = parser.parse_args()
    facilitator_keys = 2 * args.deposits * args.rounds
    with World(scenario(), agent_count=facilitator_keys + 3 * args.payers) as world:
        keys = [a.key_hex for a in world.agents]
        if args.only != "storage":
            facilitators(world, args.deposits, args.vouchers, args.concurrency, args.rounds, keys[:facilitator_keys])
        if args.only != "facilitator":
            storages(world, keys[facilitator_keys:], args.requests, args.payers, args.rounds)


if __name__ == "__main__":
    main()

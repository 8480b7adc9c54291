"""The services' fast voucher check (services/resource/fast_voucher.py) answers exactly as the SDK's server scheme.

Two ways. In process: the SDK's BatchSettlementEvmScheme and our subclass, each over its own copy of the same
channel record, get the same voucher payloads (good ones, and every kind of wrong one: another signer, another
channel id or config, a lowered, replayed or skipped cumulative, over the balance, at or below what is claimed,
stale chain state, signatures in other forms, inputs of other types); their `before_verify` results and request
contexts must be the same, and the fast path must have answered the good ones itself.

Over real HTTP: one World (Anvil, our `sync` facilitator, the services with the fast check) and a second
services process of the same world with `voucher_check: sdk`, each paid from its own channel by the agents'
channel payer, then sent the same hostile vouchers: status, reason code and the corrective 402's channel
state must be the same from both, and the codes the scheme's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml
from eth_account import Account
from x402.mechanisms.evm.batch_settlement import errors as E
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.server import BatchSettlementEvmScheme, BatchSettlementEvmSchemeServerConfig
from x402.mechanisms.evm.batch_settlement.server.storage import Channel, InMemoryChannelStorage
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SupportedKind
from x402.schemas.hooks import AbortResult, SkipVerifyResult, VerifyContext

from services.payer.channel import ChannelPayer, ChannelQuote, channel_id_of
from services.payer.client import httpx_send
from services.payer.payload import Quote
from services.payer.signing import SECP256K1_N
from services.process import ServiceProcess
from services.resource.app import ResourceConfig
from services.resource.fast_voucher import FastBatchSettlementScheme
from services.stack import World
from x402bench.scenario import validate_scenario

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1_000
NETWORK = "eip155:31337"
TOKEN = "0x" + "ab" * 20
PAY_TO = Account.from_key("0x" + "11" * 32).address
AUTHORIZER = Account.from_key("0x" + "22" * 32)
PAYER_KEY, OTHER_KEY = "0x" + "33" * 32, "0x" + "44" * 32


# --- in process -----------------------------------------------------------------------------------------------


def _schemes() -> tuple[BatchSettlementEvmScheme, FastBatchSettlementScheme]:
    def config() -> BatchSettlementEvmSchemeServerConfig:
        return BatchSettlementEvmSchemeServerConfig(receiver_authorizer_signer=LocalAuthorizerSigner(AUTHORIZER),
                                                    withdraw_delay=900, storage=InMemoryChannelStorage())

    return BatchSettlementEvmScheme(PAY_TO, config()), FastBatchSettlementScheme(PAY_TO, config())


def _requirements(scheme: BatchSettlementEvmScheme) -> PaymentRequirements:
    bare = PaymentRequirements(scheme="batch-settlement", network=NETWORK, asset=TOKEN, amount=str(PRICE), pay_to=PAY_TO,
                               max_timeout_seconds=300, extra={"name": "USD Coin", "version": "2"})
    kind = SupportedKind(x402_version=2, scheme="batch-settlement", network=NETWORK)
    return scheme.enhance_payment_requirements(bare, kind, [])


def _channel_quote(requirements: PaymentRequirements, salt: str = "0x" + "00" * 32) -> tuple[ChannelPayer, ChannelQuote]:
    payer = ChannelPayer(PAYER_KEY, NETWORK, salt=salt)
    offer = requirements.model_dump(by_alias=True, exclude_none=True)
    quote = Quote.from_requirement(offer, {"url": "http://x/metered"})
    return payer, ChannelQuote.build(quote, payer.address, salt)


def _record(channel: ChannelQuote, **fields: Any) -> Channel:
    base: dict[str, Any] = dict(channel_id=channel.channel_id, channel_config=ChannelConfig.from_dict(channel.config),
                                charged_cumulative_amount=str(2 * PRICE), signed_max_claimable=str(2 * PRICE),
                                signature="0x" + "00" * 65, balance=str(5 * PRICE), total_claimed="0",
                                onchain_synced_at=int(time.time() * 1000), last_request_timestamp=0)
    base.update(fields)
    return Channel(**base)


def _voucher(payer: ChannelPayer, channel: ChannelQuote, cumulative: int) -> dict[str, Any]:
    return json.loads(base64.b64decode(payer.voucher_header(channel, cumulative)))["payload"]


def _high_s(signature: str) -> str:
    raw = bytes.fromhex(signature[2:])
    s = SECP256K1_N - int.from_bytes(raw[32:64], "big")
    return "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes((55 - raw[64],))).hex()


def _with(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    *parents, last = path.split(".")
    target = out
    for p in parents:
        target = target[p]
    if value is _DROP:
        target.pop(last)
    else:
        target[last] = value
    return out


_DROP = object()


def _cases(payer: ChannelPayer, channel: ChannelQuote) -> dict[str, tuple[dict[str, Any], dict[str, Any], bool]]:
    """name -> (voucher payload, channel record fields, whether the fast path must answer it itself)."""
    good = _voucher(payer, channel, 3 * PRICE)
    other = ChannelPayer(OTHER_KEY, NETWORK)
    other_config = {**channel.config, "receiverAuthorizer": other.address}
    sig = good["voucher"]["signature"]
    zero_auth = {**channel.config, "payerAuthorizer": "0x" + "00" * 20}
    return {
        "good": (good, {}, True),
        "good, amount as a JSON number": (_with(good, "voucher.maxClaimableAmount", 3 * PRICE), {}, True),
        "good, channel id in upper-case hex": (_with(good, "voucher.channelId", "0x" + channel.channel_id[2:].upper()), {}, True),
        "high-s signature": (_with(good, "voucher.signature", _high_s(sig)), {}, True),
        "v as 0/1": (_with(good, "voucher.signature", sig[:-2] + f"{int(sig[-2:], 16) - 27:02x}"), {}, False),
        "signature without 0x": (_with(good, "voucher.signature", sig[2:]), {}, False),
        "signature not hex": (_with(good, "voucher.signature", "0x" + "zz" * 65), {}, False),
        "signature missing": (_with(good, "voucher.signature", _DROP), {}, False),
        "wrong signer": (_voucher(other, channel, 3 * PRICE), {}, False),
        "wrong channel id": (_with(good, "voucher.channelId", "0x" + "12" * 32), {}, False),
        "channel id not canonical": (_with(good, "voucher.channelId", "0X" + channel.channel_id[2:]), {}, False),
        "wrong channel config": (_with(good, "channelConfig.payer", other.address), {}, False),
        "config of other terms, its own id": (
            _with(_with(good, "channelConfig", other_config), "voucher.channelId", channel_id_of(other_config, 31337)), {}, False),
        "zero payer authorizer": (
            _with(_with(good, "channelConfig", zero_auth), "voucher.channelId", channel_id_of(zero_auth, 31337)), {}, False),
        "lowered cumulative (the last one again)": (_voucher(payer, channel, 2 * PRICE), {}, False),
        "skipped cumulative": (_voucher(payer, channel, 4 * PRICE), {}, False),
        "amount as a bool": (_with(good, "voucher.maxClaimableAmount", True), {"charged_cumulative_amount": "0", "balance": "5"}, False),
        "amount not digits": (_with(good, "voucher.maxClaimableAmount", " 3000"), {}, False),
        "over balance": (good, {"balance": str(3 * PRICE - 1)}, False),
        "at the balance": (good, {"balance": str(3 * PRICE)}, True),
        "at what is claimed": (good, {"total_claimed": str(3 * PRICE)}, False),
        "below what is claimed": (good, {"total_claimed": str(4 * PRICE)}, False),
        "stale chain state": (good, {"onchain_synced_at": int(time.time() * 1000) - 10**7}, False),
        "never synced": (good, {"onchain_synced_at": None}, False),
        "unknown channel": (good, {"channel_id": None}, False),
        "config not an object": (_with(good, "channelConfig", "x"), {}, False),
        "voucher not an object": (_with(good, "voucher", ["x"]), {}, False),
        "config lacks a field": (_with(good, "channelConfig.salt", _DROP), {}, False),
        "withdrawDelay as a string": (_with(good, "channelConfig.withdrawDelay", "900"), {}, True),
        "a refund": (_with(good, "type", "refund"), {}, False),
    }


def _outcome(scheme: BatchSettlementEvmScheme, payload: PaymentPayload, result: Any) -> tuple[Any, ...]:
    context = scheme.read_request_context(payload)
    ctx = None if context is None else (context.channel_id, context.pending_id is not None, context.local_verify,
                                        context.channel_snapshot.to_dict() if context.channel_snapshot else None)
    if isinstance(result, AbortResult):
        return ("abort", result.reason, result.message, ctx)
    if isinstance(result, SkipVerifyResult):
        return ("skip", result.result.model_dump(), ctx)
    return ("none" if result is None else repr(result), ctx)


@pytest.mark.parametrize("case", list(_cases(*_channel_quote(_requirements(_schemes()[0])))))
def test_the_fast_check_gives_the_sdks_answer(case: str) -> None:
    sdk, fast = _schemes()
    requirements = _requirements(sdk)
    assert _requirements(fast) == requirements  # the memoised requirements are the SDK's
    assert _requirements(fast) == requirements  # ... also when they come from the memo
    payer, channel = _channel_quote(requirements)
    raw, fields, fast_answers = _cases(payer, channel)[case]
    outcomes = []
    record = _record(channel, **fields) if fields.get("channel_id", "") is not None else None
    for scheme in (sdk, fast):
        if record is not None:  # each its own copy of the same record
            scheme.get_storage().update_channel(record.channel_id, lambda _current, r=record: r.copy())
        payload = PaymentPayload(x402_version=2, accepted=requirements, payload=raw)
        result = scheme.before_verify(VerifyContext(payment_payload=payload, requirements=requirements))
        outcomes.append(_outcome(scheme, payload, result))
    assert outcomes[1] == outcomes[0]
    assert fast.counts == ({"fast": 1, "sdk": 0} if fast_answers else {"fast": 0, "sdk": 1})
    if fast_answers:
        assert outcomes[0][0] == "skip" and outcomes[0][1]["isValid"] is True


# --- over HTTP ------------------------------------------------------------------------------------------------


def scenario_data() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "scenarios" / "deferred.yaml").read_text())
    data.update(
        name="voucher-fast-path", chain={"chain_id": 31337, "mining": "auto"},
        facilitator={"strategy": "sync", "signer_keys": 1},
        channel={**data["channel"], "deposit_usdc": 3 * PRICE / 1e6, "claim_every_s": 3600, "settle_every_s": 3600},
        agents={"count": 2, "funding_usdc": 5, "arrivals": {"kind": "closed"}, "cache_requirements": True},
        run={"duration_s": 5, "warmup_s": 1, "users": 2, "spawn_rate": 2}, slo={},
    )
    return data


@pytest.fixture(scope="module")
def two_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, dict[str, str]]]:
    """The world (its services with the fast check) and a second services process with the SDK's check."""
    workdir = tmp_path_factory.mktemp("world-fast")
    with World(validate_scenario(scenario_data()), workdir=workdir) as world:
        config = ResourceConfig.load(workdir / "resource.json")
        assert config.voucher_check == "fast"
        sdk_config = dataclasses.replace(config, voucher_check="sdk", channel_dir=str(workdir / "channels-sdk"))
        sdk_config.dump(workdir / "resource-sdk.json")
        sdk_process = ServiceProcess("services-sdk", "services.resource", workdir / "resource-sdk.json",
                                     workdir / "services-sdk.log").start()
        try:
            fast_url = world.info.service_urls["metered"]
            yield world, {"fast": fast_url, "sdk": sdk_process.url + fast_url[fast_url.index("/", 8):]}
        finally:
            sdk_process.stop()


def _send_raw(http: httpx.Client, url: str, header: str) -> tuple[int, str | None, str | None]:
    reply = http.get(url, headers={"PAYMENT-SIGNATURE": header})
    if reply.status_code != 402:
        return reply.status_code, None, None
    required = json.loads(base64.b64decode(reply.headers["payment-required"]))
    states = [(o.get("extra") or {}).get("channelState") for o in required.get("accepts") or []]
    charged = next((s["chargedCumulativeAmount"] for s in states if s), None)
    return 402, required.get("error"), charged


def _rewrite(header: str, change: Callable[[dict[str, Any]], None]) -> str:
    data = json.loads(base64.b64decode(header))
    change(data["payload"])
    return base64.b64encode(json.dumps(data).encode()).decode()


def test_over_http_the_fast_check_refuses_what_the_sdk_refuses_with_the_same_codes(
        two_services: tuple[World, dict[str, str]]) -> None:
    world, urls = two_services
    info = world.info
    key, other_key = world.agents[0].key_hex, world.agents[1].key_hex
    seen: dict[str, list[tuple[str, tuple[int, str | None, str | None]]]] = {}
    with httpx.Client(timeout=60) as http:
        send = httpx_send(http)
        for n, (label, url) in enumerate(urls.items()):
            payer = ChannelPayer(key, info.network, salt="0x" + f"{n + 1:064x}")  # a channel of its own per service
            first, second = payer.pay(send, "GET", url), payer.pay(send, "GET", url)
            assert (first.status, first.deposit, second.status, second.deposit) == (200, 3 * PRICE, 200, 0)
            channel = payer.channel_of("GET", url)
            assert channel is not None and channel.book.charged == 2 * PRICE
            other = ChannelPayer(other_key, info.network)
            good = payer.voucher_header(channel, 3 * PRICE)
            wrong_config = {**channel.config, "payer": other.address}
            sig = json.loads(base64.b64decode(good))["payload"]["voucher"]["signature"]
            cases = [
                ("wrong signer", other.voucher_header(channel, 3 * PRICE)),
                ("wrong channel id", _rewrite(good, lambda p: p["voucher"].update(channelId="0x" + "12" * 32))),
                ("wrong channel config", _rewrite(good, lambda p: p.update(channelConfig=wrong_config))),
                ("config of other terms, its own id", _rewrite(good, lambda p: (
                    p.update(channelConfig=wrong_config),
                    p["voucher"].update(channelId=channel_id_of(wrong_config, info.chain_id))))),
                ("lowered cumulative", payer.voucher_header(channel, 2 * PRICE)),
                ("replayed voucher", second.payment.header),
                ("skipped cumulative", payer.voucher_header(channel, 4 * PRICE)),
                ("signature not hex", _rewrite(good, lambda p: p["voucher"].update(signature="0x" + "zz" * 65))),
                ("high-s signature (the SDK takes it)", _rewrite(good, lambda p: p["voucher"].update(signature=_high_s(sig)))),
                ("over balance", payer.voucher_header(channel, 4 * PRICE)),  # charged is 3 now, the balance 3
                ("the right one after all that", None),
            ]
            for name, header in cases:
                if header is None:  # the payer's own next request: a top-up deposit and the voucher for 4
                    channel.book.charged = 3 * PRICE
                    result = payer.pay(send, "GET", url)
                    seen.setdefault(name, []).append((label, (result.status, result.error or None, None)))
                    continue
                seen.setdefault(name, []).append((label, _send_raw(http, url, header)))
        status = {label: http.get(url.rsplit("/", 1)[0] + "/_channels/status").json() for label, url in urls.items()}
    answers = {name: dict(per) for name, per in seen.items()}
    for name, per in answers.items():
        assert per["fast"] == per["sdk"], name
    mismatch = (402, E.ERR_CUMULATIVE_AMOUNT_MISMATCH, str(2 * PRICE))
    assert {name: per["fast"] for name, per in answers.items()} == {
        "wrong signer": (402, E.ERR_INVALID_VOUCHER_SIGNATURE, None),
        "wrong channel id": (402, E.ERR_CHANNEL_ID_MISMATCH, None),
        "wrong channel config": (402, E.ERR_CHANNEL_ID_MISMATCH, None),
        # a channel the service does not hold goes to the facilitator, which judges it (here: the signer)
        "config of other terms, its own id": (402, E.ERR_INVALID_VOUCHER_SIGNATURE, None),
        "lowered cumulative": mismatch,
        "replayed voucher": mismatch,
        "skipped cumulative": mismatch,
        "signature not hex": (402, E.ERR_VERIFICATION_STATE_UNAVAILABLE, None),  # the SDK's hook raises on it
        "high-s signature (the SDK takes it)": (200, None, None),
        "over balance": (402, E.ERR_CUMULATIVE_EXCEEDS_BALANCE, None),
        "the right one after all that": (200, None, None),
    }
    assert status["sdk"]["voucher_check"] == "sdk" and "vouchers" not in status["sdk"]
    # the fast service answered its payer's second voucher itself, and left every refusal to the SDK's hook
    assert status["fast"]["vouchers"]["fast"] >= 1 and status["fast"]["vouchers"]["sdk"] >= 9

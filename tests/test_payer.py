"""The fast payer: byte-compatible with the official SDK client, correct signatures, and a
handshake (with and without cached requirements) against a real world."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from eth_account import Account
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import PaymentRequired

from services.eip3009 import authorization_digest
from services.facilitator.checks import recover_signer
from services.payer.agents import derive_agents
from services.payer.client import PayerCore, parse_server_timing
from services.payer.payload import Quote

REQUIRED = {
    "x402Version": 2,
    "error": "Payment required",
    "resource": {"url": "http://127.0.0.1:1/weather", "description": "weather", "mimeType": "application/json"},
    "accepts": [{"scheme": "exact", "network": "eip155:31337", "asset": "0x" + "ab" * 20, "amount": "1000",
                 "payTo": "0x" + "cd" * 20, "maxTimeoutSeconds": 300, "extra": {"name": "USD Coin", "version": "2"}}],
}


def test_header_is_byte_identical_to_the_sdk_client(monkeypatch) -> None:
    agent = derive_agents(7, 1)[0]
    nonce = "0x" + "5a" * 32
    monkeypatch.setattr("x402.mechanisms.evm.exact.client.create_nonce", lambda: nonce)
    monkeypatch.setattr("x402.mechanisms.evm.exact.client.time.time", lambda: 1_800_000_000.4)
    client = x402Client()
    register_exact_evm_client(client, Account.from_key(agent.key_hex), networks="eip155:31337")
    client.set_spend_controls(False)
    payload = asyncio.run(client.create_payment_payload(PaymentRequired.model_validate(REQUIRED)))
    theirs = x402HTTPClient(client).encode_payment_signature_header(payload)
    theirs = theirs.get("PAYMENT-SIGNATURE") if isinstance(theirs, dict) else theirs

    payer = PayerCore(agent.key_hex, "eip155:31337")
    monkeypatch.setattr("services.payer.client.os.urandom", lambda n: bytes.fromhex("5a" * 32))
    monkeypatch.setattr("services.payer.client.time.time", lambda: 1_800_000_000.4)
    ours, _, _ = payer.sign(Quote.from_payment_required(REQUIRED, "eip155:31337"))
    assert ours == theirs


def test_signature_recovers_to_the_agent_and_matches_eth_account() -> None:
    agent = derive_agents(1, 3)[2]
    payer = PayerCore(agent.key_hex, "eip155:31337")
    header, nonce, amount = payer.sign(Quote.from_payment_required(REQUIRED, "eip155:31337"))
    payload = json.loads(base64.b64decode(header))
    auth = payload["payload"]["authorization"]
    digest = authorization_digest("USD Coin", "2", 31337, REQUIRED["accepts"][0]["asset"], auth["from"], auth["to"],
                                  int(auth["value"]), 0, int(auth["validBefore"]), nonce)
    assert recover_signer(digest, payload["payload"]["signature"]) == agent.address == auth["from"]
    signed = Account._sign_hash(digest, agent.key) if hasattr(Account, "_sign_hash") else Account.unsafe_sign_hash(digest, agent.key)
    assert "0x" + signed.signature.hex() == payload["payload"]["signature"]
    assert amount == 1000


def test_agents_are_deterministic_and_distinct() -> None:
    a, b = derive_agents(42, 50), derive_agents(42, 50)
    assert a == b
    assert len({x.address for x in a}) == 50
    assert {x.address for x in a}.isdisjoint({x.address for x in derive_agents(43, 50)})
    assert Account.from_key(a[17].key_hex).address == a[17].address


def test_server_timing_parses_to_seconds() -> None:
    assert parse_server_timing("verify;dur=12.5, handler;dur=2, settle;desc=x;dur=40") == {
        "verify": 0.0125, "handler": 0.002, "settle": 0.04}
    assert parse_server_timing(None) == {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from services.stack import World
    from x402bench.scenario import load_scenario

    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(agents={"count": 3})
    with World(scenario, workdir=tmp_path_factory.mktemp("payer")) as w:
        yield w


class CountingSend:
    def __init__(self) -> None:
        self.http = httpx.Client(timeout=60)
        self.calls = 0

    def __call__(self, method, url, headers):  # noqa: ANN001, ANN204
        self.calls += 1
        reply = self.http.request(method, url, headers=headers)
        return reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.content


def test_cached_requirements_pay_in_one_round_trip(world) -> None:
    send = CountingSend()
    payer = PayerCore(world.agents[0].key_hex, world.info.network, cache=True)
    first = payer.pay(send, "GET", world.info.service_urls["weather"])
    assert first.status == 200 and first.challenge_s > 0 and send.calls == 2
    second = payer.pay(send, "GET", world.info.service_urls["weather"])
    assert second.status == 200 and second.challenge_s == 0 and send.calls == 3
    assert second.transaction.startswith("0x") and second.nonce != first.nonce
    assert set(second.server_timing) == {"verify", "handler", "settle"}


def test_uncached_payer_always_takes_the_402_first(world) -> None:
    send = CountingSend()
    payer = PayerCore(world.agents[1].key_hex, world.info.network, cache=False)
    for _ in range(2):
        assert payer.pay(send, "GET", world.info.service_urls["quote"]).status == 200
    assert send.calls == 4


def test_stale_cached_terms_fall_back_to_the_full_handshake(world) -> None:
    send = CountingSend()
    payer = PayerCore(world.agents[2].key_hex, world.info.network, cache=True)
    url = world.info.service_urls["weather"]
    assert payer.pay(send, "GET", url).status == 200
    (key,) = payer._quotes
    old = payer._quotes[key]
    payer._quotes[key] = Quote.from_payment_required(
        {"x402Version": 2, "resource": old.resource, "accepts": [{**old.requirement, "amount": "7"}]}, world.info.network)
    calls = send.calls
    result = payer.pay(send, "GET", url)
    assert result.status == 200 and result.amount == world.info.prices["weather"]
    assert send.calls - calls == 3  # refused stale attempt, fresh 402, paid retry

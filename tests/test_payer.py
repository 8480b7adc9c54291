"""The fast payer: byte-compatible with the official SDK client, signatures eth_account agrees
with, deterministic agents, and the HTTP handshake (cached, uncached, stale) against a real
server on loopback.

The server here is a tiny Starlette app speaking the SDK's wire format (its encode/decode
helpers) and checking signatures with eth_account: it tests the client, not a facilitator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.http.utils import (
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo, SettleResponse

from services.payer.agents import Agent, derive_agents
from services.payer.client import HttpxPayer, PayerCore, PaymentResult, parse_server_timing
from services.payer.hashing import checksum_encode, keccak256, to_checksum_address as our_checksum
from services.payer.payload import (
    NoMatchingRequirements,
    Quote,
    Tamper,
    WireError,
    decode_payment_required,
    decode_payment_response,
    sign_payment,
)
from services.payer.signing import SECP256K1_N, AuthorizationSigner, typed_data

NETWORK = "eip155:31337"
TOKEN = "0x" + "ab" * 20
PAY_TO = to_checksum_address("0x" + "cd" * 20)
BASE = "eip155:8453"


def requirement(**over: Any) -> dict[str, Any]:
    return {"scheme": "exact", "network": NETWORK, "asset": TOKEN, "amount": "1000", "payTo": PAY_TO,
            "maxTimeoutSeconds": 300, "extra": {"name": "USD Coin", "version": "2"}, **over}


def required(*accepts: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"x402Version": 2, "error": "Payment required",
            "resource": {"url": "http://127.0.0.1:1/weather", "description": "weather", "mimeType": "application/json"},
            "accepts": list(accepts) or [requirement()], **over}


def recover_payment(payload: dict[str, Any]) -> str:
    """Who signed a v2 exact payment, by eth_account's own EIP-712 code (independent of ours)."""
    auth, accepted = payload["payload"]["authorization"], payload["accepted"]
    domain = {"name": accepted["extra"]["name"], "version": accepted["extra"].get("version", "1"),
              "chainId": int(accepted["network"].split(":")[1]), "verifyingContract": accepted["asset"]}
    message = {"from": auth["from"], "to": auth["to"], "value": int(auth["value"]),
               "validAfter": int(auth["validAfter"]), "validBefore": int(auth["validBefore"]),
               "nonce": bytes.fromhex(auth["nonce"][2:])}
    return Account.recover_message(encode_typed_data(full_message=typed_data(domain, message)),
                                   signature=payload["payload"]["signature"])


def decode(header: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(header))


# --- byte compatibility with the SDK client ------------------------------------------------

SHAPES = {
    "plain": required(),
    "unicode, extensions, unknown keys": required(
        {**requirement(extra={"name": "USD Cöin ☀", "version": "2", "x": [1, None, {"f": 1.5, "g": 1e16}]}), "junk": 1},
        resource={"url": "http://h/ü", "description": "<weather> & \"more\"", "tags": ["a"], "junk": None},
        extensions={"bazaar": {"info": {"k": "v"}, "schema": {"type": "object"}}}),
    "no resource, timeout 0 (3600 s window), string timeout elsewhere": {
        "x402Version": 2, "accepts": [requirement(maxTimeoutSeconds=0)]},
    "string timeout, lower-case payTo, no version": required(
        requirement(maxTimeoutSeconds="60", payTo=PAY_TO.lower(), extra={"name": "USD Coin"})),
    "other networks and flows first": required(
        requirement(network="eip155:1"), requirement(extra={"name": "T", "version": "1", "paymentFlow": "upfront"}),
        requirement(amount="77")),
    "Base USDC, empty extra (the SDK signs with its table's domain)": required(
        requirement(network=BASE, asset="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", extra={})),
    "Base USDC, extra without a domain (the SDK also echoes it)": required(
        requirement(network=BASE, asset="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", extra={"k": 1})),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_header_is_byte_identical_to_the_sdk_client(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = derive_agents(7, 1)[0]
    nonce, now = bytes.fromhex("5a" * 32), 1_800_000_000.7
    sdk_client = "x402.mechanisms.evm.exact.client"
    monkeypatch.setattr(f"{sdk_client}.create_nonce", lambda: "0x" + nonce.hex())
    monkeypatch.setattr(f"{sdk_client}.time", types.SimpleNamespace(time=lambda: now))
    client = x402Client()
    network = SHAPES[shape]["accepts"][-1]["network"]
    register_exact_evm_client(client, Account.from_key(agent.key), networks=network)
    client.set_spend_controls(False)
    payload = asyncio.run(client.create_payment_payload(PaymentRequired.model_validate(SHAPES[shape])))
    theirs = x402HTTPClient(client).encode_payment_signature_header(payload)["PAYMENT-SIGNATURE"]

    quote = Quote.from_payment_required(SHAPES[shape], network)
    fast = sign_payment(quote, agent.signer(), nonce=nonce, now=now)
    general = sign_payment(quote, agent.signer(), nonce=nonce, now=now, tamper=Tamper())  # the dict path
    assert fast.header == theirs
    assert general.header == theirs
    assert fast.nonce == "0x" + nonce.hex() and fast.amount == int(payload.accepted.amount)


def test_signatures_equal_eth_accounts_and_recover_to_the_payer() -> None:
    vs = set()
    for i in range(40):
        account = Account.create()
        signer = AuthorizationSigner(account.key)
        assert signer.address == account.address
        domain = {"name": f"Token {i}", "version": str(i % 3), "chainId": 1 + i * 1000, "verifyingContract": Account.create().address}
        message = {"from": account.address, "to": Account.create().address, "value": i * 10**i,
                   "validAfter": i, "validBefore": 2**40 + i, "nonce": os.urandom(32)}
        ours = signer.sign(domain["name"], domain["version"], domain["chainId"], domain["verifyingContract"],
                           message["to"], message["value"], message["validAfter"], message["validBefore"], message["nonce"])
        theirs = account.sign_typed_data(full_message=typed_data(domain, message)).signature
        assert ours == "0x" + theirs.hex()
        assert Account.recover_message(encode_typed_data(full_message=typed_data(domain, message)), signature=ours) == account.address
        vs.add(ours[-2:])
    assert vs == {"1b", "1c"}  # v = 27 / 28, both seen


def test_signed_payment_recovers_to_the_agent() -> None:
    agent = derive_agents(1, 3)[2]
    payment = sign_payment(Quote.from_payment_required(required(), NETWORK), agent.signer())
    payload = decode(payment.header)
    assert recover_payment(payload) == agent.address == payload["payload"]["authorization"]["from"]
    assert payment.amount == 1000 and payment.nonce == payload["payload"]["authorization"]["nonce"]
    assert payment.valid_before - time.time() == pytest.approx(300, abs=2)


def test_signer_rejects_invalid_keys_and_inputs() -> None:
    for bad in (b"\x00" * 32, SECP256K1_N.to_bytes(32, "big"), b"\x01" * 31, "0x1234"):
        with pytest.raises(ValueError):
            AuthorizationSigner(bad)
    signer = AuthorizationSigner("0x" + "11" * 32)
    with pytest.raises(ValueError):
        signer.sign("n", "1", 1, TOKEN, "0x1234", 1, 0, 1, os.urandom(32))  # short address
    with pytest.raises(ValueError):
        signer.sign("n", "1", 1, TOKEN, PAY_TO, -1, 0, 1, os.urandom(32))  # not a uint256
    with pytest.raises(ValueError):
        signer.sign("n", "1", 1, TOKEN, PAY_TO, 1, 0, 1, os.urandom(31))  # nonce not 32 bytes


def test_keccak_and_checksum_agree_with_eth_utils() -> None:
    for size in (0, 1, 31, 32, 135, 136, 137, 1000, 70_000):
        data = os.urandom(size)
        assert keccak256(data) == keccak(data)
    for _ in range(500):
        raw = os.urandom(20)
        assert checksum_encode(raw) == to_checksum_address(raw) == our_checksum(raw.hex())


def test_keccak_is_correct_under_concurrent_threads() -> None:
    """ctypes drops the GIL inside C: each call must own its hashing state."""
    inputs = [os.urandom(n) for n in range(1, 400)]
    expected = [keccak(d) for d in inputs]
    wrong: list[int] = []

    def work() -> None:
        for _ in range(20):
            wrong.extend(i for i, d in enumerate(inputs) if keccak256(d) != expected[i])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# --- agents --------------------------------------------------------------------------------


def test_agents_are_deterministic_valid_and_distinct() -> None:
    a, b = derive_agents(42, 200), derive_agents(42, 200)
    assert a == b
    assert [x.index for x in a] == list(range(200))
    assert derive_agents(42, 50, start=150) == a[150:]
    assert len({x.key for x in a}) == 200 and len({x.address for x in a}) == 200
    assert {x.key for x in a}.isdisjoint({x.key for x in derive_agents(43, 200)})
    assert {x.key for x in a}.isdisjoint({x.key for x in derive_agents(-42, 200)})
    for x in a[::17]:
        assert 0 < int.from_bytes(x.key, "big") < SECP256K1_N
        assert Account.from_key(x.key).address == x.address
    assert isinstance(a[0], Agent) and a[0].key_hex == "0x" + a[0].key.hex()


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, words", [
    (None, "missing"), ("", "missing"), ("%%%not base64", "base64"),
    (base64.b64encode(b"\xff\xfe").decode(), "UTF-8"), (base64.b64encode(b"{oops").decode(), "not JSON"),
    (base64.b64encode(b"[1,2]").decode(), "list"),
    (base64.b64encode(b'{"x402Version":1,"accepts":[]}').decode(), "v2 only"),
    (base64.b64encode(b'{"x402Version":2}').decode(), "accepts"),
])
def test_payment_required_garbage_gets_a_clear_error(value: Any, words: str) -> None:
    with pytest.raises(WireError, match=words):
        decode_payment_required(value)


def test_payment_response_decodes_and_rejects_garbage() -> None:
    header = encode_payment_response_header(SettleResponse(success=False, error_reason="transaction_failed",
                                                           transaction="", network=NETWORK, payer=PAY_TO))
    response = decode_payment_response(header)
    assert (response.success, response.error_reason, response.payer, response.network) == (False, "transaction_failed", PAY_TO, NETWORK)
    with pytest.raises(WireError, match="success"):
        decode_payment_response(base64.b64encode(b'{"success":"yes"}').decode())


def test_no_matching_requirement_says_why() -> None:
    with pytest.raises(NoMatchingRequirements, match=r"accepts\[0\].*eip155:1"):
        Quote.from_payment_required(required(requirement(network="eip155:1")), NETWORK)
    with pytest.raises(NoMatchingRequirements, match="permit2"):
        Quote.from_payment_required(required(requirement(extra={"name": "x", "assetTransferMethod": "permit2"})), NETWORK)
    with pytest.raises(NoMatchingRequirements, match="lacks payTo"):
        Quote.from_payment_required(required({k: v for k, v in requirement().items() if k != "payTo"}), NETWORK)
    with pytest.raises(NoMatchingRequirements, match="asset"):
        Quote.from_payment_required(required(), NETWORK, asset="0x" + "ee" * 20)


def test_terms_completed_from_the_sdk_table_are_not_mistaken_for_stale() -> None:
    offer = required(requirement(network=BASE, asset="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", extra={"k": 1}))
    payer = PayerCore("0x" + "22" * 32, BASE)
    quote = payer.quote(offer)
    assert quote.requirement["extra"] == {"k": 1, "name": "USD Coin", "version": "2"} and quote.offered["extra"] == {"k": 1}
    refusal = {"payment-required": base64.b64encode(json.dumps({**offer, "error": "insufficient_funds"}).encode()).decode()}
    assert not payer._stale(refusal, quote)
    moved = {**offer, "error": "insufficient_funds", "accepts": [{**offer["accepts"][0], "amount": "5"}]}
    assert payer._stale({"payment-required": base64.b64encode(json.dumps(moved).encode()).decode()}, quote)


def test_server_timing_parses_to_seconds() -> None:
    assert parse_server_timing('verify;dur=12.5, handler;dur=2, settle;desc="x,y";dur=40, cache, bad;dur=x') == {
        "verify": 0.0125, "handler": 0.002, "settle": 0.04}
    assert parse_server_timing(None) == {}


# --- the handshake over real HTTP ----------------------------------------------------------


class PayServer:
    """A priced endpoint speaking x402 v2 with the SDK's encoders; counts every request."""

    def __init__(self) -> None:
        self.amount = "1000"
        self.requests: dict[str, int] = {}
        self.payments: list[dict[str, Any]] = []
        self.base = ""

    def requirements(self, request: Request) -> PaymentRequired:
        return PaymentRequired(
            error="Payment required", resource=ResourceInfo(url=str(request.url), description="test"),
            accepts=[PaymentRequirements(scheme="exact", network=NETWORK, asset=TOKEN, amount=self.amount, pay_to=PAY_TO,
                                         max_timeout_seconds=120, extra={"name": "USD Coin", "version": "2"})])

    def refuse(self, request: Request, error: str) -> Response:
        current = self.requirements(request).model_copy(update={"error": error})
        return JSONResponse({}, status_code=402, headers={"PAYMENT-REQUIRED": encode_payment_required_header(current)})

    async def endpoint(self, request: Request) -> Response:
        route = request.url.path
        self.requests[route] = self.requests.get(route, 0) + 1
        if route == "/free":
            return JSONResponse({"free": True})
        if route == "/garbage-402":
            return Response(b"{}", status_code=402, headers={"PAYMENT-REQUIRED": "not base64 at all!"})
        header = request.headers.get("payment-signature")
        if header is None:
            return self.refuse(request, "Payment required")
        try:
            payload = decode_payment_signature_header(header)
        except Exception:  # noqa: BLE001 - anything undecodable is a malformed payment
            return JSONResponse({"x402Version": 2, "error": "invalid_payload"}, status_code=400)
        if payload.accepted != self.requirements(request).accepts[0]:
            return self.refuse(request, "No matching payment requirements")
        data = payload.model_dump(by_alias=True)
        auth = data["payload"]["authorization"]
        if recover_payment(data) != auth["from"] or auth["to"] != PAY_TO or auth["value"] != self.amount:
            return self.refuse(request, "invalid_exact_evm_payload_signature")
        self.payments.append(data)
        if route == "/settle-fails":
            failed = SettleResponse(success=False, error_reason="transaction_failed", transaction="", network=NETWORK,
                                    payer=auth["from"])
            return JSONResponse({}, status_code=402, headers={"PAYMENT-RESPONSE": encode_payment_response_header(failed)})
        settled = SettleResponse(success=True, transaction="0x" + keccak(auth["nonce"].encode()).hex(),
                                 network=NETWORK, payer=auth["from"], amount=self.amount)
        return JSONResponse({"paid": True}, headers={"PAYMENT-RESPONSE": encode_payment_response_header(settled),
                                                     "Server-Timing": "verify;dur=1.5, handler;dur=0.5, settle;dur=2.5"})


@pytest.fixture(scope="module")
def server() -> Iterator[PayServer]:
    state = PayServer()
    app = Starlette(routes=[Route(p, state.endpoint) for p in ("/paid", "/other", "/free", "/garbage-402", "/settle-fails")])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.01)
    try:
        yield state
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "test server still running"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


class Counting:
    """A Send over httpx that counts round trips and returns headers in their original case."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.calls = client, 0

    def __call__(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.calls += 1
        reply = self.client.request(method, url, headers=headers)
        return reply.status_code, dict(reply.headers.multi_items()), reply.content


def agent(index: int) -> Agent:
    return derive_agents(2024, index + 1)[index]


def test_uncached_payer_takes_the_402_then_pays(server: PayServer, http: httpx.Client) -> None:
    send, payer = Counting(http), PayerCore(agent(0).key_hex, NETWORK, cache=False)
    for n in (1, 2):
        result = payer.pay(send, "GET", server.base + "/other")
        assert result.status == 200 and result.error == "" and result.round_trips == 2 and not result.cached
        assert send.calls == 2 * n
        assert result.challenge_s > 0 and result.sign_s > 0 and result.paid_s > 0
        assert result.total_s >= result.challenge_s + result.sign_s + result.paid_s
        assert result.amount == 1000 and result.payer == agent(0).address
        assert result.response is not None and result.response.success and result.response.payer == agent(0).address
        assert result.transaction == "0x" + keccak(result.nonce.encode()).hex() and result.network == NETWORK
        assert result.server_timing == {"verify": 0.0015, "handler": 0.0005, "settle": 0.0025}
    assert server.requests["/other"] == 4


def test_cached_payer_pays_on_the_first_request(server: PayServer, http: httpx.Client) -> None:
    send, payer = Counting(http), PayerCore(agent(1).signer(), NETWORK, cache=True)
    before = server.requests.get("/paid", 0)
    first = payer.pay(send, "GET", server.base + "/paid")
    second = payer.pay(send, "GET", server.base + "/paid")
    assert first.status == second.status == 200
    assert (first.round_trips, second.round_trips) == (2, 1)
    assert first.challenge_s > 0 and second.challenge_s == 0 and second.cached
    assert server.requests["/paid"] - before == 3
    assert first.nonce != second.nonce and recover_payment(server.payments[-1]) == agent(1).address


def test_stale_cache_falls_back_to_the_full_handshake_once(server: PayServer, http: httpx.Client) -> None:
    send, payer = Counting(http), PayerCore(agent(2).key, NETWORK)
    url = server.base + "/paid"
    assert payer.pay(send, "GET", url).status == 200
    server.amount = "2500"  # the price changed under the cache
    try:
        before = server.requests["/paid"]
        result = payer.pay(send, "GET", url)
        assert result.status == 200 and result.stale_retry and result.amount == 2500
        assert server.requests["/paid"] - before == 3  # refused cached attempt, fresh 402, paid retry
        assert result.round_trips == 3 and result.stale_s > 0 and result.challenge_s > 0
        again = payer.pay(send, "GET", url)  # the cache now holds the new terms
        assert again.status == 200 and again.round_trips == 1 and not again.stale_retry
    finally:
        server.amount = "1000"


def test_a_refusal_that_is_not_about_terms_is_not_retried(server: PayServer, http: httpx.Client) -> None:
    send, payer = Counting(http), PayerCore(agent(3).key_hex, NETWORK)
    url = server.base + "/settle-fails"
    first = payer.pay(send, "GET", url)
    assert (first.status, first.error, first.round_trips) == (402, "transaction_failed", 2)
    assert first.response is not None and not first.response.success
    second = payer.pay(send, "GET", url)  # cached terms, settlement fails again: reported, no retry
    assert (second.status, second.error, second.round_trips, second.stale_retry) == (402, "transaction_failed", 1, False)


def test_tampered_payments_carry_the_servers_reason(server: PayServer, http: httpx.Client) -> None:
    send, payer = Counting(http), PayerCore(agent(4).key_hex, NETWORK)
    url = server.base + "/paid"
    forged = payer.pay(send, "GET", url, tamper=Tamper(signer=AuthorizationSigner("0x" + "11" * 32)))
    assert (forged.status, forged.error) == (402, "invalid_exact_evm_payload_signature")
    assert forged.payment is not None and forged.payment.payload is not None
    cheap = payer.pay(send, "GET", url, tamper=Tamper(authorization=lambda auth, domain: {**auth, "value": "1"}))
    assert (cheap.status, cheap.error, cheap.amount) == (402, "invalid_exact_evm_payload_signature", 1)
    calls = send.calls
    moved = payer.pay(send, "GET", url, tamper=Tamper(requirements=lambda req: req.update(amount="1")))
    assert (moved.status, moved.error, moved.round_trips) == (402, "No matching payment requirements", 1)
    assert send.calls - calls == 1  # a tampered payment is judged as sent: no stale retry
    garbage = payer.pay(send, "GET", url, tamper=Tamper(header=lambda h: base64.b64encode(b"{not json").decode()))
    assert (garbage.status, garbage.error) == (400, "invalid_payload")
    assert payer.pay(send, "GET", url).status == 200  # the honest payment still works


def test_unpayable_402s_and_free_routes(server: PayServer, http: httpx.Client) -> None:
    send = Counting(http)
    free = PayerCore(agent(5).key_hex, NETWORK).pay(send, "GET", server.base + "/free")
    assert (free.status, free.error, free.round_trips, free.payment) == (200, "", 1, None)
    garbage = PayerCore(agent(5).key_hex, NETWORK).pay(send, "GET", server.base + "/garbage-402")
    assert (garbage.status, garbage.error) == (402, "invalid_payment_required") and "base64" in garbage.detail
    elsewhere = PayerCore(agent(5).key_hex, "eip155:8453").pay(send, "GET", server.base + "/paid")
    assert (elsewhere.status, elsewhere.error, elsewhere.round_trips) == (402, "no_matching_requirements", 1)
    assert "eip155:31337" in elsewhere.detail


def test_httpx_payer_and_transport_errors(server: PayServer) -> None:
    with HttpxPayer(agent(6).key_hex, NETWORK) as payer:
        result: PaymentResult = payer.pay(server.base + "/paid")
        assert result.status == 200 and result.response is not None and result.response.success
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{spare.getsockname()[1]}/paid"
    spare.close()
    with HttpxPayer(agent(6).key_hex, NETWORK, timeout=2) as payer:
        down = payer.pay(closed)
    assert (down.status, down.error) == (0, "transport_error") and down.detail


def test_facilitator_tx_signing_is_byte_identical_to_eth_account() -> None:
    """The facilitator's coincurve legacy-tx signer against eth_account: raw bytes and hash, any chain id."""
    from coincurve import PrivateKey

    from services.facilitator.txsign import sign_legacy

    for i in range(40):
        account = Account.create()
        to, data = os.urandom(20), os.urandom(i * 17)
        fields = {"nonce": i * 7919, "gas_price": 10**9 + i, "gas": 21_000 + i * 1000, "value": i % 3,
                  "chain_id": (1, 31337, 8453, 84532)[i % 4]}
        raw, tx_hash = sign_legacy(PrivateKey(bytes(account.key)), to=to, data=data, **fields)
        expected = account.sign_transaction({
            "to": to_checksum_address(to), "data": "0x" + data.hex(), "value": fields["value"], "gas": fields["gas"],
            "gasPrice": fields["gas_price"], "nonce": fields["nonce"], "chainId": fields["chain_id"]})
        assert raw == bytes(expected.raw_transaction) and tx_hash == bytes(expected.hash)


# --- the channel payer (batch-settlement): pure logic, checked against the official SDK client ----------

BS_OFFER = {
    "scheme": "batch-settlement", "network": NETWORK, "asset": to_checksum_address(TOKEN), "amount": "1000",
    "payTo": PAY_TO, "maxTimeoutSeconds": 300,
    "extra": {"name": "USD Coin", "version": "2", "receiverAuthorizer": to_checksum_address("0x" + "ef" * 20),
              "withdrawDelay": 900, "minDeposit": "5000"},
}


def bs_required() -> dict[str, Any]:
    return {"x402Version": 2, "accepts": [copy_of(BS_OFFER)], "resource": {"url": "http://127.0.0.1/metered"}}


def copy_of(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_channel_id_voucher_and_deposit_match_the_sdk_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.batch_settlement.client import eip3009 as sdk_eip3009
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
    from x402.mechanisms.evm.signers import EthAccountSigner

    from services.payer.channel import ChannelPayer

    key = agent(3).key_hex
    account = Account.from_key(key)
    sdk = BatchSettlementEvmScheme(EthAccountSigner(account))
    requirements = PaymentRequirements.model_validate(BS_OFFER)
    payer = ChannelPayer(key, NETWORK)
    channel = payer.channel_quote(bs_required())
    config = sdk.build_channel_config(requirements)
    assert channel.config == config.to_dict()
    assert channel.channel_id == compute_channel_id(config, NETWORK)
    for cumulative in (1000, 7000, 10**20):
        assert payer.sign_voucher(channel, cumulative) == sign_voucher(
            EthAccountSigner(account), channel.channel_id, cumulative, NETWORK).signature
    voucher = decode(payer.voucher_header(channel, 2000))
    assert voucher["accepted"] == BS_OFFER and voucher["resource"] == {"url": "http://127.0.0.1/metered"}
    assert voucher["payload"]["type"] == "voucher" and voucher["payload"]["voucher"]["maxClaimableAmount"] == "2000"
    # the deposit: same salt and clock on both sides, then the SDK's whole payload equals ours
    salt, now = os.urandom(32), int(time.time())
    monkeypatch.setattr(sdk_eip3009, "create_nonce", lambda: "0x" + salt.hex())
    monkeypatch.setattr(sdk_eip3009.time, "time", lambda: now)
    ours = decode(payer.deposit_header(channel, 1000, 5000, now_s=now, salt=salt))
    assert ours["payload"] == sdk.create_payment_payload(requirements)


def test_channel_payer_adopts_only_charges_it_can_prove() -> None:
    from services.payer.channel import ChannelPayer, voucher_digest

    payer, stranger = ChannelPayer(agent(4).key_hex, NETWORK), ChannelPayer(agent(5).key_hex, NETWORK)
    channel = payer.channel_quote(bs_required())
    channel.book.signed_max = 3000
    assert payer._provable(channel, 3000, None)  # within what it signed itself
    assert not payer._provable(channel, 4000, None)  # more, with nothing to show for it
    own = payer.sign_voucher(channel, 9000)
    assert payer._provable(channel, 8000, {"signedMaxClaimable": "9000", "signature": own})
    assert channel.book.signed_max == 9000
    channel.book.signed_max = 0
    forged = "0x" + stranger.signer.sign_digest(voucher_digest(channel.separator, channel.channel_word, 9000)).hex()
    assert not payer._provable(channel, 8000, {"signedMaxClaimable": "9000", "signature": forged})
    assert not payer._provable(channel, 9500, {"signedMaxClaimable": "9000", "signature": own})  # beyond the voucher
    assert not payer._provable(channel, 8000, {"signedMaxClaimable": "9000", "signature": "0x1234"})


def test_channel_deposits_stay_within_the_limit() -> None:
    from services.payer.channel import ChannelPayer

    payer = ChannelPayer(agent(6).key_hex, NETWORK)
    channel = payer.channel_quote(bs_required())
    assert payer.deposit_amount(channel, 1000, None) == 5000  # the 402's minDeposit
    assert payer.deposit_amount(channel, 1000, 2500) == 2500  # what the budget leaves
    assert payer.deposit_amount(channel, 1000, 999) is None  # not even this request: do not send
    assert payer.deposit_amount(channel, 7000, None) == 7000  # never less than needed
    assert ChannelPayer(agent(6).key_hex, NETWORK, deposit=20_000).deposit_amount(channel, 1000, None) == 20_000

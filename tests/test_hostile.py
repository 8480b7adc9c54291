"""Hostile and malformed payments against a real world, each with the status and x402 reason
code it must get, and a ledger and chain that stay exact (payments built by `payments`)."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from eth_account import Account

from services.chain import Rpc
from services.facilitator.evm import TOPIC_AUTHORIZATION_USED, transfer_with_authorization_data
from services.facilitator.ledger import read_payments
from services.stack import World
from services.token import DEV_PRIVATE_KEY, balance_of, send_transactions
from x402bench.scenario import ScenarioError, load_scenario

from payments import build_payment, encode, pay, reason, requirements


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(agents={"count": 30, "funding_usdc": 1})
    with World(scenario, workdir=tmp_path_factory.mktemp("hostile")) as w:
        yield w


def settled_nonces(world: World) -> list[str]:
    return [row["nonce"] for row in read_payments(world.info.ledger_path) if row["state"] == "settled"]


# --- through the priced service: what a real client sees ------------------------------------

HOSTILE = {
    "bad signature": (dict(key="0x" + "11" * 32), "invalid_exact_evm_payload_signature"),
    "wrong recipient": (dict(auth={"to": "0x" + "22" * 20}), "invalid_exact_evm_payload_recipient_mismatch"),
    "wrong amount": (dict(auth={"value": 999}), "invalid_exact_evm_payload_authorization_value_mismatch"),
    "expired": (dict(auth={"validBefore": int(time.time()) - 10}), "invalid_exact_evm_payload_authorization_valid_before"),
    "not yet valid": (dict(auth={"validAfter": int(time.time()) + 3600}), "invalid_exact_evm_payload_authorization_valid_after"),
    "signed for another chain": (dict(domain={"chainId": 1}), "invalid_exact_evm_payload_signature"),
    "signed for another token": (dict(domain={"verifyingContract": "0x" + "33" * 20}), "invalid_exact_evm_payload_signature"),
    "signed with wrong token name": (dict(domain={"name": "USDC"}), "invalid_exact_evm_payload_signature"),
    "signed with wrong token version": (dict(domain={"version": "1"}), "invalid_exact_evm_payload_signature"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_payment_is_refused_with_its_reason(world: World, case: str) -> None:
    overrides, expected = HOSTILE[case]
    before = len(settled_nonces(world))
    response = pay(world, encode(build_payment(world, 2, requirements(world), **overrides)))
    assert response.status_code == 402
    assert reason(response) == expected
    assert len(settled_nonces(world)) == before


@pytest.mark.parametrize("field,value", [
    ("network", "eip155:1"), ("asset", "0x" + "44" * 20), ("payTo", "0x" + "55" * 20), ("amount", "1"),
    ("extra", {"name": "Wrong", "version": "2"}), ("extra", {"name": "USD Coin", "version": "9"}),
])
def test_payment_for_other_terms_matches_no_requirement(world: World, field: str, value: Any) -> None:
    """The SDK middleware itself refuses a payload whose `accepted` terms differ from what it quoted."""
    response = pay(world, encode(build_payment(world, 3, requirements(world), accepted={field: value})))
    assert response.status_code == 402
    assert reason(response) == "No matching payment requirements"


def test_insufficient_balance_is_refused(world: World) -> None:
    broke = Account.create()
    payload = build_payment(world, 0, requirements(world), key=broke.key.hex(), auth={"from": broke.address})
    response = pay(world, encode(payload))
    assert response.status_code == 402
    assert reason(response) == "invalid_exact_evm_insufficient_balance"


def settlement_of(response: httpx.Response) -> str:
    return json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))["transaction"]


def test_a_repeated_payment_is_answered_with_its_settlement_and_charged_once(world: World) -> None:
    """The same signed payment again (a client retrying an answer it never got) is recognised: served
    with the first settlement's transaction, never settled a second time."""
    info = world.info
    payee_before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    payload = build_payment(world, 4, requirements(world))
    header = encode(payload)
    first, second = pay(world, header), pay(world, header)
    assert first.status_code == 200 and second.status_code == 200
    assert settlement_of(first) == settlement_of(second)
    assert settled_nonces(world).count(payload["payload"]["authorization"]["nonce"].lower()) == 1
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - payee_before == info.prices["weather"]


def test_the_same_nonce_with_another_signature_is_refused(world: World) -> None:
    """Only a byte-identical retry is answered from the ledger: the high-s twin of a paid signature (same
    nonce, another signature) is refused."""
    from services.payer.signing import SECP256K1_N

    payload = build_payment(world, 8, requirements(world))
    assert pay(world, encode(payload)).status_code == 200
    sig = bytes.fromhex(payload["payload"]["signature"][2:])
    s_value = SECP256K1_N - int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + s_value.to_bytes(32, "big") + bytes([(55 - sig[64]) if sig[64] >= 27 else sig[64] ^ 1])
    payload["payload"]["signature"] = "0x" + twin.hex()
    response = pay(world, encode(payload))
    assert response.status_code == 402


def test_twenty_concurrent_copies_settle_exactly_once(world: World) -> None:
    info = world.info
    payload = build_payment(world, 5, requirements(world))
    nonce = payload["payload"]["authorization"]["nonce"]
    payee_before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    header = encode(payload)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: pay(world, header), range(20)))
    assert [r.status_code for r in responses] == [200] * 20, [(r.status_code, reason(r)) for r in responses]
    assert len({settlement_of(r) for r in responses}) == 1  # one settlement, named in every answer
    assert settled_nonces(world).count(nonce.lower()) == 1
    logs = Rpc(info.rpc_url).call("eth_getLogs", {"address": info.token["address"], "fromBlock": "0x0",
                                                   "toBlock": "latest", "topics": [TOPIC_AUTHORIZATION_USED]})
    assert sum(1 for log in logs if log["topics"][2].lower() == nonce.lower()) == 1
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - payee_before == info.prices["weather"]


MALFORMED = {
    "not base64": "this is not base64!!",
    "not JSON": base64.b64encode(b"{not json").decode(),
    "missing fields": base64.b64encode(json.dumps({"x402Version": 2, "payload": {}}).encode()).decode(),
    "oversized": base64.b64encode(b"{" + b" " * 20_000 + b"}").decode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_gets_400_invalid_payload(world: World, case: str) -> None:
    response = pay(world, MALFORMED[case])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"


# --- the facilitator itself: reason codes for requirements a service might get wrong --------

def facilitator(world: World, path: str, body: Any) -> httpx.Response:
    return httpx.post(world.info.facilitator_url + path, json=body, timeout=60)


@pytest.mark.parametrize("field,value,expected", [
    ("network", "eip155:1", "invalid_network"),
    ("asset", "0x" + "44" * 20, "invalid_payment_requirements"),
    ("extra", {"name": "Wrong", "version": "2"}, "invalid_exact_evm_token_name_mismatch"),
    ("extra", {"name": "USD Coin", "version": "9"}, "invalid_exact_evm_token_version_mismatch"),
    ("extra", {}, "missing_eip712_domain"),
    ("scheme", "upto", "unsupported_scheme"),
])
def test_facilitator_refuses_requirements_it_cannot_settle(world: World, field: str, value: Any, expected: str) -> None:
    payload = build_payment(world, 6, requirements(world), accepted={field: value})
    reqs = payload["accepted"]
    verdict = facilitator(world, "/verify", {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": reqs})
    assert verdict.status_code in (200, 400) and verdict.json()["isValid"] is False
    assert verdict.json()["invalidReason"] == expected
    settled = facilitator(world, "/settle", {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": reqs})
    assert settled.json()["success"] is False and settled.json()["errorReason"] == expected


def test_facilitator_network_mismatch_between_payload_and_requirements(world: World) -> None:
    payload = build_payment(world, 6, requirements(world), accepted={"network": "eip155:1"})
    reqs = {**payload["accepted"], "network": "eip155:31337"}
    verdict = facilitator(world, "/verify", {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": reqs})
    assert verdict.json()["invalidReason"] == "network_mismatch"


@pytest.mark.parametrize("body,expected", [
    ({"x402Version": 1, "paymentPayload": {}, "paymentRequirements": {}}, "invalid_x402_version"),
    ({"x402Version": 2, "paymentPayload": {"x402Version": 2}, "paymentRequirements": {}}, "invalid_payload"),
    ("not an object", "invalid_payload"),
])
def test_facilitator_answers_malformed_requests_with_400(world: World, body: Any, expected: str) -> None:
    verdict = facilitator(world, "/verify", body)
    assert verdict.status_code == 400
    assert verdict.json()["invalidReason"] == expected


def test_facilitator_verify_accepts_a_good_payment_without_settling_it(world: World) -> None:
    payload = build_payment(world, 7, requirements(world))
    before = len(read_payments(world.info.ledger_path))
    verdict = facilitator(world, "/verify", {"x402Version": 2, "paymentPayload": payload,
                                             "paymentRequirements": payload["accepted"]})
    assert verdict.status_code == 200 and verdict.json() == {"isValid": True, "payer": world.agents[7].address}
    assert len(read_payments(world.info.ledger_path)) == before


# ---- batched: many authorizations per tx, and one bad item must not sink the others ------------------


@pytest.fixture(scope="module")
def batched_world(tmp_path_factory):
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(
        agents={"count": 12, "funding_usdc": 1},
        facilitator={"strategy": "batched", "batch": {"max_size": 4, "max_age_s": 60}})
    with World(scenario, workdir=tmp_path_factory.mktemp("batched")) as w:
        yield w
    assert w.anvil is None and not w.processes


def _rows(world: World, nonces: list[str]) -> dict[str, dict[str, Any]]:
    wanted = {n.lower() for n in nonces}
    return {r["nonce"].lower(): r for r in read_payments(world.info.ledger_path) if r["nonce"].lower() in wanted}


def _wait_accepted(world: World, nonces: list[str], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_rows(world, nonces)) < len(nonces) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_rows(world, nonces)) == len(nonces)


def test_batched_settles_four_payments_in_one_tx(batched_world: World) -> None:
    world = batched_world
    info = world.info
    before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    required = requirements(world)
    payloads = [build_payment(world, agent, required) for agent in range(4)]
    with ThreadPoolExecutor(4) as pool:  # max_age is a minute: only the fourth payment can set the batch off
        responses = list(pool.map(lambda p: pay(world, encode(p)), payloads))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    (tx_hash,) = {json.loads(base64.b64decode(r.headers["PAYMENT-RESPONSE"]))["transaction"] for r in responses}
    receipt = Rpc(info.rpc_url).call("eth_getTransactionReceipt", tx_hash)
    assert int(receipt["status"], 16) == 1
    used = [log for log in receipt["logs"] if log["topics"][0] == TOPIC_AUTHORIZATION_USED]
    nonces = [p["payload"]["authorization"]["nonce"] for p in payloads]
    assert sorted(log["topics"][2].lower() for log in used) == sorted(n.lower() for n in nonces)
    assert int(receipt["gasUsed"], 16) / 4 < 0.85 * 85_704  # amortised below a single transfer
    rows = _rows(world, nonces)
    assert {r["state"] for r in rows.values()} == {"settled"} and {r["tx_hash"] for r in rows.values()} == {tx_hash}
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - before == 4 * info.prices["weather"]


def test_batched_item_beaten_to_the_chain_fails_alone_with_its_reason(batched_world: World) -> None:
    """A accepted into the batch, then settled by someone else straight on the token: the batch tx skips A
    (nonce used), settles B, C, D, and A's client hears nonce_already_used; ledger and chain agree."""
    world = batched_world
    info = world.info
    rpc = Rpc(info.rpc_url)
    required = requirements(world)
    a, *others = [build_payment(world, agent, required) for agent in range(4, 8)]
    auth = a["payload"]["authorization"]
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(pay, world, encode(a))
        _wait_accepted(world, [auth["nonce"]])
        front_run = transfer_with_authorization_data(
            auth["from"], auth["to"], int(auth["value"]), int(auth["validAfter"]), int(auth["validBefore"]),
            auth["nonce"], a["payload"]["signature"])
        send_transactions(info.rpc_url, DEV_PRIVATE_KEY, [{"to": info.token["address"], "data": front_run,
                                                           "gas": 200_000}])
        rest = list(pool.map(lambda p: pay(world, encode(p)), others))
        refused = first.result()
    assert [r.status_code for r in rest] == [200] * 3
    assert refused.status_code == 402 and reason(refused) == "invalid_exact_evm_nonce_already_used"
    (tx_hash,) = {json.loads(base64.b64decode(r.headers["PAYMENT-RESPONSE"]))["transaction"] for r in rest}
    receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
    assert int(receipt["status"], 16) == 1
    assert len([log for log in receipt["logs"] if log["topics"][0] == TOPIC_AUTHORIZATION_USED]) == 3
    rows = _rows(world, [p["payload"]["authorization"]["nonce"] for p in (a, *others)])
    assert rows[auth["nonce"].lower()]["state"] == "failed"
    assert rows[auth["nonce"].lower()]["error"] == "invalid_exact_evm_nonce_already_used"
    assert sorted(r["state"] for r in rows.values()) == ["failed", "settled", "settled", "settled"]


def test_batch_too_big_for_the_block_is_refused_before_anything_starts(tmp_path) -> None:
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(
        chain={"gas_limit": 30_000_000}, facilitator={"strategy": "batched", "batch": {"max_size": 1000}})
    with pytest.raises(ScenarioError, match=r"facilitator\.batch\.max_size 1000 .* chain\.gas_limit 30,000,000"):
        with World(scenario, workdir=tmp_path):
            pass


def test_batch_calldata_is_the_abi_encoding_of_settle() -> None:
    """Hand-built calldata (static tuples inline) against eth_abi's encoder: pure logic, so a mock-free unit test."""
    from eth_abi import encode
    from eth_utils import keccak

    from services.facilitator.evm import batch_settle_data

    token = "0x" + "11" * 20
    items = [("0x" + f"{i:040x}", "0x" + "33" * 20, 1000 + i, 0, 10**10, "0x" + f"{i:064x}",
              "0x" + "55" * 32 + "66" * 32 + ("1b" if i % 2 else "01")) for i in range(3)]
    shape = "(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
    expected = keccak(text=f"settle(address,{shape}[])")[:4] + encode(["address", f"{shape}[]"], [token, [
        (p, q, v, a, b, bytes.fromhex(n[2:]), 27 if s.endswith("1b") else 28, bytes.fromhex(s[2:66]),
         bytes.fromhex(s[66:130])) for p, q, v, a, b, n, s in items]])
    assert batch_settle_data(token, items) == "0x" + expected.hex()


def test_batched_facilitator_killed_mid_batch_loses_nothing_and_settles_once(batched_world: World) -> None:
    """SIGKILL the facilitator while two accepted payments wait in its batch; the restarted process finds them
    in the ledger, batches them again with the next two, and every authorization is used exactly once."""
    world = batched_world
    info = world.info
    before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    required = requirements(world)
    signed_before = {"validAfter": int(time.time()) - 600}  # recovery must settle the window as signed
    waiting, later = [build_payment(world, agent, required, auth=signed_before) for agent in (8, 9)], \
        [build_payment(world, agent, required) for agent in (10, 11)]
    nonces = [p["payload"]["authorization"]["nonce"] for p in waiting + later]
    (facilitator,) = [p for p in world.processes if p.name == "facilitator"]
    with ThreadPoolExecutor(2) as pool:
        cut_off = [pool.submit(pay, world, encode(p)) for p in waiting]
        _wait_accepted(world, nonces[:2])
        port, process = facilitator.port, facilitator.process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert all(f.result().status_code != 200 for f in cut_off)  # their answers died with the process
    assert {r["state"] for r in _rows(world, nonces[:2]).values()} == {"accepted"}
    facilitator.start(port=port)
    with ThreadPoolExecutor(2) as pool:
        served = list(pool.map(lambda p: pay(world, encode(p)), later))
    assert [r.status_code for r in served] == [200, 200]
    deadline = time.monotonic() + 10
    while {r["state"] for r in _rows(world, nonces).values()} != {"settled"} and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = _rows(world, nonces)
    assert {r["state"] for r in rows.values()} == {"settled"} and len({r["tx_hash"] for r in rows.values()}) == 1
    logs = Rpc(info.rpc_url).call("eth_getLogs", {"address": info.token["address"], "fromBlock": "0x0",
                                                   "toBlock": "latest", "topics": [TOPIC_AUTHORIZATION_USED]})
    used = [log["topics"][2].lower() for log in logs]
    assert all(used.count(n.lower()) == 1 for n in nonces)
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - before == 4 * info.prices["weather"]

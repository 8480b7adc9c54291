"""Our own facilitator engine serving the x402 `batch-settlement` scheme, with the official SDK unmodified
on the other sides: real Anvil, real HTTP, processes started the way the World starts them.

World A (facilitator strategy `sync`, a 1 s claim cadence, settle only on request): the SDK requests
client deposits (our engine sends the deposit through the ERC-3009 collector), pays vouchers, gets the
corrective 402 for a wrong cumulative amount; a replayed and a lowered voucher are refused; our
/verify refuses vouchers the chain state rules out; a deposit sent again with the same authorization
is answered from its record, not sent again; claim + settle pays the payee exactly what was charged;
the cooperative refund returns the rest. Then the facilitator is SIGKILLed between a claim and its
settle: after its restart the settle pays the payee everything claimed. A second services process,
which does not hold that channel, has the SDK server scheme ask our /verify for the next voucher, and
claims and settles it when stopped. The services are SIGKILLed
after serving vouchers: restarted, they still hold them (durable channel storage) and go on; stopped
with SIGTERM, they claim and settle what they hold. A second facilitator with the receiver-authorizer
key advertises it and signs a claim and a refund sent without signatures. Last (it moves chain time): a payer's timed
withdrawal returns the unclaimed balance.

World B (claim every 0.5 s, settle every 1 s): the services' cadence claims and settles on its own.
Strategies `pipelined` and `batched` serve the scheme with the same handler. On 0.5 s blocks with the
RPC fault proxy dropping sent txs, a deposit and a claim are sent again by the guard and answered once.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import yaml
from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients import x402_requests
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as ClientScheme
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import VoucherPayload
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from services.chain import Rpc
from services.faults.control import FaultControl
from services.escrow import ESCROW_ADDRESS, channel_state, encode_escrow_call, escrow_events, receiver_totals
from services.facilitator.config import FacilitatorConfig
from services.process import ServiceProcess
from services.resource.app import ResourceConfig
from services.stack import World, role_keys
from services.token import balance_of, send_transactions
from x402bench.scenario import validate_scenario

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1_000  # $0.001
DEPOSIT = 20 * PRICE  # channel.deposit_usdc 0.02
WITHDRAW_DELAY = 1800
ETH = 10**18


def scenario_data(channel: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    data["facilitator"] = {"strategy": "sync", "signer_keys": 1}
    data["agents"] = {**data["agents"], "count": 5, "mix": {}}
    data["services"] = [data["services"][0],
                        {"name": "metered", "path": "/metered", "price": "$0.001", "scheme": "batch-settlement"}]
    data["channel"] = {"withdraw_delay_s": WITHDRAW_DELAY, "deposit_usdc": 0.02, "claims_per_tx": 50, **channel}
    return data


def decode(header: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(header))


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


class Payer:
    """One agent paying the batch-settlement route with the SDK's requests client; every paid request's
    PAYMENT-SIGNATURE is kept, so a test can send one again."""

    def __init__(self, world: World, index: int) -> None:
        info = world.info
        self.url = info.service_urls["metered"]
        self.account = Account.from_key(world.agents[index].key_hex)
        self.scheme = ClientScheme(EthAccountSigner(self.account))
        client = x402ClientSync()
        client.set_spend_controls(False)  # our token is no default asset of chain 31337
        client.register(info.network, self.scheme)
        self.session = x402_requests(client)
        self.sent: list[str] = []
        self.session.hooks["response"].append(self._keep)
        (offer,) = decode(httpx.get(self.url).headers["payment-required"])["accepts"]
        self.offer = offer
        self.requirements = PaymentRequirements.model_validate(offer)
        self.config = self.scheme.build_channel_config(self.requirements)
        self.channel_id = compute_channel_id(self.config, info.network)
        self.network = info.network

    def _keep(self, response: Any, *args: Any, **kwargs: Any) -> None:
        header = response.request.headers.get("PAYMENT-SIGNATURE")
        if header:
            self.sent.append(header)

    def pay(self) -> dict[str, Any]:
        response = self.session.get(self.url, timeout=60)
        assert response.status_code == 200, (response.status_code, response.headers)
        return decode(response.headers["payment-response"])

    def voucher(self, cumulative: int, key: Any = None) -> PaymentPayload:
        signer = EthAccountSigner(key or self.account)
        payload = VoucherPayload()
        payload.channel_config = self.config
        payload.voucher = sign_voucher(signer, self.channel_id, cumulative, self.network)
        return PaymentPayload(x402_version=2, accepted=self.requirements, payload=payload.to_dict())

    def send(self, header: str) -> httpx.Response:
        return httpx.get(self.url, headers={"PAYMENT-SIGNATURE": header}, timeout=60)


def facilitator(world: World, path: str, payload: PaymentPayload | dict[str, Any],
                requirements: dict[str, Any]) -> dict[str, Any]:
    body = {"x402Version": 2, "paymentPayload": payload if isinstance(payload, dict) else payload.model_dump(
        by_alias=True, exclude_none=True), "paymentRequirements": requirements}
    response = httpx.post(world.info.facilitator_url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def harness(world: World, route: str = "claim_settle") -> dict[str, Any]:
    base = world.info.service_urls["metered"].rsplit("/", 1)[0]
    if route == "status":
        return httpx.get(base + "/_channels/status", timeout=30).json()
    response = httpx.post(base + "/_channels/claim_settle", timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def metrics(world: World) -> dict[str, Any]:
    return httpx.get(world.info.facilitator_url + "/metrics", timeout=30).json()["batch_settlement"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    scenario = validate_scenario(scenario_data({"claim_every_s": 1.0, "settle_every_s": 86_400}))
    with World(scenario, workdir=tmp_path_factory.mktemp("world-bs-own")) as w:
        yield w


def test_sdk_client_against_our_engine(world: World) -> None:
    info = world.info
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    supported = httpx.get(info.facilitator_url + "/supported").json()
    assert {(k["scheme"], k["network"]) for k in supported["kinds"]} == {
        ("exact", info.network), ("batch-settlement", info.network)}
    assert httpx.get(info.facilitator_url + "/health").json()["strategy"] == "sync"
    payer = Payer(world, 0)
    assert (payer.offer["extra"]["minDeposit"], payer.offer["extra"]["withdrawDelay"]) == (str(DEPOSIT), WITHDRAW_DELAY)
    payer_start = balance_of(rpc, token, payer.account.address)
    escrow_start = balance_of(rpc, token, ESCROW_ADDRESS)
    payee_start = balance_of(rpc, token, payee)

    first = payer.pay()  # the deposit, sent by our engine through the ERC-3009 collector
    assert first["success"] and first["transaction"].startswith("0x") and first["amount"] == str(DEPOSIT)
    assert first["extra"]["channelState"]["balance"] == str(DEPOSIT)
    assert channel_state(rpc, payer.channel_id).balance == DEPOSIT
    assert balance_of(rpc, token, ESCROW_ADDRESS) - escrow_start == DEPOSIT
    assert payer_start - balance_of(rpc, token, payer.account.address) == DEPOSIT
    (deposited,) = escrow_events(rpc, event="Deposited", channel_id=payer.channel_id)
    assert deposited["tx"] == first["transaction"]
    paid = 5
    for n in range(2, paid + 1):  # vouchers: no transaction
        answer = payer.pay()
        assert answer["transaction"] == "" and answer["extra"]["chargedAmount"] == str(PRICE)
        assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str(n * PRICE)

    # A wrong cumulative amount (one request skipped): the server's corrective 402 with its state.
    refused = payer.send(encode_payment_signature_header(payer.voucher((paid + 2) * PRICE)))
    assert refused.status_code == 402
    corrective = decode(refused.headers["payment-required"])
    assert corrective["error"] == bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH == (
        "invalid_batch_settlement_evm_cumulative_amount_mismatch")
    assert corrective["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"] == str(paid * PRICE)
    # A voucher already paid with, sent again, and a lowered one: refused, nothing served.
    for header in (payer.sent[-1], encode_payment_signature_header(payer.voucher((paid - 1) * PRICE))):
        again = payer.send(header)
        assert again.status_code == 402 and decode(again.headers["payment-required"])["error"] == (
            bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH)
    answer = payer.pay()  # the client's next voucher is the right one
    charged = (paid + 1) * PRICE
    assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str(charged)

    # The deposit sent to /settle again with the same authorization: answered from its record, not sent.
    before = metrics(world)
    deposit = PaymentPayload.model_validate(decode(payer.sent[0]))
    assert deposit.payload["type"] == "deposit"
    replay = facilitator(world, "/settle", deposit, payer.offer)
    assert replay["success"] and replay["transaction"] == first["transaction"], replay
    assert balance_of(rpc, token, ESCROW_ADDRESS) - escrow_start == DEPOSIT
    assert len(escrow_events(rpc, event="Deposited", channel_id=payer.channel_id)) == 1
    after = metrics(world)
    assert after["deposits_answered_again"] == before["deposits_answered_again"] + 1
    assert after["deposits"] == before["deposits"]

    # Deposits our /verify refuses before any tx: a payer without the funds, a tampered amount.
    broke = Payer(world, 0)
    broke.account = Account.create()
    broke.scheme = ClientScheme(EthAccountSigner(broke.account))
    client = x402ClientSync()
    client.set_spend_controls(False)
    client.register(info.network, broke.scheme)
    unfunded = client.create_payment_payload(PaymentRequired.model_validate(decode(httpx.get(payer.url).headers[
        "payment-required"])))
    assert unfunded.payload["type"] == "deposit"
    verdict = facilitator(world, "/verify", unfunded, payer.offer)
    assert (verdict["isValid"], verdict["invalidReason"]) == (False, bs_errors.ERR_INSUFFICIENT_BALANCE), verdict
    tampered = unfunded.model_dump(by_alias=True, exclude_none=True)
    tampered["payload"]["deposit"]["amount"] = str(DEPOSIT + 1)
    verdict = facilitator(world, "/verify", tampered, payer.offer)
    assert verdict["invalidReason"] == bs_errors.ERR_INVALID_RECEIVE_AUTHORIZATION_SIGNATURE, verdict
    settled = facilitator(world, "/settle", tampered, payer.offer)
    assert (settled["success"], settled["errorReason"], settled["transaction"]) == (
        False, bs_errors.ERR_INVALID_RECEIVE_AUTHORIZATION_SIGNATURE, "")

    # The cadence claims (every 1 s) without anyone asking; settle only on request here.
    wait_for(lambda: channel_state(rpc, payer.channel_id).total_claimed == charged, 15, "cadence claim")
    # ...and the services have recorded that claim too (the chain can show it before the cadence has read its
    # answer; killing the facilitator in that gap would fail the claim, not the settle this test is about)
    wait_for(lambda: harness(world, "status")["unclaimed_amount"] == "0", 15, "the services' record of the claim")
    claimed, settled = receiver_totals(rpc, payee, token)
    assert claimed - settled == charged
    assert balance_of(rpc, token, payee) == payee_start

    # Our /verify (what the server asks when its copy of the chain state is stale) against the chain.
    offer = payer.offer
    valid = facilitator(world, "/verify", payer.voucher(charged + PRICE), offer)
    assert valid["isValid"] and valid["payer"] == payer.account.address, valid
    assert (valid["extra"]["balance"], valid["extra"]["totalClaimed"]) == (str(DEPOSIT), str(charged))
    for cumulative, key, reason in ((charged, None, bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED),
                                    (DEPOSIT + 1, None, bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE),
                                    (charged + PRICE, Account.create(), bs_errors.ERR_INVALID_VOUCHER_SIGNATURE)):
        verdict = facilitator(world, "/verify", payer.voucher(cumulative, key), offer)
        assert (verdict["isValid"], verdict["invalidReason"]) == (False, reason), verdict
    wrong_receiver = {**offer, "payTo": info.token["address"]}
    verdict = facilitator(world, "/verify", payer.voucher(charged + PRICE), wrong_receiver)
    assert verdict["invalidReason"] == bs_errors.ERR_RECEIVER_MISMATCH

    # Claim (nothing left to claim) and settle through the harness route: the payee gets exactly what was charged.
    done = harness(world)
    assert done["settle_transaction"] and done["claims"] == []
    assert balance_of(rpc, token, payee) - payee_start == charged
    assert receiver_totals(rpc, payee, token) == (charged, charged)
    again = harness(world)
    assert (again["claims"], again["claimed"], again["settle_transaction"]) == ([], "0", None)

    # The client's cooperative refund: the unclaimed rest comes back, through our engine's refundWithSignature.
    payer_before = balance_of(rpc, token, payer.account.address)
    refund = payer.scheme.refund(payer.url)
    assert refund.success and refund.amount == str(DEPOSIT - charged), refund
    assert balance_of(rpc, token, payer.account.address) - payer_before == DEPOSIT - charged
    assert payer_start - balance_of(rpc, token, payer.account.address) == charged
    state = channel_state(rpc, payer.channel_id)
    assert (state.balance, state.total_claimed, state.unclaimed, state.refund_nonce) == (charged, charged, 0, 1)
    assert balance_of(rpc, token, payee) - payee_start == charged
    counts = metrics(world)
    assert counts["deposits"] == 1 and counts["refunds"] == 1 and counts["settles"] == 1
    assert counts["claims"] >= 1 and counts["vouchers_verified"] >= 1
    assert counts["refusals"][bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED] == 1


def test_facilitator_killed_between_claim_and_settle_loses_nothing(world: World) -> None:
    info = world.info
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    payer = Payer(world, 1)
    for _ in range(4):
        payer.pay()
    charged = 4 * PRICE
    wait_for(lambda: channel_state(rpc, payer.channel_id).total_claimed == charged, 15, "cadence claim")
    # ...and the services have recorded that claim too (the chain can show it before the cadence has read its
    # answer; killing the facilitator in that gap would fail the claim, not the settle this test is about)
    wait_for(lambda: harness(world, "status")["unclaimed_amount"] == "0", 15, "the services' record of the claim")
    claimed, settled = receiver_totals(rpc, payee, token)
    assert claimed - settled == charged  # claimed, not settled: the moment to lose it
    payee_before = balance_of(rpc, token, payee)

    process = world.process("facilitator")
    pid = process.pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    try:
        assert process.process is not None and process.process.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(httpx.HTTPError):
            httpx.get(info.facilitator_url + "/health", timeout=2)
        failed = httpx.post(info.service_urls["metered"].rsplit("/", 1)[0] + "/_channels/claim_settle", timeout=60)
        assert failed.status_code == 502 and failed.json()["settle_owed"], failed.text  # no settle while it is down
        assert balance_of(rpc, token, payee) == payee_before
    finally:  # back on the same port (the services point at it), so a failure here does not fail the module
        process.start(port=process.port)
    assert process.pid != pid
    # The restarted facilitator still knows the deposit it sent: a retry is answered from its record.
    (deposited,) = escrow_events(rpc, event="Deposited", channel_id=payer.channel_id)
    replay = facilitator(world, "/settle", PaymentPayload.model_validate(decode(payer.sent[0])), payer.offer)
    assert replay["success"] and replay["transaction"] == deposited["tx"], replay
    assert len(escrow_events(rpc, event="Deposited", channel_id=payer.channel_id)) == 1

    done = harness(world)
    assert done["claims"] == [] and done["settle_transaction"], done
    assert balance_of(rpc, token, payee) - payee_before == charged
    claimed, settled = receiver_totals(rpc, payee, token)
    assert claimed == settled


def test_a_service_without_the_channel_asks_our_verify(world: World, tmp_path: Path) -> None:
    """A second services process (the world's config, its own storage) does not know payer 1's channel: the
    SDK server scheme asks the facilitator to verify the voucher against the chain, and our engine answers."""
    info = world.info
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    payer = Payer(world, 1)  # its channel: 4 payments, claimed and settled by the test before
    assert channel_state(rpc, payer.channel_id).total_claimed == 4 * PRICE
    config = ResourceConfig.load(Path(info.workdir) / "resource.json")
    replace(config, channel_dir=str(tmp_path / "channels")).dump(tmp_path / "resource.json")
    other = ServiceProcess("services-2", "services.resource", tmp_path / "resource.json", tmp_path / "services-2.log")
    other.start()
    try:
        verified = metrics(world)["vouchers_verified"]
        header = encode_payment_signature_header(payer.voucher(5 * PRICE))
        paid = httpx.get(other.url + "/metered", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
        assert paid.status_code == 200, paid.headers
        assert decode(paid.headers["payment-response"])["extra"]["channelState"]["chargedCumulativeAmount"] == str(
            5 * PRICE)
        assert metrics(world)["vouchers_verified"] == verified + 1
        payee_before = balance_of(rpc, token, payee)
    finally:
        other.stop()  # its shutdown claims and settles the voucher it holds
    assert channel_state(rpc, payer.channel_id).total_claimed == 5 * PRICE
    assert balance_of(rpc, token, payee) - payee_before == PRICE


def test_services_keep_vouchers_across_a_kill_and_flush_on_shutdown(world: World) -> None:
    info = world.info
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    payer = Payer(world, 3)
    for _ in range(3):
        payer.pay()
    charged = 3 * PRICE
    services = world.process("services")
    pid = services.pid
    assert pid
    os.kill(pid, signal.SIGKILL)  # no shutdown hook runs: only the durable storage remembers the vouchers
    assert services.process is not None and services.process.wait(timeout=10) == -signal.SIGKILL
    services.start(port=services.port)
    assert harness(world, "status")["charged"][payer.channel_id] == str(charged)
    payee_before = balance_of(rpc, token, payee)
    owed = receiver_totals(rpc, payee, token)
    assert owed[0] - owed[1] in (0, charged)  # the cadence may have claimed before the kill; nothing settled it
    payer.pay()  # the restarted service goes on with the same channel
    charged += PRICE
    assert harness(world, "status")["charged"][payer.channel_id] == str(charged)

    services.stop()  # SIGTERM: the shutdown claims and settles what the service holds
    assert channel_state(rpc, payer.channel_id).total_claimed == charged
    assert balance_of(rpc, token, payee) - payee_before == charged
    claimed, settled = receiver_totals(rpc, payee, token)
    assert claimed == settled
    services.start(port=services.port)
    assert harness(world, "status")["unclaimed_amount"] == "0"


def test_a_facilitator_with_the_authorizer_key_signs_claims_and_refunds(world: World, tmp_path: Path) -> None:
    """Our engine with a receiver-authorizer key advertises it in /supported and signs the claim and refund
    payloads that come without the authorizer's signatures; without the key it refuses them (SDK codes)."""
    info = world.info
    token, rpc = info.token["address"], info.rpc_url
    payer = Payer(world, 4)
    payer.pay()
    payer.pay()
    charged = 2 * PRICE
    voucher = decode(payer.sent[-1])["payload"]["voucher"]
    claim = {"type": "claim", "claims": [{"voucher": {"channel": payer.config.to_dict(), "maxClaimableAmount": str(
        charged)}, "signature": voucher["signature"], "totalClaimed": str(charged)}]}
    requirements = {"scheme": "batch-settlement", "network": info.network, "asset": token, "amount": "0",
                    "payTo": payer.config.receiver, "maxTimeoutSeconds": 0, "extra": {}}
    accepted = {"x402Version": 2, "accepted": requirements}
    refused = facilitator(world, "/settle", {**accepted, "payload": claim}, requirements)
    assert (refused["success"], refused["errorReason"]) == (False, bs_errors.ERR_AUTHORIZER_NOT_CONFIGURED)

    (authorizer,) = role_keys(world.scenario.seed, "receiver-authorizer", 1)
    config = FacilitatorConfig.load(Path(info.workdir) / "facilitator.json")
    replace(config, signer_keys=[info.facilitator_keys[1]], ledger_path=str(tmp_path / "ledger.sqlite"),
            extra={"receiver_authorizer_key": authorizer.key_hex}).dump(tmp_path / "facilitator.json")
    other = ServiceProcess("facilitator-2", "services.facilitator", tmp_path / "facilitator.json", tmp_path / "f2.log")
    other.start()
    try:
        kinds = httpx.get(other.url + "/supported").json()["kinds"]
        (kind,) = [k for k in kinds if k["scheme"] == "batch-settlement"]
        assert kind["extra"] == {"receiverAuthorizer": authorizer.address}
        body = {"x402Version": 2, "paymentPayload": {**accepted, "payload": claim}, "paymentRequirements": requirements}
        claimed = httpx.post(other.url + "/settle", json=body, timeout=60).json()
        assert claimed["success"] and claimed["transaction"], claimed
        assert channel_state(rpc, payer.channel_id).total_claimed == charged
        refund = {"type": "refund", "channelConfig": payer.config.to_dict(), "voucher": voucher,
                  "amount": str(DEPOSIT - charged), "refundNonce": "0", "claims": []}
        before = balance_of(rpc, token, payer.account.address)
        body["paymentPayload"] = {**accepted, "payload": refund}
        refunded = httpx.post(other.url + "/settle", json=body, timeout=60).json()
        assert refunded["success"] and refunded["amount"] == str(DEPOSIT - charged), refunded
        assert balance_of(rpc, token, payer.account.address) - before == DEPOSIT - charged
        assert channel_state(rpc, payer.channel_id).refund_nonce == 1
    finally:
        other.stop()


def test_timed_withdrawal_returns_the_unclaimed_balance(world: World) -> None:
    info = world.info
    token, rpc = info.token["address"], info.rpc_url
    payer = Payer(world, 2)
    for _ in range(3):
        payer.pay()
    charged = 3 * PRICE
    wait_for(lambda: channel_state(rpc, payer.channel_id).total_claimed == charged, 15, "cadence claim")
    Rpc(rpc).call("anvil_setBalance", payer.account.address, hex(ETH))

    def payer_send(function: str, *args: Any) -> dict[str, Any]:
        return send_transactions(rpc, payer.account.key, [
            {"to": ESCROW_ADDRESS, "data": encode_escrow_call(function, payer.config, *args), "gas": 300_000}])[0]

    payer_send("initiateWithdraw", DEPOSIT - charged)
    state = channel_state(rpc, payer.channel_id)
    assert state.withdraw_amount == DEPOSIT - charged and state.withdraw_initiated_at > 0
    Rpc(rpc).call("evm_increaseTime", WITHDRAW_DELAY + 1)
    Rpc(rpc).call("evm_mine")
    before = balance_of(rpc, token, payer.account.address)
    payer_send("finalizeWithdraw")
    assert balance_of(rpc, token, payer.account.address) - before == DEPOSIT - charged
    state = channel_state(rpc, payer.channel_id)
    assert (state.balance, state.total_claimed, state.withdraw_amount) == (charged, charged, 0)


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    scenario = validate_scenario(scenario_data({"claim_every_s": 0.5, "settle_every_s": 1.0}))
    with World(scenario, workdir=tmp_path_factory.mktemp("world-bs-cadence")) as w:
        yield w


def test_cadence_claims_and_settles_on_its_own(quick_world: World) -> None:
    info = quick_world.info
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    payee_before = balance_of(rpc, token, payee)
    payer = Payer(quick_world, 0)
    for _ in range(3):
        payer.pay()
    charged = 3 * PRICE
    wait_for(lambda: balance_of(rpc, token, payee) - payee_before == charged, 15, "the cadence's claim and settle")
    assert receiver_totals(rpc, payee, token) == (charged, charged)
    # the keeper counts its settle once the facilitator's answer is back, which on interval blocks can come
    # a poll after the block that moved the balance
    status = wait_for(lambda: (st := harness(quick_world, "status"))["settle_txs"] >= 1 and st, 15, "settle counted")
    assert status["claim_txs"] >= 1 and status["settle_txs"] >= 1 and status["unclaimed_amount"] == "0"
    assert (status["claim_every_s"], status["settle_every_s"]) == (0.5, 1.0)


@pytest.mark.parametrize("strategy", ["pipelined", "batched"])
def test_every_strategy_serves_the_scheme(strategy: str, tmp_path: Path) -> None:
    data = scenario_data({"claim_every_s": 86_400, "settle_every_s": 86_400})
    data["facilitator"] = {"strategy": strategy, "signer_keys": 1}
    with World(validate_scenario(data), workdir=tmp_path / "world") as w:
        info = w.info
        token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
        assert httpx.get(info.facilitator_url + "/health").json()["strategy"] == strategy
        payee_before = balance_of(rpc, token, payee)
        payer = Payer(w, 0)
        assert payer.pay()["transaction"]  # the deposit
        assert payer.pay()["transaction"] == ""  # a voucher
        done = harness(w)
        assert [c["vouchers"] for c in done["claims"]] == [1] and done["settle_transaction"]
        assert balance_of(rpc, token, payee) - payee_before == 2 * PRICE
        assert metrics(w)["deposits"] == 1


def test_dropped_channel_txs_are_sent_again(tmp_path: Path) -> None:
    """A deposit and a claim whose txs the node loses (the RPC proxy's drop_sent, 0.5 s blocks): the
    channel txs' SettlementGuard sends them again, and each answer comes, once."""
    data = scenario_data({"claim_every_s": 86_400, "settle_every_s": 86_400})
    data["chain"] = {"chain_id": 31337, "mining": "interval", "block_time_s": 0.5}
    data["faults"] = [{"kind": "tx_dropped", "at_s": 3000, "for_s": 1}]  # only so the world puts the RPC proxy in
    with World(validate_scenario(data), workdir=tmp_path / "world") as w:
        info = w.info
        token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
        control = FaultControl(info.fault_proxies["rpc"])
        payer = Payer(w, 0)
        payee_before = balance_of(rpc, token, payee)

        def through_a_drop(work: Callable[[], Any]) -> Any:
            dropped = control.state()["counters"]["dropped"]
            control.set("drop_sent")
            result: list[Any] = []
            thread = threading.Thread(target=lambda: result.append(work()))
            thread.start()
            wait_for(lambda: control.state()["counters"]["dropped"] > dropped, 20, "a dropped tx")
            control.clear("drop_sent")
            thread.join(timeout=60)
            assert result, "no answer after the drop"
            return result[0]

        first = through_a_drop(payer.pay)
        assert first["success"] and first["transaction"] and first["amount"] == str(DEPOSIT)
        assert len(escrow_events(rpc, event="Deposited", channel_id=payer.channel_id)) == 1
        assert channel_state(rpc, payer.channel_id).balance == DEPOSIT
        payer.pay()
        done = through_a_drop(lambda: harness(w))
        assert [c["vouchers"] for c in done["claims"]] == [1] and done["settle_transaction"], done
        assert balance_of(rpc, token, payee) - payee_before == 2 * PRICE
        assert metrics(w)["guard"]["resends"] >= 2

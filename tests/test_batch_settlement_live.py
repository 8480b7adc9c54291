"""The x402 `batch-settlement` scheme in the live world: real Anvil, real HTTP, the official SDK everywhere.

A World (scenarios/smoke.yaml, facilitator strategy `sdk`) with one exact route and one
batch-settlement route. The SDK's requests client with the scheme's client `BatchSettlementEvmScheme`
pays the batch-settlement route: a deposit into the escrow channel first (the facilitator submits
it), then vouchers (no transaction). A voucher with a wrong cumulative amount gets the server's
corrective 402. The services' harness route POST /_channels/claim_settle runs the SDK channel
manager's claim and settle: the payee receives exactly what was charged. Then the client's
cooperative refund returns the unclaimed rest of the deposit to the payer. (Our own engine against the
same SDK client and server: tests/test_batch_settlement_facilitator.py.)
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

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
from x402.schemas import PaymentPayload, PaymentRequirements

from services.escrow import ESCROW_ADDRESS, channel_state, receiver_totals
from services.stack import World, check_live_strategy
from services.token import balance_of
from x402bench.scenario import ScenarioError, validate_scenario

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1_000  # $0.001
DEPOSIT = 20 * PRICE  # channel.deposit_usdc 0.02
PAID = 5  # paid requests before the wrong voucher; one more after it


def scenario_data(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    data["facilitator"] = {"strategy": "sdk", "signer_keys": 1}
    data["agents"] = {**data["agents"], "count": 2, "mix": {}}
    data["services"] = [data["services"][0],
                        {"name": "metered", "path": "/metered", "price": "$0.001", "scheme": "batch-settlement"}]
    data["channel"] = {"withdraw_delay_s": 1800, "deposit_usdc": 0.02, "claims_per_tx": 50}
    return {**data, **changes}


def decode(header: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(header))


def test_schema_and_refusals() -> None:
    scenario = validate_scenario(scenario_data())
    assert [s.scheme for s in scenario.services] == ["exact", "batch-settlement"]
    assert scenario.deposit_atomic() == DEPOSIT and scenario.channel_terms.withdraw_delay_s == 1800
    for bad, field in (({"channel": {"withdraw_delay_s": 899}}, "withdraw_delay_s"),
                       ({"channel": {"deposit_usdc": 0.0005}}, "deposit_usdc"),
                       ({"services": [{"name": "w", "path": "/w", "price": 1}], "channel": {}}, "no service has scheme")):
        with pytest.raises(ScenarioError, match=field):
            validate_scenario(scenario_data(**bad))
    # Every live strategy runs the scheme (ours through services/facilitator/channels.py): none is refused.
    for strategy in ("sdk", "sync", "pipelined", "batched"):
        check_live_strategy(validate_scenario(scenario_data(facilitator={"strategy": strategy, "signer_keys": 1})))
    # (The agents' payer pays such routes now: tests/test_batch_settlement_load.py.)
    # (The sim's model of the scheme is tested with the sim.)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with World(validate_scenario(scenario_data()), workdir=tmp_path_factory.mktemp("world-bs")) as w:
        yield w


def test_sdk_client_deposits_pays_vouchers_claims_settles_refunds(world: World) -> None:
    info = world.info
    url, exact_url = info.service_urls["metered"], info.service_urls["weather"]
    token, rpc, payee = info.token["address"], info.rpc_url, info.payees[0]
    supported = httpx.get(info.facilitator_url + "/supported").json()
    assert {(k["scheme"], k["network"]) for k in supported["kinds"]} == {
        ("exact", info.network), ("batch-settlement", info.network)}

    # The 402 states the scenario's channel terms.
    unpaid = httpx.get(url)
    assert unpaid.status_code == 402
    (offer,) = decode(unpaid.headers["payment-required"])["accepts"]
    assert (offer["scheme"], offer["amount"], offer["asset"], offer["payTo"]) == ("batch-settlement", str(PRICE), token, payee)
    assert (offer["extra"]["minDeposit"], offer["extra"]["withdrawDelay"]) == (str(DEPOSIT), 1800)
    requirements = PaymentRequirements.model_validate(offer)

    account = Account.from_key(world.agents[0].key_hex)
    scheme = ClientScheme(EthAccountSigner(account))
    client = x402ClientSync()
    client.set_spend_controls(False)  # our token is no default asset of chain 31337
    client.register(info.network, scheme)
    session = x402_requests(client)
    channel_id = compute_channel_id(scheme.build_channel_config(requirements), info.network)
    payer_start = balance_of(rpc, token, account.address)

    def pay() -> dict[str, Any]:
        response = session.get(url, timeout=60)
        assert response.status_code == 200, (response.status_code, response.headers)
        return decode(response.headers["payment-response"])

    first = pay()  # a deposit: the facilitator submitted it, the escrow holds it
    assert first["success"] and first["transaction"] and first["amount"] == str(DEPOSIT)
    assert channel_state(rpc, channel_id).balance == DEPOSIT
    assert balance_of(rpc, token, ESCROW_ADDRESS) == DEPOSIT
    assert payer_start - balance_of(rpc, token, account.address) == DEPOSIT
    for n in range(2, PAID + 1):  # vouchers: no transaction, the deposit stays where it is
        answer = pay()
        assert answer["transaction"] == "" and answer["extra"]["chargedAmount"] == str(PRICE)
        assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str(n * PRICE)
        state = channel_state(rpc, channel_id)
        assert (state.balance, state.total_claimed) == (DEPOSIT, 0)

    # A voucher for the wrong cumulative amount (skipping one request): the corrective 402.
    wrong = VoucherPayload()
    wrong.channel_config = scheme.build_channel_config(requirements)
    wrong.voucher = sign_voucher(EthAccountSigner(account), channel_id, (PAID + 2) * PRICE, info.network)
    payload = PaymentPayload(x402_version=2, accepted=requirements, payload=wrong.to_dict())
    refused = httpx.get(url, headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)})
    assert refused.status_code == 402
    corrective = decode(refused.headers["payment-required"])
    assert corrective["error"] == bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH == (
        "invalid_batch_settlement_evm_cumulative_amount_mismatch")
    assert corrective["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"] == str(PAID * PRICE)
    answer = pay()  # the client's next voucher is the right one
    assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str((PAID + 1) * PRICE)
    charged = (PAID + 1) * PRICE

    # The exact route still works in the same world.
    assert httpx.get(exact_url).status_code == 402

    # Claim and settle through the services' harness route: the payee gets exactly what was charged.
    payee_before = balance_of(rpc, token, payee)
    done = httpx.post(url.rsplit("/", 1)[0] + "/_channels/claim_settle", timeout=120).json()
    assert done["claimed"] == str(charged) and done["channels"] == {channel_id: str(charged)}
    assert [c["vouchers"] for c in done["claims"]] == [1] and done["settle_transaction"]
    assert balance_of(rpc, token, payee) - payee_before == charged
    assert channel_state(rpc, channel_id).total_claimed == charged
    assert receiver_totals(rpc, payee, token) == (charged, charged)
    again = httpx.post(url.rsplit("/", 1)[0] + "/_channels/claim_settle", timeout=120).json()
    assert (again["claims"], again["claimed"], again["settle_transaction"]) == ([], "0", None)

    # The client's cooperative refund (a zero-charge voucher over HTTP): the unclaimed rest comes back.
    payer_before = balance_of(rpc, token, account.address)
    refund = scheme.refund(url)
    assert refund.success and refund.amount == str(DEPOSIT - charged)
    assert balance_of(rpc, token, account.address) - payer_before == DEPOSIT - charged
    assert payer_start - balance_of(rpc, token, account.address) == charged  # all the payer paid, in the end
    state = channel_state(rpc, channel_id)
    assert (state.balance, state.total_claimed, state.unclaimed, state.refund_nonce) == (charged, charged, 0, 1)
    assert balance_of(rpc, token, payee) - payee_before == charged  # the refund took nothing from the payee

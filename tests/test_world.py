"""End to end against a real world: Anvil, the mock USDC, our facilitator (both strategies),
the priced services behind the official SDK middleware, paid by the official SDK client."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess

import httpx
import pytest
from eth_account import Account
from x402 import x402Client
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client

from services.chain import Rpc
from services.facilitator.ledger import read_payments
from services.stack import World
from services.token import balance_of
from x402bench.scenario import load_scenario

SMOKE = load_scenario("scenarios/smoke.yaml")


@pytest.fixture(scope="module", params=["sync", "sdk"])
def world(request, tmp_path_factory):
    scenario = SMOKE.with_overrides(facilitator={"strategy": request.param}, agents={"count": 4})
    with World(scenario, workdir=tmp_path_factory.mktemp(f"world-{request.param}")) as w:
        yield w
    assert w.anvil is None and not w.processes


async def sdk_client_get(world: World, url: str, agent: int = 0, times: int = 1) -> list[httpx.Response]:
    client = x402Client()
    register_exact_evm_client(client, Account.from_key(world.agents[agent].key_hex), networks=world.info.network)
    client.set_spend_controls(False)
    async with x402HttpxClient(client, timeout=60) as http:
        return [await http.get(url) for _ in range(times)]


def decode_header(value: str) -> dict:
    return json.loads(base64.b64decode(value))


def test_sdk_client_pays_our_service_and_the_chain_shows_it(world: World) -> None:
    info = world.info
    token, payee = info.token["address"], info.pay_to
    before = balance_of(info.rpc_url, token, payee)
    (response,) = asyncio.run(sdk_client_get(world, info.service_urls["weather"], agent=1))
    assert response.status_code == 200
    settle = decode_header(response.headers["PAYMENT-RESPONSE"])
    assert settle["success"] is True and settle["network"] == info.network
    receipt = Rpc(info.rpc_url).call("eth_getTransactionReceipt", settle["transaction"])
    assert receipt is not None and int(receipt["status"], 16) == 1 and int(receipt["blockNumber"], 16) > 0
    assert balance_of(info.rpc_url, token, payee) - before == info.prices["weather"]
    rows = [r for r in read_payments(info.ledger_path) if r["tx_hash"] == settle["transaction"].lower()
            or r["tx_hash"] == settle["transaction"]]
    assert len(rows) == 1 and rows[0]["state"] == "settled" and rows[0]["amount"] == info.prices["weather"]
    timing = response.headers["Server-Timing"]
    assert "verify;dur=" in timing and "handler;dur=" in timing and "settle;dur=" in timing


def test_unpaid_request_gets_402_with_requirements_for_the_scenario_token(world: World) -> None:
    response = httpx.get(world.info.service_urls["quote"])
    assert response.status_code == 402
    required = decode_header(response.headers["PAYMENT-REQUIRED"])
    (accepts,) = required["accepts"]
    assert accepts["amount"] == str(world.info.prices["quote"]) == "2500"
    assert accepts["asset"].lower() == world.info.token["address"].lower()
    assert accepts["network"] == "eip155:31337"
    assert accepts["extra"] == {"name": "USD Coin", "version": "2"}


def test_facilitator_advertises_exact_on_the_scenario_network(world: World) -> None:
    supported = httpx.get(world.info.facilitator_url + "/supported").json()
    assert {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"} in supported["kinds"]
    assert supported["signers"]["eip155:*"] == world.info.signers


def test_world_processes_are_its_own_children(world: World) -> None:
    for name, pid in world.info.pids.items():
        assert pid > 0, name
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        assert state and not state.startswith("Z"), f"{name} ({pid}) is not running"

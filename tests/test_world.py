"""End to end against a real world: Anvil, the mock USDC, our facilitator (every live strategy),
the priced services behind the official SDK middleware, paid by the official SDK client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from typing import Callable

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


def test_facilitator_metrics_count_what_it_did(world: World) -> None:
    """/metrics feeds calibration: the ledger's counts, and for the SDK engine its threads' CPU and RPC calls."""
    asyncio.run(sdk_client_get(world, world.info.service_urls["weather"], agent=3))
    metrics = httpx.get(world.info.facilitator_url + "/metrics").json()
    assert metrics["ledger"]["settled"] >= 1
    if world.info.facilitator_strategy == "sdk":
        probe = metrics["sdk_threads"]
        assert probe["calls"]["verify"] >= 1 and probe["calls"]["settle"] >= 1 and probe["calls"]["receipt_wait"] >= 1
        assert 0 < probe["cpu_s"]["receipt_wait"] < probe["cpu_s"]["settle"]  # the wait is part of the settle
        assert probe["rpc_calls"]["eth_sendRawTransaction"] >= 1 and probe["rpc_calls"]["eth_getTransactionReceipt"] >= 1
    else:
        assert "sdk_threads" not in metrics and metrics["rpc_calls"] > 0
        timing = metrics["timing"]  # what calibration's submit_s and the lock model read
        sends = timing["lane_hold_s"]["count"]
        assert sends >= 1 and timing["lane_rpc_s"]["count"] == timing["lane_wait_s"]["count"] == sends
        assert 0 < timing["lane_rpc_s"]["mean"] <= timing["lane_hold_s"]["mean"] < 5  # the round trip is inside the hold
        assert timing["loop_lag_s"]["count"] > 0 and 0 <= timing["loop_lag_s"]["p50"] < 1


def test_world_processes_are_its_own_children(world: World) -> None:
    for name, pid in world.info.pids.items():
        assert pid > 0, name
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        assert state and not state.startswith("Z"), f"{name} ({pid}) is not running"


# ---- pipelined: answer once sent ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelined_world(tmp_path_factory):
    scenario = SMOKE.with_overrides(facilitator={"strategy": "pipelined", "signer_keys": 2}, agents={"count": 4},
                                    chain={"mining": "manual", "block_time_s": None})
    with World(scenario, workdir=tmp_path_factory.mktemp("world-pipelined")) as w:
        yield w
    assert w.anvil is None and not w.processes


def _ledger_states(world: World, tx_hashes: set[str]) -> dict[str, str]:
    return {r["tx_hash"]: r["state"] for r in read_payments(world.info.ledger_path) if r["tx_hash"] in tx_hashes}


def test_pipelined_answers_before_the_block_then_settles_in_it(pipelined_world: World) -> None:
    """pipelined, live: the service is answered once the tx is out, before any block, and the ledger
    still follows the tx to its block (manual mining makes "before" certain)."""
    world = pipelined_world
    info = world.info
    rpc = Rpc(info.rpc_url)
    token, payee = info.token["address"], info.pay_to
    before = balance_of(info.rpc_url, token, payee)
    block = int(rpc.call("eth_blockNumber"), 16)

    responses = asyncio.run(sdk_client_get(world, info.service_urls["weather"], agent=2, times=3))
    assert [r.status_code for r in responses] == [200, 200, 200]
    hashes = {decode_header(r.headers["PAYMENT-RESPONSE"])["transaction"].lower() for r in responses}
    assert len(hashes) == 3
    # no block yet: the answers came from the send, the transfers are still in the mempool
    assert int(rpc.call("eth_blockNumber"), 16) == block
    assert all(rpc.call("eth_getTransactionReceipt", h) is None for h in hashes)
    assert set(_ledger_states(world, hashes).values()) == {"submitted"}
    assert balance_of(info.rpc_url, token, payee) == before

    rpc.call("evm_mine")
    deadline = time.monotonic() + 10
    while set(_ledger_states(world, hashes).values()) != {"settled"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_ledger_states(world, hashes).values()) == {"settled"}
    assert balance_of(info.rpc_url, token, payee) - before == 3 * info.prices["weather"]
    rows = [r for r in read_payments(info.ledger_path) if r["tx_hash"] in hashes]
    assert {r["block_number"] for r in rows} == {block + 1} and all(r["gas_used"] > 80_000 for r in rows)


def _kill_and_restart_facilitator(world: World, between: Callable[[], object] = lambda: None) -> None:
    (facilitator,) = [p for p in world.processes if p.name == "facilitator"]
    port, process = facilitator.port, facilitator.process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    between()
    facilitator.start(port=port)


def _wait_states(world: World, hashes: set[str], state: str) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while set(_ledger_states(world, hashes).values()) != {state} and time.monotonic() < deadline:
        time.sleep(0.05)
    return _ledger_states(world, hashes)


@pytest.mark.parametrize("mined", ["before the restart", "after the restart"])
def test_pipelined_facilitator_killed_after_answering_never_sends_twice(pipelined_world: World, mined: str) -> None:
    """Answered (tx sent), then SIGKILLed before its block. The restarted process finds the receipt (mined
    while it was down) or follows the tx still in the node's pool; it never sends the authorization again."""
    world = pipelined_world
    info = world.info
    rpc = Rpc(info.rpc_url)
    responses = asyncio.run(sdk_client_get(world, info.service_urls["weather"], agent=3, times=2))
    assert [r.status_code for r in responses] == [200, 200]
    hashes = {decode_header(r.headers["PAYMENT-RESPONSE"])["transaction"].lower() for r in responses}
    assert set(_ledger_states(world, hashes).values()) == {"submitted"}
    if mined == "before the restart":
        _kill_and_restart_facilitator(world, between=lambda: rpc.call("evm_mine"))
    else:
        _kill_and_restart_facilitator(world)
        time.sleep(0.3)  # give a wrong recovery the time to send again
        rpc.call("evm_mine")
    assert set(_wait_states(world, hashes, "settled").values()) == {"settled"}
    block = rpc.call("eth_getBlockByNumber", "latest", False)
    assert {h.lower() for h in block["transactions"]} == hashes  # the two txs, and nothing sent again
    rpc.call("evm_mine")
    assert rpc.call("eth_getBlockByNumber", "latest", False)["transactions"] == []

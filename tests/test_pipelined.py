"""The pipelined strategy, live: the service is answered once the tx is out, before any block,
and the ledger still follows the tx to its block (manual mining makes "before" certain)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.chain import Rpc
from services.facilitator.ledger import read_payments
from services.stack import World
from services.token import balance_of
from tests.test_world import SMOKE, decode_header, sdk_client_get


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    scenario = SMOKE.with_overrides(facilitator={"strategy": "pipelined", "signer_keys": 2}, agents={"count": 4},
                                    chain={"mining": "manual", "block_time_s": None})
    with World(scenario, workdir=tmp_path_factory.mktemp("world-pipelined")) as w:
        yield w
    assert w.anvil is None and not w.processes


def _ledger_states(world: World, tx_hashes: set[str]) -> dict[str, str]:
    return {r["tx_hash"]: r["state"] for r in read_payments(world.info.ledger_path) if r["tx_hash"] in tx_hashes}


def test_answered_before_the_block_then_settled_in_it(world: World) -> None:
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

"""A payment is settled with the authorization exactly as signed: a past `validAfter` (the SDK's v1
client signs now - 600) must reach the chain as signed, or the transfer's signature check fails after
the service has answered. One world per strategy, each paid through the priced service."""

from __future__ import annotations

import time

import pytest

from services.facilitator.ledger import read_payments
from services.stack import World
from services.token import balance_of
from x402bench.scenario import load_scenario

from payments import build_payment, encode, pay, requirements

STRATEGIES = {"sync": {}, "pipelined": {}, "sdk": {}, "batched": {"batch": {"max_size": 2, "max_age_s": 0.2}}}


@pytest.fixture(scope="module", params=sorted(STRATEGIES))
def world(request, tmp_path_factory):
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(
        agents={"count": 3, "funding_usdc": 1}, facilitator={"strategy": request.param, **STRATEGIES[request.param]})
    with World(scenario, workdir=tmp_path_factory.mktemp(f"window-{request.param}")) as w:
        yield w


def test_a_past_valid_after_is_settled_as_signed(world: World) -> None:
    info = world.info
    before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    valid_after = int(time.time()) - 600
    payment = build_payment(world, 1, requirements(world), auth={"validAfter": valid_after})
    response = pay(world, encode(payment))
    assert response.status_code == 200, response.headers
    nonce = payment["payload"]["authorization"]["nonce"].lower()
    deadline = time.monotonic() + 10  # pipelined answers before its block: wait for the ledger to close it
    while time.monotonic() < deadline:
        (row,) = [r for r in read_payments(info.ledger_path) if r["nonce"] == nonce]
        if row["state"] not in ("accepted", "submitted"):
            break
        time.sleep(0.05)
    assert row["state"] == "settled" and row["valid_after"] == valid_after, row
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - before == info.prices["weather"]

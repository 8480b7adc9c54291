"""The outside parts under tests/outside/ work as a user runs them: separate processes, configured only
from the world file that `x402bench up --json` writes.

One x402bench world (chain, token, its own facilitator) serves the module. Each test starts a part with
the command line a user would type, waits for its /health, pays or calls it with x402bench's payer or
a payment signed by eth_account, and checks the outcome on chain: receipt status 1 and the payee's
balance up by the price. Every process started here is stopped by its own PID before the test ends.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.chain import REPO_ROOT, Rpc, free_port, terminate
from services.payer.client import HttpxPayer
from services.stack import World
from services.token import balance_of, wait_for_receipts
from x402bench.scenario import load_scenario

from clirun import running
from payments import build_payment, requirements

OUTSIDE = REPO_ROOT / "tests" / "outside"
PRICE = 1234  # atomic units: not any of the world's own prices, so a wrong price source shows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Path]]:
    """x402bench's smoke world and the world file an outside part reads."""
    workdir = tmp_path_factory.mktemp("outside")
    scenario = load_scenario(REPO_ROOT / "scenarios" / "smoke.yaml").with_overrides(agents={"count": 4})
    with World(scenario, workdir=workdir) as w:
        path = workdir / "world.json"
        path.write_text(w.info.to_json())
        yield w, path


@pytest.fixture(scope="module")
def sdk_facilitator(world: tuple[World, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tests/outside/sdk_facilitator.py on the world's chain, signing with facilitator_keys[0]."""
    _, path = world
    port = free_port()
    command = [sys.executable, str(OUTSIDE / "sdk_facilitator.py"), "--world", str(path), "--port", str(port),
               "--key-index", "0"]
    with running("sdk_facilitator", command, port, tmp_path_factory.mktemp("sdk-facilitator")) as url:
        yield url


def node() -> str:
    """The node binary: missing node is a failure, not a skip (the Makefile needs npm, so CI has node)."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not on PATH; the TypeScript outside part needs Node 20 (the Makefile needs npm anyway)")
    if not (REPO_ROOT / "node_modules" / "@x402" / "express").is_dir():
        pytest.fail("node_modules/@x402/express is missing; run `make setup`")
    return found


def service_command(kind: str, path: Path, port: int, facilitator_url: str | None) -> list[str]:
    """The command line a user types to start one priced service from the world file."""
    if kind == "python":
        command = [sys.executable, str(OUTSIDE / "sdk_service.py")]
    else:
        command = [node(), str(OUTSIDE / "ts_service" / "server.mjs")]
    command += ["--world", str(path), "--port", str(port), "--path", "/weather", "--price", str(PRICE)]
    return command + (["--facilitator-url", facilitator_url] if facilitator_url else [])


def decode_header(value: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(value))


def assert_unpaid_402(url: str, w: World) -> None:
    """An unpaid GET is refused with 402 and terms naming the world's token, payee, network and price."""
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 402, reply.text
    required = decode_header(reply.headers["PAYMENT-REQUIRED"])
    (accepts,) = required["accepts"]
    assert accepts["scheme"] == "exact" and accepts["network"] == w.info.network
    assert accepts["asset"].lower() == w.info.token["address"].lower()
    assert accepts["payTo"].lower() == w.info.payees[0].lower()
    assert accepts["amount"] == str(PRICE)
    assert accepts["extra"]["name"] == w.info.token["name"] and accepts["extra"]["version"] == w.info.token["version"]


def assert_paid_and_settled(url: str, w: World, agent: int) -> None:
    """x402bench's payer pays once: 200, a successful PAYMENT-RESPONSE, a mined transfer, payee +PRICE."""
    token, payee = w.info.token["address"], w.info.payees[0]
    before = balance_of(w.info.rpc_url, token, payee)
    with HttpxPayer(w.info.agents[agent]["private_key"], w.info.network) as payer:
        result = payer.pay(url)
    assert result.status == 200, (result.error, result.detail, result.body[:300])
    assert json.loads(result.body)["route"] == "/weather"
    assert result.response is not None and result.response.success, result.response
    assert result.response.network == w.info.network
    assert result.transaction.startswith("0x") and len(result.transaction) == 66
    (receipt,) = wait_for_receipts(Rpc(w.info.rpc_url), [result.transaction], timeout_s=30)
    assert int(receipt["status"], 16) == 1
    assert balance_of(w.info.rpc_url, token, payee) - before == PRICE


@pytest.mark.parametrize("kind", ["python", "typescript"])
def test_sdk_service_is_paid_through_the_worlds_facilitator(kind: str, world: tuple[World, Path],
                                                            tmp_path: Path) -> None:
    w, path = world
    port = free_port()
    with running(f"{kind}-service", service_command(kind, path, port, None), port, tmp_path) as url:
        assert_unpaid_402(f"{url}/weather", w)
        assert_paid_and_settled(f"{url}/weather", w, agent=0 if kind == "python" else 1)


@pytest.mark.parametrize("kind", ["python", "typescript"])
def test_sdk_service_is_paid_through_the_sdk_facilitator(kind: str, world: tuple[World, Path], sdk_facilitator: str,
                                                         tmp_path: Path) -> None:
    """Outside parts only: an SDK service, the SDK facilitator, and x402bench's chain and token."""
    w, path = world
    port = free_port()
    with running(f"{kind}-service", service_command(kind, path, port, sdk_facilitator), port, tmp_path) as url:
        assert_paid_and_settled(f"{url}/weather", w, agent=2 if kind == "python" else 3)


def test_sdk_facilitator_verifies_and_settles_a_payment(world: tuple[World, Path], sdk_facilitator: str) -> None:
    w, _ = world
    supported = httpx.get(f"{sdk_facilitator}/supported", timeout=10).json()
    assert any(k["scheme"] == "exact" and k["network"] == w.info.network and k["x402Version"] == 2
               for k in supported["kinds"])

    required = requirements(w, "weather")  # x402bench's own service's terms: the world's token and payee
    accepts = required["accepts"][0]
    body = {"x402Version": 2, "paymentPayload": build_payment(w, 0, required), "paymentRequirements": accepts}
    verified = httpx.post(f"{sdk_facilitator}/verify", json=body, timeout=30)
    assert verified.status_code == 200 and verified.json()["isValid"] is True, verified.text
    assert verified.json()["payer"].lower() == w.agents[0].address.lower()

    token, payee = w.info.token["address"], w.info.payees[0]
    before = balance_of(w.info.rpc_url, token, payee)
    settled = httpx.post(f"{sdk_facilitator}/settle", json=body, timeout=60)
    assert settled.status_code == 200 and settled.json()["success"] is True, settled.text
    assert settled.json()["network"] == w.info.network
    (receipt,) = wait_for_receipts(Rpc(w.info.rpc_url), [settled.json()["transaction"]], timeout_s=30)
    assert int(receipt["status"], 16) == 1
    signer = httpx.get(f"{sdk_facilitator}/health", timeout=10).json()["signer"]
    assert receipt["from"].lower() == signer.lower()  # the outside key, not x402bench's signer
    assert balance_of(w.info.rpc_url, token, payee) - before == int(accepts["amount"])

    again = httpx.post(f"{sdk_facilitator}/settle", json=body, timeout=60)  # same authorization: refused
    assert again.status_code == 200 and again.json()["success"] is False, again.text


def test_sdk_facilitator_answers_a_malformed_body_as_the_sdk_does(sdk_facilitator: str) -> None:
    """No validation of ours: a body without paymentPayload makes the SDK path raise, so the baseline 500s."""
    reply = httpx.post(f"{sdk_facilitator}/verify", json={"x402Version": 2}, timeout=10)
    assert reply.status_code == 500

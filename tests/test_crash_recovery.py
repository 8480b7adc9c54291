"""A facilitator killed while the node takes its settlement tx: the payment it leaves is settled by that tx,
and the client's retry is answered with it. Real Anvil, the real facilitator process, real HTTP.

The window: the facilitator has sent eth_sendRawTransaction and the node has the tx (on an automining chain
it is in a block already), but the answer has not reached the facilitator when it is SIGKILLed, so it never
recorded that the tx went out. An RPC proxy in the path widens that window (a fault run found paid payments
lost this way, 2 runs of 3 with the fault proxy in the path); here a proxy that forwards the send and then
holds the node's answer makes it certain. The process that comes back must not send the authorization again
(the second tx can only revert, and once closed the payment as failed: the payer paid, the client got 402):
recovery finds the first tx, and the retry of the same signed payment gets a 200 naming it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.chain import Rpc
from services.facilitator.config import FacilitatorConfig
from services.facilitator.evm import TOPIC_AUTHORIZATION_USED
from services.facilitator.ledger import Ledger, read_payments
from services.stack import World
from services.token import balance_of
from x402bench.scenario import load_scenario

from payments import build_payment, encode, pay, reason, requirements


def settlement_of(response: object) -> str:
    return json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))["transaction"]  # type: ignore[attr-defined]


def test_the_ledger_names_a_tx_before_its_broadcast_and_forgets_only_a_refused_one(tmp_path: Path) -> None:
    """Write-ahead: `sending` records the hash before the node is asked; a send the node refused releases the
    claim, a row naming any other tx (one that may be on the chain) is kept."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    args = ("0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "01" * 32, "0x" + "cc" * 20, 5, 0, 2**40, "0x" + "dd" * 65)
    refused = ledger.claim(*args)
    assert refused is not None
    ledger.sending([refused.id], "0x" + "ee" * 20, "0x" + "0F" * 32)
    (row,) = read_payments(ledger.path)
    assert (row["state"], row["tx_hash"], row["tx_nonce"]) == ("submitted", "0x" + "0f" * 32, None)
    ledger.release(refused, "transaction_failed", refused_tx="0x" + "12" * 32)  # not the tx this row names
    assert len(read_payments(ledger.path)) == 1 and ledger.reserved(args[1]) == 5  # still open, still reserved
    ledger.release(refused, "transaction_failed", refused_tx="0x" + "0f" * 32)
    assert read_payments(ledger.path) == [] and ledger.reserved(args[1]) == 0
    ledger.close()


class SendHoldingProxy:
    """A JSON-RPC pass-through to the node; while `holding` is set, a request carrying eth_sendRawTransaction is
    forwarded, the node's answer read, and then kept from the caller until `release` (the hashes the node took are
    in `taken`). A thread per request (ThreadingHTTPServer), so other calls pass while one is held."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.holding = threading.Event()
        self.release = threading.Event()
        self.took = threading.Event()
        self.taken: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                forward = urllib.request.Request(proxy.upstream, data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(forward, timeout=30) as answer:
                    data = answer.read()
                if proxy.holding.is_set() and b"eth_sendRawTransaction" in body:
                    proxy.taken.append(json.loads(data)["result"])
                    proxy.took.set()
                    proxy.release.wait(30)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # its caller was killed while it was held

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "SendHoldingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, SendHoldingProxy]]:
    """The smoke world (automine, sync, one signer key), its facilitator restarted with its RPC through the proxy."""
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(agents={"count": 4, "funding_usdc": 1})
    with World(scenario, workdir=tmp_path_factory.mktemp("crash-recovery")) as w, SendHoldingProxy(w.info.rpc_url) as proxy:
        facilitator = w.process("facilitator")
        config_path = Path(w.workdir) / "facilitator.json"
        config = FacilitatorConfig.load(config_path)
        port = facilitator.port
        facilitator.stop()
        dataclasses.replace(config, rpc_url=proxy.url).dump(config_path)
        facilitator.start(port=port)
        yield w, proxy


def _row(world: World, nonce: str) -> dict[str, object]:
    (row,) = [r for r in read_payments(world.info.ledger_path) if r["nonce"] == nonce.lower()]
    return row


def _kill_while_the_node_takes_the_send(world: World, proxy: SendHoldingProxy, header: str) -> str:
    """Pay, SIGKILL the facilitator once the node has its settlement tx (the answer held in the proxy); the
    hash the node took."""
    facilitator = world.process("facilitator")
    proxy.taken.clear()
    proxy.took.clear()
    proxy.release.clear()
    proxy.holding.set()
    with ThreadPoolExecutor(1) as pool:
        cut_off = pool.submit(pay, world, header)
        assert proxy.took.wait(20), "the facilitator never sent its settlement tx"
        facilitator.kill()
        proxy.holding.clear()
        proxy.release.set()
        assert cut_off.result().status_code != 200  # its answer died with the process
    (tx_hash,) = proxy.taken
    return tx_hash


def _one_tx_used_it(world: World, nonce: str, first_tx: str) -> None:
    logs = Rpc(world.info.rpc_url).call("eth_getLogs", {
        "address": world.info.token["address"], "fromBlock": "0x0", "toBlock": "latest",
        "topics": [TOPIC_AUTHORIZATION_USED]})
    assert [log["transactionHash"].lower() for log in logs if log["topics"][2].lower() == nonce.lower()] == [first_tx]


def _signer_txs(world: World) -> int:
    (signer,) = world.info.signers
    return int(Rpc(world.info.rpc_url).call("eth_getTransactionCount", signer, "latest"), 16)


@pytest.mark.parametrize("ledger", ["as written", "without the hash"])
def test_killed_mid_send_the_payment_is_settled_by_its_first_tx_and_the_retry_served(
        world: tuple[World, SendHoldingProxy], ledger: str) -> None:
    """`as written`: the ledger as the killed process left it. `without the hash`: the row put back to what a
    process that never recorded the send leaves (accepted, no tx): the chain, not the ledger, must decide."""
    w, proxy = world
    info = w.info
    payload = build_payment(w, 1 if ledger == "as written" else 2, requirements(w))
    nonce = payload["payload"]["authorization"]["nonce"]
    header = encode(payload)
    payee_before = balance_of(info.rpc_url, info.token["address"], info.pay_to)
    txs_before = _signer_txs(w)

    first_tx = _kill_while_the_node_takes_the_send(w, proxy, header).lower()
    if ledger == "without the hash":
        db = sqlite3.connect(info.ledger_path)
        db.execute("UPDATE payments SET state = 'accepted', tx_hash = NULL, signer = NULL, tx_nonce = NULL, "
                   "submitted_at = NULL WHERE nonce = ?", (nonce.lower(),))
        db.commit()
        db.close()
    assert _row(w, nonce)["state"] in ("accepted", "submitted")

    w.process("facilitator").start(port=w.process("facilitator").port)  # recovery runs before it serves
    retried = pay(w, header)  # the client retries the payment it never got an answer for

    assert retried.status_code == 200, (retried.status_code, reason(retried), _row(w, nonce))
    assert settlement_of(retried).lower() == first_tx
    row = _row(w, nonce)
    assert row["state"] == "settled" and str(row["tx_hash"]).lower() == first_tx, row
    assert _signer_txs(w) - txs_before == 1  # no second tx for this payment
    _one_tx_used_it(w, nonce, first_tx)
    assert balance_of(info.rpc_url, info.token["address"], info.pay_to) - payee_before == info.prices["weather"]

"""The fault proxies, as separate processes, against a real Anvil and a real HTTP upstream.

Each proxy runs as `python -m services.faults.*_proxy` on a free port and is stopped by its PID in
teardown; the session fixture in conftest.py fails the run if any of them is left behind.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from services.chain import DEV_ADDRESS, DEV_PRIVATE_KEY, REPO_ROOT, Anvil, Rpc, free_port, terminate
from services.faults.control import FaultControl, FaultControlError, FaultProxyProcess

ECHO_FACILITATOR = REPO_ROOT / "tests" / "outside" / "echo_facilitator.py"


# --- helpers ---------------------------------------------------------------------------------------


def post(url: str, body: Any, timeout: float = 10.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, parsed JSON or raw text) of a POST; HTTP errors are returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def get(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def call(method: str, *params: Any, id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": list(params)}


def in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run fn in a thread; its result (or exception) lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            out["error"] = exc
        out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def signed_transfer(nonce: int, chain_id: int = 31337) -> tuple[str, str]:
    """(raw tx, its hash): a plain ETH transfer from Anvil's first dev account."""
    tx = {"chainId": chain_id, "nonce": nonce, "gasPrice": 10**9, "gas": 21_000,
          "to": "0x000000000000000000000000000000000000dEaD", "value": 1}
    raw = Account.from_key(DEV_PRIVATE_KEY).sign_transaction(tx).raw_transaction
    return "0x" + raw.hex(), "0x" + keccak(raw).hex()


def mining(anvil: Anvil) -> tuple[bool, int | None]:
    """(automine, interval) read on Anvil's own URL."""
    return anvil.rpc.call("anvil_getAutomine"), anvil.rpc.call("anvil_getIntervalMining")


@pytest.fixture
def interval_anvil() -> Iterator[Anvil]:
    """Anvil mining a block every whole second (a mode a stall can save and restore)."""
    with Anvil(mining="interval", block_time_s=1) as chain:
        yield chain


def _proxy(kind: str, upstream: str, tmp_path: Path) -> Iterator[FaultProxyProcess]:
    proxy = FaultProxyProcess(kind, upstream, log_path=tmp_path / f"{kind}-proxy.log").start()
    try:
        yield proxy
    finally:
        proxy.stop()
        assert proxy.process is None


@pytest.fixture
def rpc_proxy(anvil: Anvil, tmp_path: Path) -> Iterator[FaultProxyProcess]:
    """The RPC proxy in front of the automining `anvil` of conftest.py."""
    yield from _proxy("rpc", anvil.url, tmp_path)


@pytest.fixture
def interval_proxy(interval_anvil: Anvil, tmp_path: Path) -> Iterator[FaultProxyProcess]:
    yield from _proxy("rpc", interval_anvil.url, tmp_path)


# --- the RPC proxy ---------------------------------------------------------------------------------


def test_rpc_pass_through_single_and_batch(anvil: Anvil, rpc_proxy: FaultProxyProcess) -> None:
    assert get(f"{rpc_proxy.url}/health")[0] == 200
    assert post(rpc_proxy.url, call("eth_chainId")) == post(anvil.url, call("eth_chainId"))
    batch = [call("eth_chainId", id=1), call("eth_blockNumber", id=2),
             call("eth_getBalance", DEV_ADDRESS, "latest", id=3), call("no_such_method", id=4)]
    direct, proxied = post(anvil.url, batch), post(rpc_proxy.url, batch)
    assert proxied == direct and proxied[0] == 200 and len(proxied[1]) == 4
    counters = rpc_proxy.control.state()["counters"]
    assert (counters["forwarded"], counters["batches"]) == (2, 1)


def test_latency_delays_each_call_until_switched_off(rpc_proxy: FaultProxyProcess) -> None:
    rpc, control = Rpc(rpc_proxy.url), rpc_proxy.control
    state = control.set("latency", ms=300, jitter_ms=50)
    assert state["active"]["latency"] == {"ms": 300.0, "jitter_ms": 50.0}
    for _ in range(2):
        started = time.monotonic()
        rpc.call("eth_chainId")
        assert 0.3 <= time.monotonic() - started < 1.0
    control.clear("latency")
    started = time.monotonic()
    rpc.call("eth_chainId")
    assert time.monotonic() - started < 0.1
    assert control.state()["counters"]["delayed"] == 2


def test_errors_every_call_then_a_seeded_half(rpc_proxy: FaultProxyProcess) -> None:
    control = rpc_proxy.control
    control.set("errors", rate=1.0, error="503")
    for _ in range(10):
        status, body = post(rpc_proxy.url, call("eth_chainId"))
        assert status == 503 and body["error"]["code"] == -32000
    assert post(rpc_proxy.url, [call("eth_chainId")])[0] == 503  # a batch is one request: it fails whole

    control.set("errors", rate=0.5, error="429", seed=7)
    statuses = [post(rpc_proxy.url, call("eth_chainId"))[0] for _ in range(100)]
    draws = random.Random(7)
    expected = sum(draws.random() < 0.5 for _ in range(100))
    assert statuses.count(429) == expected and statuses.count(200) == 100 - expected
    assert 35 <= expected <= 65
    control.clear("errors")
    assert post(rpc_proxy.url, call("eth_chainId"))[0] == 200
    failed = control.state()["counters"]["failed"]
    assert failed == {"429": expected, "500": 0, "503": 11, "timeout": 0}


def test_errors_timeout_holds_until_cleared(rpc_proxy: FaultProxyProcess) -> None:
    control = rpc_proxy.control
    control.set("errors", rate=1.0, error="timeout")
    with pytest.raises(OSError):  # socket.timeout / TimeoutError: the proxy never answered
        Rpc(rpc_proxy.url, timeout=1).call("eth_chainId")
    wait_until(lambda: control.state()["counters"]["holding"] == 0)  # the given-up request is let go
    thread, out = in_background(lambda: post(rpc_proxy.url, call("eth_chainId"), timeout=30))
    wait_until(lambda: control.state()["counters"]["holding"] == 1)
    time.sleep(0.5)
    assert "at" not in out
    cleared = time.monotonic()
    control.clear("errors")
    thread.join(5)
    assert out["result"][0] == 504 and out["at"] - cleared < 1.0  # released at once, never forwarded
    assert post(rpc_proxy.url, call("eth_chainId"))[0] == 200
    counters = control.state()["counters"]
    assert counters["held"]["timeout"] == 2 and counters["failed"]["timeout"] == 2 and counters["holding"] == 0


def test_stall_holds_calls_and_stops_mining_then_restores_interval(interval_anvil: Anvil,
                                                                   interval_proxy: FaultProxyProcess) -> None:
    control = interval_proxy.control
    assert mining(interval_anvil) == (False, 1)
    state = control.set("stall")
    assert state["mining_saved"] == "interval:1"
    assert mining(interval_anvil) == (False, None)  # in force when the control call returned
    head = interval_anvil.block_number()
    thread, out = in_background(lambda: Rpc(interval_proxy.url, timeout=30).call("eth_blockNumber"))
    time.sleep(2.2)
    assert interval_anvil.block_number() == head, "a block was mined during the stall"
    assert "at" not in out, "a call answered through a stalled proxy"
    assert control.state()["counters"]["holding"] == 1

    cleared = time.monotonic()
    control.clear("stall")
    assert mining(interval_anvil) == (False, 1)
    thread.join(5)
    assert int(out["result"], 16) >= head and out["at"] - cleared < 1.0
    wait_until(lambda: interval_anvil.block_number() > head, timeout_s=3)
    assert control.state()["counters"]["held"]["stall"] == 1


def test_stall_restores_automine_on_clear_and_when_the_proxy_stops(anvil: Anvil, tmp_path: Path) -> None:
    with FaultProxyProcess("rpc", anvil.url, log_path=tmp_path / "p.log") as proxy:
        proxy.control.set("stall")
        assert mining(anvil) == (False, None)
        proxy.control.clear("stall")
        assert mining(anvil) == (True, None)
        proxy.control.set("stall")
        assert mining(anvil) == (False, None)
    assert mining(anvil) == (True, None)  # SIGTERM switched every mode off before the proxy exited


def test_stall_refuses_a_sub_second_interval_it_could_not_restore(tmp_path: Path) -> None:
    with Anvil(mining="interval", block_time_s=0.2) as chain, \
            FaultProxyProcess("rpc", chain.url, log_path=tmp_path / "p.log") as proxy:
        with pytest.raises(FaultControlError, match="409.*sub-second"):
            proxy.control.set("stall")
        assert proxy.control.state()["active"] == {}
        head = chain.block_number()
        proxy.control.set("stall", mining="keep")  # calls held, the node left alone
        wait_until(lambda: chain.block_number() > head, timeout_s=2)
        proxy.control.clear_all()


def test_drop_sent_hash_returned_but_never_mined(interval_anvil: Anvil, interval_proxy: FaultProxyProcess) -> None:
    control, direct = interval_proxy.control, interval_anvil.rpc
    raw5, hash5 = signed_transfer(nonce=5)  # sent straight to the node before the window: queued, not ours to drop
    assert direct.call("eth_sendRawTransaction", raw5) == hash5
    control.set("drop_sent")
    head = interval_anvil.block_number()
    wait_until(lambda: interval_anvil.block_number() > head, timeout_s=3)  # a block just closed: ~1 s to the next

    raw, expected_hash = signed_transfer(nonce=0)
    status, reply = post(interval_proxy.url, call("eth_sendRawTransaction", raw))
    assert status == 200 and reply["result"] == expected_hash
    assert direct.call("eth_getTransactionByHash", expected_hash) is None  # gone from the pool at once

    raw1, hash1 = signed_transfer(nonce=1)  # each send item of a batch, and a Sync send
    raw2, hash2 = signed_transfer(nonce=2)
    status, replies = post(interval_proxy.url, [call("eth_sendRawTransaction", raw1, id=1), call("eth_chainId", id=2)])
    assert status == 200 and {r["id"]: r.get("result") for r in replies} == {1: hash1, 2: "0x7a69"}
    status, reply = post(interval_proxy.url, call("eth_sendRawTransactionSync", raw2))
    assert status == 200 and reply["error"]["code"] == 4 and reply["error"]["data"] == hash2

    counters = control.state()["counters"]
    assert counters["dropped_hashes"] == [expected_hash, hash1, hash2] and counters["dropped"] == 3
    assert counters["drop_missed_hashes"] == []
    # the batch's send waited behind the gap the first drop left, where anvil_dropTransaction cannot reach:
    # it went with all of the sender's pool transactions, and the one sent outside the window was put back
    assert counters["resent"] >= 1 and direct.call("eth_getTransactionByHash", hash5) is not None
    later = interval_anvil.block_number()
    wait_until(lambda: interval_anvil.block_number() >= later + 2, timeout_s=4)
    for tx_hash in (expected_hash, hash1, hash2):
        assert direct.call("eth_getTransactionReceipt", tx_hash) is None
        assert direct.call("eth_getTransactionByHash", tx_hash) is None
    assert int(direct.call("eth_getTransactionCount", DEV_ADDRESS, "latest"), 16) == 0

    control.clear("drop_sent")  # the same transaction, sent again with the mode off, is mined
    assert post(interval_proxy.url, call("eth_sendRawTransaction", raw))[1]["result"] == expected_hash
    wait_until(lambda: direct.call("eth_getTransactionReceipt", expected_hash) is not None, timeout_s=3)


# --- the HTTP proxy --------------------------------------------------------------------------------


@pytest.fixture
def echo_facilitator(tmp_path: Path) -> Iterator[str]:
    """tests/outside/echo_facilitator.py as a child process; its URL."""
    port = free_port()
    log = open(tmp_path / "echo.log", "wb")
    process = subprocess.Popen([sys.executable, str(ECHO_FACILITATOR), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/count"), timeout_s=10)
        yield url
    finally:
        terminate(process)


def _answers(url: str) -> bool:
    try:
        return get(url, timeout=1)[0] == 200
    except OSError:
        return False


def test_http_pass_through_then_settle_answers_lost(echo_facilitator: str, tmp_path: Path) -> None:
    with FaultProxyProcess("http", echo_facilitator, log_path=tmp_path / "http.log") as proxy:
        assert get(f"{proxy.url}/health") == get(f"{echo_facilitator}/health")
        body = {"paymentPayload": {"x": 1}, "paymentRequirements": {"y": "z"}}
        headers = {"X-Trace": "abc", "X-Status": "418"}
        path = "/verify?a=1&b=%2F"
        assert post(proxy.url + path, body, headers=headers) == post(echo_facilitator + path, body, headers=headers)
        status, settled = post(f"{proxy.url}/settle", body)
        assert status == 200 and settled["transaction"] == get(f"{echo_facilitator}/count")[1]["transactions"][-1]
        status, echoed = post(proxy.url + "/verify?a=1&b=%2F", body, headers=headers)
        assert status == 418 and echoed["raw_path"] == "/verify?a=1&b=%2F" and echoed["headers"]["X-Trace"] == "abc"
        with urllib.request.urlopen(f"{proxy.url}/anything") as response:
            assert response.headers["X-Echo"] == "yes"

        settled_before = get(f"{echo_facilitator}/count")[1]["settle"]
        proxy.control.set("5xx_after_settle")
        status, answer = post(f"{proxy.url}/settle", body)
        assert status == 502 and "lost" in answer["error"]
        upstream = get(f"{echo_facilitator}/count")[1]
        assert upstream["settle"] == settled_before + 1  # it did settle
        assert post(f"{proxy.url}/verify", body)[0] == 200  # only /settle answers are lost
        proxy.control.set("5xx_after_settle", status=503)
        assert post(f"{proxy.url}/settle", body)[0] == 503
        upstream = get(f"{echo_facilitator}/count")[1]
        counters = proxy.control.state()["counters"]
        assert counters["settle_answers_lost"] == 2
        assert counters["lost_transactions"] == upstream["transactions"][-2:]

        proxy.control.clear("5xx_after_settle")
        status, answer = post(f"{proxy.url}/settle", body)
        assert status == 200 and answer["transaction"] == get(f"{echo_facilitator}/count")[1]["transactions"][-1]


def test_http_proxy_health_says_when_the_upstream_is_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with FaultProxyProcess("http", dead, log_path=tmp_path / "http.log") as proxy:
        status, body = get(f"{proxy.url}/health")
        assert status == 502 and dead in body["error"]
        assert proxy.control.state()["counters"]["upstream_errors"] == 1  # and /_faults still answers


def test_control_errors_name_the_url(rpc_proxy: FaultProxyProcess) -> None:
    with pytest.raises(FaultControlError, match=r"400: unknown mode 'bogus'"):
        rpc_proxy.control.set("bogus")
    with pytest.raises(FaultControlError, match=r"400: errors: rate=2"):
        rpc_proxy.control.set("errors", rate=2)
    with pytest.raises(FaultControlError, match=r"400: latency: unknown param\(s\) seconds"):
        rpc_proxy.control.set("latency", ms=1, seconds=2)
    with pytest.raises(FaultControlError, match=r"409: drop_sent on an automining node"):
        rpc_proxy.control.set("drop_sent")
    assert rpc_proxy.control.state()["active"] == {}
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FaultControlError, match=rf"{dead}/_faults: the fault proxy did not answer"):
        FaultControl(dead, timeout_s=2).state()

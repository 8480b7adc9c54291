"""`x402bench probe` as a user runs it: the CLI in its own process against real worlds, a broken
service in its own process, and bad input. Every case must hold against x402bench's own stack;
the broken service and the official SDK facilitator must be named where they fall short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.chain import free_port, terminate
from services.stack import World
from services.token import balance_of
from x402bench.scenario import load_scenario

X402BENCH = Path(sys.executable).with_name("x402bench")
BROKEN_SERVICE = Path(__file__).parent / "outside" / "broken_service.py"


def probe(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(X402BENCH), "probe", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})  # a wide table: case names unbroken


def smoke(**overrides: Any):
    return load_scenario("scenarios/smoke.yaml").with_overrides(agents={"count": 60, "funding_usdc": 1}, **overrides)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    workdir = tmp_path_factory.mktemp("probe")
    with World(smoke(), workdir=workdir) as w:
        (workdir / "world.json").write_text(w.info.to_json())
        yield w
    assert w.anvil is None and not w.processes


def world_file(world: World) -> str:
    return str(Path(world.info.workdir) / "world.json")


def payee_balance(world: World) -> int:
    info = world.info
    return balance_of(info.rpc_url, info.token["address"], info.payees[0])


def cases_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case["name"]: case for case in report["cases"]}


def assert_all_hold(done: subprocess.CompletedProcess[str], report: dict[str, Any], delta: int, price: int) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(report["cases"]) >= 30
    assert [c["name"] for c in report["cases"] if not c["holds"]] == []
    accepted = [c for c in report["cases"] if c["kind"] != "once"]
    assert delta == report["payee_delta"] == report["expected_payee_delta"] == len(accepted) * price
    assert "as expected" in done.stdout and f"{len(report['cases'])}/{len(report['cases'])} cases hold" in done.stdout


# --- x402bench's own stack: every case holds ----------------------------------------------------------


def test_every_case_holds_against_our_priced_service(world: World, tmp_path: Path) -> None:
    before = payee_balance(world)
    done = probe(world.info.service_urls["weather"], "--world", world_file(world), "--json", str(tmp_path / "p.json"))
    report = json.loads((tmp_path / "p.json").read_text())
    assert_all_hold(done, report, payee_balance(world) - before, world.info.prices["weather"])
    cases = cases_by_name(report)
    replayed = cases["sequential replay"]["answers"]  # our facilitator answers a repeat as a retry
    assert [a["status"] for a in replayed] == [200, 200] and replayed[0]["transaction"] == replayed[1]["transaction"]
    copies = cases["10 concurrent copies"]["answers"]
    assert [a["status"] for a in copies] == [200] * 10 and len({a["transaction"] for a in copies}) == 1
    assert cases["wrong payee"]["answers"][0]["reason"] == "invalid_exact_evm_payload_recipient_mismatch"
    malformed = cases["not base64"]["answers"][0]
    assert (malformed["status"], malformed["reason"]) == (400, "invalid_payload")


def test_every_case_holds_against_our_facilitator(world: World, tmp_path: Path) -> None:
    before = payee_balance(world)
    done = probe("--facilitator", world.info.facilitator_url, "--world", world_file(world),
                 "--json", str(tmp_path / "p.json"))
    report = json.loads((tmp_path / "p.json").read_text())
    assert_all_hold(done, report, payee_balance(world) - before, next(iter(world.info.prices.values())))
    cases = cases_by_name(report)
    replayed = cases["sequential replay"]["answers"]
    assert [(a["step"], a["ok"]) for a in replayed] == [("settle", True), ("settle", True), ("verify", True)]
    assert replayed[0]["transaction"] == replayed[1]["transaction"]  # the first settlement, named again
    copies = [a for a in cases["10 concurrent copies"]["answers"] if a["ok"]]
    assert len(copies) == 10 and len({a["transaction"] for a in copies}) == 1
    assert {a["reason"] for a in cases["accepted: other network"]["answers"]} == {"network_mismatch"}


# --- endpoints that fall short are named ----------------------------------------------------------------


def test_a_service_that_serves_without_settling_fails_by_name(world: World, tmp_path: Path) -> None:
    port = free_port()
    service = subprocess.Popen([sys.executable, str(BROKEN_SERVICE), "--world", world_file(world), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert service.poll() is None and time.monotonic() < deadline, "broken service did not start"
                time.sleep(0.1)
        before = payee_balance(world)
        done = probe(f"http://127.0.0.1:{port}/weather", "--world", world_file(world), "--json", str(tmp_path / "p.json"))
    finally:
        terminate(service)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    cases = cases_by_name(report)
    failing = done.stdout.split("failing:", 1)[1]
    for name in ("control", "sequential replay", "10 concurrent copies", "signed by a random key", "high-s signature"):
        assert name in failing and not cases[name]["holds"]
    assert "served a hostile payment (200)" in cases["sequential replay"]["problems"]
    assert "served a hostile payment (200)" in cases["signed by a random key"]["problems"]
    assert "10 of 10 copies served, exactly 1 expected" in cases["10 concurrent copies"]["problems"]
    assert "nothing settled on chain (authorization unused)" in cases["control"]["problems"]
    assert payee_balance(world) == before and report["payee_delta"] == 0 < report["expected_payee_delta"]
    assert f"SHORT by {report['expected_payee_delta']}" in done.stdout


#: What the official SDK facilitator (x402 2.25.0, behind x402bench's thin ledger wrapper) was seen to do.
SDK_CRASHES_AT_VERIFY = ("authorization: null", "integer from", 'amount "abc"')
SDK_FAILING = {*SDK_CRASHES_AT_VERIFY, "accepted: other scheme", "validBefore overflow"}


def test_the_sdk_facilitator_is_reported_where_it_answers_500(tmp_path: Path) -> None:
    with World(smoke(facilitator={"strategy": "sdk"}), workdir=tmp_path / "world") as world:
        (tmp_path / "world.json").write_text(world.info.to_json())
        before = payee_balance(world)
        done = probe("--facilitator", world.info.facilitator_url, "--world", str(tmp_path / "world.json"),
                     "--json", str(tmp_path / "p.json"))
        delta = payee_balance(world) - before
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    cases = cases_by_name(report)
    assert {name for name, case in cases.items() if not case["holds"]} == SDK_FAILING
    for name in SDK_CRASHES_AT_VERIFY:
        verify = cases[name]["answers"][0]
        assert (verify["step"], verify["status"]) == ("verify", 500)
        assert "verify answered 500" in cases[name]["problems"] and name in done.stdout.split("failing:", 1)[1]
    assert [a["status"] for a in cases["accepted: other scheme"]["answers"]] == [500, 500]
    assert [a["status"] for a in cases["validBefore overflow"]["answers"]] == [200, 500]
    assert delta == report["payee_delta"] == report["expected_payee_delta"]  # crashed, but paid nothing it should not


# --- bad input: exit 2 with a sentence, never a traceback ---------------------------------------------------


def test_unreachable_url_exits_2_at_once_naming_it(world: World) -> None:
    url = f"http://127.0.0.1:{free_port()}/weather"
    start = time.monotonic()
    done = probe(url, "--world", world_file(world))
    assert done.returncode == 2 and time.monotonic() - start < 15
    assert f"connection refused: {url}" in done.stderr and "Traceback" not in done.stderr
    done = probe("--facilitator", url.removesuffix("/weather"), "--world", world_file(world))
    assert done.returncode == 2 and "connection refused" in done.stderr


def test_a_route_without_402_exits_2(world: World) -> None:
    url = world.info.facilitator_url + "/health"
    done = probe(url, "--world", world_file(world))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "there is no 402 on the route" in done.stderr and url in done.stderr and "Traceback" not in done.stderr


def test_missing_world_file_exits_2(tmp_path: Path) -> None:
    done = probe("http://127.0.0.1:9/weather", "--world", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "nope.json does not exist" in done.stderr and "Traceback" not in done.stderr


def test_probe_reason_codes_are_the_sdk_constants() -> None:
    """The probe writes its codes out (to start fast); they must stay the facilitator's own."""
    from services.facilitator import reasons
    from x402bench.probe import ReasonCode

    codes = {k: v for k, v in vars(ReasonCode).items() if k.isupper()}
    assert codes == {k: getattr(reasons, k) for k in codes}

"""Bring your own stack: a world in parts, load attached to a running world, a node x402bench did not
start, facilitator-only load, and outside URLs that cannot be used (exit 2 at once, naming the URL).

Every outside part is a separate process started the way a user would start it. `x402bench load` itself
runs through its own entry point in this process (conftest's x402bench_here: the same code and exit code,
without importing the command again each time); the dead-URL test's attached run is the command itself."""

from __future__ import annotations

import csv
import json
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from services.chain import DEV_ADDRESS, Anvil, Rpc, free_port
from services.token import balance_of

from clirun import only_summary, running, running_up, x402bench

WORLD_KEYS = {"rpc_url", "chain_id", "network", "token", "payees", "facilitator_url", "facilitator_keys", "agents"}
SHORT = ("--duration", "2", "--users", "4")


def assert_exact(summary: dict) -> None:
    rec = summary["reconciliation"]
    assert summary["metrics"]["throughput_rps"] > 0 and rec["paid_responses"] > 0, rec
    assert rec["served_unpaid"] == 0 and rec["double_settled"] == 0 and rec["paid_unserved"] == 0, rec
    assert rec["payee_balance_delta"] == rec["expected_payee_delta"] > 0, rec


def test_up_only_chain_writes_the_world_file_contract(tmp_path: Path) -> None:
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--only", "chain", "--agents", "3") as world:
        assert WORLD_KEYS <= set(world)
        assert stat.S_IMODE(world_json.stat().st_mode) == 0o600  # it holds keys
        assert world["network"] == f"eip155:{world['chain_id']}" and world["facilitator_url"] == ""
        assert {"address", "name", "version", "decimals"} <= set(world["token"]) and not world["service_urls"]
        assert set(world["pids"]) == {"anvil"}
        rpc = Rpc(world["rpc_url"])
        assert int(rpc.call("eth_chainId"), 16) == world["chain_id"]
        for key in world["facilitator_keys"]:
            assert int(rpc.call("eth_getBalance", Account.from_key(key).address, "latest"), 16) > 10**18
        for agent in world["agents"]:
            assert balance_of(world["rpc_url"], world["token"]["address"], agent["address"]) > 0
        for payee in world["payees"]:
            assert int(rpc.call("eth_getBalance", payee, "latest"), 16) == 0  # payees sign nothing


def test_up_chain_and_facilitator_then_load_attached_through_our_services(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--only", "chain,facilitator") as world:
        assert set(world["pids"]) == {"anvil", "facilitator"} and not world["service_urls"]
        supported = httpx.get(world["facilitator_url"] + "/supported").json()
        assert {"x402Version": 2, "scheme": "exact", "network": world["network"]} in supported["kinds"]
        done = x402bench_here("load", "scenarios/smoke.yaml", "--world", str(world_json), *SHORT, "--out", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
    summary = only_summary(tmp_path)
    assert summary["meta"]["attached"] is True and summary["meta"]["world_file"] == str(world_json)
    assert summary["meta"]["parts"]["started"] == ["services"]  # the chain and facilitator were the world's
    assert summary["reconciliation"]["ledger"] is True  # the attached facilitator is ours: its ledger is read
    assert_exact(summary)


def test_load_on_a_node_x402bench_did_not_start(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    with Anvil(log_path=tmp_path / "users-node.log") as node:  # the user's node, its own process
        done = x402bench_here("load", "scenarios/smoke.yaml", "--rpc-url", node.url, *SHORT, "--out", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
        summary = only_summary(tmp_path)
        assert summary["meta"]["world"]["rpc_url"] == node.url
        assert summary["meta"]["parts"]["outside"] == {"rpc_url": True}
        assert_exact(summary)
        node.set_balance(DEV_ADDRESS, 0)  # a node without a funded deployer: said clearly, exit 2
        refused = x402bench_here("load", "scenarios/smoke.yaml", "--rpc-url", node.url, *SHORT,
                                 "--out", str(tmp_path / "b"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"node {node.url}" in refused.stderr and DEV_ADDRESS in refused.stderr and "no ETH" in refused.stderr
    assert "Traceback" not in refused.stderr and not list((tmp_path / "b").glob("*/*"))  # no half-made run folder


def test_facilitator_only_load_against_our_facilitator(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("load", "scenarios/smoke.yaml", "--target", "facilitator", *SHORT, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = only_summary(tmp_path)
    assert summary["meta"]["target"] == "facilitator" and summary["meta"]["parts"]["started"] == ["chain", "facilitator"]
    assert_exact(summary)
    assert 80_000 < summary["metrics"]["gas_per_payment"] < 90_000  # one transferWithAuthorization per payment
    (requests_csv,) = tmp_path.glob("*/*/requests.csv")

    rows = list(csv.DictReader(requests_csv.open()))
    assert rows and all(float(r["verify_s"]) > 0 and float(r["settle_s"]) > 0 for r in rows if r["status"] == "200")


def test_dead_or_wrong_urls_exit_2_at_once_naming_the_url(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    dead = f"http://127.0.0.1:{free_port()}"
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--agents", "3") as world:
        health = world["service_urls"]["weather"].rsplit("/", 1)[0] + "/health"
        cases = {
            ("--service-url", dead + "/weather"): f"service {dead}/weather: connection refused",
            ("--facilitator-url", dead): f"facilitator {dead} (GET /supported): connection refused",
            ("--rpc-url", dead): f"node {dead}: connection refused",
            ("--service-url", health): f"service {health}: no 402 on the route (an unpaid GET answered HTTP 200)",
            ("--facilitator-url", world["service_urls"]["weather"]): "not x402",
            ("--world", str(tmp_path / "missing.json")): "does not exist",
        }
        for flags, expected in cases.items():
            started = time.monotonic()
            # the command's code in this process (conftest's x402bench_here: the same refusal, exit code and
            # stderr, without importing the command six times); the attached run below is the command itself
            done = x402bench_here("load", "scenarios/smoke.yaml", *flags, *SHORT, "--out", str(tmp_path / "runs"))
            assert done.returncode == 2, (flags, done.stdout, done.stderr)
            assert expected in done.stderr, (flags, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout
            assert time.monotonic() - started < 30, flags  # refused before any traffic
        assert not list((tmp_path / "runs").glob("*/*/summary.json"))
        done = x402bench("load", "scenarios/smoke.yaml", "--world", str(world_json), *SHORT, "--out", str(tmp_path / "ok"))
        assert done.returncode == 0, done.stdout + done.stderr
    summary = only_summary(tmp_path / "ok")  # the whole running world, attached: its facilitator's ledger is read
    assert summary["meta"]["parts"] == {"started": [], "outside": {"world": True, "facilitator_url": True,
                                                                   "service_urls": True}}
    assert summary["reconciliation"]["ledger"] is True
    assert_exact(summary)
    (world_dir,) = (tmp_path / "ok").glob("*/*/world")
    assert stat.S_IMODE((world_dir / "world.json").stat().st_mode) == 0o600  # the run folder's copy holds keys too


# --- the official SDKs' parts (tests/outside/), each its own process configured from the world file ------

OUTSIDE = Path("tests/outside")


def start_part(kind: str, world_json: Path, logdir: Path, *extra: str):  # noqa: ANN201
    """An outside part as a user starts it: `python tests/outside/X.py --world FILE --port N` (or node)."""
    port = free_port()
    program = {"sdk-facilitator": [sys.executable, str(OUTSIDE / "sdk_facilitator.py")],
               "sdk-service": [sys.executable, str(OUTSIDE / "sdk_service.py")],
               "ts-service": ["node", str(OUTSIDE / "ts_service" / "server.mjs")]}[kind]
    return running(kind, [*program, "--world", str(world_json), "--port", str(port), *extra], port, logdir)


def test_the_official_sdk_facilitator_behind_our_services(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    """my facilitator: x402bench's chain, services and agents; the SDK's own facilitator app settles."""
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--only", "chain") as world:
        with start_part("sdk-facilitator", world_json, tmp_path) as facilitator_url:
            done = x402bench_here("load", "scenarios/smoke.yaml", "--world", str(world_json), "--facilitator-url",
                                  facilitator_url, *SHORT, "--out", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
        (settlements,) = tmp_path.glob("*/*/settlements.csv")
        tx_hash = next(csv.DictReader(settlements.open()))["tx_hash"]
        sender = Rpc(world["rpc_url"]).call("eth_getTransactionByHash", tx_hash)["from"]
    assert sender.lower() == Account.from_key(world["facilitator_keys"][0]).address.lower()  # the outside key settled
    summary = only_summary(tmp_path)
    assert summary["meta"]["parts"] == {"started": ["services"], "outside": {"world": True, "facilitator_url": True}}
    assert summary["reconciliation"]["ledger"] is False  # not our facilitator: the chain alone decides
    assert_exact(summary)


@pytest.mark.parametrize("kind", ["sdk-service", "ts-service"])
def test_a_service_written_with_an_official_sdk_as_service_url(tmp_path: Path, kind: str,
                                                            x402bench_here) -> None:  # noqa: ANN001
    """my service: x402bench's chain and facilitator; the agents pay a service written with the SDK."""
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--only", "chain,facilitator"):
        with start_part(kind, world_json, tmp_path, "--path", "/weather", "--price", "1500") as service:
            done = x402bench_here("load", "scenarios/smoke.yaml", "--world", str(world_json), "--service-url",
                                  service + "/weather", *SHORT, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = only_summary(tmp_path)
    assert summary["meta"]["parts"] == {"started": [], "outside": {"world": True, "service_urls": True}}
    assert summary["meta"]["world"]["service_urls"] == {"weather": service + "/weather"}
    assert_exact(summary)
    rec = summary["reconciliation"]
    assert rec["expected_payee_delta"] == 1500 * rec["paid_responses"]  # the price came from the 402


def test_facilitator_only_load_against_the_official_sdk_facilitator(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    world_json = tmp_path / "world.json"
    with running_up(world_json, "scenarios/smoke.yaml", "--only", "chain"):
        with start_part("sdk-facilitator", world_json, tmp_path) as facilitator_url:
            done = x402bench_here("load", "scenarios/smoke.yaml", "--world", str(world_json), "--target", "facilitator",
                                  "--facilitator-url", facilitator_url, *SHORT, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = only_summary(tmp_path)
    assert summary["meta"]["target"] == "facilitator" and summary["meta"]["parts"]["started"] == []
    assert_exact(summary)

"""The command line as a user meets it: scenario errors, the schema, `up --json` + `pay`,
and our payer settling through the official SDK facilitator.

Commands run through their own entry point in this process (conftest's x402bench_here: x402bench.cli.main,
its exit code and output), except where the process itself is the point: `up` in the background, stopped
by Ctrl-C, and one `check` as the installed command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.payer.client import PayerCore, httpx_send
from services.stack import World
from x402bench.scenario import load_scenario

import httpx


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("body,field,problem", [
    ("name: x\nservices: [{name: a, path: /a, price: '$0.0000001'}]\n", "services.0.price", "finer than"),
    ("name: x\nservices: [{name: a, path: /a, price: 1, wrok_ms: 3}]\n", "services.0.wrok_ms", "unknown field"),
    ("name: x\nchain: {mining: interval}\nservices: [{name: a, path: /a, price: 1}]\n", "chain", "block_time_s"),
    ("name: x\nagents: {mix: {b: 1}}\nservices: [{name: a, path: /a, price: 1}]\n", "", "unknown services ['b']"),
    ("name: x\nservices: []\n", "services", "at least 1"),
    ("- just\n- a list\n", "", "mapping at the top level"),
    ("name: [unclosed\n", "", "not valid YAML"),
    ("name: x\nagents: {retry: {timeout_s: 5}}\nservices: [{name: a, path: /a, price: 1}]\n", "agents.retry",
     "only to retries"),
    ("name: x\nfaults: [{at_s: 1, kind: rpc_latency, for_s: 2}]\nservices: [{name: a, path: /a, price: 1}]\n",
     "faults.0.rpc_latency.ms", "Field required"),
    ("name: x\nfaults: [{at_s: 1, kind: meteor}]\nservices: [{name: a, path: /a, price: 1}]\n", "faults.0",
     "does not match any of the expected tags"),
])
def test_bad_scenario_exits_2_naming_file_field_and_problem(tmp_path: Path, body: str, field: str, problem: str,
                                                         x402bench_here) -> None:  # noqa: ANN001
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    done = x402bench_here("check", str(path))  # the command's code in this process: see conftest
    assert done.returncode == 2
    assert str(path) in done.stderr and field in done.stderr and problem in done.stderr
    assert "Traceback" not in done.stderr


def test_shipped_scenarios_are_valid(x402bench_here) -> None:  # noqa: ANN001
    """Every shipped scenario passes `check` (the command's own code, in this process), and the command
    itself, in a process of its own, passes one of them."""
    paths = sorted(Path("scenarios").glob("*.yaml"))
    assert len(paths) > 1
    for path in paths:
        done = x402bench_here("check", str(path))
        assert done.returncode == 0 and f"{path}: ok" in done.stdout, (path, done.stdout, done.stderr)
    done = cli("check", "scenarios/faults.yaml")  # live-valid, with a note that the sim refuses it
    assert done.returncode == 0, done.stderr
    assert "scenarios/faults.yaml: ok, valid for live runs" in done.stdout
    assert "note: `x402bench sim` refuses" in done.stdout


def test_schema_is_json_schema_naming_every_section(x402bench_here) -> None:  # noqa: ANN001
    schema = json.loads(x402bench_here("schema").stdout)
    assert schema["title"] == "x402bench scenario"
    assert {"chain", "token", "facilitator", "services", "agents", "run", "slo"} <= set(schema["properties"])


def test_our_payer_is_settled_by_the_official_sdk_facilitator(tmp_path: Path) -> None:
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(facilitator={"strategy": "sdk"}, agents={"count": 2})
    with World(scenario, workdir=tmp_path) as world, httpx.Client(timeout=60) as http:
        payer = PayerCore(world.agents[0].key_hex, world.info.network)
        results = [payer.pay(httpx_send(http), "GET", world.info.service_urls["weather"]) for _ in range(3)]
    assert [r.status for r in results] == [200, 200, 200]
    assert all(r.transaction.startswith("0x") and r.response.success for r in results)
    assert len({r.nonce for r in results}) == 3


def test_up_json_then_pay_then_ctrl_c_leaves_nothing_running(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    world_json = tmp_path / "world.json"
    up = subprocess.Popen([sys.executable, "-m", "x402bench", "up", "scenarios/smoke.yaml", "--json", str(world_json),
                           "--agents", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not world_json.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.1)
        assert world_json.exists(), up.stdout.read() if up.poll() is not None else "no world.json"
        info = json.loads(world_json.read_text())
        assert len(info["agents"]) == 3 and info["network"] == "eip155:31337"
        paid = x402bench_here("pay", info["service_urls"]["weather"], "--world", str(world_json), "--agent", "1")
        assert paid.returncode == 0, paid.stdout + paid.stderr
        assert "200" in paid.stdout and "gas used" in paid.stdout and info["agents"][1]["address"] in paid.stdout
        pids = list(info["pids"].values())
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "nothing left running" in output
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), pid


def test_pay_without_any_key_is_a_usage_error(x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("pay", "http://127.0.0.1:9/x")
    assert done.returncode == 2 and "somebody has to pay" in done.stderr + done.stdout


def test_validate_runs_live_and_sim_and_reports_relative_errors(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("validate", "scenarios/smoke.yaml", "--duration", "5", "--users", "4",
                          "--live-out", str(tmp_path))
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1 = outside the 10% target: reported, not hidden
    assert "live run:" in done.stdout
    for metric in ("throughput (req/s)", "settlement p50 (s)", "settlement p95 (s)"):
        line = next(l for l in done.stdout.splitlines() if l.startswith(metric))
        assert "%" in line, line

"""`up` and `pay`: bring a scenario's world up by hand, and make one paid request."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from x402bench.cli import app
from x402bench.scenario import load_scenario

out = Console()


@app.command()
def up(
    scenario: Path,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the world's addresses and keys here."),
    workdir: Optional[Path] = typer.Option(None, help="Keep logs, configs and the ledger here (default: a temp dir)."),
    agents: Optional[int] = typer.Option(None, help="Fund this many agents instead of the scenario's count."),
) -> None:
    """Bring the scenario's world up on loopback and keep it running until Ctrl-C."""
    from services.stack import World

    s = load_scenario(scenario)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with out.status(f"bringing up {s.name}…"):
        world = World(s, workdir=workdir, agent_count=agents).__enter__()
    try:
        info = world.info
        assert info is not None
        out.print(f"[bold]{s.name}[/bold] is up ({s.chain.mining} mining, strategy {s.facilitator.strategy})")
        out.print(f"  chain RPC     {info.rpc_url}  (chain id {info.chain_id}, {info.network})")
        out.print(f"  token         {info.token['address']}  ({info.token['name']} v{info.token['version']})")
        out.print(f"  facilitator   {info.facilitator_url}  signers {', '.join(info.signers)}")
        out.print(f"  pay to        {info.pay_to}")
        for name, url in info.service_urls.items():
            out.print(f"  service       {url}  ({info.prices[name]} atomic units)")
        shown = info.agents[:5]
        out.print(f"  agents        {len(info.agents)} funded; local test keys only, e.g.:")
        for agent in shown:
            out.print(f"                {agent['address']}  {agent['private_key']}")
        if json_path:
            json_path.write_text(info.to_json())
            out.print(f"  world JSON    {json_path}")
        out.print("Press Ctrl-C to stop.")
        stop.wait()
    finally:
        world.stop()
        out.print("stopped; nothing left running.")


@app.command()
def pay(
    url: str,
    world_json: Optional[Path] = typer.Option(None, "--world", help="World JSON from `up --json`: agent key, RPC."),
    scenario: Optional[Path] = typer.Option(None, help="Scenario whose seed and chain give the agent and network."),
    key: Optional[str] = typer.Option(None, help="Pay with this private key instead (local test keys only)."),
    agent: int = typer.Option(0, help="Which of the world's agents pays."),
    rpc: Optional[str] = typer.Option(None, help="Chain RPC URL, to show the settlement's gas."),
) -> None:
    """Make one paid request and show status, transaction, gas used and where the time went."""
    import json

    import httpx

    from services.payer.client import PayerCore

    network = "eip155:31337"
    if world_json:
        info = json.loads(world_json.read_text())
        key = key or info["agents"][agent]["private_key"]
        network, rpc = info["network"], rpc or info["rpc_url"]
    elif scenario:
        from services.payer.agents import derive_agents

        s = load_scenario(scenario)
        key = key or derive_agents(s.seed, agent + 1)[agent].key_hex
        network = s.network
    if not key:
        raise typer.BadParameter("give --world, --scenario or --key: somebody has to pay")
    with httpx.Client(timeout=120) as http:
        def send(method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            reply = http.request(method, target, headers=headers)
            return reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.content

        result = PayerCore(key, network, cache=False).pay(send, "GET", url)
    colour = "green" if result.status == 200 else "red"
    out.print(f"status       [{colour}]{result.status}[/{colour}] {result.error or ''}")
    out.print(f"payer        {result.payer}  paid {result.amount} atomic units")
    out.print(f"transaction  {result.transaction or '-'}")
    if rpc and result.transaction:
        from services.chain import Rpc

        receipt = Rpc(rpc).call("eth_getTransactionReceipt", result.transaction)
        if receipt:
            out.print(f"gas used     {int(receipt['gasUsed'], 16)} in block {int(receipt['blockNumber'], 16)}")
    out.print(f"latency      402 challenge {result.challenge_s * 1000:.1f} ms, signing {result.sign_s * 1000:.2f} ms, "
              f"paid round trip {result.paid_s * 1000:.1f} ms")
    if result.server_timing:
        out.print("server       " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result.server_timing.items()))
    if result.status != 200:
        raise typer.Exit(1)

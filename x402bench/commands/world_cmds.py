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
    only: Optional[str] = typer.Option(None, "--only", help="Start only these parts, comma-separated, in order: "
                                       "chain (the chain, token and funded keys), facilitator, services."),
    rpc_url: Optional[str] = typer.Option(None, "--rpc-url", help="Deploy and fund on this running node "
                                          "instead of starting Anvil."),
    facilitator_url: Optional[str] = typer.Option(None, "--facilitator-url", help="The services use this "
                                                  "facilitator instead of ours."),
) -> None:
    """Bring the scenario's world (or some of its parts) up on loopback and keep it running until Ctrl-C."""
    from services.process import write_private
    from services.stack import PARTS, Outside, World
    from x402bench.scenario import ScenarioError

    s = load_scenario(scenario)
    parts = tuple(p.strip() for p in only.split(",") if p.strip()) if only else PARTS
    if only is not None and (not parts or set(parts) - set(PARTS) or "chain" not in parts):
        raise ScenarioError(f"--only {only!r}: give parts from {', '.join(PARTS)}, chain included "
                            "(e.g. --only chain or --only chain,facilitator)")
    outside = Outside.of(s, rpc_url=rpc_url, facilitator_url=facilitator_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with out.status(f"bringing up {s.name}…"):
        world = World(s, workdir=workdir, agent_count=agents, parts=parts, outside=outside).__enter__()
    try:
        info = world.info
        assert info is not None
        out.print(f"[bold]{s.name}[/bold] is up: {', '.join(parts)} ({s.chain.mining} mining"
                  + (f", strategy {info.facilitator_strategy})" if info.facilitator_strategy else ")"))
        out.print(f"  chain RPC     {info.rpc_url}  (chain id {info.chain_id}, {info.network})")
        out.print(f"  token         {info.token['address']}  ({info.token['name']} v{info.token['version']})")
        if info.facilitator_url:
            out.print(f"  facilitator   {info.facilitator_url}" + (f"  signers {', '.join(info.signers)}" if info.signers else ""))
        out.print(f"  payees        {', '.join(info.payees)}")
        out.print(f"  facilitator keys for an outside facilitator: {len(info.facilitator_keys)} funded with ETH")
        for name, url in info.service_urls.items():
            out.print(f"  service       {url}  ({info.prices[name]} atomic units)")
        shown = info.agents[:5]
        out.print(f"  agents        {len(info.agents)} funded; local test keys only, e.g.:")
        for agent in shown:
            out.print(f"                {agent['address']}  {agent['private_key']}")
        if json_path:
            write_private(json_path, info.to_json())
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

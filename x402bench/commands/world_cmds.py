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

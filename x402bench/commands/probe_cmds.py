"""`probe`: hostile payments against any priced route or facilitator, with a verdict per case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from x402bench.cli import app

out = Console()
err = Console(stderr=True)


@app.command()
def probe(
    url: Optional[str] = typer.Argument(None, help="A priced service route, e.g. http://127.0.0.1:PORT/weather."),
    world_json: Path = typer.Option(..., "--world", help="World JSON from `up --json`: chain, token, funded agents."),
    facilitator: Optional[str] = typer.Option(None, help="Probe this facilitator base URL instead of a route."),
    amount: Optional[int] = typer.Option(None, help="With --facilitator: atomic units per payment (default: the "
                                                    "world's first price)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the case table here as JSON."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for any one answer (a hang fails its case)."),
    first_agent: int = typer.Option(0, help="Index of the world agent that pays the first case (then one per case)."),
    method: str = typer.Option("GET", help="HTTP method of the route."),
) -> None:
    """Run the hostile-payment cases against an endpoint: exit 0 if every case holds, 1 if any falls short,
    2 for bad input (unreachable URL, no 402 on the route, unusable world file)."""
    from services.chain import ChainError
    from x402bench.probe import CASES, ProbeInputError
    from x402bench.probe_runner import FacilitatorEndpoint, ServiceEndpoint, load_world, run_probe

    try:
        if (url is None) == (facilitator is None):
            raise ProbeInputError("give a route URL or --facilitator URL (exactly one)")
        target_url = url if url is not None else facilitator
        assert target_url is not None
        if not target_url.startswith(("http://", "https://")):
            raise ProbeInputError(f"{target_url!r} is not an http(s) URL")
        if amount is not None and (url is not None or amount < 1):
            raise ProbeInputError("--amount goes with --facilitator and must be at least 1")
        world = load_world(world_json)
        endpoint = (ServiceEndpoint(target_url, timeout, method) if url is not None
                    else FacilitatorEndpoint(target_url, timeout))
        try:
            with out.status(f"probing {target_url} with {len(CASES)} cases…"):
                report = run_probe(world, endpoint, amount=amount, first_agent=first_agent)
        finally:
            endpoint.close()
    except ProbeInputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (OSError, ChainError) as exc:  # the world's chain went away mid-probe
        err.print(f"[red]error:[/red] the world's chain stopped answering: {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None

    table = Table(title=f"x402bench probe: {report.target} {report.url}", show_lines=True)
    for column in ("#", "case", "expected", "observed", "result"):
        table.add_column(column, overflow="fold")
    for i, res in enumerate(report.results, 1):
        observed = escape(res.observed()) + "".join(f"\n[red]{escape(p)}[/red]" for p in res.problems)
        table.add_row(str(i), escape(res.case.name), escape(res.expected), observed,
                      "[green]holds[/green]" if res.holds else "[red]FAILS[/red]")
    out.print(table)
    failing = [res.case.name for res in report.results if not res.holds]
    held = len(report.results) - len(failing)
    out.print(f"{held}/{len(report.results)} cases hold" + (f"; failing: {', '.join(failing)}" if failing else ""),
              highlight=False, soft_wrap=True)
    paid = sum(1 for res in report.results if res.case.pays)
    gap = report.delta - report.expected_delta
    verdict = ("as expected" if gap == 0 else f"SHORT by {-gap}" if gap < 0 else f"OVER by {gap}: hostile money moved")
    out.print(f"payee {report.payee} balance delta {report.delta:+d} atomic units; expected "
              f"{report.expected_delta:+d} ({paid} accepted payments x {report.amount}): {verdict}",
              highlight=False, soft_wrap=True)
    if report.unseen_transactions:
        out.print(f"{len(report.unseen_transactions)} reported transaction(s) had no receipt within {timeout:g} s",
                  highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2))
        out.print(f"case table JSON: {json_path}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)

"""`schema` and `check`: help users write scenario files."""

from __future__ import annotations

from pathlib import Path

import typer

from x402bench.cli import app
from x402bench.scenario import json_schema, load_scenario


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (point your editor's YAML support at it)."""
    typer.echo(json_schema(), nl=False)


@app.command()
def check(scenario: Path) -> None:
    """Validate a scenario file and print what it describes."""
    s = load_scenario(scenario)
    typer.echo(f"{scenario}: ok: {s.name}, {len(s.services)} services, {s.agents.count} agents, "
               f"{s.chain.mining} mining, strategy {s.facilitator.strategy}")

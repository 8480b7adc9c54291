"""`schema` and `check`: help users write scenario files.

`check` answers "will my run be refused before it starts?", not only "does the file parse?": a
scenario can be a valid file and still be refused by `load` (a batch too big for the block) or by
`sim` (manual mining has no block schedule to simulate). So it asks the same code those commands
ask before they start anything, rather than a copy of it that could drift: for live runs,
services.stack.check_live_strategy; for the sim, the sim itself, run for an instant with one agent.
"""

from __future__ import annotations

from pathlib import Path

import typer

from x402bench.cli import app
from x402bench.scenario import Scenario, ScenarioError, json_schema, load_scenario


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (point your editor's YAML support at it)."""
    typer.echo(json_schema(), nl=False)


def _describe(s: Scenario) -> str:
    return (f"{s.name}, {len(s.services)} services, {s.agents.count} agents, {s.chain.mining} mining, "
            f"strategy {s.facilitator.strategy}")


def _outside(s: Scenario) -> str | None:
    """The outside part that replaces our facilitator, if the scenario names one.

    `load` starts our facilitator, and so checks its limits, only when the scenario names neither a
    facilitator URL nor priced services at URLs (those bring their own facilitator)."""
    if s.service_urls:
        return f"the priced services at {', '.join(s.service_urls)}"
    if s.facilitator.external_url:
        return f"the facilitator at {s.facilitator.external_url}"
    return None


def live_refusal(s: Scenario) -> str | None:
    """Why `load` / `up` would refuse the scenario before starting anything, or None."""
    from loadtest.faults import check_faults

    outside = _outside(s)
    started = ["chain"] + ([] if outside else ["facilitator", "services"])
    try:
        check_faults(s, started, "service")  # what the fault driver would refuse before any traffic
        from loadtest.runner import check_live_duration

        check_live_duration(s)
        if outside is None:
            from services.stack import check_live_strategy

            check_live_strategy(s)
    except ScenarioError as exc:
        return str(exc)
    return None


def sim_refusal(s: Scenario) -> str | None:
    """Why `x402bench sim` (default calibration) would refuse the scenario, or None.

    The sim checks what it can model as it builds its world and starts its clock (a batch that cannot
    fit a block, a chain with no block schedule, a fault it cannot apply): one agent for a millisecond
    runs exactly those checks, in milliseconds."""
    from sim.run import SimOptions, run_sim

    try:
        run_sim(s, None, SimOptions(agents=1, duration_s=1e-3, drain_s=0.0))
    except (ValueError, ScenarioError) as exc:
        return str(exc)
    return None


@app.command()
def check(
    scenario: Path,
    sim: bool = typer.Option(False, "--sim", help="Validate for `x402bench sim` only: skip the checks a live "
                             "run makes before it starts (a scenario the sim models but live runs cannot run)."),
) -> None:
    """Validate a scenario file for live runs (`load`, `up`: exit 2 with their message if they would
    refuse it) and say whether `x402bench sim` runs it too. Outside URLs are not contacted here."""
    s = load_scenario(scenario)
    sim_problem = sim_refusal(s)
    if sim:
        if sim_problem:
            raise ScenarioError(f"{scenario}: not runnable in the sim: {sim_problem}")
        typer.echo(f"{scenario}: ok, valid for `x402bench sim` (live checks skipped): {_describe(s)}")
        return
    live_problem = live_refusal(s)
    if live_problem:
        sim_verdict = (f"`x402bench sim` refuses it too: {sim_problem}" if sim_problem
                       else "valid for `x402bench sim` (`x402bench check --sim` validates for the sim alone)")
        raise ScenarioError(f"{scenario}: not runnable live: {live_problem}; {sim_verdict}")
    outside = _outside(s)
    where = f" through {outside} (checked when `load` starts)" if outside else ""
    typer.echo(f"{scenario}: ok, valid for live runs{where}: {_describe(s)}")
    if sim_problem:
        typer.echo(f"note: `x402bench sim` refuses it: {sim_problem}")

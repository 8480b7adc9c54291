"""`report` and `compare`: look at run folders again, without re-running anything."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from x402bench.cli import app
from x402bench.results.report import fmt

out = Console()
err = Console(stderr=True)


def _bad_input(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run folder: results/<scenario>/<run-id>/")) -> None:
    """Rebuild the plots and report.html of a run folder from its summary.json and CSVs."""
    from x402bench.results.rundir import RunDirError, rebuild_report  # matplotlib only when needed

    try:
        path = rebuild_report(run_dir)
    except RunDirError as exc:
        raise _bad_input(exc) from None
    out.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
def compare(run_a: Path = typer.Argument(..., help="Baseline run folder (A)."),
            run_b: Path = typer.Argument(..., help="Run folder to compare with it (B).")) -> None:
    """Key metrics of two runs (load or sim) side by side, with the ratio B/A."""
    from x402bench.results.compare import compare_runs
    from x402bench.results.rundir import RunDirError

    try:
        label_a, label_b, rows = compare_runs(run_a, run_b)
    except RunDirError as exc:
        raise _bad_input(exc) from None
    table = Table(title="x402bench compare")
    table.add_column("metric")
    table.add_column(f"A: {label_a}", justify="right")
    table.add_column(f"B: {label_b}", justify="right")
    table.add_column("B/A", justify="right")
    for row in rows:
        table.add_row(row.metric, fmt(row.a), fmt(row.b), "n/a" if row.ratio is None else f"{row.ratio:.3f}x")
    out.print(table)

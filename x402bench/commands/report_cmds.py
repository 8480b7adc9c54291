"""`report` and `compare`: look at run folders again, without re-running anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from x402bench.cli import app

out = Console()
err = Console(stderr=True)


def _bad_input(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
def compare(
    run_dirs: List[Path] = typer.Argument(..., metavar="RUN_DIR",
                                          help="Two or more run folders; the first is the baseline (A)."),
    html_path: Optional[Path] = typer.Option(None, "--html", metavar="PATH", help="Write the HTML comparison "
                                             "here (default: next to the first run, compare-<id>-<hash>.html)."),
    fail_if: Optional[List[str]] = typer.Option(None, "--fail-if", metavar="METRIC>RATIO", help="Exit 1 when any "
                                                "later run's ratio to the baseline crosses RATIO (repeatable), e.g. "
                                                "'settlement_latency_s.p95>1.2' or 'throughput_rps<0.9'."),
) -> None:
    """Key metrics of runs (load or sim) side by side, with each run's ratio to the first; an HTML page of it;
    with --fail-if, a regression gate for CI."""
    from x402bench import errors
    from x402bench.results.compare import compare_many, judge, parse_gate
    from x402bench.results.compare_html import default_html_path, letter, write_compare_html
    from x402bench.results.rundir import RunDirError

    try:
        gates = [parse_gate(text) for text in fail_if or []]
        comparison = compare_many(run_dirs)
    except (RunDirError, ValueError) as exc:
        raise _bad_input(exc) from None
    target = html_path or default_html_path(comparison.run_dirs)
    problem = errors.output_file_problem(target)
    if problem is None and html_path is None and not os.access(target.parent, os.W_OK):
        problem = f"{target.parent} is not writable"
    if problem:
        raise _bad_input(ValueError(f"{problem}; give --html PATH"))
    from x402bench.results.report import fmt  # here: the report pulls in matplotlib, which every command would pay

    breaches = judge(comparison, gates)
    table = Table(title="x402bench compare")
    table.add_column("metric")
    for i, label in enumerate(comparison.labels):
        table.add_column(f"{letter(i)}: {label}", justify="right")
        if i:
            table.add_column(f"{letter(i)}/A", justify="right")
    for row in comparison.rows:
        cells = [row.metric]
        for i, value in enumerate(row.values):
            cells.append(fmt(value))
            if i:
                r = row.ratios[i - 1]
                cells.append("n/a" if r is None else f"{r:.3f}x")
        table.add_row(*cells)
    out.print(table)
    write_compare_html(target, comparison, gates, breaches)
    out.print(f"html: {target}", highlight=False, soft_wrap=True)
    for breach in breaches:
        out.print(f"[red]regression:[/red] {escape(breach.message)}", highlight=False, soft_wrap=True)
    if gates and not breaches:
        out.print(f"gates passed: {', '.join(g.text for g in gates)}", highlight=False, soft_wrap=True)
    if breaches:
        raise typer.Exit(errors.SLO_FAILED)

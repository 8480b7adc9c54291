"""What `load`, `demo` and `sim` share after their options are read: the SLO overrides applied to the
scenario before the run (so the checks and the run folder's scenario.yaml both hold them), and what the
run hands CI afterwards: summary.json on stdout with `--json`, JUnit XML with `--junit`, the exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from x402bench import errors
from x402bench.results.slo import override_slo, slo_names
from x402bench.scenario import Scenario, ScenarioError

out = Console()
err = Console(stderr=True)


def slo_option() -> Any:
    return typer.Option(None, "--slo", metavar="NAME=VALUE",
                        help="Override one of the scenario's SLO bounds (repeatable; VALUE 'none' drops it): "
                        + ", ".join(slo_names()) + ". Recorded in the run folder's scenario.yaml.")


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print summary.json's content on stdout and nothing else there "
                        "(the tables and progress go to stderr).")


def junit_option() -> Any:
    return typer.Option(None, "--junit", metavar="PATH", help="Also write the SLO checks as JUnit XML here, "
                        "one testcase per check, for CI.")


def with_slo(scenario: Scenario, specs: Optional[list[str]]) -> Scenario:
    """The scenario with `--slo` overrides; a bad one is bad input (exit 2) naming every SLO."""
    if not specs:
        return scenario
    try:
        slo = override_slo(scenario.slo, specs)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    return scenario.with_overrides(slo=slo.model_dump())


def console(as_json: bool) -> Console:
    """Where the human-readable output goes: stderr when stdout carries the JSON."""
    return err if as_json else out


def finish(summary: dict[str, Any], run_dir: Path, as_json: bool, junit_path: Optional[Path]) -> None:
    """JUnit file, JSON on stdout, then exit 1 if an SLO failed (after everything is written)."""
    from x402bench.results.junit import write_junit
    from x402bench.results.rundir import SUMMARY

    shown = console(as_json)
    if junit_path is not None:
        write_junit(junit_path, summary, run_dir)
        shown.print(f"junit: {junit_path}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write((run_dir / SUMMARY).read_text(encoding="utf-8"))
        sys.stdout.flush()
    if not summary["slo"]["passed"]:
        failed = [c["name"] for c in summary["slo"]["checks"] if not c["passed"]]
        shown.print(f"[red]SLO failed:[/red] {', '.join(failed)}")
        sys.exit(errors.SLO_FAILED)

"""The `x402bench` command line. Each command group lives in its own module under
x402bench/commands/ and registers itself on `app`; this file only wires them and
turns known user errors into clean exit codes (2 = bad input, 1 = SLO failed)."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from x402bench.scenario import ScenarioError

app = typer.Typer(
    help="x402bench: benchmark x402 micropayments on a local chain, live (Locust) or simulated (SimPy).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # an error message is one line, whatever the width

#: Modules under x402bench.commands that define commands on `app` when imported.
COMMAND_MODULES = ("scenario_cmds", "world_cmds", "load_cmds", "report_cmds", "sim_cmds", "probe_cmds")


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"x402bench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"x402bench.commands.{name}":
                raise


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: every `finally` runs, so a world's processes (started in sessions of
    their own, out of reach of the signal) are stopped by their PIDs rather than orphaned."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    _register()
    _exit_on_sigterm()
    try:
        app()
    except ScenarioError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)

"""The `x402bench` command line. Each command group lives in its own module under
x402bench/commands/ and registers itself on `app`; this file only wires them and turns
errors into the documented exit codes (x402bench/errors.py): 0 every SLO passed, 1 an SLO
failed, 2 bad input or usage, 3 anything else (traceback to a log file, one line on stderr)."""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from x402bench import errors
from x402bench.scenario import ScenarioError

HELP = (
    "x402bench: benchmark x402 micropayments on a local chain, live (Locust) or simulated (SimPy).\n\n"
    "Exit codes: 0 every SLO passed; 1 an SLO failed (or a validation, a probe, a sweep point, a compare "
    "--fail-if gate); 2 bad input or "
    "usage (a bad scenario, a missing file, an --out that is a file); 3 anything else, an internal error: its "
    "traceback goes to x402bench-error.log in the run folder (when the run had one), else to a file of its own "
    "in the temp dir, and stderr gets one line naming the error and that file."
)

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, soft_wrap=True)  # an error message is one line, whatever the width

#: Modules under x402bench.commands that define commands on `app` when imported.
COMMAND_MODULES = ("scenario_cmds", "world_cmds", "load_cmds", "report_cmds", "sim_cmds", "probe_cmds")

#: The width of every console whose output is not a terminal: no table cell cut, no line wrapped.
PIPED_WIDTH = 100_000


def _show_version(value: bool) -> None:
    if value:
        print(f"x402bench {errors.version()}")
        raise typer.Exit(0)


@app.callback()
def _root(show_version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                                       help="Print the version and exit.")) -> None:
    pass


def _checked(callback: Any) -> Any:
    """The command with its path options checked first (errors.path_problems): bad ones exit 2 before any work."""
    if getattr(callback, "_x402bench_checked", False):
        return callback

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        problems = errors.path_problems(kwargs)
        if problems:
            for problem in problems:
                err.print(f"[red]error:[/red] {escape(problem)}", highlight=False)
            raise typer.Exit(errors.BAD_INPUT)
        return callback(*args, **kwargs)

    run._x402bench_checked = True  # type: ignore[attr-defined]
    return run


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"x402bench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"x402bench.commands.{name}":
                raise
    for info in app.registered_commands:
        info.callback = _checked(info.callback)


def _full_width_when_piped() -> None:
    """Rich wraps and cuts to 80 columns when its output is no terminal (a pipe, a file): there, every
    console of the CLI gets a width nothing reaches, so tables keep every digit and lines stay whole."""
    for name, module in list(sys.modules.items()):
        if not (name == __name__ or name.startswith("x402bench.commands.")):
            continue
        for console in vars(module).values():
            if isinstance(console, Console):
                try:
                    tty = console.file.isatty()
                except (AttributeError, ValueError, OSError):
                    tty = False
                if not tty:
                    console.width = PIPED_WIDTH


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
    _full_width_when_piped()
    try:
        app()
    except ScenarioError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(errors.BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - anything else is an internal error: exit 3, traceback to a file
        try:
            log = str(errors.write_crash_log(exc))
        except Exception as log_exc:  # noqa: BLE001
            log = f"none (writing it failed: {errors.one_line(log_exc)})"
        err.print(f"[red]internal error:[/red] {escape(errors.one_line(exc))}; traceback in {escape(log)}",
                  highlight=False)
        sys.exit(errors.INTERNAL_ERROR)

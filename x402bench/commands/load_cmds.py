"""`load` and `demo`: the live run, with a progress line and an SLO exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from x402bench.cli import app
from x402bench.commands.run_output import console, finish, json_option, junit_option, slo_option, with_slo
from x402bench.durations import parse_duration
from x402bench.scenario import ScenarioError, load_scenario

out = Console()


def _progress_text(p: dict[str, Any]) -> str:
    if "elapsed" not in p:
        return f"Locust web UI at {p['web']}"
    return (f"[bold]{p['elapsed']:5.0f} s[/bold]  paid {p['paid']:>7}  [green]{p['rps']:7.1f} paid req/s[/green]  "
            f"p95 {p['p95']:6.3f} s  errors [red]{p['errors']}[/red]  users {p['users']}  workers {p['workers']}"
            + (f"  web UI {p['web']}" if "web" in p else ""))


def print_result(summary: dict[str, Any], run_dir: Path, out: Console = out) -> None:
    """The run's figures, faults and SLO checks as a table, on `out` (stderr when stdout carries JSON)."""
    m, rec, slo = summary["metrics"], summary["reconciliation"], summary["slo"]
    table = Table(title=f"{summary['scenario']['name']} ({summary['mode']})", show_header=False)
    table.add_row("paid throughput", f"{m['throughput_rps']:.2f} req/s")
    for key in ("request_latency_s", "settlement_latency_s"):
        q = m[key]
        table.add_row(key.replace("_s", "").replace("_", " "),
                      "p50 {p50} / p95 {p95} / p99 {p99} s".format(**{k: _fmt(q.get(k)) for k in ("p50", "p95", "p99")}))
    table.add_row("gas per payment", _fmt(m["gas_per_payment"], ".0f"))
    table.add_row("cost per payment", f"${_fmt(m['cost_per_payment_usd'], '.6f')}")
    table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "none")
    table.add_row("reconciliation", f"paid {rec['paid_responses']}, settled {rec['settled']}, pending {rec['pending']}, "
                  f"served unpaid {rec['served_unpaid']}, paid unserved {rec['paid_unserved']}, "
                  f"double settled {rec['double_settled']}, payee Δ {rec['payee_balance_delta']} "
                  f"(expected {rec['expected_payee_delta']})")
    for finding in rec.get("findings") or []:
        table.add_row("[red]found[/red]", finding)
    out.print(table)
    if summary.get("faults"):
        out.print(fault_table(summary["faults"]))
    for check in slo["checks"]:
        mark = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        out.print(f"  SLO {mark} {check['name']}: measured {_fmt(check['measured'])} {check['op']} bound {check['bound']}")
    out.print(f"[bold]{_fmt(m['throughput_rps'], '.1f')} paid req/s, settlement p95 "
              f"{_fmt(m['settlement_latency_s'].get('p95'))} s, ${_fmt(m['cost_per_payment_usd'], '.6f')} per payment[/bold]")
    out.print(f"report: {run_dir / 'report.html'}")


def fault_table(rows: list[dict[str, Any]]) -> Table:
    """The per-fault table: window, each loss category during / after it, pending, throughput dip."""
    table = Table(title="faults (each count: during the window / after it, until the next fault)")
    for column in ("fault", "window s", "served unpaid", "paid unserved", "double settled", "pending", "dip"):
        table.add_column(column, justify="left" if column == "fault" else "right")
    for row in rows:
        d, a = row["during"], row["after"]
        cells = [f"{d[k]} / {a[k]}" for k in ("served_unpaid", "paid_unserved", "double_settled", "pending")]
        dip = row.get("throughput_dip")
        table.add_row(row["kind"], f"{row['at_s']:g}-{row['end_s']:g}", *cells, "n/a" if dip is None else f"{dip:.0%}")
    return table


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def duration_option(value: str | float | None) -> float | None:
    """typer's `parser=` for a duration option: None stays None (not given); a bad one is a usage error (exit 2)."""
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def whole_seconds(duration: Optional[float]) -> Optional[float]:
    """A live run's traffic lasts whole seconds (Locust's --run-time): a fraction would be recorded as run
    but not run, so it is refused."""
    if duration is not None and duration != int(duration):
        raise ScenarioError(f"--run-time {duration:g}s: a live run lasts whole seconds (Locust's -t); "
                            f"give e.g. {max(1, round(duration))}s")
    return duration


def run_time_option(default: Optional[float], what: str, examples: str = "90s, 2m, 1h30m or bare seconds") -> Any:
    """-t/--run-time as Locust spells it, with the older --duration as the same option."""
    return typer.Option(default, "--run-time", "-t", "--duration", parser=duration_option, metavar="DURATION",
                        help=f"{what}: {examples} (--duration is the same option).")


@app.command()
def load(
    scenario: Path,
    users: Optional[int] = typer.Option(None, "--users", "-u", min=1,
                                        help="Locust users (concurrent paying loops)."),
    spawn_rate: Optional[float] = typer.Option(None, "--spawn-rate", "-r", help="Users started per second."),
    duration: Optional[float] = run_time_option(None, "Traffic time (whole seconds)"),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Root of the run folders."),
    web: bool = typer.Option(False, help="Show Locust's web UI (on 127.0.0.1) instead of running headless."),
    processes: int = typer.Option(1, help="Locust worker processes on this machine (master/worker mode)."),
    max_requests: Optional[int] = typer.Option(None, help="Stop after this many paid-request attempts."),
    world: Optional[Path] = typer.Option(None, "--world", help="Attach to the running world this file describes "
                                         "(`x402bench up --json`): its chain, token, agents and parts."),
    service_url: Optional[list[str]] = typer.Option(None, "--service-url", help="Pay this priced URL (repeatable) "
                                                    "instead of starting services; terms come from its 402."),
    facilitator_url: Optional[str] = typer.Option(None, "--facilitator-url", help="The facilitator the started "
                                                  "services (or --target facilitator) use, instead of ours."),
    rpc_url: Optional[str] = typer.Option(None, "--rpc-url", help="A node already running: deploy and fund there "
                                          "instead of starting Anvil."),
    target: str = typer.Option("service", "--target", help="service: pay priced routes; facilitator: sign and "
                               "call POST /verify then /settle directly."),
    slo: Optional[list[str]] = slo_option(),
    as_json: bool = json_option(),
    junit_path: Optional[Path] = junit_option(),
) -> None:
    """Bring the world up (or attach to one), drive paying agents through it with Locust, write the run folder."""
    duration = whole_seconds(duration)
    s = with_slo(load_scenario(scenario), slo)
    from loadtest.runner import LoadOptions, run_load

    options = LoadOptions(users=users, spawn_rate=spawn_rate, duration_s=duration,
                          processes=processes, web=web, out_root=out_dir, max_requests=max_requests, target=target,
                          world_file=world, service_urls=tuple(service_url or ()), facilitator_url=facilitator_url,
                          rpc_url=rpc_url)
    shown = console(as_json)
    with Live(f"bringing up {s.name}…", console=shown, refresh_per_second=4, transient=False) as live:
        try:
            result = run_load(s, options, on_progress=lambda p: live.update(_progress_text(p)))
        except BaseException:  # the error's own line follows: end this one first
            live.update(f"bringing up {s.name}: stopped\n")
            raise
    print_result(result.summary, result.run_dir, shown)
    if result.web is not None:  # its address last, and the UI up until Ctrl-C
        shown.print(f"Locust web UI at {result.web.url} (the run is over: Ctrl-C to quit)", highlight=False)
        result.web.wait()
    finish(result.summary, result.run_dir, as_json, junit_path)


@app.command()
def demo(
    scenario: Path = typer.Argument(Path("scenarios/smoke.yaml")),
    duration: float = run_time_option(60.0, "Traffic time (whole seconds)"),
    users: Optional[int] = typer.Option(None, "--users", "-u", min=1, help="Locust users (default: the scenario's)."),
    spawn_rate: Optional[float] = typer.Option(None, "--spawn-rate", "-r", help="Users started per second."),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Root of the run folders."),
    slo: Optional[list[str]] = slo_option(),
    as_json: bool = json_option(),
    junit_path: Optional[Path] = junit_option(),
) -> None:
    """The main job on the default scenario: a one-minute load run, then the report's path."""
    load(scenario, users=users, spawn_rate=spawn_rate, duration=duration, out_dir=out_dir, web=False,
         processes=1, max_requests=None, world=None, service_url=None, facilitator_url=None, rpc_url=None,
         target="service", slo=slo, as_json=as_json, junit_path=junit_path)

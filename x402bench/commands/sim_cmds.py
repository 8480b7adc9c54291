"""`sim`, `sweep`, `capacity`, `calibrate`, `validate`: the simulated side of x402bench.

The sim package never touches the live world; `calibrate` and `validate` take a finished run
folder from `x402bench load` (--from-run / --live-run), or, without one, make a short live
run first: the CLI sits on top of both sides, so it may call the load runner itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from x402bench.cli import app
from x402bench.commands.load_cmds import run_time_option, whole_seconds
from x402bench.commands.run_output import console, finish, json_option, junit_option, slo_option, with_slo
from x402bench.scenario import load_scenario

out = Console()
err = Console(stderr=True)

def _live_run(scenario: Path, duration: float, users: int | None, out_root: Path) -> Path:
    """A short live load run of the scenario (SLOs not enforced): the folder calibrate/validate read."""
    from loadtest.runner import LoadOptions, run_load

    s = load_scenario(scenario)
    with out.status(f"live run of {s.name} for {duration:.0f} s…"):
        result = run_load(s, LoadOptions(duration_s=whole_seconds(duration), users=users, out_root=out_root))
    out.print(f"live run: {result.run_dir}", highlight=False, soft_wrap=True)
    return result.run_dir


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


def _calibration(path: Optional[Path]):  # noqa: ANN202
    from sim.calibration import CalibrationError, load_calibration

    try:
        cal = load_calibration(path)
    except CalibrationError as exc:
        raise _fail(str(exc)) from None
    if cal.machine_cores:
        err.print(f"note: {path} models one host of {cal.machine_cores} cores shared by the node, facilitator, "
                  "services and load generator (as measured); set machine_cores to null for hosts of their own",
                  highlight=False)
    return cal


class _SimProgress:
    """A rich progress bar on stderr for a sim that runs more than a few wall seconds (none when stderr is
    not a terminal): it appears only after SHOW_AFTER_S, so short runs print exactly what they did."""

    SHOW_AFTER_S = 3.0

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._t0 = self._clock()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "_SimProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, simulated_s: float, total_s: float) -> None:
        if total_s <= 0:  # the model is done: the bar goes before the files are written
            self.__exit__()
            self._bar = None
            self._t0 = float("inf")
            return
        if self._bar is None:
            if not err.is_terminal or not self._clock() - self._t0 >= self.SHOW_AFTER_S:
                return
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:,.0f} / {task.total:,.0f} simulated s"),
                                 TimeElapsedColumn(), console=err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("simulating", total=total_s)
        if simulated_s > total_s:  # the drain after arrivals stop
            self._bar.update(self._task, total=simulated_s, completed=simulated_s,
                             description="draining")
        else:
            self._bar.update(self._task, completed=simulated_s)


def _driver(value: str) -> str:
    if value not in ("open", "locust"):
        raise _fail(f"--driver must be 'open' or 'locust', not {value!r}")
    return value


@app.command()
def sim(
    scenario: Path,
    agents: Optional[int] = typer.Option(None, help="Number of agents (overrides agents.count)."),
    duration: Optional[float] = run_time_option(None, "Simulated time of arrivals (overrides run.duration_s)",
                                                "90s, 2m, 1h30m, 500ms or bare seconds"),
    users: Optional[int] = typer.Option(None, "--users", "-u", min=1, help="Locust users of --driver locust "
                                        "(overrides run.users; the open driver has none)."),
    spawn_rate: Optional[float] = typer.Option(None, "--spawn-rate", "-r", help="Users started per second, "
                                               "with --driver locust (overrides run.spawn_rate)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (overrides the scenario's)."),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Root of the run folders."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON from `x402bench calibrate`."),
    driver: str = typer.Option("open", help="open: agents on their own clocks; "
                               "locust: as the live harness drives them."),
    run_id: Optional[str] = typer.Option(None, help="Run folder name (default: derived from the inputs)."),
    refund_at_end: bool = typer.Option(False, help="batch-settlement: after the last claim and settle, refund "
                                       "each channel's unclaimed rest to its payer (one refund tx per channel)."),
    records: str = typer.Option("capped", help="Request records kept: all; capped (every paid one, failed ones "
                                "up to --records-cap, the rest counted: summary.json meta.records); none (as capped "
                                "with no failed one kept, no requests.csv rows); parquet (every request written to "
                                "requests.parquet as the run goes, requests.csv with the paid ones; needs pyarrow)."),
    records_cap: int = typer.Option(100_000, min=0, help="Failed requests kept as records with --records capped."),
    slo: Optional[list[str]] = slo_option(),
    as_json: bool = json_option(),
    junit_path: Optional[Path] = junit_option(),
) -> None:
    """Simulate the scenario with SimPy and write the same run folder as `load` (mode "sim")."""
    from sim.run import SimOptions, effective_scenario, offered_load, overload_warning, simulate
    from x402bench.commands.load_cmds import print_result

    if records not in ("all", "capped", "none", "parquet"):
        raise _fail(f"--records must be all, capped, none or parquet, not {records!r}")
    s = with_slo(load_scenario(scenario), slo)
    users_run = {k: v for k, v in (("users", users), ("spawn_rate", spawn_rate)) if v is not None}
    if users_run and driver != "locust":
        raise _fail(f"{', '.join('--' + k.replace('_', '-') for k in users_run)}: only the locust driver has "
                    "users (add --driver locust); the open driver's agents arrive on their own clocks")
    if users_run:
        s = s.with_overrides(run=users_run)
    shown = console(as_json)
    cal = _calibration(calibration)
    options = SimOptions(agents=agents, duration_s=duration, seed=seed, driver=_driver(driver),  # type: ignore[arg-type]
                         refund_at_end=refund_at_end, records=records, records_cap=records_cap)  # type: ignore[arg-type]
    try:
        warning = overload_warning(offered_load(effective_scenario(s, options), cal, options.driver))
    except (ValueError, ZeroDivisionError):
        warning = None
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    try:
        with _SimProgress() as progress:
            run_dir, summary, result = simulate(s, cal, options, out_dir, run_id, progress=progress)
    except ValueError as exc:
        raise _fail(f"{scenario}: {exc}") from None
    print_result(summary, run_dir, shown)
    p = result.perf
    kept = result.meta.get("records") or {}
    shown.print(f"simulated {result.meta['sim']['simulated_s']:.0f} s, {p['requests']:,} requests "
              f"({p['paid']:,} paid) in {p['wall_s']:.2f} s wall ({p['requests_per_wall_s']:,.0f} requests/wall-s); "
              f"agents broke: {result.meta['agents_broke']}; records kept: {kept.get('kept', 0):,} of "
              f"{kept.get('total', 0):,}", highlight=False)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    finish(summary, run_dir, as_json, junit_path)


@app.command()
def sweep(
    scenario: Path,
    grid: List[str] = typer.Option(..., help="KEY=V1,V2,... (repeatable). Keys: agents, rate, block_time_s "
                                   "(0 = automine), strategy, signer_keys, batch_size, batch_age_s, price, workers, "
                                   "gas_limit, gas_price_gwei, eth_usd, duration_s, users, seed, or a dotted path."),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Root of the result folders."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON from `x402bench calibrate`."),
    jobs: Optional[int] = typer.Option(None, help="Parallel processes (default: the number of cores)."),
    driver: str = typer.Option("open", help="open or locust (see `x402bench sim --help`)."),
    scheduler: Optional[str] = typer.Option(None, help="Run the points on an existing Dask cluster through its "
                                            "scheduler, e.g. tcp://127.0.0.1:8786 (needs x402bench\\[dask]); "
                                            "default: local processes (--jobs)."),
) -> None:
    """Simulate the scenario over a grid, in parallel; write a table and capacity-planning plots."""
    from contextlib import nullcontext

    from sim.executors import DaskExecutor, ExecutorUnavailable
    from sim.overrides import parse_grid
    from sim.run import SimOptions
    from sim.sweep import run_sweep

    s = load_scenario(scenario)
    cal = _calibration(calibration)
    parsed = parse_grid(grid)
    key = hashlib.sha256(json.dumps([s.model_dump(mode="json"), cal.model_dump(mode="json"), grid, driver],
                                    sort_keys=True, default=str).encode()).hexdigest()[:10]
    target = out_dir / s.name / f"sweep-{key}"
    options = SimOptions(driver=_driver(driver))  # type: ignore[arg-type]
    if scheduler and jobs:
        err.print("note: --jobs is ignored with --scheduler (each worker runs one point per thread)", highlight=False)
    try:
        with DaskExecutor(scheduler) if scheduler else nullcontext() as executor:
            result = run_sweep(s, parsed, target, cal, options, jobs, executor)
    except ExecutorUnavailable as exc:
        from rich.markup import escape

        raise _fail(escape(str(exc))) from None  # the install hint's "[dask]" is no markup
    except ValueError as exc:
        raise _fail(f"{scenario}: {exc}") from None
    where = f"on the Dask cluster at {result.scheduler}, {len(set(result.workers))} workers used" if scheduler \
        else "in local processes"
    table = Table(title=f"sweep of {s.name} ({len(result.rows)} points, {where})")
    columns = {"offered_rps": "offered/s", "throughput_rps": "paid/s", "request_p95_s": "req p95 s",
               "settlement_p95_s": "settle p95 s", "gas_per_payment": "gas/pay", "cost_per_payment_usd": "$/pay",
               "error_rate": "errors"}
    shown = [*parsed, *columns]
    for name in shown:
        table.add_column(columns.get(name, name), justify="right")
    for row in result.rows:
        table.add_row(*(_cell(row.get(name)) for name in shown))
    out.print(table)
    out.print(f"table: {target / 'sweep.csv'}", highlight=False, soft_wrap=True)
    for plot in result.plots:
        out.print(f"plot: {plot}", highlight=False, soft_wrap=True)
    for row in result.failed:
        point = ", ".join(f"{k}={row[k]}" for k in parsed)
        err.print(f"[red]point failed:[/red] {point}: {row['error']}", highlight=False)
    if result.failed:
        sys.exit(1)


@app.command()
def capacity(
    scenarios: List[Path] = typer.Argument(..., help="Scenario files with open arrivals (e.g. the ecosystem trio)."),
    peak_factor: float = typer.Option(3.0, help="Peak hour over the mean hour (an assumption; see sim/ecosystem.py)."),
    check_s: float = typer.Option(120.0, help="Simulated seconds of the peak to check each plan (0: no check)."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON from `x402bench calibrate`."),
    rpc_ms: float = typer.Option(0.0, help="Round trip to a remote node, added to the calibration's RPC waits."),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Where capacity.md and capacity.json go."),
) -> None:
    """What it takes to carry each scenario's volume: peak settlements/s, processes and keys per strategy,
    gas and USD per day."""
    from sim.ecosystem import capacity_report, report_markdown, with_rpc_latency

    cal = with_rpc_latency(_calibration(calibration), rpc_ms / 1000)
    reports, text = [], []
    for path in scenarios:
        s = load_scenario(path)
        try:
            report = capacity_report(s, cal, peak_factor=peak_factor, check_s=check_s)
        except ValueError as exc:
            raise _fail(f"{path}: {exc}") from None
        reports.append(report)
        text.append(report_markdown(report))
    target = out_dir / "capacity"
    target.mkdir(parents=True, exist_ok=True)
    (target / "capacity.md").write_text("\n".join(text))
    (target / "capacity.json").write_text(json.dumps(reports, indent=2, sort_keys=True) + "\n")
    out.print("\n".join(text), highlight=False, soft_wrap=True)
    out.print(f"written: {target / 'capacity.md'}", highlight=False, soft_wrap=True)


@app.command()
def calibrate(
    scenario: Path,
    from_run: Optional[Path] = typer.Option(None, help="A live run folder of this scenario (from `x402bench load`)."),
    out_file: Optional[Path] = typer.Option(None, "--out",
                                            help="Calibration JSON to write (default: next to the run)."),
    defaults: bool = typer.Option(False, "--defaults", help="Write the documented defaults instead (a template)."),
    duration: float = run_time_option(20.0, "The live run made when no --from-run is given"),
    users: Optional[int] = typer.Option(None, "--users", "-u", min=1,
                                        help="Locust users of that live run (default: the scenario's)."),
    live_out: Path = typer.Option(Path("results"), help="Where that live run's folder goes."),
) -> None:
    """Measure a calibration file (timings, CPU, gas) from a live run, for `sim --calibration`."""
    from sim.calibrate import calibrate_from_run_dir
    from sim.calibration import default_calibration
    from x402bench.results.rundir import RunDirError

    s = load_scenario(scenario)
    if defaults:
        cal = default_calibration().model_copy(update={"scenario": s.name})
        if out_file is None:
            out.print(cal.model_dump_json(indent=2, exclude_none=True), highlight=False, soft_wrap=True)
        else:
            cal.dump(out_file)
            out.print(f"calibration: {out_file}", highlight=False, soft_wrap=True)
        return
    if from_run is None:
        from_run = _live_run(scenario, duration, users, live_out)
    try:
        cal = calibrate_from_run_dir(from_run)
    except RunDirError as exc:
        raise _fail(str(exc)) from None
    if cal.scenario and cal.scenario != s.name:
        err.print(f"[yellow]warning:[/yellow] the run is of scenario {cal.scenario!r}, not {s.name!r}")
    target = out_file or from_run / "calibration.json"
    cal.dump(target)
    out.print(f"calibration: {target}", highlight=False, soft_wrap=True)


@app.command()
def validate(
    scenario: Path,
    live_run: Optional[Path] = typer.Option(None, help="A live run folder of this scenario (from `x402bench load`)."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON (default: measured from the live run)."),
    duration: Optional[float] = run_time_option(
        None, "The live run made when no --live-run is given (default: the scenario's run.duration_s)"),
    users: Optional[int] = typer.Option(None, "--users", "-u", min=1,
                                        help="Locust users of that live run (default: the scenario's)."),
    replicates: int = typer.Option(5, min=1, help="Sim seeds averaged against the live figures."),
    live_out: Path = typer.Option(Path("results"), help="Where that live run's folder goes."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here."),
) -> None:
    """Live and sim side by side on the same scenario: throughput and settlement p50/p95 with relative errors."""
    from sim.calibrate import calibrate_from_run_dir
    from sim.validate import TOLERANCE, load_summary, passed, rows_json, table_text, validate_against
    from x402bench.results.rundir import RunDirError

    s = load_scenario(scenario)
    if live_run is None:
        live_run = _live_run(scenario, duration or s.run.duration_s, users, live_out)
    try:
        live = load_summary(live_run)
        cal = _calibration(calibration) if calibration else calibrate_from_run_dir(live_run)
    except RunDirError as exc:
        raise _fail(str(exc)) from None
    rows, _ = validate_against(live, cal, replicates=replicates)
    out.print(table_text(rows), highlight=False)
    if json_out is not None:
        json_out.write_text(rows_json(rows))
    if not passed(rows):
        out.print(f"[red]validation failed:[/red] a judged metric is off by more than {TOLERANCE:.0%}")
        sys.exit(1)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)

"""Sweeps: one scenario over a grid of overrides, each point simulated in its own process.

Points run in local processes or on a Dask cluster's workers (sim/executors.py); either way a
point travels as plain data, the scenario and calibration as validated dicts, so a worker on
another machine needs the package but none of the caller's files. Every point uses the scenario's
seed (common random numbers: differences between points come from the parameters, not from luck,
and a cluster gives the rows a local run gives). A point whose process or worker died is a row
with `error` set and empty figures, so a long sweep keeps every other point.

The table (CSV and JSON) has one row per point with its offered load, throughput, latencies, gas
and cost; three plots show throughput and latency against offered load and cost per payment
against price.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.calibration import Calibration, default_calibration
from sim.executors import Executor, LocalExecutor
from sim.overrides import apply_overrides
from sim.run import SimOptions, build_sim_summary, run_sim
from x402bench.scenario import Scenario, validate_scenario

#: Columns of the sweep table after the grid's own keys.
COLUMNS = ("offered_rps", "throughput_rps", "paid", "error_rate", "request_p50_s", "request_p95_s", "request_p99_s",
           "settlement_p50_s", "settlement_p95_s", "settlement_p99_s", "gas_per_payment", "mean_batch_size",
           "mean_price_usd", "cost_per_payment_usd", "cost_fraction_of_price", "agents_broke",
           "facilitator_cpu_utilization", "slo_passed", "wall_s")


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    plots: list[Path]
    scheduler: str = "local"  # where the points ran: "local" or the Dask scheduler's address
    workers: list[str] = field(default_factory=list)  # per row: "local" or the Dask worker that ran it

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("error")]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product, in the order the keys were given."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def offered_rps(scenario: Scenario) -> float | None:
    """Requests per second the agents would send if every answer came at once (open arrivals)."""
    arrivals = scenario.agents.arrivals
    if arrivals.kind == "closed":
        return None
    return scenario.agents.count * arrivals.rate_per_agent_s


PointTask = tuple[dict[str, Any], dict[str, Any], dict[str, Any], SimOptions]


def point_tasks(scenario: Scenario, points: list[dict[str, Any]], cal: Calibration,
                options: SimOptions) -> list[PointTask]:
    """The points as plain data (JSON-mode dicts): what a worker on any machine can rebuild exactly."""
    base, calibration = scenario.model_dump(mode="json"), cal.model_dump(mode="json")
    return [(base, point, calibration, options) for point in points]


def run_point(task: PointTask) -> dict[str, Any]:
    """Simulate one grid point and reduce it to a table row (runs in a worker process or on a Dask worker)."""
    base_data, point, cal_data, options = task
    base = validate_scenario(base_data, source="<sweep task>")
    cal = Calibration.model_validate(cal_data)
    scenario = apply_overrides(base, point)
    result = run_sim(scenario, cal, options)
    summary = build_sim_summary(result)
    m = summary["metrics"]
    req, st = m["request_latency_s"], m["settlement_latency_s"]
    offered = offered_rps(result.scenario)
    if offered is None:
        offered = result.meta["sim"]["started_requests"] / result.scenario.run.duration_s
    return {
        **point,
        "offered_rps": offered,
        "throughput_rps": m["throughput_rps"],
        "paid": m["paid"],
        "error_rate": m["error_rate"],
        "request_p50_s": req["p50"], "request_p95_s": req["p95"], "request_p99_s": req["p99"],
        "settlement_p50_s": st["p50"], "settlement_p95_s": st["p95"], "settlement_p99_s": st["p99"],
        "gas_per_payment": m["gas_per_payment"],
        "mean_batch_size": m["gas"]["mean_batch_size"],
        "mean_price_usd": m["mean_price_usd"],
        "cost_per_payment_usd": m["cost_per_payment_usd"],
        "cost_fraction_of_price": m["cost_fraction_of_price"],
        "agents_broke": result.meta["agents_broke"],
        "facilitator_cpu_utilization": result.meta["sim"]["facilitator"]["cpu_utilization"],
        "slo_passed": summary["slo"]["passed"],
        "wall_s": result.perf["wall_s"],
    }


def run_sweep(scenario: Scenario, grid: dict[str, list[Any]], out_dir: Path, calibration: Calibration | None = None,
              options: SimOptions = SimOptions(), jobs: int | None = None,
              executor: Executor | None = None) -> SweepResult:
    """Run every grid point and write table and plots.

    Points run on `executor`, already entered (the caller owns its connection); without one, in
    at most `jobs` (default: the core count) local processes.
    """
    cal = calibration or default_calibration()
    points = grid_points(grid)
    for point in points:  # fail fast on a bad key or value, before any process starts
        apply_overrides(scenario, point)
    tasks = point_tasks(scenario, points, cal, options)
    if executor is None:
        with LocalExecutor(jobs) as local:
            outcomes = local.run(run_point, tasks)
        where = local.where
    else:
        outcomes = executor.run(run_point, tasks)
        where = executor.where
    rows = [o.value if o.error is None else {**point, **dict.fromkeys(COLUMNS), "error": o.error}
            for point, o in zip(points, outcomes)]
    workers = [o.worker for o in outcomes]
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    write_table(out_dir, rows, keys, where, workers)
    from sim.sweep_plots import render_sweep_plots

    plots = render_sweep_plots(out_dir, [r for r in rows if not r.get("error")], keys)
    return SweepResult(out_dir, rows, plots, where, workers)


def write_table(out_dir: Path, rows: list[dict[str, Any]], keys: list[str], scheduler: str = "local",
                workers: list[str] | None = None) -> None:
    """sweep.csv, and sweep.json whose rows hold no wall-clock figure, so equal inputs give equal rows.

    `scheduler` and `workers` (one per row) say where the rows were computed; they sit beside the
    rows, not in them, so a local and a cluster run of the same sweep have identical rows.
    """
    names = [*keys, *COLUMNS, "error"]
    with open(out_dir / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row.get(k)) for k in names})
    stable = [{k: _plain(v) for k, v in row.items() if k != "wall_s"} for row in rows]
    text = json.dumps({"grid_keys": keys, "rows": stable, "scheduler": scheduler,
                       "workers": workers or ["local"] * len(rows)}, indent=2, sort_keys=True)
    (out_dir / "sweep.json").write_text(text + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

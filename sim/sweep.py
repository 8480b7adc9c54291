"""Sweeps: one scenario over a grid of overrides, each point simulated in its own process.

Every point uses the scenario's seed (common random numbers: differences between points
come from the parameters, not from luck). The table (CSV and JSON) has one row per point
with its offered load, throughput, latencies, gas and cost; three plots show throughput
and latency against offered load and cost per payment against price.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.calibration import Calibration, default_calibration
from sim.overrides import apply_overrides
from sim.run import SimOptions, build_sim_summary, run_sim
from x402bench.scenario import Scenario

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


def run_point(args: tuple[Scenario, dict[str, Any], Calibration, SimOptions]) -> dict[str, Any]:
    """Simulate one grid point and reduce it to a table row (runs in a worker process)."""
    base, point, cal, options = args
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
              options: SimOptions = SimOptions(), jobs: int | None = None) -> SweepResult:
    """Run every grid point (in parallel, at most `jobs` or the core count at once) and write table and plots."""
    cal = calibration or default_calibration()
    points = grid_points(grid)
    for point in points:  # fail fast on a bad key or value, before any process starts
        apply_overrides(scenario, point)
    workers = max(1, min(len(points), jobs or os.cpu_count() or 1))
    tasks = [(scenario, point, cal, options) for point in points]
    if workers == 1:
        rows = [run_point(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(run_point, tasks))
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    write_table(out_dir, rows, keys)
    from sim.sweep_plots import render_sweep_plots

    plots = render_sweep_plots(out_dir, rows, keys)
    return SweepResult(out_dir, rows, plots)


def write_table(out_dir: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    names = [*keys, *COLUMNS]
    with open(out_dir / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row.get(k)) for k in names})
    stable = [{k: _plain(v) for k, v in row.items() if k != "wall_s"} for row in rows]
    text = json.dumps({"grid_keys": keys, "rows": stable}, indent=2, sort_keys=True)
    (out_dir / "sweep.json").write_text(text + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

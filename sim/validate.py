"""Validation: the sim earns trust by matching live runs of the same scenario.

`compare` puts a live and a simulated summary side by side with relative errors; the
target is within 10% on throughput and on p50/p95 settlement latency. `validate_against`
simulates what a live run folder ran (same scenario as run, Locust-like driver, its
calibration) and compares. Running the live side itself is the CLI's job (it may import
the load mode; this package never does): it hands over a finished run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.calibration import Calibration
from sim.run import SimOptions, build_sim_summary, run_sim
from x402bench.results.compare import dig
from x402bench.scenario import Scenario, validate_scenario

TOLERANCE = 0.10
#: (label, dotted key in summary.json, judged against the tolerance)
METRICS = (
    ("throughput (req/s)", "metrics.throughput_rps", True),
    ("settlement p50 (s)", "metrics.settlement_latency_s.p50", True),
    ("settlement p95 (s)", "metrics.settlement_latency_s.p95", True),
    ("request p50 (s)", "metrics.request_latency_s.p50", False),
    ("request p95 (s)", "metrics.request_latency_s.p95", False),
    ("gas per payment", "metrics.gas_per_payment", False),
)


@dataclass(frozen=True)
class Row:
    label: str
    live: float | None
    sim: float | None
    judged: bool

    @property
    def error(self) -> float | None:
        if self.live is None or self.sim is None or self.live == 0:
            return None
        return (self.sim - self.live) / self.live

    @property
    def passed(self) -> bool | None:
        if not self.judged:
            return None
        return self.error is not None and abs(self.error) <= TOLERANCE


def compare(live: dict[str, Any], sim: dict[str, Any]) -> list[Row]:
    return [Row(label, dig(live, key), dig(sim, key), judged) for label, key, judged in METRICS]


def passed(rows: list[Row]) -> bool:
    return all(r.passed for r in rows if r.judged)


def scenario_of(summary: dict[str, Any]) -> Scenario:
    """The scenario exactly as a run ran it (summary.json keeps its config)."""
    config = dig(summary, "scenario.config")
    if not isinstance(config, dict):
        raise ValueError("summary.json has no scenario.config to simulate")
    return validate_scenario(config, source="summary.json scenario.config")


def validate_against(live_summary: dict[str, Any], calibration: Calibration | None = None,
                     driver: str = "locust") -> tuple[list[Row], dict[str, Any]]:
    """Simulate the scenario a live run ran (as Locust drove it) and compare; returns rows and the sim summary."""
    scenario = scenario_of(live_summary)
    result = run_sim(scenario, calibration, SimOptions(driver=driver))  # type: ignore[arg-type]
    sim_summary = build_sim_summary(result)
    return compare(live_summary, sim_summary), sim_summary


def table_text(rows: list[Row]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    lines = [f"{'metric':<22}{'live':>12}{'sim':>12}{'error':>10}  verdict"]
    for r in rows:
        err = "n/a" if r.error is None else f"{r.error * 100:+.1f}%"
        verdict = "" if r.passed is None else ("ok" if r.passed else f"over {TOLERANCE:.0%}")
        lines.append(f"{r.label:<22}{f(r.live):>12}{f(r.sim):>12}{err:>10}  {verdict}")
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> str:
    return json.dumps([{"metric": r.label, "live": r.live, "sim": r.sim, "error": r.error, "passed": r.passed}
                       for r in rows], indent=2) + "\n"


def load_summary(path: Path | str) -> dict[str, Any]:
    from x402bench.results.rundir import load_summary as _load

    return _load(path)

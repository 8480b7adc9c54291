"""Validation: the sim earns trust by matching live runs of the same scenario.

`compare` puts a live and a simulated summary side by side with relative errors; the
target is within 10% on throughput and on p50/p95 settlement latency (a world paid by
batch-settlement channels: throughput, request p50/p95 and gas per payment, CHANNEL_METRICS). `validate_against`
simulates what a live run folder ran (same scenario as run, Locust-like driver, its
calibration) and compares. Running the live side itself is the CLI's job (it may import
the load mode; this package never does): it hands over a finished run folder.

The sim side is the mean of several seeds. With 2 s blocks a minute holds only 30 blocks,
and where in its block a payment lands moves one run's settlement p50 by ~5% (seed to seed,
measured on sim-under); one sim seed against one live run would judge that noise twice.
The mean over seeds is the model's own answer, and its spread (shown) is about the noise
the single live figure carries too.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.calibration import Calibration
from sim.run import SimOptions, build_sim_summary, run_sim
from x402bench.results.compare import dig
from x402bench.scenario import Scenario, validate_scenario

TOLERANCE = 0.10
REPLICATES = 5
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
    sim: float | None  # the mean over the sim's seeds
    judged: bool
    sim_sd: float | None = None  # spread over those seeds

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


#: A world paid by batch-settlement channels only: a request's latency is the bar (a voucher waits for no
#: block), its settlement is the services' claim cadence (shown, not judged), and the gas is the escrow's.
CHANNEL_METRICS = (
    ("throughput (req/s)", "metrics.throughput_rps", True),
    ("request p50 (s)", "metrics.request_latency_s.p50", True),
    ("request p95 (s)", "metrics.request_latency_s.p95", True),
    ("gas per payment", "channels.economics.gas_per_payment", True),
    ("settlement p50 (s)", "metrics.settlement_latency_s.p50", False),
    ("settlement p95 (s)", "metrics.settlement_latency_s.p95", False),
)


def metrics_for(scenario: Scenario) -> tuple[tuple[str, str, bool], ...]:
    """The rows a scenario is judged on: CHANNEL_METRICS when every route it pays is batch-settlement."""
    weights = scenario.mix_weights()
    paid = [s for s in scenario.services if weights.get(s.name, 0) > 0]
    if paid and all(s.scheme == "batch-settlement" for s in paid):
        return CHANNEL_METRICS
    return METRICS


def compare(live: dict[str, Any], sims: list[dict[str, Any]],
            metrics: tuple[tuple[str, str, bool], ...] = METRICS) -> list[Row]:
    """Each metric: the live figure against the mean of the simulated ones (and their spread)."""
    rows = []
    for label, key, judged in metrics:
        values = [v for v in (dig(sim, key) for sim in sims) if isinstance(v, (int, float))]
        mean = statistics.fmean(values) if values else None
        sd = statistics.stdev(values) if len(values) > 1 else None
        rows.append(Row(label, dig(live, key), mean, judged, sd))
    return rows


def passed(rows: list[Row]) -> bool:
    return all(r.passed for r in rows if r.judged)


def scenario_of(summary: dict[str, Any]) -> Scenario:
    """The scenario exactly as a run ran it (summary.json keeps its config)."""
    config = dig(summary, "scenario.config")
    if not isinstance(config, dict):
        raise ValueError("summary.json has no scenario.config to simulate")
    return validate_scenario(config, source="summary.json scenario.config")


def validate_against(live_summary: dict[str, Any], calibration: Calibration | None = None,
                     driver: str = "locust", replicates: int = REPLICATES) -> tuple[list[Row], list[dict[str, Any]]]:
    """Simulate the scenario a live run ran (as Locust drove it), seeds seed..seed+replicates-1, and compare.

    Returns the rows and the sim summaries, one per seed.
    """
    if replicates < 1:
        raise ValueError("validation needs at least one sim replicate")
    scenario = scenario_of(live_summary)
    sims = [build_sim_summary(run_sim(scenario, calibration,
                                      SimOptions(driver=driver, seed=scenario.seed + k)))  # type: ignore[arg-type]
            for k in range(replicates)]
    return compare(live_summary, sims, metrics_for(scenario)), sims


def table_text(rows: list[Row]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    lines = [f"{'metric':<22}{'live':>12}{'sim (mean)':>12}{'sim sd':>10}{'error':>10}  verdict"]
    for r in rows:
        err = "n/a" if r.error is None else f"{r.error * 100:+.1f}%"
        verdict = "" if r.passed is None else ("ok" if r.passed else f"over {TOLERANCE:.0%}")
        lines.append(f"{r.label:<22}{f(r.live):>12}{f(r.sim):>12}{f(r.sim_sd):>10}{err:>10}  {verdict}")
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> str:
    return json.dumps([{"metric": r.label, "live": r.live, "sim": r.sim, "sim_sd": r.sim_sd, "error": r.error,
                        "passed": r.passed}
                       for r in rows], indent=2) + "\n"


def load_summary(path: Path | str) -> dict[str, Any]:
    from x402bench.results.rundir import load_summary as _load

    return _load(path)

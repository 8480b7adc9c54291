"""SimPy model of the x402bench world: the same scenarios and result schema as the live load mode,
for populations and durations one machine cannot run live. Never imports the live world.

Public API:
    run_sim(scenario, calibration=None, options=SimOptions()) -> SimResult      (pure, no files)
    simulate(scenario, calibration, options, out_root, run_id) -> (run_dir, summary, SimResult)
    run_sweep(scenario, grid, out_dir, calibration, options, jobs) -> SweepResult
    capacity_report(scenario, calibration, peak_factor, strategies, check_s) -> dict
    Calibration, load_calibration, default_calibration, instant_calibration
    calibration_from_run(summary, requests, settlements) / calibrate_from_run_dir(run_dir) -> Calibration
    validate_against(live_summary, calibration, replicates=5) -> (rows, sim summaries, one per seed)

batch-settlement routes (deposits, vouchers, claims, settles) are modelled in sim/channels.py; a
SimResult then carries `channels` and `channel_txs` records for the results package.
"""

from sim.calibrate import calibrate_from_run_dir, calibration_from_run
from sim.calibration import Calibration, default_calibration, instant_calibration, load_calibration
from sim.ecosystem import capacity_report
from sim.run import SimOptions, SimResult, run_sim, simulate
from sim.sweep import run_sweep
from sim.validate import validate_against

__all__ = [
    "Calibration", "SimOptions", "SimResult", "calibrate_from_run_dir", "calibration_from_run", "capacity_report",
    "default_calibration", "instant_calibration", "load_calibration", "run_sim", "run_sweep", "simulate",
    "validate_against",
]

"""How fast and how lean the sim is: simulated requests per wall-second (every request, whatever its
outcome: paid, refused, or still queued when the run ends) and peak memory, at 1x and 10x the load the
world can settle, over one simulated hour (targets: >= 25,000 requests/wall-s on one core at both;
under 1 GiB).

Each point runs in its own process, so its peak RSS is its own. The world: base-like's cheap route,
our sync facilitator with 2 s blocks, Poisson agents offering `load` times the world's settle
capacity (sim.run.offered_load: here the facilitator's CPU, ~143 payments/s) whatever their number,
default calibration, default records (every paid request, failed ones capped). Two phases are
timed: the model itself (run_sim), then summary.json from its columns (what `x402bench sim` does
next, without the CSVs and plots).

    .venv/bin/python bench/bench_sim.py [--hours 1] [--load 1,10] [--agents 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RPS = 25_000
TARGET_MIB = 1024


def scenario(agents: int, hours: float, load: float):  # noqa: ANN201
    """The bench world offered `load` x its capacity."""
    sys.path.insert(0, str(ROOT))
    from sim.calibration import default_calibration
    from sim.run import offered_load
    from x402bench.scenario import load_scenario, validate_scenario

    base = load_scenario(ROOT / "scenarios" / "base-like.yaml")
    data = base.model_dump(mode="python")
    data["services"] = data["services"][:1]
    data["agents"].update(count=agents, mix={}, funding_usdc=1000)
    data["run"].update(duration_s=hours * 3600, warmup_s=60)
    capacity = offered_load(validate_scenario(data, source="bench"), default_calibration())["capacity_rps"]
    data["agents"]["arrivals"] = {**data["agents"]["arrivals"], "rate_per_agent_s": load * capacity / agents}
    return validate_scenario(data, source="bench"), capacity


def child(agents: int, hours: float, load: float) -> dict[str, float]:
    s, capacity = scenario(agents, hours, load)
    from sim.run import build_sim_summary, run_sim

    start = time.perf_counter()
    result = run_sim(s)
    sim_s = time.perf_counter() - start
    sim_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    summary = build_sim_summary(result)
    summary_s = time.perf_counter() - start
    total_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    requests = result.perf["requests"]
    return {"agents": agents, "load": load, "capacity_rps": capacity, "requests": requests, "paid": result.paid,
            "sim_s": sim_s, "requests_per_wall_s": requests / sim_s, "events_per_request": result.perf["events"]
            / max(1, requests), "sim_peak_mib": sim_rss, "summary_s": summary_s, "total_peak_mib": total_rss,
            "throughput_rps": summary["metrics"]["throughput_rps"],
            "kept": result.meta["records"]["kept"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--load", default="1,10", help="offered load as multiples of the world's settle capacity")
    parser.add_argument("--agents", default="100000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.hours, float(args.child[1]))))
        return
    rows = []
    for n in (int(a) for a in args.agents.split(",")):
        for load in (float(x) for x in args.load.split(",")):
            done = subprocess.run([sys.executable, __file__, "--child", str(n), str(load), "--hours", str(args.hours)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"sim benchmark: {args.hours:g} simulated hour(s), one core; requests = every request started, "
          "whatever its outcome\n")
    print(f"{'agents':>9} {'load':>5} {'offered/s':>9} {'requests':>11} {'paid':>9} {'sim wall s':>10} "
          f"{'requests/wall-s':>15} {'vs target':>9} {'events/req':>10} {'sim peak MiB':>12} {'+summary s':>10} "
          f"{'total peak MiB':>14}")
    for r in rows:
        print(f"{r['agents']:>9,} {r['load']:>4g}x {r['load'] * r['capacity_rps']:>9,.0f} {r['requests']:>11,} "
              f"{r['paid']:>9,} {r['sim_s']:>10.2f} {r['requests_per_wall_s']:>15,.0f} "
              f"{r['requests_per_wall_s'] / TARGET_RPS:>8.2f}x {r['events_per_request']:>10.2f} "
              f"{r['sim_peak_mib']:>12.0f} {r['summary_s']:>10.2f} {r['total_peak_mib']:>14.0f}")
    worst = min(rows, key=lambda r: r["requests_per_wall_s"])
    print(f"\nslowest: {worst['requests_per_wall_s']:,.0f} requests/wall-s at {worst['load']:g}x "
          f"({worst['requests_per_wall_s'] / TARGET_RPS:.2f} of the target); largest peak: "
          f"{max(r['total_peak_mib'] for r in rows) / TARGET_MIB:.2f} of 1 GiB")


if __name__ == "__main__":
    main()

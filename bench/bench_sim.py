"""How fast and how lean the sim is: simulated paid requests per wall-second and peak memory
for 1,000 / 10,000 / 100,000 agents over one simulated hour (targets: >= 25,000 paid/wall-s
on one core; 100,000 agents for an hour under 1 GiB).

Each size runs in its own process, so its peak RSS is its own. The world: base-like's
cheap route, our sync facilitator with 2 s blocks, Poisson agents offering 100 paid
requests/s in total whatever their number (so the sizes differ only in agents), default
calibration. Two phases are timed: the model itself (run_sim), then turning its columns
into record lists and summary.json (what `x402bench sim` does next).

    .venv/bin/python bench/bench_sim.py [--hours 1] [--rate 100] [--agents 1000,10000,100000]
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


def child(agents: int, hours: float, rate: float) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from sim.run import build_sim_summary, run_sim
    from x402bench.scenario import load_scenario

    base = load_scenario(ROOT / "scenarios" / "base-like.yaml")
    data = base.model_dump(mode="python")
    data["services"] = data["services"][:1]
    data["agents"].update(count=agents, mix={}, funding_usdc=1000,
                          arrivals={**data["agents"]["arrivals"], "rate_per_agent_s": rate / agents})
    data["run"].update(duration_s=hours * 3600, warmup_s=60)
    from x402bench.scenario import validate_scenario

    scenario = validate_scenario(data, source="bench")
    start = time.perf_counter()
    result = run_sim(scenario)
    sim_s = time.perf_counter() - start
    sim_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    summary = build_sim_summary(result)
    summary_s = time.perf_counter() - start
    total_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"agents": agents, "paid": result.paid, "sim_s": sim_s, "paid_per_wall_s": result.paid / sim_s,
            "events_per_paid": result.perf["events"] / max(1, result.paid), "sim_peak_mib": sim_rss,
            "summary_s": summary_s, "total_peak_mib": total_rss,
            "throughput_rps": summary["metrics"]["throughput_rps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100.0, help="paid requests/s offered in total")
    parser.add_argument("--agents", default="1000,10000,100000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.hours, args.rate)))
        return
    rows = []
    for n in (int(a) for a in args.agents.split(",")):
        done = subprocess.run([sys.executable, __file__, "--child", str(n), "--hours", str(args.hours),
                               "--rate", str(args.rate)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"sim benchmark: {args.hours:g} simulated hour(s), {args.rate:g} paid req/s offered, one core\n")
    print(f"{'agents':>8} {'paid':>9} {'sim wall s':>10} {'paid/wall-s':>12} {'vs target':>9} {'events/paid':>11} "
          f"{'sim peak MiB':>12} {'+summary s':>10} {'total peak MiB':>14}")
    for r in rows:
        print(f"{r['agents']:>8,} {r['paid']:>9,} {r['sim_s']:>10.2f} {r['paid_per_wall_s']:>12,.0f} "
              f"{r['paid_per_wall_s'] / TARGET_RPS:>8.2f}x {r['events_per_paid']:>11.2f} {r['sim_peak_mib']:>12.0f} "
              f"{r['summary_s']:>10.2f} {r['total_peak_mib']:>14.0f}")
    first, last = rows[0], rows[-1]
    print(f"\nspeed at {last['agents']:,} agents / at {first['agents']:,}: "
          f"{last['paid_per_wall_s'] / first['paid_per_wall_s']:.2f}x; "
          f"memory at {last['agents']:,} agents: {last['total_peak_mib'] / TARGET_MIB:.2f} of 1 GiB "
          f"(the model alone: {last['sim_peak_mib'] / TARGET_MIB:.2f})")


if __name__ == "__main__":
    main()

"""Settlement strategies side by side on the same scenario, measured in one run.

    python bench/bench_strategies.py [SCENARIO] [--users N] [--duration S] [--strategies sdk,sync,pipelined,batched]
                                     [--target service|facilitator]

Each strategy gets a fresh world and the same closed-loop agents (each user pays again as
soon as its last payment answered), so the figure is the capacity of the stack, not the
offered load. Prints paid req/s, p50/p95 settlement latency, gas per payment and CPU per
paid request, with ratios against the first strategy. `--target facilitator` leaves the priced
services out: the agents sign and call POST /verify then /settle, so the figure is settled
payments per second of the facilitator alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from loadtest.runner import LoadOptions, run_load
from x402bench.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="scenarios/base-like.yaml")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--strategies", default="sdk,sync,pipelined,batched")
    parser.add_argument("--target", default="service", choices=["service", "facilitator"])
    parser.add_argument("--route", default=None, help="Pay only this route (default: the scenario's cheapest), "
                        "so slow handlers do not hide the settlement path")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    rows = []
    out = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    route = args.route or min(base.services, key=base.price_atomic).name
    for strategy in args.strategies.split(","):
        scenario = base.with_overrides(
            facilitator={"strategy": strategy},
            agents={"count": max(args.users, base.agents.count), "arrivals": {"kind": "closed"}, "mix": {route: 1.0}},
            run={"warmup_s": min(5.0, args.duration / 4)},
            slo={},
        )
        result = run_load(scenario, LoadOptions(users=args.users, spawn_rate=float(args.users), duration_s=args.duration,
                                                out_root=out, target=args.target))
        m = result.summary["metrics"]
        rows.append((strategy, m["throughput_rps"], m["settlement_latency_s"]["p50"], m["settlement_latency_s"]["p95"],
                     m["gas_per_payment"], (m.get("cpu") or {}).get("total_ms_per_paid_request"),
                     sum(m["errors"].values()), sum(result.summary["reconciliation"][k] for k in ("served_unpaid", "paid_unserved", "double_settled"))))
        print(f"  {strategy}: done ({result.run_dir})", flush=True)
    chain = base.chain
    print(f"\n{base.name}: {chain.mining} mining{f', {chain.block_time_s} s blocks' if chain.block_time_s else ''}, "
          f"{args.users} closed-loop users paying {route}{' straight to the facilitator' if args.target == 'facilitator' else ''}, "
          f"{args.duration:.0f} s each")
    header = f"{'strategy':<10}{('settled/s' if args.target == 'facilitator' else 'paid req/s'):>12}{'settle p50':>12}{'settle p95':>12}{'gas/payment':>13}{'CPU ms/paid':>13}{'errors':>8}{'lost':>6}{'x rps':>8}"
    print(header)
    print("-" * len(header))
    first = rows[0][1] or None
    for name, rps, p50, p95, gas, cpu, errors, lost in rows:
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"{name:<10}{fmt(rps, '.1f'):>12}{fmt(p50, '.3f'):>12}{fmt(p95, '.3f'):>12}{fmt(gas, ',.0f'):>13}"
              f"{fmt(cpu, '.1f'):>13}{errors:>8}{lost:>6}{fmt(rps / first if first else None, '.2f'):>8}")


if __name__ == "__main__":
    main()

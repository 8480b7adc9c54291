"""Every fault kind against every settlement strategy, measured in one sitting.

    python bench/bench_faults.py [SCENARIO] [--strategies sdk,sync,pipelined,batched] [--duration S]

Runs the fault timeline of SCENARIO (default scenarios/faults.yaml: every kind, one after the other,
on 2 s blocks) once per strategy on a fresh world with the same agents, then prints, per fault kind
and strategy, the three loss counts (served_unpaid / paid_unserved / double_settled, during the
window and after it until the next fault) and the throughput dip during the window, then each run's
totals. Our strategies should show 0/0/0 everywhere; the `sdk` baseline is measured as it is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from loadtest.runner import LoadOptions, run_load
from x402bench.results.money import LOSS_KEYS
from x402bench.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="scenarios/faults.yaml")
    parser.add_argument("--strategies", default="sdk,sync,pipelined,batched")
    parser.add_argument("--duration", type=float, default=None, help="Override run.duration_s.")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    out = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    runs = {}
    for strategy in args.strategies.split(","):
        facilitator = {"strategy": strategy}
        if strategy == "batched":
            facilitator["batch"] = {"max_size": 20, "max_age_s": 0.5}
        scenario = base.with_overrides(facilitator=facilitator, slo={})
        result = run_load(scenario, LoadOptions(out_root=out, duration_s=args.duration))
        runs[strategy] = result.summary
        print(f"  {strategy}: done ({result.run_dir})", flush=True)
    kinds = [row["kind"] for row in next(iter(runs.values()))["faults"]]
    width = 24
    print(f"\n{base.name}: {len(kinds)} faults, {base.chain.mining} mining"
          f"{f', {base.chain.block_time_s} s blocks' if base.chain.block_time_s else ''}; "
          "each cell: served_unpaid/paid_unserved/double_settled during+after the window, throughput dip")
    print(f"{'fault':<30}" + "".join(f"{s:>{width}}" for s in runs))
    for i, kind in enumerate(kinds):
        cells = []
        for summary in runs.values():
            row = summary["faults"][i]
            losses = "/".join(str(row["during"][k] + row["after"][k]) for k in LOSS_KEYS)
            dip = row["throughput_dip"]
            cells.append(f"{losses} {'n/a' if dip is None else f'{dip:.0%}'}")
        print(f"{kind:<30}" + "".join(f"{c:>{width}}" for c in cells))
    print(f"{'run total (paid req/s)':<30}" + "".join(
        f"{'/'.join(str(s['reconciliation'][k]) for k in LOSS_KEYS) + ' (' + format(s['metrics']['throughput_rps'], '.1f') + ')':>{width}}"
        for s in runs.values()))


if __name__ == "__main__":
    main()

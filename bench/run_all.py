"""`make bench`: every benchmark script, one after the other, each printing its own side-by-side figures.

    python bench/run_all.py [--only NAME[,NAME...]] [--soak]

The long soak (10 minutes) runs only with --soak. Each script runs as its own process from the
repository root, so one that fails is reported and the rest still run; the exit status is 1 if any
failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: name -> argv after the interpreter, in the order they run (cheapest first).
BENCHES: dict[str, list[str]] = {
    "signing": ["bench/bench_signing.py"],
    "batch-gas": ["bench/bench_batch_gas.py"],
    "funding": ["bench/bench_funding.py"],
    "sim": ["bench/bench_sim.py"],
    "fault-proxy": ["bench/bench_fault_proxy.py"],
    "strategies": ["bench/bench_strategies.py"],
    "deferred": ["bench/bench_deferred.py"],
    "facilitators": ["bench/bench_strategies.py", "--target", "facilitator"],
    "faults": ["bench/bench_faults.py"],
}
SOAK = {"soak": ["bench/bench_soak.py", "--minutes", "10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated names from {', '.join([*BENCHES, *SOAK])}")
    parser.add_argument("--soak", action="store_true", help="also run the 10-minute soak")
    args = parser.parse_args()
    table = {**BENCHES, **(SOAK if args.soak or "soak" in args.only else {})}
    chosen = [n for n in args.only.split(",") if n] or list(table)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    failed = []
    for name in chosen:
        print(f"\n=== {name}: {' '.join(table[name])}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, *table[name]], cwd=ROOT)
        print(f"=== {name}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()

"""`make bench`: every benchmark script, one after the other, each printing its own side-by-side figures.

    python bench/run_all.py [--only NAME[,NAME...]] [--soak] [--quick] [--timeout-s S]

The long soak (10 minutes) runs only with --soak. Each script runs as its own process from the
repository root, so one that fails is reported and the rest still run; the exit status is 1 if any
failed. --quick gives each script its smallest useful settings (a few seconds per point, one strategy
where the full run has four): a check that every benchmark still runs, not figures to quote. Every
script is bounded by --timeout-s: past it, it gets SIGINT (so its worlds stop by their PIDs), then SIGKILL.
"""

from __future__ import annotations

import argparse
import signal
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
#: name -> arguments appended with --quick. Measured on 2 cores shared with other work: the whole quick set
#: in 8 minutes (faults 143 s: its timeline is 125 s; strategies 116 s: four fresh worlds).
QUICK: dict[str, list[str]] = {
    "signing": ["--seconds", "0.2", "--rounds", "1", "--agents", "10000"],
    "batch-gas": ["--sizes", "1,10,100"],
    "sim": ["--hours", "0.05", "--agents", "10000", "--load", "1"],
    "fault-proxy": ["--calls", "300", "--rounds", "1"],
    "strategies": ["--users", "40", "--duration", "5"],
    "deferred": ["--users", "40", "--duration", "5", "--strategies", "pipelined", "--per-channel", "100",
                 "--service-processes", "1", "--no-spent-whole"],
    "facilitators": ["--users", "40", "--duration", "5"],
    "faults": ["--strategies", "sync"],
    "soak": ["--minutes", "2", "--every", "30"],
}
#: Seconds one script may take before it is stopped: the full set's slowest (faults, 4 x 125 s of traffic
#: plus worlds) fits with room; --quick's in its own.
TIMEOUT_S, QUICK_TIMEOUT_S = 45 * 60.0, 6 * 60.0


def run_bounded(argv: list[str], timeout_s: float) -> int:
    """Run one script; past `timeout_s`, SIGINT (its `finally` blocks stop its worlds), then SIGKILL."""
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"=== timed out after {timeout_s:.0f} s: interrupting", flush=True)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 124
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated names from {', '.join([*BENCHES, *SOAK])}")
    parser.add_argument("--soak", action="store_true", help="also run the 10-minute soak")
    parser.add_argument("--quick", action="store_true", help="each script's smallest settings (see QUICK)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help=f"per script (default {TIMEOUT_S:.0f}, with --quick {QUICK_TIMEOUT_S:.0f})")
    args = parser.parse_args()
    if args.timeout_s is not None and args.timeout_s <= 0:
        parser.error(f"--timeout-s {args.timeout_s}: must be positive")
    timeout_s = args.timeout_s or (QUICK_TIMEOUT_S if args.quick else TIMEOUT_S)
    table = {**BENCHES, **(SOAK if args.soak or "soak" in args.only else {})}
    chosen = [n for n in args.only.split(",") if n] or list(table)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    failed = []
    for name in chosen:
        argv = [*table[name], *(QUICK.get(name, []) if args.quick else [])]
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
        started = time.monotonic()
        code = run_bounded(argv, timeout_s)
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()

"""A bounded soak: a long live run with a fault every minute, watching every process for leaks.

    python bench/bench_soak.py [--minutes 10] [--strategy sync] [--every 60] [--users 40]

The timeline cycles through the fault kinds, one per `--every` seconds, on 2 s blocks with agents
that retry. Every 10 s it samples each world process (Anvil, facilitator, services, the fault
proxies, Locust) for resident memory and open file descriptors, from /proc; at the end it prints
the samples, each process's slope (least squares, per minute) over the second half of the run,
when start-up growth is over, and the run's loss categories. A leak shows as a steady positive
slope; the losses must be 0. Bounded: the run stops after `--minutes`, and everything it started
is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from loadtest.runner import LoadOptions, run_load
from x402bench.results.money import LOSS_KEYS
from x402bench.scenario import load_scenario

#: One fault per slot, cycled; every window is short enough to leave the next slot clean.
CYCLE = [
    {"kind": "rpc_latency", "for_s": 6, "ms": 300, "jitter_ms": 100},
    {"kind": "facilitator_crash", "restart_after_s": 3},
    {"kind": "rpc_errors", "for_s": 6, "rate": 0.3},
    {"kind": "tx_dropped", "for_s": 4},
    {"kind": "service_crash", "restart_after_s": 3},
    {"kind": "chain_stall", "for_s": 5},
    {"kind": "facilitator_5xx_after_settle", "for_s": 5},
    {"kind": "reorg", "depth": 2},
    {"kind": "client_disconnect", "for_s": 5, "rate": 0.5},
    {"kind": "signer_out_of_gas", "for_s": 4},
]
MARKERS = {"anvil": "anvil-linux", "facilitator": "services.facilitator", "services": "services.resource",
           "rpc-proxy": "services.faults.rpc_proxy", "http-proxy": "services.faults.http_proxy",
           "locust": "loadtest/locustfile.py"}


def _processes(root: Path) -> dict[str, list[int]]:
    """This soak's own processes: every world process (and Locust) logs into the run folder under `root`,
    so other worlds on the machine are left out of the figures."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not os.readlink(entry / "fd" / "1").startswith(str(root)):
                continue
        except OSError:
            continue
        for role, marker in MARKERS.items():
            if marker in cmd and "bench_soak" not in cmd:
                found.setdefault(role, []).append(int(entry.name))
    return found


def _sample(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open fds) of one process, or None when it is gone."""
    try:
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return None if var == 0 else 60 * sum((t - mx) * (v - my) for t, v in points) / var


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--strategy", default="sync")
    parser.add_argument("--every", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=40)
    args = parser.parse_args()
    duration = args.minutes * 60
    faults = [{"at_s": at, **CYCLE[i % len(CYCLE)]}
              for i, at in enumerate(x * args.every + args.every / 2 for x in range(int(duration // args.every)))]
    base = load_scenario("scenarios/faults.yaml")
    scenario = base.with_overrides(facilitator={"strategy": args.strategy}, faults=faults, slo={},
                                   run={"duration_s": duration, "users": args.users, "spawn_rate": args.users})
    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    samples: dict[str, list[tuple[float, float, int]]] = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:
        while not stop.wait(10.0):
            now = time.monotonic() - t0
            for role, pids in _processes(root).items():
                taken = [s for s in (_sample(p) for p in pids) if s]
                if taken:
                    samples.setdefault(role, []).append((now, sum(r for r, _ in taken), sum(f for _, f in taken)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_load(scenario, LoadOptions(out_root=root))
    finally:
        stop.set()
        watcher.join()
    print(f"\nsoak: {args.minutes:g} min, strategy {args.strategy}, {len(faults)} faults "
          f"({', '.join(f['kind'] for f in faults)}); run folder {result.run_dir}")
    print(f"{'process':<13}{'t (s)':>7}{'RSS MiB':>10}{'fds':>6}")
    for role, rows in sorted(samples.items()):
        for t, rss, fds in rows:
            print(f"{role:<13}{t:>7.0f}{rss:>10.1f}{fds:>6}")
    print(f"\n{'process':<13}{'RSS MiB/min':>13}{'fds/min':>10}   (second half of the run)")
    for role, rows in sorted(samples.items()):
        half = [r for r in rows if r[0] >= rows[-1][0] / 2]
        rss = _slope([(t, v) for t, v, _ in half])
        fds = _slope([(t, float(f)) for t, _, f in half])
        print(f"{role:<13}{'n/a' if rss is None else f'{rss:+.2f}':>13}{'n/a' if fds is None else f'{fds:+.2f}':>10}")
    rec = result.summary["reconciliation"]
    print("\nlosses: " + ", ".join(f"{k} {rec[k]}" for k in (*LOSS_KEYS, "pending"))
          + f"; paid {rec['paid_responses']}, throughput {result.summary['metrics']['throughput_rps']:.1f} req/s")


if __name__ == "__main__":
    main()

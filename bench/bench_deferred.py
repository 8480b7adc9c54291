"""Exact settlement vs deferred settlement (the batch-settlement scheme), measured side by side in one run.

    python bench/bench_deferred.py [SCENARIO] [--users N] [--duration S] [--strategies sync,pipelined,batched]
                                   [--per-channel 100,1000] [--channel-strategy sync|sdk] [--service-processes 1,2]

Why: exact settles one EIP-3009 transfer per request, so the chain and the facilitator sit on every
request's path; batch-settlement pays each request with a voucher the service checks locally, and only
deposits, claims and settles touch the chain. The question is how much throughput and gas that buys on
the same machine, with the same agents.

Every point gets a fresh world of the same scenario (default scenarios/deferred.yaml: 2 s blocks, one
$0.001 route) and the same closed-loop agents (each user pays again as soon as its last payment
answered), one agent per user (so one channel per user), through the priced services. Exact points pay the route with scheme exact under each
facilitator strategy; batch-settlement points pay it with deposits worth `--per-channel` payments. After
each batch-settlement run the runner claims and settles every channel, so its gas is complete: gas per
payment = gasUsed of every escrow tx of the run (deposits, claims, settles: the run folder's channel_txs.csv) / paid
requests; USD per payment prices that gas, and the per-tx L1 fee, with the scenario's economics.
A timed run rarely spends every deposit whole (a 20 s run of 100 users reaches ~120 payments per
channel, so a 1,000-payment deposit is barely touched), so each depth is run once more with every
agent's budget one deposit: exactly N payments per channel, then the agent stops; its gas is the
scheme's gas at that depth.

Each batch-settlement point is run with every `--service-processes` count (Scenario.service_processes: that
many services processes on one address, the channels shared through SQLite), side by side: one Python
process uses at most one core, and at 100 users the single services process is the bottleneck. The exact
points keep the scenario's own count (deferred.yaml: one), and the spent-whole gas points the first count
(gas does not depend on it).

Prints the table, the ratio of batch-settlement (first --per-channel, each process count) to pipelined paid
req/s, where the CPU went (seconds per process over the run), and the gas per payment at the first --per-channel.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.runner import LoadOptions, run_load  # noqa: E402
from x402bench.results.rundir import load_channels  # noqa: E402
from x402bench.scenario import Scenario, load_scenario, validate_scenario  # noqa: E402


def variant(base: Scenario, replace: dict[str, Any], merge: dict[str, dict[str, Any]]) -> Scenario:
    """A copy of the scenario with whole sections replaced (None drops one) and fields of others merged."""
    data = base.model_dump(mode="python")
    for section, value in replace.items():
        if value is None:
            data.pop(section, None)
        else:
            data[section] = value
    for section, fields in merge.items():
        data[section] = {**(data.get(section) or {}), **fields}
    return validate_scenario(data, source=f"{base.name} (bench_deferred)")


def exact_scenario(base: Scenario, route: str, strategy: str, users: int, warmup: float) -> Scenario:
    """The route paid with scheme exact, the channel terms dropped."""
    services = [{**s.model_dump(mode="python"), "scheme": "exact"} for s in base.services if s.name == route]
    return variant(base, {"services": services, "channel": None, "slo": {}},
                   {"facilitator": {"strategy": strategy}, "run": {"warmup_s": warmup},
                    "agents": {"count": users, "arrivals": {"kind": "closed"}, "mix": {}}})


def channel_scenario(base: Scenario, route: str, strategy: str, users: int, warmup: float, per_channel: int,
                     service_processes: int | None = None) -> Scenario:
    """The route paid with batch-settlement, each deposit worth `per_channel` payments, served by
    `service_processes` processes (None: the scenario's own count)."""
    service = next(s for s in base.services if s.name == route)
    price = base.price_atomic(service)
    deposit_usdc = per_channel * price / 10**base.token.decimals
    funding = max(base.agents.funding_usdc, 2 * deposit_usdc)
    services = [{**service.model_dump(mode="python"), "scheme": "batch-settlement"}]
    channel = {**base.channel_terms.model_dump(mode="python"), "deposit_usdc": deposit_usdc}
    replace: dict[str, Any] = {"services": services, "channel": channel, "slo": {}}
    if service_processes is not None:
        replace["service_processes"] = service_processes
    return variant(base, replace,
                   {"facilitator": {"strategy": strategy}, "run": {"warmup_s": warmup},
                    "agents": {"count": users, "funding_usdc": funding,
                               "arrivals": {"kind": "closed"}, "mix": {}}})


def spent_whole(scenario: Scenario, per_channel: int) -> Scenario:
    """The same channel point with each agent's budget one deposit: every channel serves exactly
    `per_channel` payments, then its agent stops (and the run ends when all have), so its gas is the
    scheme's at that depth rather than whatever depth a timed run happened to reach."""
    deposit = scenario.channel_terms.deposit_usdc
    return variant(scenario, {}, {"agents": {"budget_usdc": deposit},
                                  "run": {"duration_s": max(scenario.run.duration_s, 900.0)}})


def machine_busy_s() -> float | None:
    """CPU seconds every process of the machine has used since boot (/proc/stat), to tell a shared machine."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class MachineSampler:
    """Every second, the machine's busy CPU seconds (/proc/stat) and every process's (/proc/PID/stat), so a point
    can say, for the WINDOW_S in which its own processes used most CPU (the load), how many cores were busy and
    which processes used them: on a shared machine others' processes take cores the benchmark's would have had."""

    WINDOW_S = 15

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self.names: dict[int, str] = {}
        self.parents: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MachineSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            procs: dict[int, float] = {}
            for entry in Path("/proc").glob("[0-9]*"):
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    pid = int(entry.name)
                    procs[pid] = (int(fields[11]) + int(fields[12])) / ticks
                    self.parents[pid] = int(fields[1])
                    if pid not in self.names:
                        cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
                        self.names[pid] = " ".join(a.rsplit("/", 1)[-1] for a in cmd[:4])[:60]
                except (OSError, IndexError, ValueError):
                    continue
            self.samples.append((time.monotonic(), machine_busy_s() or 0.0, procs))
            self._stop.wait(1.0)

    def ours(self, pid: int) -> bool:
        """Whether the process descends from this benchmark (the world's processes, Locust)."""
        me, seen = os.getpid(), 0
        while pid > 1 and seen < 64:
            if pid == me:
                return True
            pid, seen = self.parents.get(pid, 0), seen + 1
        return False

    def busiest(self) -> tuple[float | None, list[tuple[str, float]]]:
        """(busy cores, [(process, cores)] of its top users) over the load's WINDOW_S (OTHER: not this benchmark's)."""
        n = self.WINDOW_S
        if len(self.samples) <= n:
            return None, []
        def ours_used(i: int) -> float:  # the load window: where this benchmark's own processes used most CPU
            (_, _, a), (_, _, b) = self.samples[i], self.samples[i + n]
            return sum(sec - a[pid] for pid, sec in b.items() if pid in a and self.ours(pid))
        best = max(range(len(self.samples) - n), key=ours_used)
        (t0, b0, p0), (t1, b1, p1) = self.samples[best], self.samples[best + n]
        users = sorted(((f"{'' if self.ours(pid) else 'OTHER '}{self.names.get(pid, str(pid))} [{pid}]",
                         (sec - p0.get(pid, sec)) / (t1 - t0))
                        for pid, sec in p1.items() if pid in p0), key=lambda u: -u[1])
        return (b1 - b0) / (t1 - t0), [u for u in users[:8] if u[1] >= 0.02]


def point(label: str, scenario: Scenario, options: LoadOptions) -> dict[str, Any]:
    busy0, wall0 = machine_busy_s(), time.monotonic()
    with MachineSampler() as sampler:
        result = run_load(scenario, options)
    busy1, wall = machine_busy_s(), time.monotonic() - wall0
    summary = result.summary
    metrics = summary["metrics"]
    paid = summary["reconciliation"].get("paid_responses") or 0
    row: dict[str, Any] = {
        "label": label, "strategy": scenario.facilitator.strategy, "rps": metrics["throughput_rps"],
        "p50": metrics["request_latency_s"]["p50"], "p95": metrics["request_latency_s"]["p95"],
        "errors": sum(metrics["errors"].values()), "run_dir": result.run_dir,
        "cpu": ((metrics.get("cpu") or {}).get("ms_per_paid_request") or {}),
        "cpu_s": ((metrics.get("cpu") or {}).get("seconds") or {}),
        "procs": scenario.service_processes,
        # the machine's busy cores over the whole point (world start and stop included), ours and others'
        "machine_cores_busy": (busy1 - busy0) / wall if busy0 is not None and busy1 is not None else None,
        "busiest": sampler.busiest(),
    }
    # every services process ("services", "services.2", ...): CPU per paid request is their sum
    row["svc_cpu"] = sum(v for k, v in row["cpu"].items() if (k == "services" or k.startswith("services.")) and v) or None
    if scenario.batch_settlement_services:
        channels, txs = load_channels(result.run_dir)  # the run folder's books, from the chain's own events
        economics = summary["channels"]["economics"]
        paid = summary["channels"]["totals"]["vouchers"]
        row["gas"] = economics["gas_per_payment"]
        row["usd"] = economics["cost_per_payment_usd"]
        row["txs"] = len(txs)
        row["deposits"] = sum(c.deposits for c in channels)
        topups = row["deposits"] - len(channels)
        claims = [t for t in txs if t.kind == "claim"]
        settles = [t.gas_used for t in txs if t.kind == "settle"]
        deposit_gas = sum(t.gas_used for t in txs if t.kind == "deposit")
        row["parts"] = {
            "deposit": deposit_gas / row["deposits"] if row["deposits"] else None, "topups": topups,
            "claim_per_channel": sum(t.gas_used for t in claims) / sum(t.channels for t in claims) if claims else None,
            "claim_txs": len(claims), "settle": sum(settles) / len(settles) if settles else None,
            "channels": len(channels), "per_channel": paid / len(channels) if channels else None,
            "books_exact": summary["channels"]["reconciliation"].get("exact"),
        }
    else:
        row["gas"] = metrics["gas_per_payment"]
        row["usd"] = metrics["cost_per_payment_usd"]
        row["txs"] = None
        row["deposits"] = None
    row["paid"] = paid
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="scenarios/deferred.yaml")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--strategies", default="sync,pipelined,batched", help="exact strategies to compare")
    parser.add_argument("--per-channel", default="100,1000", help="payments one deposit is worth, per point")
    parser.add_argument("--channel-strategy", default="sync", help="facilitator strategy of the batch-settlement "
                        "points (any strategy: every one serves the scheme)")
    parser.add_argument("--route", default=None, help="the route to pay (default: the scenario's first)")
    parser.add_argument("--service-processes", default="1,2", help="services processes of each batch-settlement "
                        "point, one point per count (Scenario.service_processes)")
    parser.add_argument("--no-spent-whole", action="store_true", help="skip the spent-whole gas points")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    route = args.route or base.services[0].name
    warmup = min(5.0, args.duration / 4)
    out = Path(tempfile.mkdtemp(prefix="bench-deferred-"))
    options = LoadOptions(users=args.users, spawn_rate=float(args.users), duration_s=args.duration, out_root=out)
    rows = []
    for strategy in [s for s in args.strategies.split(",") if s]:
        rows.append(point(f"exact {strategy}", exact_scenario(base, route, strategy, args.users, warmup), options))
        print(f"  exact {strategy}: done ({rows[-1]['run_dir']})", flush=True)
    bs_strategy = args.channel_strategy
    per_channel = [int(n) for n in args.per_channel.split(",") if n]
    procs = [int(n) for n in args.service_processes.split(",") if n]
    for n in per_channel:
        for k in procs:
            rows.append(point(f"batch-settlement {n:,}/ch, {k} svc",
                              channel_scenario(base, route, bs_strategy, args.users, warmup, n, k), options))
            print(f"  batch-settlement {n}/channel ({bs_strategy}, {k} services processes): done "
                  f"({rows[-1]['run_dir']})", flush=True)
    whole = []
    for n in [] if args.no_spent_whole else per_channel:  # the gas at exactly n payments per channel: every deposit spent whole
        timed = channel_scenario(base, route, bs_strategy, args.users, warmup, n, procs[0])
        whole.append(point(f"{n:,}/channel, spent whole", spent_whole(timed, n),
                           LoadOptions(users=args.users, spawn_rate=float(args.users), out_root=out)))
        print(f"  batch-settlement {n}/channel spent whole: done ({whole[-1]['run_dir']})", flush=True)

    chain = base.chain
    print(f"\n{base.name}: {chain.mining} mining{f', {chain.block_time_s} s blocks' if chain.block_time_s else ''}, "
          f"{args.users} closed-loop users paying {route}, {args.duration:.0f} s per point; "
          f"gas {base.economics.gas_price_gwei} gwei, ETH ${base.economics.eth_usd:,.0f}, "
          f"L1 ${base.economics.l1_fee_usd_per_tx}/tx")
    header = (f"{'point':<30}{'facilitator':>12}{'svc procs':>10}{'paid req/s':>12}{'req p50 s':>11}{'req p95 s':>11}"
              f"{'gas/payment':>13}{'USD/payment':>13}{'paid':>8}{'txs':>6}{'errors':>8}{'svc CPU ms':>12}"
              f"{'fac CPU ms':>12}{'agt CPU ms':>12}")
    print(header)
    print("-" * len(header))
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        print(f"{r['label']:<30}{r['strategy']:>12}{r['procs']:>10}{fmt(r['rps'], '.1f'):>12}{fmt(r['p50'], '.3f'):>11}"
              f"{fmt(r['p95'], '.3f'):>11}{fmt(r['gas'], ',.0f'):>13}{fmt(r['usd'], '.7f'):>13}{r['paid']:>8}"
              f"{fmt(r['txs'], 'd'):>6}{r['errors']:>8}{fmt(r['svc_cpu'], '.2f'):>12}"
              f"{fmt(r['cpu'].get('facilitator'), '.2f'):>12}{fmt(r['cpu'].get('loadgen'), '.2f'):>12}")
    print("(svc / fac / agt CPU ms: CPU of the services (every services process together) / facilitator / Locust\n"
          " agents per paid request; one services process uses at most one core, so svc procs * 1000 / svc CPU ms\n"
          " bounds a batch-settlement point's paid req/s, and the machine's cores bound everything together)")
    print("\nCPU seconds per process over each run (where the cores went):")
    for r in rows:
        spent = ", ".join(f"{role} {sec:.1f}" for role, sec in sorted(r["cpu_s"].items()) if sec)
        print(f"  {r['label']:<30} {spent}; the machine's busy cores over the point: "
              f"{fmt(r['machine_cores_busy'], '.2f')} (every process, this run's and any other's)")
        cores, users = r["busiest"]
        print(f"  {'':<30} {MachineSampler.WINDOW_S} s of its load: {fmt(cores, '.2f')} cores busy; "
              + ", ".join(f"{name} {c:.2f}" for name, c in users))
    for r in rows:
        parts = r.get("parts")
        if not parts:
            continue
        print(f"{r['label']}: {parts['channels']} channels, {fmt(parts['per_channel'], '.0f')} paid per channel; gas of "
              f"a deposit {fmt(parts['deposit'], ',.0f')} ({parts['topups']} top-ups), a claim per channel {fmt(parts['claim_per_channel'], ',.0f')} "
              f"({parts['claim_txs']} claim txs), a settle {fmt(parts['settle'], ',.0f')}")
    print("\nGas at exactly N payments per channel (each agent's budget one deposit, the same users, "
          "the run's own channel books):")
    for r in whole:
        parts = r["parts"]
        print(f"  {r['label']:<28} {r['paid']:>7} paid over {parts['channels']} channels: "
              f"{fmt(r['gas'], ',.0f')} gas, ${fmt(r['usd'], '.7f')} per payment "
              f"(books exact: {parts['books_exact']})")
    pipelined = next((r for r in rows if r["label"] == "exact pipelined"), None)
    first_bs = next((r for r in rows if r["label"].startswith("batch-settlement")), None)
    if first_bs is not None:
        if pipelined is not None and pipelined["rps"]:
            print()
            for r in rows:
                if r["label"].startswith(f"batch-settlement {per_channel[0]:,}/ch"):
                    print(f"batch-settlement ({per_channel[0]:,}/channel, {r['procs']} services processes) / exact "
                          f"pipelined paid req/s = {r['rps'] / pipelined['rps']:.2f}x (target >= 3x on 2 cores)")
        measured = whole[0]["gas"] if whole else first_bs["gas"]
        how = "spent whole" if whole else "as run, deposits topped up (--no-spent-whole)"
        print(f"batch-settlement gas per payment at {per_channel[0]:,}/channel ({how}) = {fmt(measured, ',.0f')} "
              f"(target <= 1,000)")
        parts = first_bs.get("parts") or {}
        deposit = parts.get("deposit")
        if deposit and parts.get("claim_per_channel"):
            # what a channel that spends every deposit whole costs, from the gas measured above: one deposit and
            # one claim of that channel per deposit's worth of payments (the settle is shared by all channels)
            for n in per_channel:
                print(f"  projection, each deposit spent whole, one claim per deposit: "
                      f"({deposit:,.0f} + {parts['claim_per_channel']:,.0f}) / {n:,} = "
                      f"{(deposit + parts['claim_per_channel']) / n:,.0f} gas per payment at {n:,}/channel")


if __name__ == "__main__":
    main()

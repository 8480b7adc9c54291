"""What the RPC fault proxy costs per call when no fault is on: Anvil direct vs through the proxy.

Why: the proxy sits on the facilitator's RPC URL for a whole load run, faults on or off, so
its pass-through overhead is added to every settlement's RPC calls; it must stay small next
to a node's own answer time. Prints, all measured in this one run, side by side:
  - sequential: N eth_blockNumber calls one after another (keep-alive), per-call latency;
  - concurrent: N calls with C in flight, calls per second;
each direct vs through the proxy, the ratio and the added time per call, plus the proxy's own
CPU time per call (from /proc). Rounds alternate direct and proxied so a noisy neighbour hurts
both alike; the best round of each is shown. The client, the proxy and Anvil share this machine.

    .venv/bin/python bench/bench_fault_proxy.py [--calls 2000] [--concurrency 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from services.chain import Anvil  # noqa: E402
from services.faults.control import FaultProxyProcess  # noqa: E402

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).encode()
HEADERS = {"Content-Type": "application/json"}


async def run(url: str, calls: int, concurrency: int) -> float:
    """Seconds for `calls` eth_blockNumber calls with `concurrency` in flight, over one pooled session."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                reply = json.loads(await response.read())
                assert "result" in reply, reply

        for _ in range(min(calls, 50)):  # warm the pool
            await one()
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Anvil() as anvil, \
            FaultProxyProcess("rpc", anvil.url, log_path=Path(tmp) / "proxy.log") as proxy:
        assert proxy.pid is not None
        print(f"{args.calls} eth_blockNumber calls per round, best of {args.rounds} rounds; {os.cpu_count()} CPUs; "
              f"Anvil {anvil.url}, proxy {proxy.url} (pid {proxy.pid})\n")
        print(f"{'mode':<22}{'direct':>16}{'via proxy':>16}{'ratio':>8}{'added/call':>13}{'proxy CPU/call':>16}")
        for label, concurrency in (("sequential", 1), (f"{args.concurrency} concurrent", args.concurrency)):
            best = {"direct": float("inf"), "proxy": float("inf")}
            proxy_cpu = float("inf")
            for _ in range(args.rounds):
                best["direct"] = min(best["direct"], asyncio.run(run(anvil.url, args.calls, concurrency)))
                before = cpu_s(proxy.pid)
                elapsed = asyncio.run(run(proxy.url, args.calls, concurrency))
                proxy_cpu = min(proxy_cpu, cpu_s(proxy.pid) - before)
                best["proxy"] = min(best["proxy"], elapsed)
            direct, proxied = best["direct"], best["proxy"]
            added_us = (proxied - direct) / args.calls * 1e6
            cpu_us = proxy_cpu / (args.calls + min(args.calls, 50)) * 1e6
            if concurrency == 1:
                cells = (f"{direct / args.calls * 1e6:,.0f} us/call", f"{proxied / args.calls * 1e6:,.0f} us/call")
            else:
                cells = (f"{args.calls / direct:,.0f} calls/s", f"{args.calls / proxied:,.0f} calls/s")
            print(f"{label:<22}{cells[0]:>16}{cells[1]:>16}{proxied / direct:>7.2f}x{added_us:>10,.0f} us"
                  f"{cpu_us:>13,.0f} us")
        counters = proxy.control.state()["counters"]
        print(f"\nproxy counters: forwarded {counters['forwarded']}, upstream errors {counters['upstream_errors']}")


if __name__ == "__main__":
    main()

"""CPU seconds per process, read from /proc: how close a stack is to the machine's limit.

Sampled before Locust starts, as its traffic begins (by the locustfile, `at_traffic_start`) and after
the traffic, so start-up costs (imports, deployment, Locust's own start) stay out of "CPU per paid
request", and the world's CPU while it waited for Locust is its idle cost (`idle_cores`): a receipt
watcher polling, a node mining empty blocks. That cost is paid per second, not per request, so at a
light load it inflates CPU per paid request (measured: the facilitator 4.0 ms at 25 req/s, 2.8 ms at
240); a calibration takes it out (sim/calibrate.py).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process (None if it is gone or /proc is absent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def sample(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per role, summing the role's processes."""
    return {role: sum(cpu_seconds(p) or 0.0 for p in group) for role, group in pids.items()}


def usage(before: dict[str, float], after: dict[str, float], paid: int) -> dict[str, object]:
    """The metrics.cpu block: seconds per role, and milliseconds per paid request per role and in total."""
    spent = {role: max(0.0, after.get(role, 0.0) - before.get(role, 0.0)) for role in after}
    total = sum(spent.values())
    per_paid = {role: (s * 1000 / paid if paid else None) for role, s in spent.items()}
    return {"seconds": spent, "total_seconds": total, "ms_per_paid_request": per_paid,
            "total_ms_per_paid_request": (total * 1000 / paid) if paid else None}


def at_traffic_start(pids: dict[str, int], t: float) -> dict[str, Any]:
    """Called in the load generator as its traffic begins: the world's CPU per role, and its own."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"t": t, "world": {role: cpu_seconds(pid) or 0.0 for role, pid in pids.items() if pid},
            "loadgen": own.ru_utime + own.ru_stime}


def traffic_window(before: dict[str, float], t_before: float, start: dict[str, Any] | None,
                   after: dict[str, float], t_after: float) -> tuple[dict[str, float], dict[str, Any]]:
    """The CPU samples to count per paid request from (`start`'s when the load generator wrote them, else
    `before`), and the extra keys of metrics.cpu: idle_cores per role (CPU seconds per second between Locust's
    launch and its first request) and traffic_s (seconds the counted window lasted)."""
    if not start or not isinstance(start.get("world"), dict):
        return {**before, "loadgen": 0.0}, {"traffic_s": t_after - t_before}
    t_start = float(start["t"])
    world = {role: float(start["world"].get(role, before.get(role, 0.0))) for role in before}
    waited = t_start - t_before
    idle = ({role: max(0.0, world[role] - before[role]) / waited for role in before} if waited > 0.2 else {})
    return ({**world, "loadgen": float(start.get("loadgen", 0.0))},
            {"idle_cores": idle, "traffic_s": t_after - t_start})

"""CPU seconds per process, read from /proc: how close a stack is to the machine's limit.

Sampled before and after the steady traffic, so start-up costs (imports, deployment)
stay out of "CPU per paid request".
"""

from __future__ import annotations

import os
from pathlib import Path

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

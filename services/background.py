"""Stopping a process's background tasks (watchers, probes, cadences) the one way that leaves none running.

A cancelled asyncio task only ends once it has run to its next await and raised CancelledError there, so a
stop that cancels without awaiting can leave a task holding a socket or a lock past shutdown; one that awaits
without catching turns that normal end into an error. Every background loop of the world's servers stops here.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_tasks(*tasks: "asyncio.Task[Any] | None") -> None:
    """Cancel every task given (None: none running), then wait for each to end."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            pass

"""Where a sweep's points run: local processes, or the workers of an existing Dask cluster.

This is the one seam between a sweep and the machines it uses, so that adding a place to run
points never touches how a point is simulated or how the table is written. An executor supplies:

- ``where``: a short text naming where the points ran ("local", or the scheduler's address); the
  sweep writes it into sweep.json as ``scheduler`` so a table says which machines produced it.
- ``run(fn, tasks)``: call ``fn(task)`` once per task and return one :class:`Outcome` per task, in
  the tasks' order, whatever order they finished in (the table's rows follow the grid).
  ``fn`` must be a module-level function and every task plain picklable data: a worker on another
  machine has the package installed but none of the caller's files or objects, so a scenario travels
  as its validated dict, never as a path.
  A point whose process or worker died comes back as a failed Outcome (``error`` set): one point
  that exhausts a machine's memory must not cost the rest of a long sweep. An exception raised by
  ``fn`` itself is re-raised instead: it is the input's fault and would fail on any machine.
- use as a context manager: pools and connections are opened on entry and released on exit, and
  a place that cannot be used (no ``distributed`` installed, a scheduler that does not answer)
  raises :class:`ExecutorUnavailable` on entry, before any point is submitted.

Executors never seed anything: every point carries its own seed, so the same sweep gives the same
rows wherever it runs (common random numbers across points and across machines).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

#: What the CLI tells a user who asked for a cluster without the optional dependency.
INSTALL_HINT = "pip install 'x402bench[dask]' (or: pip install 'distributed>=2024.1')"


class ExecutorUnavailable(Exception):
    """The place asked for cannot run points; the message says why and what to do."""


@dataclass(frozen=True)
class Outcome:
    """One task's result, or why it has none."""

    value: Any = None
    error: str | None = None  # set when the process or worker running the task died
    worker: str = "local"  # where it ran: "local" or the Dask worker's address


class Executor(Protocol):
    where: str

    def __enter__(self) -> "Executor": ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Outcome]: ...


class LocalExecutor:
    """At most `jobs` (default: the core count) local processes, one task per process at a time."""

    where = "local"

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Outcome]:
        workers = max(1, min(len(tasks), self.jobs or os.cpu_count() or 1))
        if workers == 1:  # no pickling, no fork: a one-point sweep costs what one sim costs
            return [Outcome(fn(t)) for t in tasks]
        outcomes: list[Outcome | None] = [None] * len(tasks)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fn, t) for t in tasks]
            for i, future in enumerate(futures):
                try:
                    outcomes[i] = Outcome(future.result())
                except BrokenProcessPool:
                    pass  # retried below: a dead process fails every task still in its pool
        # A broken pool cannot say which task killed it, so each unfinished task runs once more in a
        # process of its own: the culprit fails alone and the others still give their rows.
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[i] = _isolated(fn, tasks[i])
        return [o for o in outcomes if o is not None]


def _isolated(fn: Callable[[Any], Any], task: Any) -> Outcome:
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return Outcome(pool.submit(fn, task).result())
        except BrokenProcessPool:
            return Outcome(error="its worker process died (killed, or out of memory?)")


async def _identity(address: str, timeout_s: float) -> dict[str, Any]:
    """Ask the address who it is, before any Client exists.

    A Client that fails to start (refused, or a port that answers with something else) still
    lingers until garbage collection and spends its own close timeout there, with a traceback;
    this probe leaves nothing behind and tells a scheduler from a worker's address.
    """
    from distributed.core import rpc

    remote = rpc(address, timeout=timeout_s)
    try:
        return await asyncio.wait_for(remote.identity(), timeout_s)
    finally:
        await remote.close_rpc()


def _on_worker(fn: Callable[[Any], Any], task: Any) -> tuple[str, Any]:
    """Runs on a Dask worker: the result, and which worker produced it (the table records it)."""
    from distributed import get_worker

    return get_worker().address, fn(task)


class DaskExecutor:
    """The workers of an existing Dask distributed cluster, reached through its scheduler's address.

    The cluster is the user's (`dask scheduler`, `dask worker ADDRESS` on each machine, with this
    package installed); nothing here starts or stops it. Run workers with `--nthreads 1`: a
    simulation holds the GIL, so threads of one worker process only take turns.
    """

    def __init__(self, address: str, connect_timeout_s: float = 3.0, no_workers_timeout_s: float = 30.0) -> None:
        self.where = address
        self.connect_timeout_s = connect_timeout_s
        self.no_workers_timeout_s = no_workers_timeout_s
        self._client: Any = None

    def __enter__(self) -> "DaskExecutor":
        try:
            import distributed
        except ImportError:
            raise ExecutorUnavailable(f"--scheduler needs Dask distributed, which is not installed: "
                                      f"{INSTALL_HINT}") from None
        try:
            identity = asyncio.run(_identity(self.where, self.connect_timeout_s))
        except Exception as exc:  # OSError, TimeoutError, ValueError (malformed), garbage from a non-Dask port
            raise ExecutorUnavailable(f"cannot reach a Dask scheduler at {self.where} within "
                                      f"{self.connect_timeout_s:g} s ({type(exc).__name__}: {exc})") from None
        if identity.get("type") != "Scheduler":
            raise ExecutorUnavailable(f"{self.where} answers, but as a Dask {identity.get('type')}, not a scheduler")
        try:
            self._client = distributed.Client(self.where, timeout=self.connect_timeout_s * 2, set_as_default=False)
        except Exception as exc:  # it answered the probe a moment ago: a version mismatch, or it just went away
            raise ExecutorUnavailable(f"the Dask scheduler at {self.where} refused a client "
                                      f"({type(exc).__name__}: {exc})") from None
        try:
            self._client.wait_for_workers(1, timeout=self.no_workers_timeout_s)
        except Exception as exc:
            self._close()
            if not isinstance(exc, TimeoutError):
                raise ExecutorUnavailable(f"lost the Dask scheduler at {self.where} while waiting for workers "
                                          f"({type(exc).__name__}: {exc})") from None
            raise ExecutorUnavailable(f"the Dask scheduler at {self.where} has no workers (waited "
                                      f"{self.no_workers_timeout_s:g} s); start some with "
                                      f"`dask worker {self.where} --nthreads 1`") from None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close(timeout=self.connect_timeout_s)
            self._client = None

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Outcome]:
        from distributed.scheduler import KilledWorker

        client = self._client
        batch = uuid.uuid4().hex[:8]
        # pure=False and our own keys: two equal tasks are two points, never one cached result.
        futures = [client.submit(_on_worker, fn, task, key=f"sweep-point-{batch}-{i}", pure=False)
                   for i, task in enumerate(tasks)]
        self._wait_while_workers(futures)
        outcomes = []
        try:
            for future in futures:
                if not future.done():  # no worker came back for it
                    outcomes.append(Outcome(error=f"no workers left at {self.where}", worker="unknown"))
                    continue
                try:
                    worker, value = future.result()
                    outcomes.append(Outcome(value, worker=worker))
                except KilledWorker as exc:  # it took down every worker the scheduler allowed it
                    outcomes.append(Outcome(error=f"its Dask worker died ({exc})", worker="unknown"))
                except Exception as exc:
                    if type(exc).__name__ in ("CancelledError", "FutureCancelledError"):
                        outcomes.append(Outcome(error=f"cancelled: lost contact with {self.where}", worker="unknown"))
                    else:
                        raise
        finally:
            client.cancel(futures)
        return outcomes

    def _wait_while_workers(self, futures: list[Any]) -> None:
        """Until every future is done, or the cluster has had no worker for `no_workers_timeout_s`.

        The scheduler keeps a task whose workers all left waiting for new ones, forever; a sweep
        rather reports those points as failed than hang.
        """
        idle_since: float | None = None
        checked = time.monotonic()
        while not all(f.done() for f in futures):
            time.sleep(0.1)  # polled: distributed.wait wants a default client, and this one is not
            if time.monotonic() - checked < 2:
                continue
            checked = time.monotonic()
            if self._client.scheduler_info(n_workers=-1).get("workers"):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.no_workers_timeout_s:
                return


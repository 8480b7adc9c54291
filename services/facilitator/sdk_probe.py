"""Where the official SDK facilitator spends its CPU, observed without changing what it does.

The SDK's facilitator is CPU-bound on two cores (measured: ~24 ms of CPU per payment),
and *when* it burns that CPU shapes its latency: part of it is the verification before
the send, a large part is web3's receipt polling every 0.1 s while the block is awaited.
A model that charges it all up front gets the throughput right and the tail wrong. So the
sdk engine runs every SDK call under `ThreadCpuProbe.measure` (CPU time of the worker
thread, which other threads' work cannot inflate) and counts the JSON-RPC calls by method;
`metrics()` hands the totals to the run's summary, where calibration splits them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from x402.mechanisms.evm import FacilitatorWeb3Signer


class ThreadCpuProbe:
    """Thread-safe totals: CPU seconds and calls per kind of work, RPC calls per method."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._rpc: Counter[str] = Counter()

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        start = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - start
            with self._lock:
                self._cpu[kind] += spent
                self._calls[kind] += 1

    def rpc_call(self, method: str) -> None:
        with self._lock:
            self._rpc[method] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"cpu_s": {k: round(v, 6) for k, v in self._cpu.items()},
                    "calls": dict(self._calls), "rpc_calls": dict(self._rpc)}


class ProbedWeb3Signer(FacilitatorWeb3Signer):
    """The SDK's signer, unchanged, with its receipt wait timed and its RPC calls counted."""

    def __init__(self, probe: ThreadCpuProbe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._probe = probe
        provider = self._w3.provider
        send = provider.make_request

        def counted(method: Any, params: Any) -> Any:
            probe.rpc_call(str(method))
            return send(method, params)

        provider.make_request = counted  # type: ignore[method-assign]

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        with self._probe.measure("receipt_wait"):
            return super().wait_for_transaction_receipt(tx_hash)

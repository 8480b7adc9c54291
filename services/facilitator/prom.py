"""The facilitator's figures in Prometheus text format, read from the very sources its JSON /metrics reads.

A collector (not prometheus_client's own Counter objects) so that there is one set of counters: each scrape
calls the engine's `metrics()`, the dict GET /metrics answers, and renders it; the two endpoints can then never
disagree. The registry is the app's own, never the process-global one, so two apps in one process (the tests)
keep their figures apart. Settlement latency, which the JSON has no figure for, comes from the ledger (accepted
to the block the facilitator observed, the summary's definition) and is read incrementally (LedgerTail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.core import SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.facilitator.ledger_tail import LedgerTail

PREFIX = "x402bench_facilitator"
#: Settlement latency buckets, seconds: from automine (milliseconds) to slow blocks under a backlog.
SETTLEMENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
#: /metrics `timing` sections (services.facilitator.loop_probe) and what each one times.
TIMING_HELP = {
    "loop_lag_s": "How late the event loop ran a due wake-up",
    "lane_wait_s": "Per send: waiting for the signer key's nonce lock",
    "lane_hold_s": "Per send: holding the signer key's nonce lock (sign, send, resume)",
    "lane_rpc_s": "Per send: the eth_sendRawTransaction round trip",
    "lane_handoff_s": "Per queued send: the lock free between a release and this send's start",
}


class SettlementLatency:
    """Accepted-to-included seconds of every settled ledger row, as histogram buckets, fed by a LedgerTail so
    that each scrape reads only the rows that were new or still open at the previous one."""

    def __init__(self, ledger_path: Path, buckets: tuple[float, ...] = SETTLEMENT_BUCKETS) -> None:
        self.tail = LedgerTail(ledger_path)
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.over = 0  # above the last bucket
        self.total_s = 0.0

    def read(self) -> None:
        for row in self.tail.read():
            if row.latency_s is not None:
                self._add(row.latency_s)

    def _add(self, seconds: float) -> None:
        self.total_s += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.over += 1

    def family(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            cumulative.append((repr(bound), running))
        cumulative.append(("+Inf", running + self.over))
        return HistogramMetricFamily(f"{PREFIX}_settlement_latency_seconds",
                                     "Settled payments: accepted by the facilitator to the block holding the transfer, "
                                     "as the facilitator observed it", buckets=cumulative, sum_value=self.total_s)


class FacilitatorCollector:
    """Renders one `engine.metrics()` snapshot (the JSON /metrics dict) per scrape, and the settlement latency."""

    def __init__(self, metrics: Callable[[], dict[str, Any]], ledger_path: Path | None) -> None:
        self._metrics = metrics
        self._latency = SettlementLatency(ledger_path) if ledger_path is not None else None

    def collect(self) -> Iterator[Metric]:
        m = self._metrics()
        states = m.get("ledger", {})
        yield _labelled(GaugeMetricFamily, f"{PREFIX}_payments", "Ledger rows (payments accepted for settlement) "
                        "per state", "state", states)
        yield _counter("settlements", "Payments settled on chain (ledger state settled)", states.get("settled", 0))
        yield _counter("settlement_failures", "Payments whose settlement failed (ledger state failed)",
                       states.get("failed", 0))
        yield _labelled(CounterMetricFamily, f"{PREFIX}_rejections", "Payments refused at /verify or /settle, per "
                        "reason", "reason", m.get("rejections", {}))
        yield _counter("rpc_calls", "JSON-RPC calls made to the node (a batch counts each call)", m.get("rpc_calls", 0))
        guard = m.get("guard", {})
        if guard:
            yield _counter("guard_resends", "Settlement txs the chain lost, sent again", guard.get("resends", 0))
            yield _counter("guard_reorgs", "Settlements undone by a reorg", guard.get("reorgs", 0))
        if "batches" in m:
            yield _counter("batches", "Batch settlement transactions sent (strategy batched)", m["batches"])
        for section, q in m.get("timing", {}).items():
            yield _summary(f"{PREFIX}_{section.removesuffix('_s')}_seconds", TIMING_HELP.get(section, section), q)
        if "batch_settlement" in m:
            yield from _channels(m["batch_settlement"])
        if "sdk_threads" in m:
            sdk = m["sdk_threads"]
            yield _labelled(CounterMetricFamily, f"{PREFIX}_sdk_cpu_seconds", "CPU of the SDK facilitator's threads, "
                            "per kind of work", "work", sdk.get("cpu_s", {}))
            yield _labelled(CounterMetricFamily, f"{PREFIX}_sdk_calls", "SDK facilitator calls per kind", "call",
                            sdk.get("calls", {}))
            yield _labelled(CounterMetricFamily, f"{PREFIX}_sdk_rpc_calls", "The SDK signer's JSON-RPC calls per "
                            "method", "method", sdk.get("rpc_calls", {}))
        if self._latency is not None:
            self._latency.read()
            yield self._latency.family()


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=value)


def _labelled(kind: type, name: str, help_text: str, label: str, values: dict[str, float]) -> Metric:
    family = kind(name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def _summary(name: str, help_text: str, q: dict[str, float]) -> SummaryMetricFamily:
    """A loop_probe Percentiles dict as a Prometheus summary: quantiles, count and sum (mean x count)."""
    count = int(q.get("count", 0))
    family = SummaryMetricFamily(name, help_text + " (seconds)", labels=[])
    family.add_metric([], count_value=count, sum_value=float(q.get("mean", 0.0)) * count)
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        family.add_sample(name, {"quantile": quantile}, float(q.get(key, 0.0)))
    return family


def _channels(bs: dict[str, Any]) -> Iterable[Metric]:
    """The batch-settlement scheme's counters (services.facilitator.channels.metrics)."""
    for key, value in sorted(bs.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield _counter(f"channel_{key}", f"Batch-settlement: {key.replace('_', ' ')}", value)
    yield _labelled(CounterMetricFamily, f"{PREFIX}_channel_refusals", "Batch-settlement payloads refused, per "
                    "reason", "reason", bs.get("refusals", {}))
    txs = GaugeMetricFamily(f"{PREFIX}_channel_txs", "Batch-settlement transactions per kind and state",
                            labels=["kind", "state"])
    for kind, states in sorted(bs.get("records", {}).items()):
        for state, n in sorted(states.items()):
            txs.add_metric([kind, state], n)
    yield txs
    guard = bs.get("guard", {})
    yield _counter("channel_guard_resends", "Batch-settlement txs the chain lost, sent again", guard.get("resends", 0))
    yield _counter("channel_guard_reorgs", "Batch-settlement txs undone by a reorg", guard.get("reorgs", 0))


def facilitator_registry(metrics: Callable[[], dict[str, Any]], ledger_path: Path | None) -> CollectorRegistry:
    """The app's own registry: one FacilitatorCollector, nothing from the process-global default registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FacilitatorCollector(metrics, ledger_path))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE_LATEST", "FacilitatorCollector", "SettlementLatency", "facilitator_registry", "render"]

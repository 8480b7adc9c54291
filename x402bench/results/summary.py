"""summary.json: one schema for live and simulated runs, so any two runs compare.

Deterministic by construction: the same scenario, records, reconciliation and meta give
byte-identical JSON (sorted keys, exact sums, no wall clock unless meta carries one).
Non-finite floats anywhere become null, so the file is always strict JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from importlib import metadata
from typing import Any, Literal, Sequence

from x402bench.results.channels import channels_section, settlement_latencies
from x402bench.results.metrics import RequestTally, compute_metrics, steady_window
from x402bench.results.money import LOSS_KEYS, MoneyEvent, fault_table
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, SettlementRecord
from x402bench.results.slo import evaluate_slo
from x402bench.scenario import Scenario

SCHEMA_VERSION = 1
#: Distributions whose versions a result depends on; looked up, never imported.
PACKAGES = ("x402bench", "x402", "web3", "eth-account", "locust", "simpy", "pydantic", "matplotlib")
#: meta keys consumed into fixed places; every other meta key is kept under summary["meta"].
_CONSUMED = {"run_id", "started_at", "seed", "cpu", "versions", "duration_s"}


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Python and installed package versions (absent packages are left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out.update(extra or {})
    return out


def _iso(value: Any) -> Any:
    """Epoch seconds -> ISO-8601 UTC; strings and None pass through."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return value


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, unknown objects -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [clean(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


def exact_reconciliation(rec: dict[str, Any]) -> bool:
    """Nothing served unpaid, paid unserved or settled twice, and the payee got exactly what was served."""
    return (all(rec.get(key) == 0 for key in LOSS_KEYS)
            and rec.get("payee_balance_delta") is not None
            and rec.get("payee_balance_delta") == rec.get("expected_payee_delta"))


def build_summary(scenario: Scenario, requests: Sequence[RequestRecord], settlements: Sequence[SettlementRecord],
                  reconciliation: dict[str, Any] | None, mode: Literal["load", "sim"],
                  meta: dict[str, Any] | None = None,
                  money_events: Sequence[MoneyEvent] = (), *,
                  channels: Sequence[ChannelRecord] = (), channel_txs: Sequence[ChannelTxRecord] = (),
                  channel_reconciliation: dict[str, Any] | None = None,
                  tally: RequestTally | None = None) -> dict[str, Any]:
    """The whole summary.json as a dict (see the README/report for the key tree). `money_events` place
    each loss in time, for the per-fault table (`faults`, one row per entry of the scenario's timeline);
    a run with batch-settlement channels passes their events there too (channels.channel_money_events).

    `channels`/`channel_txs`: the batch-settlement books, summarised under `channels` (keys:
    x402bench.results.channels.ChannelsSection; null without channels). `channel_reconciliation`: what
    the live books read from the chain (loadtest.reconcile.channel_books); the sim leaves it out and
    the records alone judge. The `reconciliation` block stays the exact scheme's books; with channels
    it gains `channels_exact`, and its `exact` requires both.

    `tally`: a run that did not keep every request record (a long sim) gives its request figures
    this way (x402bench.results.metrics.RequestTally, the same window rule); `requests` are then
    the records it kept, for the fault table."""
    if mode not in ("load", "sim"):
        raise ValueError(f"mode must be 'load' or 'sim', not {mode!r}")
    meta = dict(meta or {})
    voucher_latency: list[float] = []
    if channels:
        start, _ = steady_window(scenario, requests, meta)
        voucher_latency, _ = settlement_latencies(requests, channels, start)
    metrics = compute_metrics(scenario, requests, settlements, meta, voucher_latency, tally)
    rec = dict(reconciliation or {})
    if rec:
        rec["exact"] = exact_reconciliation(rec)
    section = None
    if channels or channel_txs:
        section = channels_section(scenario, requests, channels, channel_txs, metrics, channel_reconciliation)
        if rec:
            rec["channels_exact"] = section["reconciliation"]["exact"]
            rec["exact"] = rec["exact"] and rec["channels_exact"]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "scenario": {"name": scenario.name, "config": scenario.model_dump(mode="json")},
        "seed": meta.get("seed", scenario.seed),
        "versions": versions(meta.get("versions")),
        "mode": mode,
        "run_id": meta.get("run_id"),
        "started_at": _iso(meta.get("started_at")),
        "metrics": metrics,
        "reconciliation": rec,
        "channels": section,
        "faults": fault_table(scenario.faults, money_events, requests,
                              float(meta.get("duration_s") or scenario.run.duration_s)) if scenario.faults else [],
        "slo": evaluate_slo(scenario.slo, metrics, rec or None,
                            section["reconciliation"] if section else None),
        "meta": {k: v for k, v in meta.items() if k not in _CONSUMED},
    }
    return clean(summary)


def summary_json(summary: dict[str, Any]) -> str:
    """The canonical text of summary.json: sorted keys, strict JSON, trailing newline."""
    return json.dumps(clean(summary), sort_keys=True, indent=2, allow_nan=False) + "\n"

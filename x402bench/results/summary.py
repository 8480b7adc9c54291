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
from typing import Any, Literal, Sequence, TypedDict

from x402bench.results.channels import ChannelsSection, channels_section, settlement_latencies
from x402bench.results.metrics import RequestTally, compute_metrics, steady_window
from x402bench.results.money import LOSS_KEYS, MoneyEvent, fault_table
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, SettlementRecord
from x402bench.results.routes import RouteFigures, route_table
from x402bench.results.slo import evaluate_slo
from x402bench.results.timeseries import (Steadiness, TimeSeries, paid_per_bin, rebin_seconds, scenario_bin,
                                          steadiness, time_series)
from x402bench.scenario import Scenario

SCHEMA_VERSION = 1
#: Distributions whose versions a result depends on; looked up, never imported.
PACKAGES = ("x402bench", "x402", "web3", "eth-account", "locust", "simpy", "pydantic", "matplotlib")
#: meta keys consumed into fixed places; every other meta key is kept under summary["meta"].
_CONSUMED = {"run_id", "started_at", "seed", "cpu", "versions", "duration_s"}


class Summary(TypedDict):
    """Every top-level key of summary.json, the one place they are listed. Sections with a shape of
    their own are typed where they are computed; keys are only ever added, never renamed (the CLI,
    SLO checks, compare and validate read them by name)."""

    schema_version: int
    scenario: dict[str, Any]            # {name, config: the scenario as validated, defaults filled in}
    seed: int
    versions: dict[str, str]            # python and the PACKAGES that are installed
    mode: str                           # "load" | "sim"
    run_id: str | None
    started_at: str | None              # ISO-8601 UTC; null for a sim
    #: Every figure of the run by one window rule (x402bench.results.metrics; its module docstring defines
    #: each). `cost_breakdown_usd` (economics.CostSplit) splits `cost_per_payment_usd` into gas and L1 fee.
    metrics: dict[str, Any]
    reconciliation: dict[str, Any]      # client records, ledger and chain compared; {} when not reconciled
    channels: ChannelsSection | None    # batch-settlement books; null without channels
    faults: list[dict[str, Any]]        # one row per fault window (money.fault_table)
    slo: dict[str, Any]                 # {passed, checks: [...]} (slo.evaluate_slo)
    meta: dict[str, Any]                # what the runner knew: world, records kept, sim details
    #: Per-bin throughput and latency over the whole run (timeseries.TimeSeries).
    timeseries: TimeSeries
    #: Whether throughput held across the steady window (timeseries.Steadiness; `steadiness.steady`).
    steadiness: Steadiness
    #: Per route (the scenario's service name): counts, throughput, latency (routes.RouteFigures).
    routes: dict[str, RouteFigures]


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
    """The whole summary.json as a dict (its keys: `Summary` above). `money_events` place
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
    series, steady = _over_time(scenario, requests, (metrics["window"]["start_s"], metrics["window"]["end_s"]),
                                tally)
    kept = meta.get("records") or {}
    complete = tally is None and not (kept.get("kept") is not None and kept.get("total") is not None
                                      and kept["kept"] < kept["total"])
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
        "timeseries": series,
        "steadiness": steady,
        "routes": route_table(requests, (metrics["window"]["start_s"], metrics["window"]["end_s"]),
                              [s.name for s in scenario.services], complete),
    }
    return clean(summary)


def _over_time(scenario: Scenario, requests: Sequence[RequestRecord], window: tuple[float, float],
               tally: RequestTally | None) -> tuple[TimeSeries, Steadiness]:
    """The time series and the steadiness check on the same bins: from the records, or from the tally's
    per-second counts (bins then of whole seconds) when not every record was kept."""
    start, end = window
    last = max([r.t_end for r in requests if r.paid and math.isfinite(r.t_end)], default=end)
    width = scenario_bin(scenario.model_dump(mode="json"), max(end, last))
    if tally is None:
        until = max(end, last)
        counts = paid_per_bin([r.t_end for r in requests if r.paid], width, until)
    else:
        until = max(end, float(tally.paid_per_s.size))
        counts, width = rebin_seconds(tally.paid_per_s, width, until)
    faults = [f.window for f in scenario.faults]
    return time_series(requests, width, until, counts), steadiness(counts, width, (start, end), faults)


def summary_json(summary: dict[str, Any]) -> str:
    """The canonical text of summary.json: sorted keys, strict JSON, trailing newline."""
    return json.dumps(clean(summary), sort_keys=True, indent=2, allow_nan=False) + "\n"

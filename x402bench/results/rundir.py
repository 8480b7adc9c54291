"""The run folder results/<scenario>/<run-id>/: everything a run leaves behind, and the
ability to rebuild plots and report from those files alone (no live world, no sim)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from x402bench.results.records import (
    ChannelRecord,
    ChannelTxRecord,
    RequestRecord,
    SettlementRecord,
    read_csv,
    write_csv,
)
from x402bench.results.summary import summary_json

SUMMARY = "summary.json"
REQUESTS = "requests.csv"
SETTLEMENTS = "settlements.csv"
REPORT = "report.html"
SCENARIO = "scenario.yaml"
CHANNELS = "channels.csv"          # batch-settlement runs only
CHANNEL_TXS = "channel_txs.csv"    # batch-settlement runs only


class RunDirError(Exception):
    """A run folder that cannot be read; the message is meant for the user as is."""


def new_run_id() -> str:
    """UTC timestamp to the millisecond plus 6 random hex digits: sorts by start time, never collides."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(3)}"


def _window(summary: dict[str, Any]) -> tuple[float, float] | None:
    w = (summary.get("metrics") or {}).get("window") or {}
    if w.get("start_s") is None or w.get("end_s") is None:
        return None
    return float(w["start_s"]), float(w["end_s"])


def _render(run_dir: Path, summary: dict[str, Any], requests: Sequence[RequestRecord],
            settlements: Sequence[SettlementRecord], channels: Sequence[ChannelRecord] = (),
            channel_txs: Sequence[ChannelTxRecord] = ()) -> Path:
    from x402bench.results.plots import render_plots  # matplotlib: only when drawing, not to read a folder
    from x402bench.results.report import render_report

    faults = [(f["kind"], f["at_s"], f["end_s"]) for f in summary.get("faults") or []]
    decimals = int(((summary.get("scenario") or {}).get("config") or {}).get("token", {}).get("decimals", 6))
    comparison = (((summary.get("channels") or {}).get("economics") or {}).get("comparison")) or []
    plots = render_plots(run_dir, requests, settlements, _window(summary), faults, channels, channel_txs, decimals,
                         comparison, summary=summary)
    report = run_dir / REPORT
    report.write_text(render_report(summary, plots, channels), encoding="utf-8")
    return report


def write_run(out_root: Path | str, scenario_name: str, run_id: str, summary: dict[str, Any],
              requests: Sequence[RequestRecord], settlements: Sequence[SettlementRecord], *,
              channels: Sequence[ChannelRecord] = (), channel_txs: Sequence[ChannelTxRecord] = ()) -> Path:
    """Write summary.json, the CSVs, scenario.yaml, plots and report.html; returns the run folder.
    The folder may already exist (a runner keeps its world's logs there); our files are overwritten.
    channels.csv and channel_txs.csv are written only for a run with batch-settlement channels (a
    stale pair from an earlier write of the same folder is removed otherwise)."""
    run_dir = Path(out_root) / scenario_name / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    if summary.get("run_id") is None:
        summary = {**summary, "run_id": run_id}
    (run_dir / SUMMARY).write_text(summary_json(summary), encoding="utf-8")
    write_csv(run_dir / REQUESTS, requests, RequestRecord)
    write_csv(run_dir / SETTLEMENTS, settlements, SettlementRecord)
    if channels or channel_txs:
        write_csv(run_dir / CHANNELS, channels, ChannelRecord)
        write_csv(run_dir / CHANNEL_TXS, channel_txs, ChannelTxRecord)
    else:
        for name in (CHANNELS, CHANNEL_TXS):
            (run_dir / name).unlink(missing_ok=True)
    config = (summary.get("scenario") or {}).get("config")
    if config is not None:
        (run_dir / SCENARIO).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _render(run_dir, summary, requests, settlements, channels, channel_txs)
    return run_dir


def load_summary(run_dir: Path | str) -> dict[str, Any]:
    """summary.json of a run folder, or RunDirError saying what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    path = run_dir / SUMMARY
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run folder (no {SUMMARY})")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    if not isinstance(summary, dict) or "metrics" not in summary:
        raise RunDirError(f"{path}: not an x402bench summary (no 'metrics')")
    return summary


def load_records(run_dir: Path | str) -> tuple[list[RequestRecord], list[SettlementRecord]]:
    """requests.csv and settlements.csv of a run folder, or RunDirError (channels: load_channels)."""
    run_dir = Path(run_dir)
    out = []
    for name, kind in ((REQUESTS, RequestRecord), (SETTLEMENTS, SettlementRecord)):
        path = run_dir / name
        if not path.is_file():
            raise RunDirError(f"{run_dir}: {name} is missing")
        try:
            out.append(read_csv(path, kind))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RunDirError(f"{path}: unreadable ({exc})") from None
    return out[0], out[1]


def load_channels(run_dir: Path | str) -> tuple[list[ChannelRecord], list[ChannelTxRecord]]:
    """channels.csv and channel_txs.csv of a run folder; absent files mean no channels (an exact-only
    run, or a folder written before the scheme existed), unreadable ones RunDirError."""
    run_dir = Path(run_dir)
    out: list[list[Any]] = []
    for name, kind in ((CHANNELS, ChannelRecord), (CHANNEL_TXS, ChannelTxRecord)):
        path = run_dir / name
        if not path.is_file():
            out.append([])
            continue
        try:
            out.append(read_csv(path, kind))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RunDirError(f"{path}: unreadable ({exc})") from None
    return out[0], out[1]


def rebuild_report(run_dir: Path | str) -> Path:
    """Re-make the plots and report.html from summary.json and the CSVs; returns the report path."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    requests, settlements = load_records(run_dir)
    channels, channel_txs = load_channels(run_dir)
    return _render(run_dir, summary, requests, settlements, channels, channel_txs)

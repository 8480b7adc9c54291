"""What a payment is made of, kept out of Locust's request statistics so that those count each payment once.

Locust's own statistics (its Statistics tab, its RPS chart, /stats/requests) hold one entry per payment, named
by route (loadtest.paying fires it). The HTTP round trips inside a payment (the 402 challenge, each paid send,
or /verify and /settle when paying the facilitator directly) would count it again: each user's client reports
them to `EVENT` instead, a hook of ours, into `STATS`, a second RequestStats. The master (or the only process)
adds the settlement latency, accepted by the facilitator to the block holding the transfer, read from the
facilitator's ledger as payments close (the summary's definition). The web UI shows `STATS` in a tab of its own,
"x402", and GET /x402/round-trips answers the same rows as JSON. Workers send theirs to the master with each
report, as Locust does its own.
"""

from __future__ import annotations

from typing import Any

import gevent
from locust import events
from locust.event import EventHook
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import RequestStats, StatsEntry

from services.facilitator.ledger_tail import LedgerTail

STATS = RequestStats(use_response_times_cache=False)
EVENT = EventHook()
SETTLEMENT = ("SETTLE", "settlement: accepted to block (facilitator ledger)")
TAB = "x402"
#: The x402 tab's columns: key in each row, title in the UI.
COLUMNS = [("method", "Type"), ("name", "Name"), ("count", "# Requests"), ("failures", "# Fails"),
           ("median_ms", "Median (ms)"), ("p95_ms", "95%ile (ms)"), ("avg_ms", "Average (ms)"), ("max_ms", "Max (ms)")]
#: How often the master reads the ledger for newly closed payments.
LEDGER_EVERY_S = 1.0


def _log(request_type: str, name: str, response_time: float, response_length: int, exception: Any = None,
         **_: Any) -> None:
    STATS.log_request(request_type, name, response_time, response_length or 0)
    if exception is not None:
        STATS.log_error(request_type, name, exception)


EVENT.add_listener(_log)


def rows() -> list[dict[str, Any]]:
    """The x402 tab's table: one row per round-trip kind and the settlement latency, in milliseconds."""
    out = []
    for entry in sorted(STATS.entries.values(), key=lambda e: (e.method != SETTLEMENT[0], e.name, e.method)):
        if not entry.num_requests:
            continue
        out.append({"method": entry.method, "name": entry.name, "count": entry.num_requests,
                    "failures": entry.num_failures, "median_ms": entry.median_response_time,
                    "p95_ms": entry.get_response_time_percentile(0.95), "avg_ms": round(entry.avg_response_time, 1),
                    "max_ms": round(entry.max_response_time or 0, 1)})
    return out


def setup(environment: Any, ledger_path: str) -> None:
    """Wire the table into this process: workers report it, the master merges it, reads the ledger and shows
    it in the web UI. Called from the locustfile's init listener."""
    runner = environment.runner
    events.test_start.add_listener(lambda **_: STATS.reset_all())
    if isinstance(runner, WorkerRunner):
        events.report_to_master.add_listener(lambda client_id, data: data.__setitem__("x402", STATS.serialize_stats()))
        return
    if isinstance(runner, MasterRunner):
        events.worker_report.add_listener(_merge)
    if ledger_path:
        gevent.spawn(_follow, LedgerTail(ledger_path))
    if environment.web_ui is not None:
        _extend_web_ui(environment.web_ui)


def _merge(client_id: str, data: dict[str, Any]) -> None:
    for item in data.get("x402", ()):
        entry = StatsEntry.unserialize(item, STATS)
        STATS.get(entry.name, entry.method).extend(entry)


def _follow(tail: LedgerTail) -> None:
    while True:
        for row in tail.read():
            if row.latency_s is not None:
                STATS.log_request(SETTLEMENT[0], SETTLEMENT[1], row.latency_s * 1000, 0)
        gevent.sleep(LEDGER_EVERY_S)


def _extend_web_ui(web_ui: Any) -> None:
    """Locust's documented way to add a tab: template args naming it and its columns, and the table's rows
    added to each /stats/requests answer as `extended_stats`."""
    from flask import jsonify, request

    web_ui.template_args["extended_tabs"] = [{"title": "x402 round trips", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}]

    @web_ui.app.after_request
    def _with_round_trips(response):  # noqa: ANN001, ANN202
        if request.path == "/stats/requests" and response.is_json:
            body = response.get_json()
            body["extended_stats"] = [{"key": TAB, "data": rows()}]
            response.set_data(jsonify(body).get_data())
        return response

    @web_ui.app.route("/x402/round-trips")
    def _round_trips():  # noqa: ANN202
        return jsonify(rows())

"""Prometheus text on the facilitator (/metrics/prometheus) and the services (/_metrics/prometheus): one real
world (Anvil, our facilitator, the SDK-guarded services, each its own process on 127.0.0.1), a few real
payments and one refused, then both endpoints of each part scraped. The text must parse with
prometheus_client's own parser and say what the JSON says: the two read one source, so they never disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from payments import build_payment, encode, pay, reason, requirements
from services.stack import World
from x402bench.scenario import load_scenario

SMOKE = Path(__file__).resolve().parents[1] / "scenarios" / "smoke.yaml"
PAID = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with World(load_scenario(SMOKE), workdir=tmp_path_factory.mktemp("world-prometheus")) as w:
        required = requirements(w)
        for agent in range(PAID):
            assert pay(w, encode(build_payment(w, agent, required))).status_code == 200
        bad = pay(w, encode(build_payment(w, PAID, required, key=w.agents[PAID + 1].key_hex)))  # signed by another key
        assert bad.status_code == 402 and reason(bad)
        yield w


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a Prometheus text answer, by sample name and labels, parsed by prometheus_client."""
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.text):
        assert family.documentation, f"{family.name} has no HELP text"
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_facilitator_prometheus_agrees_with_its_json(world: World) -> None:
    base = world.info.facilitator_url
    before = httpx.get(base + "/metrics").json()
    prom = scrape(base + "/metrics/prometheus")
    after = httpx.get(base + "/metrics").json()
    assert before["ledger"] == after["ledger"] == {"settled": PAID}
    assert prom["x402bench_facilitator_settlements_total"][()] == PAID
    assert prom["x402bench_facilitator_payments"] == {(("state", "settled"),): PAID}
    assert {dict(k)["reason"]: v for k, v in prom["x402bench_facilitator_rejections_total"].items()} \
        == after["rejections"] and sum(after["rejections"].values()) == 1
    assert before["rpc_calls"] <= prom["x402bench_facilitator_rpc_calls_total"][()] <= after["rpc_calls"]
    lag = after["timing"]["loop_lag_s"]
    assert before["timing"]["loop_lag_s"]["count"] <= prom["x402bench_facilitator_loop_lag_seconds_count"][()] \
        <= lag["count"] and lag["count"] > 0
    # settlement latency, read from the ledger: one observation per settled payment, automine: well under 5 s
    assert prom["x402bench_facilitator_settlement_latency_seconds_count"][()] == PAID
    buckets = {dict(k)["le"]: v for k, v in prom["x402bench_facilitator_settlement_latency_seconds_bucket"].items()}
    assert buckets["+Inf"] == PAID and buckets["4.0"] == PAID
    assert 0 < prom["x402bench_facilitator_settlement_latency_seconds_sum"][()] < 5 * PAID
    again = scrape(base + "/metrics/prometheus")  # read incrementally: a second scrape counts nothing twice
    assert again["x402bench_facilitator_settlement_latency_seconds_count"][()] == PAID


def test_services_prometheus_agrees_with_their_json(world: World) -> None:
    base = "/".join(world.info.service_urls["weather"].split("/", 3)[:3])
    doc = httpx.get(base + "/_metrics").json()
    prom = scrape(base + "/_metrics/prometheus")
    weather = doc["routes"]["weather"]
    assert weather["responses"] == {"200": PAID, "402": 2}  # the offer fetched once, the payment refused once
    pid = str(doc["pid"])
    responses = {(dict(k)["route"], dict(k)["status"]): v for k, v in prom["x402bench_service_responses_total"].items()
                 if dict(k)["pid"] == pid}
    assert responses == {("weather", "200"): PAID, ("weather", "402"): 2}
    for phase in ("verify", "handler", "settle"):
        h = weather["phases_s"][phase]
        labels = (("pid", pid), ("route", "weather"))
        assert prom[f"x402bench_service_{phase}_seconds_count"][labels] == h["count"]
        assert prom[f"x402bench_service_{phase}_seconds_sum"][labels] == pytest.approx(h["sum_s"])
    assert weather["phases_s"]["settle"]["count"] == PAID and weather["phases_s"]["verify"]["count"] == PAID + 1
    assert json.loads(json.dumps(doc)) == httpx.get(base + "/_metrics").json()  # nothing more was answered since


def test_every_section_of_the_json_renders_and_parses() -> None:
    """Pure rendering, no world: the sections only some strategies have (batched, batch-settlement, sdk)."""
    from services.facilitator.prom import facilitator_registry, render

    m = {"ledger": {"settled": 3, "failed": 1}, "rejections": {"invalid_exact_evm_payload_signature": 2},
         "rpc_calls": 10, "guard": {"resends": 1, "reorgs": 0}, "batches": 2,
         "timing": {"loop_lag_s": {"count": 4, "mean": 0.5, "p50": 0.25, "p95": 1.0, "p99": 2.0}},
         "batch_settlement": {"claims": 2, "claimed_vouchers": 7, "refusals": {"x": 1},
                              "records": {"deposit": {"settled": 1}}, "guard": {"resends": 0, "reorgs": 0}},
         "sdk_threads": {"cpu_s": {"verify": 0.1}, "calls": {"verify": 1}, "rpc_calls": {"eth_call": 2}}}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(render(facilitator_registry(lambda: m, None)).decode())
               for s in f.samples}
    assert samples[("x402bench_facilitator_settlement_failures_total", ())] == 1
    assert samples[("x402bench_facilitator_batches_total", ())] == 2
    assert samples[("x402bench_facilitator_loop_lag_seconds_sum", ())] == 2.0
    assert samples[("x402bench_facilitator_loop_lag_seconds", (("quantile", "0.95"),))] == 1.0
    assert samples[("x402bench_facilitator_channel_claimed_vouchers_total", ())] == 7
    assert samples[("x402bench_facilitator_channel_txs", (("kind", "deposit"), ("state", "settled")))] == 1
    assert samples[("x402bench_facilitator_sdk_rpc_calls_total", (("method", "eth_call"),))] == 2


def test_the_ledger_tail_sees_each_payment_once_as_it_closes(tmp_path: Path) -> None:
    """Rows close out of order (pipelined, batched): each is read once, when it closes, never again."""
    import sqlite3

    from services.facilitator.ledger import Ledger
    from services.facilitator.ledger_tail import LedgerTail

    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()  # the real schema
    db = sqlite3.connect(path, isolation_level=None)
    for i, state in enumerate(["settled", "submitted", "settled", "failed"], start=1):
        db.execute("INSERT INTO payments (id, token, payer, nonce, payee, amount, valid_before, signature, "
                   "accepted_at, included_at, state) VALUES (?, 't', 'p', ?, 'q', 1, 9, 's', 100, ?, ?)",
                   (i, str(i), 100 + i if state == "settled" else None, state))
    tail = LedgerTail(path)
    assert [(c.state, c.latency_s) for c in tail.read()] == [("settled", 1), ("settled", 3), ("failed", None)]
    assert tail.read() == []
    db.execute("UPDATE payments SET state = 'settled', included_at = 102.5 WHERE id = 2")
    assert [(c.state, c.latency_s) for c in tail.read()] == [("settled", 2.5)]
    assert tail.read() == []

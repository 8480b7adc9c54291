"""Load runs of batch-settlement routes: the agents' channel payer through a real world, real Anvil, real HTTP.

One `x402bench load` of a scenario built from scenarios/deferred.yaml (a few agents, closed loop, a deposit
worth five requests so every agent tops up several times) against an Anvil this test starts itself
(`--rpc-url`), so the chain is still there to be read after the run has stopped its world. The run's
records must show every served request paid from a channel with a cumulative voucher that grows by the
price, deposits at the first request and at each top-up, and after the runner's claim and settle the
escrow's totalClaimed of each channel must equal what the records say was charged on it.

Then the payer's own resynchronisation, against a World of the same scenario: a payer whose idea of the
charged amount is out of step (behind, ahead, or forgotten altogether) gets the server's corrective 402 and
recovers on the resend, without being charged twice.

Facilitator strategy `sync`, as scenarios/deferred.yaml; its claim and settle cadence (every 10 s and 30 s)
stays on, so the services may claim during the run too: the chain, not the runner's last claim, is the judge.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from services.chain import Anvil
from services.escrow import channel_states, receiver_totals
from services.payer.channel import SCHEME, ChannelPayer
from services.payer.client import httpx_send
from services.stack import World
from services.token import balance_of
from clirun import x402bench
from x402bench.results.records import RequestRecord, read_csv
from x402bench.results.rundir import load_channels
from x402bench.scenario import validate_scenario

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1_000  # $0.001
DEPOSIT = 5 * PRICE  # channel.deposit_usdc 0.005: a top-up every five requests
AGENTS = 4


def scenario_data(name: str = "deferred-load") -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "scenarios" / "deferred.yaml").read_text())
    data.update(
        name=name, chain={"chain_id": 31337, "mining": "auto"},
        facilitator={"strategy": "sync", "signer_keys": 1},
        channel={**data["channel"], "deposit_usdc": DEPOSIT / 1e6},
        agents={"count": AGENTS, "funding_usdc": 5, "arrivals": {"kind": "closed"}, "cache_requirements": True},
        run={"duration_s": 6, "warmup_s": 1, "users": AGENTS, "spawn_rate": AGENTS}, slo={},
    )
    return data


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(chain_id=31337, log_path=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    try:
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture(scope="module")
def load_run(chain: Anvil, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RequestRecord]]:
    work = tmp_path_factory.mktemp("bs-load")
    scenario = work / "deferred-load.yaml"
    scenario.write_text(yaml.safe_dump(scenario_data()))
    done = x402bench("load", str(scenario), "--rpc-url", chain.url, "--out", str(work / "results"), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (work / "results").glob("deferred-load/*")
    return run_dir, read_csv(run_dir / "requests.csv", RequestRecord)


def test_every_served_request_is_a_voucher_growing_by_the_price(load_run: tuple[Path, list[RequestRecord]]) -> None:
    run_dir, records = load_run
    for name in ("summary.json", "requests.csv", "report.html"):
        assert (run_dir / name).is_file(), name
    served = [r for r in records if r.status == 200]
    assert len(served) > 10 * AGENTS, len(served)
    assert all(r.scheme == SCHEME and len(r.channel) == 66 and r.cumulative > 0 and r.amount == PRICE
               and r.nonce == "" for r in served)
    per_channel: dict[str, list[RequestRecord]] = collections.defaultdict(list)
    for r in sorted(served, key=lambda r: r.t_start):
        per_channel[r.channel].append(r)
    assert len(per_channel) == AGENTS  # one channel per agent, and one agent per channel
    assert all(len({r.payer for r in rs}) == 1 for rs in per_channel.values())
    for channel, rs in per_channel.items():
        steps = [b.cumulative - a.cumulative for a, b in zip(rs, rs[1:])]
        assert rs[0].cumulative == PRICE and set(steps) == {PRICE}, (channel, steps[:20])
        # the first request deposits, and so does every request that the deposits made so far do not cover
        deposits = [r for r in rs if r.tx_hash]
        assert rs[0].tx_hash and len(deposits) == -(-rs[-1].cumulative // DEPOSIT), (channel, len(deposits))
        assert len({r.tx_hash for r in deposits}) == len(deposits)
    refused = [r for r in records if r.status != 200]
    assert all(r.error for r in refused)
    summary = json.loads((run_dir / "summary.json").read_text())
    rec = summary["reconciliation"]
    # no exact payment ran: the exact reconciliation must neither miss vouchers nor count deposits or settles
    assert (rec["served_unpaid"], rec["paid_unserved"], rec["double_settled"], rec["settled"]) == (0, 0, 0, 0)
    assert rec["payee_balance_delta"] == rec["expected_payee_delta"] == 0
    assert summary["metrics"]["throughput_rps"] > 0


def test_the_chain_claimed_exactly_what_the_records_charged(load_run: tuple[Path, list[RequestRecord]],
                                                           chain: Anvil) -> None:
    run_dir, records = load_run
    charged: dict[str, int] = collections.Counter()
    for r in records:
        if r.status == 200:
            charged[r.channel] += r.amount
    states = channel_states(chain.url, sorted(charged))
    assert {s.channel_id: s.total_claimed for s in states} == dict(charged)
    deposited = collections.Counter()
    for r in records:
        if r.status == 200 and r.tx_hash:
            deposited[r.channel] += 1
    for state in states:  # each channel holds whole deposits, all its charges within them
        assert state.balance % DEPOSIT == 0 and state.balance // DEPOSIT == deposited[state.channel_id]
        assert 0 <= state.balance - state.total_claimed < DEPOSIT
    world = json.loads((run_dir / "world" / "world.json").read_text())
    total = sum(charged.values())
    assert receiver_totals(chain.url, world["pay_to"], world["token"]["address"]) == (total, total)
    meta = json.loads((run_dir / "summary.json").read_text())["meta"]
    (claims,) = meta["channel_claims"]  # the runner's claim took whatever the services' cadence had not yet
    assert "error" not in claims and 0 <= int(claims["claimed"]) <= total
    assert claims["settle_transaction"] or int(claims["claimed"]) == 0
    channels, txs = load_channels(run_dir)  # the run folder's channel books, from the chain's own events
    assert {c.channel: c.charged for c in channels} == dict(charged)
    assert {c.channel: c.claimed for c in channels} == dict(charged)
    assert [t for t in txs if t.kind == "claim"] and all(t.gas_used > 0 for t in txs)
    assert sum(1 for t in txs if t.kind == "deposit") == sum(deposited.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciliation"]["exact"] and summary["channels"]["reconciliation"]["exact"]


# --- the payer's resynchronisation through the corrective 402 ---------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with World(validate_scenario(scenario_data("deferred-resync")), workdir=tmp_path_factory.mktemp("world")) as w:
        yield w


def test_a_payer_out_of_step_recovers_through_the_corrective_402(world: World) -> None:
    info = world.info
    url = info.service_urls["metered"]
    key = world.agents[0].key_hex
    with httpx.Client(timeout=60) as http:
        send = httpx_send(http)
        payer = ChannelPayer(key, info.network)
        results = [payer.pay(send, "GET", url) for _ in range(3)]
        assert [(r.status, r.cumulative, r.corrected) for r in results] == [(200, n * PRICE, False) for n in (1, 2, 3)]
        assert results[0].deposit == DEPOSIT and results[0].transaction and not results[1].deposit
        channel = payer.channel_of("GET", url)
        assert channel is not None and results[0].channel == channel.channel_id

        channel.book.charged -= PRICE  # behind: as if the last answer had been lost after the server charged
        behind = payer.pay(send, "GET", url)
        assert (behind.status, behind.corrected, behind.cumulative, behind.round_trips) == (200, True, 4 * PRICE, 2)

        channel.book.charged += 3 * PRICE  # ahead: a voucher the server never charged would be skipped
        ahead = payer.pay(send, "GET", url)
        assert (ahead.status, ahead.corrected, ahead.cumulative) == (200, True, 5 * PRICE)

        # a payer that forgot everything (a restart): it would deposit and sign from zero; the server's corrective
        # 402 carries the voucher it holds, which recovers to this payer, so the payer adopts its charged amount
        fresh = ChannelPayer(key, info.network)
        again = fresh.pay(send, "GET", url)
        assert (again.status, again.corrected, again.cumulative) == (200, True, 6 * PRICE)
        assert again.deposit == DEPOSIT  # its balance was unknown: the resend still tops up, which is no harm

        done = http.post(url.rsplit("/", 1)[0] + "/_channels/claim_settle", timeout=120).json()
    state = channel_states(info.rpc_url, [channel.channel_id])[0]
    assert state.total_claimed == 6 * PRICE  # six requests served, each charged once
    assert state.balance == 2 * DEPOSIT
    assert done["claimed"] == str(6 * PRICE) and done["channels"] == {channel.channel_id: str(6 * PRICE)}
    assert balance_of(info.rpc_url, info.token["address"], info.payees[0]) > 0


def test_agents_deposit_only_what_their_budget_leaves_then_stop(tmp_path: Path) -> None:
    """budget_usdc 0.012 with deposits of 0.005: two whole deposits, a third cut to the 0.002 left, twelve
    requests served per agent, and then the agent stops (counted broke) instead of paying past its budget."""
    data = scenario_data("deferred-budget")
    data["agents"] = {**data["agents"], "count": 2, "budget_usdc": 0.012}
    data["run"] = {**data["run"], "duration_s": 4, "users": 2, "spawn_rate": 2}
    scenario = tmp_path / "budget.yaml"
    scenario.write_text(yaml.safe_dump(data))
    with Anvil(chain_id=31337, log_path=tmp_path / "anvil.log") as anvil:
        done = x402bench("load", str(scenario), "--rpc-url", anvil.url, "--out", str(tmp_path / "results"), timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (run_dir,) = (tmp_path / "results").glob("deferred-budget/*")
        records = read_csv(run_dir / "requests.csv", RequestRecord)
        per_channel: dict[str, list[RequestRecord]] = collections.defaultdict(list)
        for r in records:
            per_channel[r.channel].append(r)
        assert len(per_channel) == 2 and all(r.status == 200 for r in records), collections.Counter(r.error for r in records)
        assert all(len(rs) == 12 and sum(1 for r in rs if r.tx_hash) == 3 for rs in per_channel.values())
        states = channel_states(anvil.url, sorted(per_channel))
        assert [s.balance for s in states] == [12 * PRICE, 12 * PRICE]  # 5 + 5 + 2 thousandths, never more
        assert [s.total_claimed for s in states] == [12 * PRICE, 12 * PRICE]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["meta"]["agents_broke"] == 2


def test_a_deposit_the_payer_cannot_fund_is_refused_with_its_reason(world: World) -> None:
    from services.payer.agents import derive_agents

    info = world.info
    url = info.service_urls["metered"]
    (pauper,) = derive_agents(990_001, 1)  # a wallet the world never funded
    with httpx.Client(timeout=60) as http:
        payer = ChannelPayer(pauper.key_hex, info.network)
        refused = payer.pay(httpx_send(http), "GET", url)
    assert refused.status == 402 and refused.deposit == 0 and refused.amount == 0
    # the reason a Locust agent stops paying on (loadtest/paying.py BROKE_REASONS; not imported: Locust patches)
    assert refused.error == "invalid_batch_settlement_evm_insufficient_balance", refused.error
    assert payer.channel_of("GET", url).book.balance == 0
    assert channel_states(info.rpc_url, [refused.channel])[0].balance == 0

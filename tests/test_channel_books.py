"""The batch-settlement books and economics.

Pure logic first, on hand-built records: the economics model and its fit, the voucher classification
(served_unpaid, paid_unserved, pending), settlement latency to the covering claim, exposure and
locked capital. Then one live world (real Anvil, real HTTP, facilitator strategy `sdk`, the official
SDK client paying a batch-settlement route): the books read from the chain are exact after the
services' claim+settle, and stop being exact when a voucher was served that no claim covers; the
run folder holds channels.csv, channel_txs.csv and a report with its Channels section.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eth_account import Account

from x402bench.results import economics as econ
from x402bench.results.channels import (
    channel_money_events,
    channel_reconciliation,
    exposure_series,
    settlement_latencies,
)
from x402bench.results.money import counts
from x402bench.results.records import ChannelRecord, ChannelTxRecord, RequestRecord, format_claims, read_csv
from x402bench.results.rundir import load_channels, rebuild_report, write_run
from x402bench.results.summary import build_summary, exact_reconciliation, summary_json
from x402bench.scenario import load_scenario, validate_scenario

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_scenario(ROOT / "scenarios" / "smoke.yaml")
PRICE = 1_000
BS = "batch-settlement"


def voucher(channel: str, n: int, t: float, agent: int = 0) -> RequestRecord:
    return RequestRecord(t_start=t, t_end=t + 0.05, route="metered", agent=agent, status=200, amount=PRICE,
                         payer=f"0x{agent:040x}", scheme=BS, channel=channel, cumulative=n * PRICE)


def cid(i: int) -> str:
    return f"0x{i:064x}"


# ---- the model ------------------------------------------------------------------------------------

def test_reference_figures_and_the_model() -> None:
    assert econ.exact_gas_per_payment(1) == pytest.approx(85_014)
    assert econ.exact_gas_per_payment(50) == pytest.approx(48_185)
    assert econ.exact_gas_per_payment(1000) < econ.exact_gas_per_payment(50)
    gas = econ.REFERENCE_CHANNEL_GAS
    assert gas.claim_tx(1) == 72_404 and gas.claim_tx(3) == 72_404 + 2 * 17_900
    assert gas.deposits(2) == 139_278 + 118_479
    # One channel, 100 payments, one claim and one settle: every tx's gas shared by 100.
    usage = econ.ChannelUsage(payments_per_channel=100, payments_per_claim=100, payments_per_settle=100)
    assert econ.channel_gas_per_payment(usage) == pytest.approx((139_278 + 72_404 + 57_285) / 100)
    assert econ.channel_txs_per_payment(usage) == pytest.approx(3 / 100)
    # More payments per channel and longer claim intervals cost less per payment.
    longer = econ.ChannelUsage(1000, 100, 1000, channels_per_claim=50)
    assert econ.channel_gas_per_payment(longer) < econ.channel_gas_per_payment(usage) < econ.exact_gas_per_payment(50)


def test_fit_on_a_runs_own_txs() -> None:
    txs = [ChannelTxRecord("deposit", "0xd1", 1.0, 140_000), ChannelTxRecord("deposit", "0xd2", 1.0, 140_000),
           ChannelTxRecord("claim", "0xc1", 5.0, 70_000, channels=1), ChannelTxRecord("claim", "0xc2", 9.0, 110_000, channels=3),
           ChannelTxRecord("settle", "0xs", 10.0, 60_000, channels=0)]
    fit = econ.fit_channel_gas(txs, new_channels=2)
    assert (fit.deposit_new, fit.claim_base, fit.claim_per_extra, fit.settle) == pytest.approx((140_000, 70_000, 20_000, 60_000))
    only_one_size = econ.fit_channel_gas([ChannelTxRecord("claim", "0xc", 1.0, 80_000, channels=1)])
    assert only_one_size.claim_per_extra == econ.REFERENCE_CHANNEL_GAS.claim_per_extra and only_one_size.claim_base == 80_000
    assert econ.fit_channel_gas([]) == econ.REFERENCE_CHANNEL_GAS


# ---- classification, latency, exposure -------------------------------------------------------------

def books(claimed_a: int = 10 * PRICE, claimed_b: int = 4 * PRICE) -> tuple[list[RequestRecord], list[ChannelRecord],
                                                                           list[ChannelTxRecord]]:
    requests = [voucher(cid(1), n, float(n)) for n in range(1, 11)] + [voucher(cid(2), n, n + 0.5, 1) for n in range(1, 5)]
    requests.append(voucher(cid(1), 3, 3.0))  # a retry of the same voucher: one payment
    requests.append(RequestRecord(t_start=0.0, t_end=0.1, route="metered", agent=0, status=402, scheme=BS, channel=cid(1)))
    channels = [ChannelRecord(cid(1), "0xa", "0xb", deposited=20 * PRICE, charged=10 * PRICE, claimed=claimed_a, vouchers=10,
                              deposits=1, t_deposit=1.0, claims=format_claims([(6.0, 5 * PRICE), (12.0, claimed_a)])),
                ChannelRecord(cid(2), "0xc", "0xb", deposited=20 * PRICE, charged=4 * PRICE, claimed=claimed_b, vouchers=4,
                              deposits=1, t_deposit=1.5, claims=format_claims([(12.0, claimed_b)]))]
    txs = [ChannelTxRecord("deposit", "0xd1", 1.0, 139_278, amount=20 * PRICE),
           ChannelTxRecord("deposit", "0xd2", 1.5, 139_278, amount=20 * PRICE),
           ChannelTxRecord("claim", "0xc1", 6.0, 72_404, amount=5 * PRICE),
           ChannelTxRecord("claim", "0xc2", 12.0, 90_304, channels=2, amount=claimed_a - 5 * PRICE + claimed_b),
           ChannelTxRecord("settle", "0xs", 13.0, 57_285, channels=0, amount=claimed_a + claimed_b)]
    return requests, channels, txs


def test_exact_books_have_no_loss_and_date_each_voucher_by_its_claim() -> None:
    requests, channels, txs = books()
    rec = channel_reconciliation(requests, channels)
    assert rec["exact"] and (rec["served_unpaid"], rec["paid_unserved"], rec["double_settled"]) == (0, 0, 0)
    latencies, unsettled = settlement_latencies(requests, channels)
    assert unsettled == 0 and len(latencies) == 14
    assert latencies[0] == pytest.approx(6.0 - 1.05)  # voucher 1 of channel 1: served at 1.05, claimed at 6
    assert max(latencies) == pytest.approx(12.0 - 1.55)  # channel 2 claimed only once, at the end
    ts, exposure, locked = exposure_series(requests, channels, txs)
    assert exposure[-1] == 0 and max(exposure) == 5 * PRICE + 4 * PRICE  # before the second claim
    assert locked[-1] == 40 * PRICE - 14 * PRICE  # deposits less what was claimed
    assert ts == sorted(ts)


def test_unclaimed_vouchers_are_served_unpaid_or_pending_and_overclaims_paid_unserved() -> None:
    requests, channels, _ = books(claimed_a=8 * PRICE)
    events = channel_money_events(requests, channels)
    assert counts(events)["served_unpaid"] == 2 and {e.key for e in events} == {(cid(1), 9000), (cid(1), 10000)}
    rec = channel_reconciliation(requests, channels)
    assert not rec["exact"] and rec["served_unpaid_amount"] == 2 * PRICE
    assert counts(channel_money_events(requests, channels, final=False))["pending"] == 2  # claims still due
    requests, channels, _ = books(claimed_b=5 * PRICE)  # claimed one more than its client was served
    rec = channel_reconciliation(requests, channels)
    assert (rec["paid_unserved"], rec["paid_unserved_amount"], rec["exact"]) == (1, PRICE, False)
    # A voucher on a channel the books never saw deposited: nothing can ever claim it.
    rec = channel_reconciliation([*requests, voucher(cid(9), 1, 2.0, 3)], channels)
    assert rec["served_unpaid"] == 1


def test_summary_channels_section_and_run_folder(tmp_path: Path) -> None:
    requests, channels, txs = books()
    plain = build_summary(SMOKE, requests, [], {}, "sim", {})
    assert plain["channels"] is None
    rec = {"paid_responses": 0, "settled": 0, "served_unpaid": 0, "paid_unserved": 0, "double_settled": 0, "pending": 0,
           "payee_balance_delta": 0, "expected_payee_delta": 0}
    s = build_summary(SMOKE, requests, [], rec, "sim", {"duration_s": 14.0}, channels=channels, channel_txs=txs)
    c = s["channels"]
    assert c["totals"]["charged"] == c["totals"]["claimed"] == 14 * PRICE and c["totals"]["vouchers"] == 14
    assert c["reconciliation"]["exact"] and s["reconciliation"]["exact"] and s["reconciliation"]["channels_exact"]
    e = c["economics"]
    assert e["gas_per_payment"] == pytest.approx((2 * 139_278 + 72_404 + 90_304 + 57_285) / 14)
    assert [r["strategy"] for r in e["comparison"]] == ["sync", "pipelined", "batched (50)", BS, f"{BS} (model)"]
    assert e["comparison"][0]["gas_per_payment"] == pytest.approx(85_014) and e["comparison"][0]["source"] == "model"
    assert c["capital"]["deposited_usd"] == pytest.approx(0.04) and c["exposure"]["peak_usd"] == pytest.approx(0.009)
    assert s["metrics"]["settlement_latency_s"]["count"] == c["settlement_latency_s"]["count"]
    assert summary_json(s) == summary_json(build_summary(SMOKE, list(reversed(requests)), [], rec, "sim",
                                                         {"duration_s": 14.0}, channels=channels, channel_txs=txs))
    broken = build_summary(SMOKE, requests, [], rec, "sim", {}, channels=books(claimed_a=8 * PRICE)[1], channel_txs=txs)
    assert not broken["reconciliation"]["exact"] and "channels_served_unpaid" in {
        x["name"] for x in broken["slo"]["checks"] if not x["passed"]}
    out = write_run(tmp_path, "smoke", "r1", s, requests, [], channels=channels, channel_txs=txs)
    assert read_csv(out / "channels.csv", ChannelRecord) == channels and load_channels(out) == (channels, txs)
    assert (out / "channel_exposure.png").is_file() and (out / "channel_gas.png").is_file()
    assert not (out / "gas_per_payment.png").exists()  # no exact settlement: no empty panel
    (out / "report.html").unlink()
    html = rebuild_report(out).read_text()
    assert "Channels (batch-settlement)" in html and "Economics per scheme" in html and "://" not in html
    plain_dir = write_run(tmp_path, "smoke", "r2", plain, requests, [])
    assert load_channels(plain_dir) == ([], []) and not (plain_dir / "channels.csv").exists()
    assert "Channels (batch-settlement)" not in (plain_dir / "report.html").read_text()


class ReorgedRpc:
    """A node that goes on answering the logs of a block a reorg replaced (the header it serves for that
    number has another hash): the books must not count the claim in it."""

    ESCROW, TOKEN, PAYEE = "0x" + "4" * 40, "0x" + "5" * 40, "0x" + "6" * 40

    def __init__(self) -> None:
        from eth_abi import encode

        from services.escrow import EVENT_TOPICS

        def claim(block: int, block_hash: str, amount: int, total: int) -> dict[str, Any]:
            return {"address": self.ESCROW, "topics": [EVENT_TOPICS["Claimed"], cid(1)],
                    "data": "0x" + encode(["uint128", "uint128"], [amount, total]).hex(), "blockNumber": hex(block),
                    "blockHash": block_hash, "transactionHash": f"0x{block:064x}", "logIndex": "0x0"}

        self.logs = [claim(5, "0x" + "a" * 64, PRICE, PRICE), claim(6, "0x" + "b" * 64, PRICE, 2 * PRICE)]
        self.headers = {5: {"hash": "0x" + "a" * 64, "timestamp": hex(105)},
                        6: {"hash": "0x" + "c" * 64, "timestamp": hex(106)}}  # block 6 was replaced

    def call(self, method: str, *params: Any) -> Any:
        assert method == "eth_getLogs"
        return list(self.logs) if params[0]["address"] == self.ESCROW else []

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        out: list[Any] = []
        for method, params in calls:
            if method == "eth_getBlockByNumber":
                out.append(self.headers.get(int(params[0], 16)))
            elif method == "eth_getTransactionReceipt":
                out.append({"gasUsed": hex(72_404), "effectiveGasPrice": "0x0", "blockNumber": "0x5"})
            else:
                out.append("0x" + "0" * 128)
        return out


def test_books_count_only_canonical_blocks() -> None:
    from loadtest.reconcile import books_from_chain, read_channels

    node = ReorgedRpc()
    chain = read_channels(node, node.ESCROW, node.TOKEN, [node.PAYEE], 5, 6, [cid(1)])  # type: ignore[arg-type]
    assert [e["block"] for e in chain.events] == [5]
    b = books_from_chain(chain, [voucher(cid(1), 1, 1.0), voucher(cid(1), 2, 2.0)], t0=100.0)
    (ch,) = b.channels
    assert (ch.claimed, ch.charged, ch.claim_history()) == (PRICE, 2 * PRICE, [(5.0, PRICE)])
    assert b.reconciliation["served_unpaid"] == 1 and [t.kind for t in b.txs] == ["claim"]


def test_books_of_a_run_without_a_block_or_an_escrow(anvil: Any) -> None:
    """Nothing mined during the run and no escrow deployed: empty books, no error, nothing owed."""
    from loadtest.reconcile import channel_books
    from services.chain import Rpc

    rpc = Rpc(anvil.url)
    first = int(rpc.call("eth_blockNumber"), 16) + 1
    b = channel_books(rpc, [], "0x" + "4" * 40, "0x" + "5" * 40, ["0x" + "6" * 40], first, first - 1, time.time())
    assert (b.channels, b.txs, b.events, b.settled) == ([], [], [], 0)
    assert b.reconciliation["exact"] and all(b.reconciliation["checks"].values())


# ---- live: a world with a batch-settlement route ------------------------------------------------------

def scenario_data() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    data["facilitator"] = {"strategy": "sdk", "signer_keys": 1}
    data["agents"] = {**data["agents"], "count": 2, "mix": {}}
    data["services"] = [data["services"][0],
                        {"name": "metered", "path": "/metered", "price": "$0.001", "scheme": BS}]
    data["channel"] = {"withdraw_delay_s": 1800, "deposit_usdc": 0.02, "claims_per_tx": 50}
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from services.stack import World

    with World(validate_scenario(scenario_data()), workdir=tmp_path_factory.mktemp("world-books")) as w:
        yield w


def test_live_books_exact_after_claim_settle_and_not_when_a_voucher_is_left(world: Any, tmp_path: Path) -> None:
    from x402 import x402ClientSync
    from x402.http.clients import x402_requests
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
    from x402.mechanisms.evm.signers import EthAccountSigner
    from x402.schemas import PaymentRequirements

    from loadtest.reconcile import channel_books, exact_chain_view, read_chain, reconcile
    from services.facilitator.ledger import read_payments
    import payments
    from services.chain import Rpc
    from services.escrow import ESCROW_ADDRESS
    from services.token import balance_of

    info = world.info
    url, token, payee = info.service_urls["metered"], info.token["address"], info.payees[0]
    rpc = Rpc(info.rpc_url)
    first_block = int(rpc.call("eth_blockNumber"), 16) + 1
    payee_before = balance_of(info.rpc_url, token, payee)
    account = Account.from_key(world.agents[0].key_hex)
    scheme = BatchSettlementEvmScheme(EthAccountSigner(account))
    client = x402ClientSync()
    client.set_spend_controls(False)
    client.register(info.network, scheme)
    session = x402_requests(client)
    (offer,) = json.loads(base64.b64decode(httpx.get(url).headers["payment-required"]))["accepts"]
    channel = compute_channel_id(scheme.build_channel_config(PaymentRequirements.model_validate(offer)), info.network)
    t0 = time.time()

    def pay() -> RequestRecord:
        """One request as the agents' records see it: what the client was served and charged."""
        start = time.time()
        response = session.get(url, timeout=60)
        assert response.status_code == 200, response.status_code
        answer = json.loads(base64.b64decode(response.headers["payment-response"]))
        cumulative = int(answer["extra"]["channelState"]["chargedCumulativeAmount"])
        return RequestRecord(t_start=start - t0, t_end=time.time() - t0, route="metered", agent=0, status=200,
                             amount=PRICE, payer=account.address, tx_hash=answer.get("transaction") or "",
                             scheme=BS, channel=channel, cumulative=cumulative)

    records = [pay() for _ in range(4)]
    assert [r.cumulative for r in records] == [PRICE, 2 * PRICE, 3 * PRICE, 4 * PRICE]
    # One exact payment in the same run, to the same payee: both books must stay exact, each on its own.
    required = payments.requirements(world)
    payload = payments.build_payment(world, 1, required)
    start = time.time() - t0
    assert payments.pay(world, payments.encode(payload)).status_code == 200
    exact_amount = int(required["accepts"][0]["amount"])
    exact_record = RequestRecord(t_start=start, t_end=time.time() - t0, route="weather", agent=1, status=200,
                                 amount=exact_amount, payer=world.agents[1].address.lower(),
                                 nonce=payload["payload"]["authorization"]["nonce"].lower())
    done = httpx.post(url.rsplit("/", 1)[0] + "/_channels/claim_settle", timeout=120).json()
    assert done["claimed"] == str(4 * PRICE) and done["settle_transaction"]
    last_block = int(rpc.call("eth_blockNumber"), 16)
    delta = balance_of(info.rpc_url, token, payee) - payee_before
    b = channel_books(rpc, [*records, exact_record], ESCROW_ADDRESS, token, info.payees, first_block, last_block, t0,
                      delta)
    (ch,) = b.channels
    deposit = int(offer["extra"]["minDeposit"])
    assert delta == 4 * PRICE + exact_amount
    assert (ch.channel, ch.charged, ch.claimed, b.settled) == (channel.lower(), 4 * PRICE, 4 * PRICE, 4 * PRICE)
    assert b.reconciliation["payee_balance_delta"] == 4 * PRICE  # the escrow's part of the payee's income
    chain = read_chain(rpc, token, info.payees, first_block, last_block)
    assert len(chain.used) == 2  # the exact payment and the deposit's ERC-3009 authorization
    exact_rec, _ = reconcile([exact_record], read_payments(info.ledger_path), exact_chain_view(chain, b),
                             delta - b.settled, t0=t0)
    assert exact_reconciliation(exact_rec) and exact_rec["settled"] == 1, exact_rec
    assert (ch.deposited, ch.deposits, ch.refundable, ch.vouchers) == (deposit, 1, deposit - 4 * PRICE, 4)
    assert ch.t_deposit >= 0 and ch.t_claimed >= ch.t_deposit and ch.claim_history()[-1][1] == 4 * PRICE
    assert b.reconciliation["exact"], b.reconciliation
    assert all(b.reconciliation["checks"].values()) and b.reconciliation["served_unpaid"] == 0
    assert sorted(t.kind for t in b.txs) == ["claim", "deposit", "settle"] and all(t.gas_used > 0 for t in b.txs)

    summary = build_summary(SMOKE, records, [], {}, "load", {"duration_s": records[-1].t_end + 1}, list(b.events),
                            channels=b.channels, channel_txs=b.txs, channel_reconciliation=b.reconciliation)
    assert summary["channels"]["reconciliation"]["exact"] and summary["channels"]["settlement_latency_s"]["count"] == 4
    assert summary["channels"]["economics"]["gas_per_payment"] == pytest.approx(sum(t.gas_used for t in b.txs) / 4)
    out = write_run(tmp_path, "smoke", "live", summary, records, [], channels=b.channels, channel_txs=b.txs)
    assert (out / "channels.csv").is_file() and (out / "channel_txs.csv").is_file()
    assert "Channels (batch-settlement)" in (out / "report.html").read_text()

    # Not exact: two more vouchers served and never claimed (the claim skipped), and a record claiming a
    # voucher beyond anything the chain saw claimed.
    records += [pay(), pay()]
    records.append(RequestRecord(t_start=records[-1].t_end, t_end=records[-1].t_end + 0.01, route="metered", agent=0,
                                 status=200, amount=PRICE, payer=account.address, scheme=BS, channel=channel,
                                 cumulative=deposit + PRICE))
    last_block = int(rpc.call("eth_blockNumber"), 16)
    delta = balance_of(info.rpc_url, token, payee) - payee_before
    b = channel_books(rpc, records, ESCROW_ADDRESS, token, info.payees, first_block, last_block, t0, delta)
    rec = b.reconciliation
    assert not rec["exact"] and rec["served_unpaid"] == 3 and rec["paid_unserved"] == 0, rec
    assert b.channels[0].unclaimed == deposit + PRICE - 4 * PRICE
    assert {e.key[1] for e in b.events if e.category == "served_unpaid"} == {5 * PRICE, 6 * PRICE, deposit + PRICE}
    assert rec["checks"]["payee_delta_equals_settled"] and rec["checks"]["escrow_covers_refundable"]
    pending = channel_books(rpc, records, ESCROW_ADDRESS, token, info.payees, first_block, last_block, t0, delta,
                            final=False).reconciliation
    assert (pending["pending"], pending["served_unpaid"]) == (2, 1)  # within the deposit: claims still due

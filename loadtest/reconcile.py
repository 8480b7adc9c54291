"""Reconciliation after a live run, from three independent sources.

- what clients were served (RequestRecords with status 200 and the nonce they paid with),
- what the facilitator's ledger says (every accepted payment and its state),
- what the chain says (AuthorizationUsed and Transfer logs of the token, the payee's balance).

The categories (served_unpaid, paid_unserved, double_settled, pending) are defined once, in
x402bench.results.money, for live and simulated runs alike; our strategies keep the first three at 0.
Settlement records for the summary are built here too, with gas from the chain's own
receipts rather than from what the facilitator claims.

The batch-settlement scheme's books (channel_books, at the end) are kept apart, per channel, from
the escrow's events: its vouchers have no authorization for the exact books to match, and its
deposits and settles are escrow txs the exact books must not see.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from eth_utils import to_checksum_address

from services.chain import Rpc
from services.escrow import decode_escrow_log
from services.facilitator.evm import TOPIC_AUTHORIZATION_USED, TOPIC_TRANSFER
from services.token import encode_call
from x402bench.results.channels import SCHEME, channel_money_events, channel_reconciliation, voucher_requests
from x402bench.results.money import LOSS_KEYS, MoneyEvent, classify, counts
from x402bench.results.records import (
    ChannelRecord,
    ChannelTxRecord,
    RequestRecord,
    SettlementRecord,
    format_claims,
)

CHUNK = 500


@dataclass
class ChainView:
    """What the chain says about a run: used authorizations, transfers to the payee, receipts."""

    used: list[tuple[str, str, str]]  # (payer, nonce, tx_hash) per AuthorizationUsed log
    receipts: dict[str, dict[str, Any]]  # tx_hash -> receipt
    block_times: dict[int, int]  # block number -> timestamp
    payee_in: int  # sum of Transfer values to the payee in the window


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:]


def _canonical(rpc: Rpc, logs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Only logs of blocks still on the chain: after a reorg a node may go on answering logs (and
    receipts) of the blocks it replaced, which would count an undone settlement as paid. Also returns
    the canonical headers read, by number."""
    numbers = sorted({int(log["blockNumber"], 16) for log in logs})
    headers: dict[int, dict[str, Any]] = {}
    for i in range(0, len(numbers), CHUNK):
        part = numbers[i : i + CHUNK]
        for number, block in zip(part, rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in part])):
            if block:
                headers[number] = block
    kept = [log for log in logs if (headers.get(int(log["blockNumber"], 16)) or {}).get("hash", "").lower()
            == str(log.get("blockHash", "")).lower()]
    return kept, headers


def _canonical_pair(rpc: Rpc, used: list[dict[str, Any]], transfers: list[dict[str, Any]]
                    ) -> tuple[tuple[list[dict[str, Any]], list[dict[str, Any]]], dict[int, dict[str, Any]]]:
    kept, headers = _canonical(rpc, used + transfers)
    ids = {id(log) for log in kept}
    return ([log for log in used if id(log) in ids], [log for log in transfers if id(log) in ids]), headers


def read_chain(rpc: Rpc, token: str, payees: list[str], from_block: int, to_block: int) -> ChainView:
    """One eth_getLogs per event, then receipts and block headers in batched calls; logs of blocks a
    reorg replaced are left out."""
    if to_block < from_block:  # no block was mined during the run: nothing can have settled
        return ChainView([], {}, {}, 0)
    span = {"address": token, "fromBlock": hex(from_block), "toBlock": hex(to_block)}
    used_logs = rpc.call("eth_getLogs", {**span, "topics": [TOPIC_AUTHORIZATION_USED]})
    payee_topics = ["0x" + p.lower().removeprefix("0x").rjust(64, "0") for p in payees]
    transfer_logs = rpc.call("eth_getLogs", {**span, "topics": [TOPIC_TRANSFER, None, payee_topics]})
    (used_logs, transfer_logs), headers = _canonical_pair(rpc, used_logs, transfer_logs)
    used = [(_topic_address(log["topics"][1]).lower(), log["topics"][2].lower(), log["transactionHash"].lower())
            for log in used_logs]
    hashes = sorted({h for _, _, h in used} | {log["transactionHash"].lower() for log in transfer_logs})
    receipts: dict[str, dict[str, Any]] = {}
    for i in range(0, len(hashes), CHUNK):
        part = hashes[i : i + CHUNK]
        for tx_hash, receipt in zip(part, rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])):
            receipts[tx_hash] = receipt
    block_times = {number: int(block["timestamp"], 16) for number, block in headers.items()}
    payee_in = sum(int(log["data"], 16) for log in transfer_logs)
    return ChainView(used, receipts, block_times, payee_in)


def settlement_records(ledger_rows: Iterable[dict[str, Any]], chain: ChainView, t0: float) -> list[SettlementRecord]:
    """One record per ledger row, its gas and inclusion taken from the chain where it landed."""
    per_tx = Counter(h for _, _, h in chain.used)
    used_tx = {(payer, nonce): h for payer, nonce, h in chain.used}
    records = []
    for row in ledger_rows:
        key = (row["payer"], row["nonce"])
        tx_hash = used_tx.get(key) or (row["tx_hash"] or "")
        receipt = chain.receipts.get(tx_hash.lower()) if tx_hash else None
        state = row["state"]
        if key in used_tx:
            state = "settled"  # the chain is the authority, whatever the ledger had time to write
        included = row["included_at"]
        records.append(
            SettlementRecord(
                nonce=row["nonce"], payer=row["payer"], payee=row["payee"], amount=int(row["amount"]),
                t_accepted=row["accepted_at"] - t0,
                t_submitted=(row["submitted_at"] - t0) if row["submitted_at"] else -1.0,
                t_included=(included - t0) if included and state == "settled" else -1.0,
                state=state, tx_hash=tx_hash,
                block_number=int(receipt["blockNumber"], 16) if receipt else -1,
                gas_used=int(receipt["gasUsed"], 16) if receipt else 0,
                effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16) if receipt else 0,
                batch_size=per_tx.get(tx_hash.lower(), 1) if tx_hash else 1,
                error=row["error"] or "",
            )
        )
    return records


def chain_settlements(requests: list[RequestRecord], chain: ChainView, t0: float) -> list[SettlementRecord]:
    """Settlement records when the facilitator's ledger is not ours: one per authorization the chain used.

    Acceptance is unknown from outside, so a payment counts from its request's start (times already
    relative to t0) to its block's timestamp, which has whole-second resolution.
    """
    by_key = {(r.payer.lower(), r.nonce.lower()): r for r in requests if r.nonce}
    per_tx = Counter(h for _, _, h in chain.used)
    records = []
    for payer, nonce, tx_hash in chain.used:
        request = by_key.get((payer, nonce))
        receipt = chain.receipts.get(tx_hash) or {}
        block = int(receipt["blockNumber"], 16) if receipt else -1
        started = request.t_start if request else -1.0
        included = chain.block_times[block] - t0 if block in chain.block_times else -1.0
        records.append(SettlementRecord(
            nonce=nonce, payer=payer, payee="", amount=request.amount if request else 0, t_accepted=started,
            t_submitted=-1.0, t_included=max(included, started) if request else -1.0, state="settled",
            tx_hash=tx_hash, block_number=block, gas_used=int(receipt.get("gasUsed", "0x0"), 16),
            effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16), batch_size=per_tx[tx_hash],
            error=""))
    return records


def reconcile(
    requests: list[RequestRecord],
    ledger_rows: list[dict[str, Any]],
    chain: ChainView,
    payee_balance_delta: int,
    ledger: bool = True,
    t0: float = 0.0,
) -> tuple[dict[str, Any], list[MoneyEvent]]:
    """The reconciliation block of summary.json, and its events in run time (for the fault table).

    Requests are already on the run clock (t0 subtracted); a retried payment has several records with
    one nonce and counts once. `ledger` False when the facilitator's ledger is not ours to read (an
    outside facilitator): then client records and the chain alone decide. `findings` says in words
    what went astray.
    """
    served: dict[tuple[str, str], float] = {}
    amounts: dict[tuple[str, str], int] = {}
    sent: dict[tuple[str, str], float] = {}
    for r in requests:
        if not r.nonce:
            continue
        key = (r.payer.lower(), r.nonce.lower())
        sent[key] = max(sent.get(key, r.t_start), r.t_start)
        if r.paid and key not in served:
            served[key], amounts[key] = r.t_end, r.amount
    block_of = {h: int(rc["blockNumber"], 16) for h, rc in chain.receipts.items() if rc}
    uses: dict[tuple[str, str], list[float]] = {}
    for payer, nonce, tx_hash in chain.used:
        block = block_of.get(tx_hash)
        uses.setdefault((payer, nonce), []).append(chain.block_times.get(block, t0) - t0 if block is not None else 0.0)
    ledger_settled = Counter((row["payer"], row["nonce"]) for row in ledger_rows if row["state"] == "settled")
    for key, n in ledger_settled.items():  # a ledger that settled one authorization twice: count the extra ones
        if n > 1:
            uses.setdefault(key, []).extend([uses.get(key, [0.0])[-1]] * (n - len(uses.get(key, []))))
    pending = {(row["payer"], row["nonce"]): row["accepted_at"] - t0 for row in ledger_rows
               if row["state"] in ("accepted", "submitted") and (row["payer"], row["nonce"]) not in uses}
    events = classify(served, sent, uses, pending)
    tally = counts(events)
    examples = {c: [e.key[1] for e in events if e.category == c][:20] for c in LOSS_KEYS}
    expected = sum(amounts.values())
    findings = []
    words = {"served_unpaid": "payment(s) served 200 but never settled on chain (the seller's loss)",
             "paid_unserved": "payment(s) settled on chain whose client never got a 200 (the payer's loss)",
             "double_settled": "authorization(s) settled more than once"}
    for category in LOSS_KEYS:
        if tally[category]:
            findings.append(f"{tally[category]} {words[category]}")
    if payee_balance_delta != expected:
        findings.append(f"the payees received {payee_balance_delta} atomic units for {expected} served")
    states = Counter(row["state"] for row in ledger_rows)
    rec = {
        "ledger": ledger,
        "findings": findings,
        "paid_responses": len(served),
        "settled": len(uses),
        "ledger_settled": sum(ledger_settled.values()),
        **tally,
        "failed": states.get("failed", 0),
        "examples": examples,
        "payee_balance_delta": payee_balance_delta,
        "payee_transfers_in": chain.payee_in,
        "expected_payee_delta": expected,
    }
    return rec, events


# --- batch-settlement channels ---------------------------------------------------------------------
#
# Deferred settlement leaves no per-payment transfer to match: a voucher is money once a claim covers
# its cumulative amount, and the payee is paid by a later settle of everything claimed. So the books
# are kept per channel, from the escrow's own events (canonical blocks only), its state before and
# after the run, and what the clients were served; the verdict's categories are those of
# x402bench.results.money, per voucher (x402bench.results.channels defines them once for live and sim).

#: Tx kinds by the escrow event that names them, in the order a tx with several events is named by.
_TX_KINDS = (("Deposited", "deposit"), ("Claimed", "claim"), ("Settled", "settle"), ("Refunded", "refund"),
             ("Withdrawn", "withdraw"), ("WithdrawInitiated", "withdraw"))


@dataclass
class ChannelChain:
    """What the chain says about a run's channels; read before the world stops, judged after."""

    escrow: str
    token: str
    payees: list[str]
    events: list[dict[str, Any]]            # decoded escrow events of canonical blocks, chain order
    receipts: dict[str, dict[str, Any]]     # escrow tx hash -> receipt
    block_times: dict[int, int]             # block number -> timestamp
    start: dict[str, tuple[int, int]]       # channel -> (balance, totalClaimed) before the first block
    end: dict[str, tuple[int, int]]         # channel -> (balance, totalClaimed) at the last block
    receivers: dict[str, tuple[int, int]]   # payee -> (totalClaimed, totalSettled) at the last block
    escrow_balance: int                     # the escrow's token balance at the last block
    payee_in_escrow: int                    # Transfer escrow -> payees in the window
    payee_in_other: int                     # Transfer anyone else -> payees in the window (exact payments)


@dataclass
class ChannelBooks:
    """The batch-settlement books of a run: records for the run folder, the verdict for the summary
    (summary `channels.reconciliation`), and money events for the per-fault table."""

    channels: list[ChannelRecord]
    txs: list[ChannelTxRecord]
    reconciliation: dict[str, Any]
    events: list[MoneyEvent]
    settled: int                            # Settled to the payees in the window (atomic)
    escrow_txs: set[str] = field(default_factory=set)  # hashes of every escrow tx of the window


def _word(value: int | str) -> str:
    raw = value if isinstance(value, str) else hex(value)
    return "0x" + raw.removeprefix("0x").lower().rjust(64, "0")


def _reads(rpc: Rpc, calls: list[tuple[str, str]], block: int) -> list[str]:
    """eth_call (to, data) pairs at one block, batched."""
    out: list[str] = []
    for i in range(0, len(calls), CHUNK):
        out += rpc.batch([("eth_call", [{"to": to, "data": data}, hex(block)]) for to, data in calls[i : i + CHUNK]])
    return out


def _word_at(reply: str, i: int) -> int:
    """The i-th 32-byte word of an eth_call reply; 0 when the reply is shorter (no code at the address)."""
    word = reply[2 + 64 * i : 2 + 64 * (i + 1)]
    return int(word, 16) if len(word) == 64 else 0


def _states(rpc: Rpc, escrow: str, ids: list[str], block: int) -> dict[str, tuple[int, int]]:
    if block < 0 or not ids:
        return {cid: (0, 0) for cid in ids}
    replies = _reads(rpc, [(escrow, encode_call("channels(bytes32)", bytes.fromhex(cid[2:]))) for cid in ids], block)
    return {cid: (_word_at(r, 0), _word_at(r, 1)) for cid, r in zip(ids, replies)}


def read_channels(rpc: Rpc | str, escrow: str, token: str, payees: list[str], first_block: int, last_block: int,
                  channel_ids: Iterable[str] = ()) -> ChannelChain:
    """The escrow's events, receipts and states for blocks first_block..last_block, and the token moves to
    the payees; `channel_ids` adds channels the events may not name (a channel deposited before the run)."""
    rpc = Rpc(rpc) if isinstance(rpc, str) else rpc
    escrow, token = escrow.lower(), token.lower()
    payees = [p.lower() for p in payees]
    if last_block < first_block:
        logs: list[dict[str, Any]] = []
        transfers: list[dict[str, Any]] = []
    else:
        span = {"fromBlock": hex(first_block), "toBlock": hex(last_block)}
        logs = rpc.call("eth_getLogs", {**span, "address": escrow})
        transfers = rpc.call("eth_getLogs", {**span, "address": token,
                                             "topics": [TOPIC_TRANSFER, None, [_word(p) for p in payees]]}) if payees else []
    kept, headers = _canonical(rpc, logs + transfers)
    ids = {id(log) for log in kept}
    logs = [log for log in logs if id(log) in ids]
    transfers = [log for log in transfers if id(log) in ids]
    events = [e for log in logs if (e := decode_escrow_log(log)) is not None]
    events.sort(key=lambda e: (e["block"], e["log_index"]))
    hashes = sorted({str(e["tx"]).lower() for e in events})
    receipts: dict[str, dict[str, Any]] = {}
    for i in range(0, len(hashes), CHUNK):
        part = hashes[i : i + CHUNK]
        receipts.update(zip(part, rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])))
    channel_set = {str(e["args"]["channelId"]).lower() for e in events if "channelId" in e["args"]}
    channel_set |= {c.lower() for c in channel_ids if c}
    chans = sorted(channel_set)
    at = max(last_block, first_block - 1)  # no block mined during the run: the end is the start
    reads = [(escrow, encode_call("receivers(address,address)", to_checksum_address(p), to_checksum_address(token)))
             for p in payees] + [(token, encode_call("balanceOf(address)", to_checksum_address(escrow)))]
    replies = _reads(rpc, reads, at)
    receivers = {p: (_word_at(r, 0), _word_at(r, 1)) for p, r in zip(payees, replies)}
    from_escrow = _word(escrow)
    return ChannelChain(
        escrow=escrow, token=token, payees=payees, events=events, receipts=receipts,
        block_times={n: int(b["timestamp"], 16) for n, b in headers.items()},
        start=_states(rpc, escrow, chans, first_block - 1), end=_states(rpc, escrow, chans, at),
        receivers=receivers, escrow_balance=_word_at(replies[-1], 0),
        payee_in_escrow=sum(int(t["data"], 16) for t in transfers if t["topics"][1].lower() == from_escrow),
        payee_in_other=sum(int(t["data"], 16) for t in transfers if t["topics"][1].lower() != from_escrow),
    )


def books_from_chain(chain: ChannelChain, requests: list[RequestRecord], t0: float,
                     payee_balance_delta: int | None = None, final: bool = True) -> ChannelBooks:
    """The channel books from what the chain said and what the clients were served (requests on the run
    clock, t0 subtracted). `payee_balance_delta`: the payees' whole balance change over the run, when
    known; the part that did not come in by Transfer from others (exact payments) must equal what the
    escrow settled. `final`: the runner's last claim+settle has run, so a voucher no claim covered is lost
    (`served_unpaid`), not `pending`."""
    vouchers = voucher_requests(requests)
    by_channel: dict[str, list[RequestRecord]] = {}
    for r in vouchers:
        by_channel.setdefault(r.channel.lower(), []).append(r)
    wanted = set(chain.payees)
    config: dict[str, dict[str, Any]] = {}
    for e in chain.events:
        if e["event"] == "ChannelCreated":
            config[str(e["args"]["channelId"]).lower()] = e["args"]["config"]

    def ours(cid: str) -> bool:
        c = config.get(cid)
        if c is None:  # created before the window: ours if our clients used it or its state was asked for
            return cid in by_channel or cid in chain.start
        return (str(c["receiver"]).lower() in wanted and str(c["token"]).lower() == chain.token) or cid in by_channel

    def when(e: dict[str, Any]) -> float:
        """Block time on the run clock. Timestamps are whole seconds, so a block of the run's first
        second may read as before t0: every block of the window is of the run, hence the floor at 0
        (which also keeps -1, "none", unambiguous)."""
        return max(0.0, chain.block_times[e["block"]] - t0) if e["block"] in chain.block_times else -1.0

    channel_ids = sorted({cid for cid in (set(config) | set(by_channel) | set(chain.start)) if ours(cid)})
    per: dict[str, list[dict[str, Any]]] = {cid: [] for cid in channel_ids}
    for e in chain.events:
        cid = str(e["args"].get("channelId", "")).lower()
        if cid in per:
            per[cid].append(e)
    records: list[ChannelRecord] = []
    double: list[MoneyEvent] = []
    findings: list[str] = []
    mismatched: list[str] = []
    for cid in channel_ids:
        evs = per[cid]
        rs = by_channel.get(cid, [])
        c = config.get(cid) or {}
        deposits = [e for e in evs if e["event"] == "Deposited"]
        claims = [e for e in evs if e["event"] == "Claimed"]
        start_balance, start_claimed = chain.start.get(cid, (0, 0))
        previous = start_claimed
        history: list[tuple[float, int]] = []
        for e in claims:
            amount, total = int(e["args"]["amount"]), int(e["args"]["totalClaimed"])
            if total - amount < previous:  # this claim covered a range an earlier one had claimed
                double.append(MoneyEvent("double_settled", when(e), (cid, total)))
            previous = max(previous, total)
            history.append((when(e), total))
        claimed = sum(int(e["args"]["amount"]) for e in claims)
        top = max((r.cumulative for r in rs), default=start_claimed)
        if rs and all(r.amount > 0 and r.cumulative >= r.amount for r in rs):
            base = min(r.cumulative - r.amount for r in rs)  # the channel's cumulative before this run's first voucher
        else:
            base = start_claimed
        charged = max(0, top - base)
        refunded = sum(int(e["args"]["amount"]) for e in evs if e["event"] in ("Refunded", "Withdrawn"))
        deposited = sum(int(e["args"]["amount"]) for e in deposits)
        covering = [t for t, total in history if total >= top] if rs else []
        record = ChannelRecord(
            channel=cid, payer=str(c.get("payer") or (rs[0].payer if rs else "")).lower(),
            receiver=str(c.get("receiver", "")).lower(), deposited=deposited, charged=charged, claimed=claimed,
            refunded=refunded, vouchers=len(rs), deposits=len(deposits),
            t_deposit=when(deposits[0]) if deposits else -1.0, t_claimed=covering[0] if covering else -1.0,
            claims=format_claims(history))
        records.append(record)
        end_balance, end_claimed = chain.end.get(cid, (0, 0))
        if (end_balance - end_claimed) != (start_balance - start_claimed) + record.refundable:
            mismatched.append(cid)

    # One record per escrow tx that touched our channels or paid our payees.
    ids = set(channel_ids)
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for e in chain.events:
        cid = str(e["args"].get("channelId", "")).lower()
        mine = cid in ids if cid else (str(e["args"].get("receiver", "")).lower() in wanted
                                       and str(e["args"].get("token", "")).lower() == chain.token)
        if mine:
            by_tx.setdefault(str(e["tx"]).lower(), []).append(e)
    txs: list[ChannelTxRecord] = []
    for tx_hash, evs in by_tx.items():
        names = {e["event"] for e in evs}
        event, kind = next(((ev, k) for ev, k in _TX_KINDS if ev in names), ("", "other"))
        receipt = chain.receipts.get(tx_hash) or {}
        touched = {str(e["args"]["channelId"]).lower() for e in evs if "channelId" in e["args"]}
        txs.append(ChannelTxRecord(
            kind=kind, tx_hash=tx_hash, t_included=when(evs[0]),
            gas_used=int(receipt.get("gasUsed", "0x0"), 16),
            effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16),
            channels=len(touched), amount=sum(int(e["args"].get("amount", 0)) for e in evs if e["event"] == event),
            block_number=evs[0]["block"]))
    txs.sort(key=lambda t: (t.block_number, t.tx_hash))

    settled = sum(int(e["args"]["amount"]) for e in chain.events if e["event"] == "Settled"
                  and str(e["args"]["receiver"]).lower() in wanted and str(e["args"]["token"]).lower() == chain.token)
    claimed_total = sum(r.claimed for r in records)
    from_escrow = chain.payee_in_escrow if payee_balance_delta is None else payee_balance_delta - chain.payee_in_other
    owed = sum(max(0, b - c) for b, c in chain.end.values()) + sum(max(0, c - s) for c, s in chain.receivers.values())
    checks = {
        "payee_delta_equals_settled": from_escrow == settled,
        "settled_equals_claimed": settled == claimed_total,
        "escrow_covers_refundable": chain.escrow_balance >= owed,
        "refundable_matches_chain": not mismatched,
    }
    if not checks["payee_delta_equals_settled"]:
        findings.append(f"the payees received {from_escrow} atomic units from the escrow for {settled} settled")
    if not checks["settled_equals_claimed"]:
        findings.append(f"{settled} atomic units settled for {claimed_total} claimed")
    if not checks["escrow_covers_refundable"]:
        findings.append(f"the escrow holds {chain.escrow_balance} atomic units for {owed} it owes payers and receivers")
    if mismatched:
        findings.append(f"{len(mismatched)} channel(s) whose on-chain unclaimed balance differs from deposited - "
                        f"claimed - refunded: {', '.join(mismatched[:5])}")
    events = channel_money_events(requests, records, final=final) + double
    events.sort(key=lambda e: (e.t, e.category, str(e.key)))
    live = {"double_settled": len(double), "checks": checks, "findings": findings, "settled": settled,
            "payee_balance_delta": from_escrow, "escrow_balance": chain.escrow_balance, "escrow_owes": owed,
            "unsettled": sum(max(0, c - s) for c, s in chain.receivers.values())}
    rec = dict(channel_reconciliation(requests, records, [e for e in events if e.category != "double_settled"], live))
    if double:
        rec["examples"] = {**rec.get("examples", {}), "double_settled": [str(e.key) for e in double][:20]}
    return ChannelBooks(records, txs, rec, events, settled, {str(e["tx"]).lower() for e in chain.events})


def exact_chain_view(chain: ChainView, books: ChannelBooks) -> ChainView:
    """The chain as the exact books may see it in a run that also has channels: without the escrow's
    txs (a deposit redeems an ERC-3009 authorization no exact 200 stands for) and without what the
    escrow settled to the payees (no exact payment explains it). Pass the payees' balance delta less
    `books.settled` to reconcile() alongside."""
    used = [u for u in chain.used if u[2] not in books.escrow_txs]
    receipts = {h: r for h, r in chain.receipts.items() if h not in books.escrow_txs}
    return ChainView(used, receipts, chain.block_times, chain.payee_in - books.settled)


def channel_books(rpc: Rpc | str, requests: list[RequestRecord], escrow: str, token: str, payees: list[str],
                  first_block: int, last_block: int, t0: float, payee_balance_delta: int | None = None,
                  final: bool = True) -> ChannelBooks:
    """read_channels + books_from_chain in one call, for a chain still running (requests already on the
    run clock). A runner that stops its world before it has the records reads first and judges after."""
    chain = read_channels(rpc, escrow, token, payees, first_block, last_block,
                          {r.channel for r in requests if r.scheme == SCHEME and r.channel})
    return books_from_chain(chain, requests, t0, payee_balance_delta, final)

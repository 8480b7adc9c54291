"""Reconciliation after a live run, from three independent sources.

- what clients were served (RequestRecords with status 200 and the nonce they paid with),
- what the facilitator's ledger says (every accepted payment and its state),
- what the chain says (AuthorizationUsed and Transfer logs of the token, the payee's balance).

The categories (served_unpaid, paid_unserved, double_settled, pending) are defined once, in
x402bench.results.money, for live and simulated runs alike; our strategies keep the first three at 0.
Settlement records for the summary are built here too, with gas from the chain's own
receipts rather than from what the facilitator claims.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from services.chain import Rpc
from services.facilitator.evm import TOPIC_AUTHORIZATION_USED, TOPIC_TRANSFER
from x402bench.results.money import LOSS_KEYS, MoneyEvent, classify, counts
from x402bench.results.records import RequestRecord, SettlementRecord

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

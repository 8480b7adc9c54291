"""Settlement engines: the strategies a scenario picks between.

Every engine answers the same three questions (verify, settle, supported) and records
what it accepted in the same ledger, so runs of different strategies compare fairly:
- `sdk`: the official x402 SDK facilitator, unchanged, run on a 40-thread pool the way
  FastAPI serves plain `def` handlers: the reference baseline.
- `sync`: ours, one tx per payment, answer after the receipt; async end to end, nonces
  kept locally per key, receipts resolved per block by one watcher.
- `batched`: many authorizations in one tx through the BatchSettler contract, flushed at
  batch_max_size or when the oldest waited batch_max_age_s; each /settle answers after the
  batch's receipt with its own outcome, read from the token's AuthorizationUsed logs.
- `pipelined`: the same sends, answered as soon as the tx is out (its hash is what the
  service gets): request latency no longer waits for a block. Inclusion is still tracked
  per payment and written to the ledger, so settlement latency, reverts and lost payments
  are measured exactly as for `sync`; what the seller gives up is the certainty, at answer
  time, that the transfer landed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

import anyio
from anyio import CapacityLimiter

from services.facilitator import reasons
from services.facilitator.channels import ChannelSettlement
from services.facilitator.checks import Authorization, Rejection, check_chain, check_payment, parse_request
from services.facilitator.config import FacilitatorConfig
from services.facilitator.evm import (
    SEL_AUTHORIZATION_STATE,
    TOPIC_AUTHORIZATION_USED,
    AsyncRpc,
    ReceiptWatcher,
    authorizations_used,
    batch_gas_limit,
    batch_settle_data,
    call_data,
    transfer_with_authorization_data,
    word,
)
from services.facilitator.guard import SettlementGuard
from services.facilitator.ledger import Claim, Ledger
from services.facilitator.signers import LanePool, SignerLane
from services.facilitator.loop_probe import LaneTimers, LoopLag, timing_metrics
from x402bench.registry import implementations, register

log = logging.getLogger("x402bench.facilitator")

#: How long a retried payment accepted by an earlier process waits for its ledger row to close.
RETRY_WAIT_S = 30.0


class Engine(ABC):
    def __init__(self, config: FacilitatorConfig) -> None:
        self.config = config
        self.ledger = Ledger(config.ledger_path)
        self.rpc = AsyncRpc(config.rpc_url)

    async def start(self) -> None:
        """Open connections and finish what a previous process left open."""

    async def stop(self) -> None:
        await self.rpc.aclose()
        self.ledger.close()

    @property
    @abstractmethod
    def signer_addresses(self) -> list[str]: ...

    def supported(self) -> dict[str, Any]:
        return {
            "kinds": [{"x402Version": 2, "scheme": "exact", "network": self.config.network}],
            "extensions": [],
            "signers": {"eip155:*": self.signer_addresses},
        }

    @abstractmethod
    async def verify(self, body: bytes) -> dict[str, Any]: ...

    @abstractmethod
    async def settle(self, body: bytes) -> dict[str, Any]: ...

    def _failure(self, rejection: Rejection) -> dict[str, Any]:
        self.ledger.reject(rejection.reason)
        return {
            "success": False,
            "errorReason": rejection.reason,
            "errorMessage": rejection.message,
            "payer": rejection.payer,
            "transaction": "",
            "network": self.config.network,
        }

    def metrics(self) -> dict[str, Any]:
        return {"ledger": self.ledger.counts(), "rejections": self.ledger.rejections(), "rpc_calls": self.rpc.calls}


class OwnEngine(Engine):
    """Shared by our strategies: strict local verification, one batched chain read."""

    def __init__(self, config: FacilitatorConfig) -> None:
        super().__init__(config)
        self.watcher = ReceiptWatcher(self.rpc, config.receipt_poll_s)
        self.lane_timers = LaneTimers()
        self.loop_lag = LoopLag()
        self.pool = LanePool([SignerLane(k, self.rpc, config.chain_id, config.gas_price_wei, config.tx_gas_limit,
                                         self.lane_timers) for k in config.signer_keys])
        self._tracking: set[asyncio.Task[dict[str, Any]]] = set()
        self._outcomes: dict[int, asyncio.Future[dict[str, Any]]] = {}  # claim id -> its answer, while settling
        self.guard = SettlementGuard(self)
        # The batch-settlement scheme, the same for every one of our strategies (services.facilitator.channels).
        self.channels: ChannelSettlement | None = ChannelSettlement(self) if config.batch_settlement else None

    @property
    def signer_addresses(self) -> list[str]:
        return self.pool.addresses

    async def start(self) -> None:
        self.loop_lag.start()
        await self.watcher.start()
        await self._recover()
        self.guard.start()
        if self.channels is not None:
            await self.channels.start()

    async def stop(self) -> None:
        if self._tracking:  # receipts still on their way: a last chance to reach the ledger
            await asyncio.wait(set(self._tracking), timeout=min(5.0, self.config.receipt_timeout_s))
        if self.channels is not None:
            await self.channels.stop()
        await self.guard.stop()
        await self.watcher.stop()
        await self.loop_lag.stop()
        await super().stop()

    async def reclose(self, claims: list[Claim], receipt: dict[str, Any]) -> None:
        """Close again, from a new receipt, payments whose first receipt a reorg undid."""
        for claim in claims:
            await self._close_from_receipt(claim, receipt["transactionHash"], receipt)

    def supported(self) -> dict[str, Any]:
        answer = super().supported()
        if self.channels is not None:
            answer["kinds"].append(self.channels.supported_kind())
        return answer

    def metrics(self) -> dict[str, Any]:
        """The exact payments' ledger and guard figures; with the batch-settlement scheme also
        `batch_settlement`: deposits_verified, deposits (landed), deposits_answered_again (retries answered
        from their record), vouchers_verified, refund_vouchers_verified, claims (txs), claimed_vouchers,
        settles, refunds, refused (and `refusals` by reason), tx_failed, `records` (rows per kind and state)
        and the channel txs' own guard resends and reorgs; `timing` (services.facilitator.loop_probe): the event
        loop's lag and the signer locks' wait, hold and round trip per send."""
        out = {**super().metrics(), "guard": {"resends": self.guard.resends, "reorgs": self.guard.reorgs},
               "timing": timing_metrics(self.loop_lag, self.lane_timers)}
        if self.channels is not None:
            out["batch_settlement"] = self.channels.metrics()
        return out

    def _spawn_tracked(self, work: Any) -> "asyncio.Task[Any]":
        """Run `work` (a coroutine) to its end even if the request that started it is gone; stop() waits for it."""
        task = asyncio.create_task(work)
        self._tracking.add(task)
        task.add_done_callback(self._tracking.discard)
        return task

    def _settled_answer(self, claim: Claim, tx_hash: str) -> dict[str, Any]:
        return {"success": True, "transaction": tx_hash, "network": self.config.network, "payer": claim.payer,
                "amount": str(claim.amount)}

    def _unsettled_answer(self, payer: str, reason: str, tx_hash: str, message: str | None = None) -> dict[str, Any]:
        answer = {"success": False, "errorReason": reason, "transaction": tx_hash, "network": self.config.network,
                  "payer": payer}
        return {**answer, "errorMessage": message} if message else answer

    # --- a payment seen before: a retry is answered from the ledger, never settled again -------------

    def _earlier(self, auth: Authorization) -> dict[str, Any] | None:
        """This very authorization's ledger row, if it was accepted before (a client retrying a payment
        whose answer it never got sends the same signed authorization again)."""
        row = self.ledger.find(self.config.token.address, auth.payer, auth.nonce)
        if row is None:
            return None
        same = (row["signature"] == auth.signature.lower() and row["payee"] == auth.payee.lower()
                and int(row["amount"]) == auth.value and int(row["valid_before"]) == auth.valid_before)
        if not same or row["state"] == "failed":
            raise Rejection(str(row["error"] or reasons.NONCE_ALREADY_USED) if same else reasons.NONCE_ALREADY_USED,
                            "this authorization was already accepted", auth.payer)
        return row

    async def _answer_again(self, row: dict[str, Any], payer: str) -> dict[str, Any]:
        """The outcome of a payment accepted earlier: its own answer if it is still being settled here,
        else what the ledger says once it closes (settlement_pending, with its hash, if it does not in time)."""
        running = self._outcomes.get(int(row["id"]))
        if running is not None:
            try:
                answer = await asyncio.wait_for(asyncio.shield(running), self.config.receipt_timeout_s)
            except asyncio.TimeoutError:
                return self._unsettled_answer(payer, reasons.SETTLEMENT_PENDING, str(row["tx_hash"] or ""))
            if answer.get("success") or answer.get("errorReason") != reasons.SETTLEMENT_PENDING:
                return answer
        deadline = time.monotonic() + RETRY_WAIT_S
        while True:
            row = self.ledger.find(self.config.token.address, payer, str(row["nonce"])) or row
            if row["state"] == "settled":
                return {"success": True, "transaction": row["tx_hash"], "network": self.config.network,
                        "payer": payer, "amount": str(row["amount"])}
            if row["state"] == "failed":
                return self._unsettled_answer(payer, str(row["error"] or reasons.TRANSACTION_FAILED),
                                              str(row["tx_hash"] or ""))
            if time.monotonic() > deadline:
                return self._unsettled_answer(payer, reasons.SETTLEMENT_PENDING, str(row["tx_hash"] or ""))
            await asyncio.sleep(0.05)

    async def verify(self, body: bytes) -> dict[str, Any]:
        _, payload, requirements = parse_request(body)
        if self.channels is not None and self.channels.handles(payload, requirements):
            return await self.channels.verify(payload, requirements)
        auth = check_payment(payload, requirements, self.config.token, self.config.chain_id)
        if self._earlier(auth) is not None:
            return {"isValid": True, "payer": auth.payer}  # a retry: /settle answers it from the ledger
        await check_chain(self.rpc, self.config.token, auth, self.ledger.reserved(auth.payer))
        return {"isValid": True, "payer": auth.payer}

    async def settle(self, body: bytes) -> dict[str, Any]:
        try:
            _, payload, requirements = parse_request(body)
            if self.channels is not None and self.channels.handles(payload, requirements):
                return await self.channels.settle(payload, requirements)
            auth = check_payment(payload, requirements, self.config.token, self.config.chain_id)
            claim = self.ledger.claim(self.config.token.address, auth.payer, auth.nonce, auth.payee, auth.value,
                                      auth.valid_after, auth.valid_before, auth.signature)
            if claim is None:
                row = self._earlier(auth)
                if row is None:  # released between the two reads: a rare race, answered as a refusal
                    raise Rejection(reasons.NONCE_ALREADY_USED, "this authorization was already accepted", auth.payer)
                return await self._answer_again(row, auth.payer)
        except Rejection as rejection:
            return self._failure(rejection)
        try:
            await check_chain(self.rpc, self.config.token, auth, self.ledger.reserved(auth.payer) - auth.value)
        except Rejection as rejection:
            self.ledger.release(claim, rejection.reason)
            return self._failure(rejection)
        return await self._settle_tracked([claim])

    def _settle_tracked(self, claims: list[Claim]) -> "asyncio.Future[dict[str, Any]]":
        """Settle, keeping the outcome where a retry of the same payment can await it."""
        outcome = asyncio.ensure_future(self._settle_claims(claims))
        for claim in claims:
            self._outcomes[claim.id] = outcome
        outcome.add_done_callback(lambda _: [self._outcomes.pop(c.id, None) for c in claims])
        return asyncio.shield(outcome)

    async def _settle_claims(self, claims: list[Claim]) -> dict[str, Any]:
        """Send one transferWithAuthorization, track its receipt, answer when the strategy says."""
        (claim,) = claims
        data = transfer_with_authorization_data(
            claim.payer, claim.payee, claim.amount, claim.valid_after, claim.valid_before, claim.nonce, claim.signature
        )
        lane = self.pool.pick()
        lane.in_flight += 1
        pending: list[asyncio.Future[dict[str, Any]]] = []
        hashes: list[str] = []
        try:
            sent = await lane.send(self.config.token.address, data,
                                   on_hash=self._writing_ahead(claims, lane, hashes, pending))
        except Exception as exc:
            lane.in_flight -= 1
            log.warning("send failed for %s: %s", claim.nonce, exc)
            self.ledger.release(claim, reasons.TRANSACTION_FAILED, refused_tx=hashes[-1] if hashes else "")
            return self._failure(Rejection(reasons.TRANSACTION_FAILED, str(exc), claim.payer))
        self.watcher.sent()
        self.ledger.submitted([claim.id], sent.signer, sent.nonce, sent.tx_hash)
        self.guard.sent(sent, claims, lane, self.config.token.address, data, None)
        return await self._answer(claims, sent.tx_hash, self._track(claims, sent.tx_hash, pending[-1], lane))

    def _writing_ahead(self, claims: list[Claim], lane: SignerLane, hashes: list[str],
                       pending: "list[asyncio.Future[dict[str, Any]]]") -> Any:
        """The lane's on_hash: before each broadcast, the tx's hash goes into the ledger (a process killed while
        the node takes the tx leaves its successor a hash to look up, not a claim to send again) and the
        watcher starts waiting for its receipt."""
        def on_hash(tx_hash: str) -> None:
            self.ledger.sending([c.id for c in claims], lane.address, tx_hash)
            hashes.append(tx_hash)
            pending.append(self.watcher.expect(tx_hash))
        return on_hash

    def _track(self, claims: list[Claim], tx_hash: str, receipt: "asyncio.Future[dict[str, Any]]",
               lane: SignerLane) -> "asyncio.Task[dict[str, Any]]":
        """Follow the tx to its receipt and into the ledger, whether or not anyone still waits for the answer."""
        async def follow() -> dict[str, Any]:
            try:
                return await self._await_receipt(claims, tx_hash, receipt)
            finally:
                lane.in_flight -= 1

        return self._spawn_tracked(follow())

    async def _answer(self, claims: list[Claim], tx_hash: str,
                      tracked: "asyncio.Task[dict[str, Any]]") -> dict[str, Any]:
        """x402's default flow: answer with the receipt's verdict (a dropped client does not stop the tracking)."""
        return await asyncio.shield(tracked)

    async def _await_receipt(
        self, claims: list[Claim], tx_hash: str, receipt_future: "asyncio.Future[dict[str, Any]]"
    ) -> dict[str, Any]:
        payer = claims[0].payer
        try:
            receipt = await asyncio.wait_for(receipt_future, self.config.receipt_timeout_s)
        except asyncio.TimeoutError:
            return self._unsettled_answer(payer, reasons.SETTLEMENT_PENDING, tx_hash)
        self.guard.mined(receipt)
        tx_hash = receipt["transactionHash"]  # the guard may have sent it again under another hash
        ok = int(receipt["status"], 16) == 1
        if not ok:
            (own,) = await self._own_settlements(claims)
            if own is not None:  # an earlier tx of ours used the authorization: that one is the settlement
                self._finish_from(claims, own)
                return self._settled_answer(claims[0], own["transactionHash"])
        self.ledger.finished(
            claims,
            ok=ok,
            tx_hash=tx_hash,
            block_number=int(receipt["blockNumber"], 16),
            gas_used=int(receipt["gasUsed"], 16),
            effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16),
            included_at=time.time(),
            error=None if ok else reasons.TRANSACTION_FAILED,
        )
        if not ok:
            return self._unsettled_answer(payer, reasons.TRANSACTION_FAILED, tx_hash)
        return self._settled_answer(claims[0], tx_hash)

    async def _recover(self) -> None:
        """Close what a crashed predecessor left open: never resend what may have landed.

        A claim whose tx has a receipt is settled if the token consumed its authorization in
        that tx (a batch may have skipped it, or an earlier tx of ours used it), and failed
        otherwise; a tx still in the node's pool is followed. Any other claim (no tx named, or
        one the node does not know) is judged by the chain before anything is sent: a
        predecessor killed between the node taking its tx and the ledger hearing of it leaves
        an authorization already used by a tx of ours, and that claim is settled by that tx.
        Only a claim whose authorization is still unused goes out again, while still valid.
        """
        unknown: list[Claim] = []
        for claim, state, tx_hash in self.ledger.open_claims():
            if tx_hash:
                receipt = await self.watcher.lookup(tx_hash)
                if receipt is not None:
                    await self._close_from_receipt(claim, tx_hash, receipt)
                    continue
                if await self.rpc.call("eth_getTransactionByHash", tx_hash) is not None:
                    # still in the node's pool: follow it; sending the authorization again would race it
                    asyncio.create_task(self._follow_pending(claim, tx_hash, self.watcher.expect(tx_hash)))
                    continue
            unknown.append(claim)
        for claim, used in zip(unknown, await self._authorizations_used(unknown)):
            if used:
                (own,) = await self._own_settlements([claim], strict=True)
                if own is not None:
                    self._finish_from([claim], own)
                else:
                    self.ledger.finished([claim], ok=False, error=reasons.NONCE_ALREADY_USED)
                continue
            if claim.valid_before <= time.time():
                self.ledger.finished([claim], ok=False, error=reasons.VALID_BEFORE_EXPIRED)
                continue
            self._settle_tracked([claim])

    async def _follow_pending(self, claim: Claim, tx_hash: str, receipt: "asyncio.Future[dict[str, Any]]") -> None:
        try:
            await self._close_from_receipt(claim, tx_hash, await asyncio.wait_for(receipt, self.config.receipt_timeout_s))
        except asyncio.TimeoutError:
            log.warning("recovered tx %s still has no receipt; reconciliation will read the chain", tx_hash)

    async def _close_from_receipt(self, claim: Claim, tx_hash: str, receipt: dict[str, Any]) -> None:
        """Settled if the token consumed this claim's authorization in that tx (or an earlier tx of ours did),
        failed (with why) otherwise."""
        ok = (claim.payer.lower(), claim.nonce.lower()) in authorizations_used(receipt, self.config.token.address)
        error = None if ok else (await self._why_failed([claim]))[0]
        if error == reasons.NONCE_ALREADY_USED:
            (own,) = await self._own_settlements([claim])
            if own is not None:
                self._finish_from([claim], own)
                return
        self.ledger.finished([claim], ok=ok, tx_hash=tx_hash, block_number=int(receipt["blockNumber"], 16),
                             gas_used=int(receipt["gasUsed"], 16), included_at=time.time(), error=error)

    async def _authorization_states(self, claims: list[Claim]) -> list[Any]:
        """The token's authorizationState of each claim, in one batched read: a hex word, or the call's error."""
        if not claims:
            return []
        token = self.config.token.address
        return await self.rpc.batch([
            ("eth_call", [{"to": token, "data": call_data(SEL_AUTHORIZATION_STATE, c.payer, c.nonce)}, "latest"])
            for c in claims])

    async def _authorizations_used(self, claims: list[Claim]) -> list[bool]:
        """Whether the token has marked each claim's authorization used (an RPC error raises)."""
        results = await self._authorization_states(claims)
        for result in results:
            if not isinstance(result, str):
                raise result
        return [int(r, 16) == 1 for r in results]

    async def _why_failed(self, claims: list[Claim]) -> list[str]:
        """A claim whose nonce is now used was beaten to the chain; anything else failed in the transfer."""
        return [reasons.NONCE_ALREADY_USED if isinstance(r, str) and int(r, 16) == 1 else reasons.TRANSACTION_FAILED
                for r in await self._authorization_states(claims)]

    async def _own_settlements(self, claims: list[Claim], strict: bool = False) -> list[dict[str, Any] | None]:
        """Per claim whose authorization is used: the receipt of the tx that used it if that tx was ours (sent by
        one of our signer keys, this process or an earlier one), else None (someone else beat us to it).

        How a claim whose own earlier tx landed unrecorded (its process killed mid-send), or whose retry
        raced a tx still in flight, is closed as what it is: settled, by that earlier tx. An unreadable chain
        raises when `strict` (recovery: better not to start than to close a paid claim as failed), else counts
        as no tx of ours (the claim fails with nonce_already_used, as it did before this check)."""
        ours = {a.lower() for a in self.signer_addresses}
        token = self.config.token.address
        found: list[dict[str, Any] | None] = []
        for claim in claims:
            own = None
            try:
                logs = await self.rpc.call("eth_getLogs", {
                    "address": token, "fromBlock": "0x0", "toBlock": "latest",
                    "topics": [TOPIC_AUTHORIZATION_USED, "0x" + word(claim.payer), "0x" + word(claim.nonce)]})
                for entry in logs or []:
                    if entry.get("removed"):
                        continue
                    receipt = await self.rpc.call("eth_getTransactionReceipt", entry["transactionHash"])
                    if (receipt is not None and int(receipt["status"], 16) == 1
                            and str(receipt.get("from", "")).lower() in ours):
                        own = receipt
                        break
            except Exception as exc:  # noqa: BLE001 - unreadable now: judged as before (nonce used by someone)
                if strict:
                    raise
                log.warning("could not read who used the authorization of %s: %s", claim.nonce, exc)
            found.append(own)
        return found

    def _finish_from(self, claims: list[Claim], receipt: dict[str, Any]) -> None:
        """Close claims as settled by the tx of this receipt (their authorizations used in it)."""
        log.warning("claim(s) %s settled by an earlier tx of ours, %s", [c.id for c in claims],
                    receipt["transactionHash"])
        self.ledger.finished(claims, ok=True, tx_hash=receipt["transactionHash"],
                             block_number=int(receipt["blockNumber"], 16), gas_used=int(receipt["gasUsed"], 16),
                             effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16),
                             included_at=time.time())


class PipelinedEngine(OwnEngine):
    """Answer once the tx is sent; its receipt is tracked and recorded in the background."""

    async def _answer(self, claims: list[Claim], tx_hash: str,
                      tracked: "asyncio.Task[dict[str, Any]]") -> dict[str, Any]:
        return self._settled_answer(claims[0], tx_hash)


class BatchedEngine(OwnEngine):
    """Claims wait in a batch; one BatchSettler tx settles the batch, each claim learns its own fate."""

    def __init__(self, config: FacilitatorConfig) -> None:
        super().__init__(config)
        if not config.settler:
            raise ValueError("strategy 'batched' needs the BatchSettler's address (FacilitatorConfig.settler)")
        self.settler = config.settler
        self._batch: list[tuple[Claim, asyncio.Future[dict[str, Any]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0

    async def _settle_claims(self, claims: list[Claim]) -> dict[str, Any]:
        (claim,) = claims
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._batch.append((claim, answer))
        if len(self._batch) >= self.config.batch_max_size:
            self._flush()
        elif len(self._batch) == 1:
            self._timer = asyncio.get_running_loop().call_later(self.config.batch_max_age_s, self._flush)
        return await asyncio.shield(answer)  # a dropped client must not drop its payment from the batch

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if batch:
            self._spawn_tracked(self._settle_batch(batch))

    def _answer_all(self, batch: list[tuple[Claim, "asyncio.Future[dict[str, Any]]"]], reason: str, tx_hash: str,
                    message: str | None = None) -> None:
        for claim, future in batch:
            if not future.done():
                future.set_result(self._unsettled_answer(claim.payer, reason, tx_hash, message))

    async def _settle_batch(self, batch: list[tuple[Claim, "asyncio.Future[dict[str, Any]]"]]) -> dict[str, Any]:
        claims = [c for c, _ in batch]
        data = batch_settle_data(self.config.token.address, [
            (c.payer, c.payee, c.amount, c.valid_after, c.valid_before, c.nonce, c.signature) for c in claims])
        lane = self.pool.pick()
        lane.in_flight += 1
        pending: list[asyncio.Future[dict[str, Any]]] = []
        hashes: list[str] = []
        try:
            try:
                sent = await lane.send(self.settler, data, on_hash=self._writing_ahead(claims, lane, hashes, pending),
                                       gas=batch_gas_limit(len(claims)))
            except Exception as exc:
                log.warning("batch of %d: send failed: %s", len(claims), exc)
                for claim in claims:
                    self.ledger.release(claim, reasons.TRANSACTION_FAILED, refused_tx=hashes[-1] if hashes else "")
                self._answer_all(batch, reasons.TRANSACTION_FAILED, "", str(exc))
                return {}
            self.batches += 1
            self.watcher.sent()
            self.ledger.submitted([c.id for c in claims], sent.signer, sent.nonce, sent.tx_hash)
            self.guard.sent(sent, claims, lane, self.settler, data, batch_gas_limit(len(claims)))
            try:
                receipt = await asyncio.wait_for(pending[-1], self.config.receipt_timeout_s)
            except asyncio.TimeoutError:
                self._answer_all(batch, reasons.SETTLEMENT_PENDING, sent.tx_hash)
                return {}
            self.guard.mined(receipt)
            await self._close_batch(batch, receipt["transactionHash"], receipt)
            return receipt
        finally:
            lane.in_flight -= 1

    async def _close_batch(self, batch: list[tuple[Claim, "asyncio.Future[dict[str, Any]]"]], tx_hash: str,
                           receipt: dict[str, Any]) -> None:
        """Split the batch by the token's AuthorizationUsed logs: those settled, those that were not (and why)."""
        used = authorizations_used(receipt, self.config.token.address)
        settled = [(c, f) for c, f in batch if (c.payer.lower(), c.nonce.lower()) in used]
        settled_ids = {c.id for c, _ in settled}
        failed = [(c, f) for c, f in batch if c.id not in settled_ids]
        figures = dict(tx_hash=tx_hash, block_number=int(receipt["blockNumber"], 16),
                       gas_used=int(receipt["gasUsed"], 16),
                       effective_gas_price=int(receipt.get("effectiveGasPrice", "0x0"), 16), included_at=time.time())
        if settled:
            self.ledger.finished([c for c, _ in settled], ok=True, **figures)
            for claim, future in settled:
                if not future.done():
                    future.set_result(self._settled_answer(claim, tx_hash))
        for (claim, future), reason in zip(failed, await self._why_failed([c for c, _ in failed])):
            if reason == reasons.NONCE_ALREADY_USED:
                (own,) = await self._own_settlements([claim])
                if own is not None:  # an earlier batch of ours used it (sent by a process killed before recording)
                    self._finish_from([claim], own)
                    if not future.done():
                        future.set_result(self._settled_answer(claim, own["transactionHash"]))
                    continue
            self.ledger.finished([claim], ok=False, error=reason, **figures)
            if not future.done():
                future.set_result(self._unsettled_answer(claim.payer, reason, tx_hash))

    async def stop(self) -> None:
        self._flush()  # what waits in the batch goes out now rather than never
        await super().stop()

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "batches": self.batches}


class SdkEngine(Engine):
    """The official SDK facilitator, unchanged; our ledger only wraps it to count and dedupe.

    With `config.batch_settlement` it also serves the SDK's `batch-settlement` scheme (deposits, vouchers,
    and the channel manager's claim / settle / refund payloads) through the SDK's own
    BatchSettlementEvmFacilitator. Those payloads carry no EIP-3009 authorization of the payment to key a
    ledger row on, so they go to the SDK unwrapped and unrecorded (the ledger counts exact payments).
    """

    THREADS = 40  # FastAPI's default pool for plain `def` handlers: the SDK's documented deployment

    def __init__(self, config: FacilitatorConfig) -> None:
        super().__init__(config)
        from x402 import x402FacilitatorSync
        from x402.mechanisms.evm.exact import register_exact_evm_facilitator

        from services.facilitator.sdk_probe import ProbedWeb3Signer, ThreadCpuProbe

        self.probe = ThreadCpuProbe()
        self._facilitators = []
        self._signers = []
        for key in config.signer_keys:
            facilitator = x402FacilitatorSync()
            signer = ProbedWeb3Signer(self.probe, private_key=key, rpc_url=config.rpc_url)
            register_exact_evm_facilitator(facilitator, signer, networks=config.network)
            if config.batch_settlement:
                from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator

                # The same key with a gas limit a 100-channel claim fits in; it shares the exact signer's
                # nonce counter, so the two never hand out the same nonce.
                batch_signer = ProbedWeb3Signer(self.probe, private_key=key, rpc_url=config.rpc_url,
                                                gas_limit=config.batch_settlement_gas_limit)
                batch_signer._reserve_nonce = signer._reserve_nonce  # type: ignore[method-assign]
                facilitator.register([config.network], BatchSettlementEvmFacilitator(batch_signer))
            self._facilitators.append(facilitator)
            self._signers.append(signer)
        self._turn = itertools.cycle(self._facilitators)
        self._limiter = CapacityLimiter(self.THREADS)

    @property
    def signer_addresses(self) -> list[str]:
        return [a for s in self._signers for a in s.get_addresses()]

    async def _in_thread(self, kind: str, fn, *args):  # noqa: ANN001, ANN202
        def measured():  # noqa: ANN202
            with self.probe.measure(kind):
                return fn(*args)

        return await anyio.to_thread.run_sync(measured, limiter=self._limiter)

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "sdk_threads": self.probe.snapshot()}

    def supported(self) -> dict[str, Any]:
        answer = super().supported()
        if self.config.batch_settlement:  # the SDK's own entry for it (its extra, if any, included)
            sdk = self._facilitators[0].get_supported().model_dump(by_alias=True, exclude_none=True)
            answer["kinds"] += [k for k in sdk["kinds"] if k.get("scheme") == "batch-settlement"]
        return answer

    async def verify(self, body: bytes) -> dict[str, Any]:
        _, payload, requirements = parse_request(body)
        result = await self._in_thread("verify", next(self._turn).verify, payload, requirements)
        return result.model_dump(by_alias=True, exclude_none=True)

    async def settle(self, body: bytes) -> dict[str, Any]:
        try:
            _, payload, requirements = parse_request(body)
            auth = payload.payload.get("authorization")
            if payload.accepted.scheme != "exact" or not isinstance(auth, dict) or not all(
                    isinstance(auth.get(k), str) for k in ("from", "nonce")):
                # nothing to key a ledger row on (a batch-settlement deposit, voucher, claim, settle or refund
                # among them): the SDK judges it alone, as it would unwrapped (the baseline)
                result = await self._in_thread("settle", next(self._turn).settle, payload, requirements)
                return result.model_dump(by_alias=True, exclude_none=True)
            claim = self.ledger.claim(
                self.config.token.address, str(auth.get("from", "")), str(auth.get("nonce", "")),
                str(auth.get("to", "")), int(auth.get("value", 0)), int(auth.get("validAfter", 0)),
                int(auth.get("validBefore", 0)),
                str(payload.payload.get("signature", "")),
            )
            if claim is None:
                raise Rejection(reasons.NONCE_ALREADY_USED, "this authorization was already accepted", auth.get("from"))
        except Rejection as rejection:
            return self._failure(rejection)
        except (TypeError, ValueError) as exc:
            return self._failure(Rejection(reasons.INVALID_PAYLOAD, str(exc)))
        self.ledger.submitted([claim.id], "", -1, "")
        try:
            result = await self._in_thread("settle", next(self._turn).settle, payload, requirements)
        except Exception:
            self.ledger.release(claim, reasons.UNEXPECTED_SETTLE_ERROR)  # it raised before any tx: nothing open
            raise
        if result.success:
            self.ledger.finished([claim], ok=True, tx_hash=result.transaction, included_at=time.time())
        elif result.error_reason == reasons.SETTLEMENT_PENDING:
            pass  # stays submitted; reconciliation reads the chain
        elif result.transaction:  # a tx went out and reverted: the claim was real, and failed
            self.ledger.finished([claim], ok=False, tx_hash=result.transaction, error=result.error_reason)
        else:
            self.ledger.release(claim, result.error_reason or reasons.UNEXPECTED_SETTLE_ERROR)
        return result.model_dump(by_alias=True, exclude_none=True)


for _name, _engine in (("sdk", SdkEngine), ("sync", OwnEngine), ("pipelined", PipelinedEngine),
                       ("batched", BatchedEngine)):
    register("strategy", "engine", _name, _engine)
# The schemes every engine serves: exact payments through the strategy's own path (checked by
# check_payment), batch-settlement payloads through the one handler all our strategies share.
register("scheme", "engine", "exact", check_payment)
register("scheme", "engine", "batch-settlement", ChannelSettlement)

#: The live strategies, by name (from the registry: declared in x402bench.registry, implemented above).
ENGINES: dict[str, type[Engine]] = implementations("strategy", "engine")


def make_engine(config: FacilitatorConfig) -> Engine:
    try:
        return ENGINES[config.strategy](config)
    except KeyError:
        raise ValueError(f"strategy {config.strategy!r} is not available; choose one of {sorted(ENGINES)}") from None

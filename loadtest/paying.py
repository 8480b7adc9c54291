"""One paid request from a Locust user: the x402 handshake over FastHttpUser's client.

The protocol work (402 decoding, signing, header encoding) is the payer's; this module
only adapts it to Locust: Locust's client as the transport, one Locust request entry per
payment (PAY, named by route), and one RequestRecord per payment for the run folder. The
round trips inside a payment are reported to the client's own request event, which the
locustfile points at loadtest.round_trips so that they do not count as more requests.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust import events

from services.payer.channel import ERR_SPEND_CAP, SCHEME as BATCH_SETTLEMENT, ChannelPayer
from services.payer.client import PayerCore, PaymentResult
from services.payer.payload import Quote
from x402bench.behaviour import answer_worth_retrying
from x402bench.results.records import RequestRecord


@dataclass
class AgentWallet:
    """One funded agent as a Locust user sees it: its payers (exact and channel, one key), and what it may
    still spend. A channel deposit counts as spent when it is made, not when vouchers draw on it: the
    deposit locks that much of the agent's funding in escrow, so the cap bounds what it may lose."""

    index: int
    private_key: str
    network: str
    cache_requirements: bool
    spend_cap: int  # atomic units: funding or budget, whichever is smaller
    spent: int = 0  # exact payments made + channel deposits made
    sent: int = 0
    payer: PayerCore = field(init=False)
    channels: ChannelPayer = field(init=False)

    def __post_init__(self) -> None:
        self.payer = PayerCore(self.private_key, self.network, cache=self.cache_requirements)
        self.channels = ChannelPayer(self.payer.signer, self.network, cache=self.cache_requirements)

    @property
    def left(self) -> int:
        return self.spend_cap - self.spent

    def can_afford(self, price: int, headroom: int | None = None) -> bool:
        """Can it pay `price`? `headroom` (channel routes): what its channel's deposit still covers; the rest
        would be a deposit, which must fit in what is left."""
        if headroom is not None and headroom >= price:
            return True
        return price - max(headroom or 0, 0) <= self.left


@dataclass
class Manners:
    """How an agent treats a paid request whose answer did not come (the scenario's agents.retry), and
    `drop_after_s`: hang up that long after sending a payment (the client_disconnect fault), or None."""

    attempts: int = 0
    backoff_s: float = 0.5
    timeout_s: float | None = None
    drop_after_s: float | None = None


def _send_via(client, route: str, manners: Manners):  # noqa: ANN001, ANN202
    """A transport for PayerCore over Locust's FastHttpSession, naming each round trip in the stats.

    A paid request that outlives `timeout_s` (or `drop_after_s`) is abandoned and reads as status 0,
    as a dropped connection does: the payment may still settle, and only a retry can get it served.
    """

    def send(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        phase = "paid" if "PAYMENT-SIGNATURE" in headers else "challenge"
        limit = manners.drop_after_s if phase == "paid" and manners.drop_after_s else manners.timeout_s
        try:
            with gevent.Timeout(limit):
                with client.request(method, url, headers=headers, name=f"{route} [{phase}]",
                                    catch_response=True) as response:
                    status = response.status_code or 0
                    if phase == "challenge" and status == 402:
                        response.success()
                    elif status != 200:
                        response.failure(f"{status}")
                    return status, {k.lower(): v for k, v in (response.headers or {}).items()}, response.content or b""
        except gevent.Timeout:
            return 0, {}, b""

    return send


def pay(client, wallet: AgentWallet, route: str, url: str, manners: Manners | None = None) -> RequestRecord:  # noqa: ANN001
    """Pay for one request, retrying the same signed payment as `manners` say; fires one Locust "PAY <route>"
    entry for the whole payment. One record per payment: first send to final answer, `attempts` sends."""
    manners = manners or Manners()
    wallet.sent += 1
    start = time.time()
    result: PaymentResult = wallet.payer.pay(_send_via(client, route, manners), "GET", url)
    attempts = 1
    if manners.drop_after_s:  # the hang-up is one attempt's fate; a retry waits for its answer
        manners = Manners(manners.attempts, manners.backoff_s, manners.timeout_s)
    while attempts <= manners.attempts and answer_worth_retrying(result):
        gevent.sleep(manners.backoff_s)
        wallet.payer.resend(_send_via(client, route, manners), "GET", url, result)
        attempts += 1
    end = time.time()
    if result.status == 200:
        wallet.spent += result.amount
    return _finished(start, end, route, wallet, result, nonce=result.nonce, tx_hash=result.transaction or "",
                     attempts=attempts)


def pay_channel(client, wallet: AgentWallet, route: str, url: str, manners: Manners | None = None) -> RequestRecord:  # noqa: ANN001
    """Pay for one request of a batch-settlement route from the agent's channel: a voucher, with a deposit (never
    more than the agent has left) when the channel needs funds. No resend of the same payment: a voucher whose
    answer was lost is put right by the next one (the server's corrective 402 says what it charged)."""
    manners = manners or Manners()
    wallet.sent += 1
    start = time.time()
    result = wallet.channels.pay(_send_via(client, route, manners), "GET", url, deposit_limit=wallet.left)
    end = time.time()
    if result.status == 200:
        wallet.spent += result.deposit
    return _finished(start, end, route, wallet, result, nonce="",
                     tx_hash=(result.transaction or "") if result.deposit else "",
                     attempts=2 if result.corrected else 1, scheme=BATCH_SETTLEMENT, channel=result.channel,
                     cumulative=result.cumulative)


def _finished(start: float, end: float, route: str, wallet: AgentWallet, result: PaymentResult,
              **scheme_fields: Any) -> RequestRecord:
    """One payment's Locust statistic and its record, alike for every scheme; `scheme_fields` are the
    record fields that say how it was paid (nonce, tx_hash, attempts; channel and cumulative)."""
    events.request.fire(
        request_type="PAY", name=route, response_time=(end - start) * 1000, response_length=0,
        exception=None if result.status == 200 else RuntimeError(result.error or str(result.status)), context={},
    )
    timing = result.server_timing
    return RequestRecord(
        t_start=start, t_end=end, route=route, agent=wallet.index, status=result.status, error=result.error or "",
        challenge_s=result.challenge_s, sign_s=result.sign_s, paid_s=result.paid_s,
        verify_s=timing.get("verify", 0.0), handler_s=timing.get("handler", 0.0), settle_s=timing.get("settle", 0.0),
        amount=result.amount if result.status == 200 else 0, payer=result.payer, **scheme_fields,
    )


#: Refusals after which an agent stops paying: it cannot fund what it would owe.
BROKE_REASONS = frozenset({"invalid_exact_evm_insufficient_balance", ERR_SPEND_CAP,
                           "invalid_batch_settlement_evm_insufficient_balance"})


def facilitator_requirement(network: str, token: dict[str, Any], pay_to: str, amount: int,
                            timeout_s: int = 300) -> dict[str, Any]:
    """What a priced service would quote, built from the world: the terms a facilitator-only run pays."""
    return {"scheme": "exact", "network": network, "asset": token["address"], "amount": str(amount), "payTo": pay_to,
            "maxTimeoutSeconds": timeout_s, "extra": {"name": token["name"], "version": token["version"]}}


def _post_json(client, path: str, body: bytes, name: str) -> tuple[int, dict[str, Any]]:  # noqa: ANN001
    with client.request("POST", path, data=body, headers={"Content-Type": "application/json"}, name=name,
                        catch_response=True) as response:
        status = response.status_code or 0
        try:
            answer = json.loads(response.content or b"{}")
        except ValueError:
            answer = {}
        if status != 200 or not isinstance(answer, dict):
            response.failure(f"{status}")
            return status, answer if isinstance(answer, dict) else {}
        ok = answer.get("isValid", answer.get("success"))
        if ok is False:
            response.failure(answer.get("invalidReason") or answer.get("errorReason") or "refused")
        else:
            response.success()
        return status, answer


def settle_direct(client, wallet: AgentWallet, route: str, quote: Quote) -> RequestRecord:  # noqa: ANN001
    """One payment straight to a facilitator: sign, POST /verify, then POST /settle if valid.

    The record reads as a paid request would: status 200 when /settle succeeded (the payment is
    then "served"), verify_s and settle_s the two round trips, t_end when the settle answer came.
    """
    wallet.sent += 1
    start = time.time()
    t_sign = time.perf_counter()
    payment = wallet.payer.sign(quote)
    sign_s = time.perf_counter() - t_sign
    body = json.dumps({"x402Version": 2, "paymentPayload": json.loads(base64.b64decode(payment.header)),
                       "paymentRequirements": quote.requirement}).encode()
    t_verify = time.perf_counter()
    status, verdict = _post_json(client, "/verify", body, f"{route} [verify]")
    verify_s = time.perf_counter() - t_verify
    settle_s, answer, error = 0.0, {}, ""
    if status == 200 and verdict.get("isValid") is True:
        t_settle = time.perf_counter()
        status, answer = _post_json(client, "/settle", body, f"{route} [settle]")
        settle_s = time.perf_counter() - t_settle
        if status == 200 and answer.get("success") is not True:
            status, error = 402, str(answer.get("errorReason") or "settle_failed")
    elif status == 200:
        status, error = 402, str(verdict.get("invalidReason") or "invalid")
    else:
        error = str(verdict.get("invalidReason") or verdict.get("errorReason") or answer.get("errorReason")
                    or f"http_{status}")
    end = time.time()
    paid = status == 200
    if paid:
        wallet.spent += payment.amount
    events.request.fire(
        request_type="PAY", name=route, response_time=(end - start) * 1000, response_length=0,
        exception=None if paid else RuntimeError(error), context={},
    )
    return RequestRecord(
        t_start=start, t_end=end, route=route, agent=wallet.index, status=status, error=error, challenge_s=0.0,
        sign_s=sign_s, paid_s=verify_s + settle_s, verify_s=verify_s, handler_s=0.0, settle_s=settle_s,
        amount=payment.amount if paid else 0, payer=wallet.payer.address, nonce=payment.nonce,
        tx_hash=str(answer.get("transaction") or ""),
    )

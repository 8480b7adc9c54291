"""One paid request from a Locust user: the x402 handshake over FastHttpUser's client.

The protocol work (402 decoding, signing, header encoding) is the payer's; this module
only adapts it to Locust: Locust's client as the transport, Locust statistics for each
round trip, and one RequestRecord per payment for the run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from locust import events

from services.payer.client import PayerCore, PaymentResult
from x402bench.results.records import RequestRecord


@dataclass
class AgentWallet:
    """One funded agent as a Locust user sees it: its payer, and what it may still spend."""

    index: int
    private_key: str
    network: str
    cache_requirements: bool
    spend_cap: int  # atomic units: funding or budget, whichever is smaller
    spent: int = 0
    sent: int = 0
    payer: PayerCore = field(init=False)

    def __post_init__(self) -> None:
        self.payer = PayerCore(self.private_key, self.network, cache=self.cache_requirements)

    def can_afford(self, price: int) -> bool:
        return self.spent + price <= self.spend_cap


def _send_via(client, route: str):  # noqa: ANN001, ANN202
    """A transport for PayerCore over Locust's FastHttpSession, naming each round trip in the stats."""

    def send(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        phase = "paid" if "PAYMENT-SIGNATURE" in headers else "challenge"
        with client.request(method, url, headers=headers, name=f"{route} [{phase}]", catch_response=True) as response:
            status = response.status_code or 0
            if phase == "challenge" and status == 402:
                response.success()
            elif status != 200:
                response.failure(f"{status}")
            return status, {k.lower(): v for k, v in (response.headers or {}).items()}, response.content or b""

    return send


def pay(client, wallet: AgentWallet, route: str, url: str) -> RequestRecord:  # noqa: ANN001
    """Pay for one request; fires one Locust "PAY paid" entry for the whole handshake."""
    wallet.sent += 1
    start = time.time()
    result: PaymentResult = wallet.payer.pay(_send_via(client, route), "GET", url)
    end = time.time()
    if result.status == 200:
        wallet.spent += result.amount
    events.request.fire(
        request_type="PAY", name="paid", response_time=(end - start) * 1000, response_length=0,
        exception=None if result.status == 200 else RuntimeError(result.error or str(result.status)), context={},
    )
    timing = result.server_timing
    return RequestRecord(
        t_start=start, t_end=end, route=route, agent=wallet.index, status=result.status, error=result.error or "",
        challenge_s=result.challenge_s, sign_s=result.sign_s, paid_s=result.paid_s,
        verify_s=timing.get("verify", 0.0), handler_s=timing.get("handler", 0.0), settle_s=timing.get("settle", 0.0),
        amount=result.amount if result.status == 200 else 0, payer=result.payer, nonce=result.nonce,
        tx_hash=result.transaction or "",
    )

"""The fast paying client: the x402 handshake over any transport.

`PayerCore.pay(send, method, url)` takes a `send(method, url, headers) -> (status, headers,
body)` callable, so the same code pays from Locust (FastHttpUser), httpx, or a test. With
caching on, the 402 terms of a URL are kept and later calls pay on the first request (one
round trip instead of two); a paid attempt refused because the terms changed drops the
cache and does the full handshake once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from services.payer.payload import Quote, WireError, decode_header, encode_payload
from services.payer.signing import AuthorizationSigner

Send = Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]
#: Tamper hook for hostile tests: gets the payload dict, returns what to send.
Tamper = Callable[[dict[str, Any]], dict[str, Any]]

STALE_TERMS = {"No matching payment requirements", "invalid_payment_requirements"}


@dataclass
class PaymentResult:
    status: int
    error: str = ""
    challenge_s: float = 0.0
    sign_s: float = 0.0
    paid_s: float = 0.0
    amount: int = 0
    payer: str = ""
    nonce: str = ""
    transaction: str = ""
    settle: dict[str, Any] = field(default_factory=dict)
    server_timing: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.challenge_s + self.sign_s + self.paid_s


def parse_server_timing(value: str | None) -> dict[str, float]:
    """`verify;dur=12.3, settle;dur=40` -> {"verify": 0.0123, "settle": 0.04} (seconds)."""
    timings: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    timings[name] = float(number) / 1000
                except ValueError:
                    pass
    return timings


def _reason_of(status: int, headers: dict[str, str], body: bytes) -> str:
    if "payment-required" in headers:
        try:
            return str(decode_header(headers["payment-required"], "PAYMENT-REQUIRED").get("error") or status)
        except WireError:
            pass
    try:
        data = json.loads(body)
        return str(data.get("error") or data.get("errorReason") or status)
    except (ValueError, AttributeError):
        return str(status) if status else "transport_error"


class PayerCore:
    def __init__(self, private_key: str, network: str, cache: bool = True, asset: str | None = None,
                 tamper: Tamper | None = None) -> None:
        self.signer = AuthorizationSigner(private_key)
        self.network = network
        self.cache = cache
        self.asset = asset
        self.tamper = tamper
        self._quotes: dict[tuple[str, str], Quote] = {}

    @property
    def address(self) -> str:
        return self.signer.address

    def sign(self, quote: Quote) -> tuple[str, str, int]:
        """(header, nonce, amount) for a fresh authorization of the quoted terms."""
        req = quote.requirement
        nonce = "0x" + os.urandom(32).hex()
        amount = int(req["amount"])
        valid_before = int(time.time()) + int(req.get("maxTimeoutSeconds") or 3600)
        extra = req.get("extra") or {}
        signature = self.signer.sign(extra.get("name", ""), extra.get("version", ""), quote.chain_id, req["asset"],
                                     req["payTo"], amount, 0, valid_before, nonce)
        authorization = {"from": self.address, "to": req["payTo"], "value": str(amount), "validAfter": "0",
                         "validBefore": str(valid_before), "nonce": nonce}
        if self.tamper is None:
            return quote.header(authorization, signature), nonce, amount
        return encode_payload(self.tamper(quote.payload_dict(authorization, signature))), nonce, amount

    def pay(self, send: Send, method: str, url: str, _retried: bool = False) -> PaymentResult:
        key = (method, url)
        quote = self._quotes.get(key) if self.cache else None
        challenge_s = 0.0
        if quote is None:
            start = time.perf_counter()
            status, headers, body = send(method, url, {})
            challenge_s = time.perf_counter() - start
            if status != 402:
                return PaymentResult(status, "" if status == 200 else _reason_of(status, headers, body),
                                     challenge_s=challenge_s, payer=self.address)
            try:
                quote = Quote.from_payment_required(
                    decode_header(headers.get("payment-required", ""), "PAYMENT-REQUIRED"), self.network, asset=self.asset
                )
            except WireError as exc:
                return PaymentResult(402, f"unpayable_402: {exc}", challenge_s=challenge_s, payer=self.address)
            if self.cache:
                self._quotes[key] = quote
        start = time.perf_counter()
        header, nonce, amount = self.sign(quote)
        sign_s = time.perf_counter() - start
        start = time.perf_counter()
        status, headers, body = send(method, url, {"PAYMENT-SIGNATURE": header})
        paid_s = time.perf_counter() - start
        result = PaymentResult(status, challenge_s=challenge_s, sign_s=sign_s, paid_s=paid_s, amount=amount,
                               payer=self.address, nonce=nonce, server_timing=parse_server_timing(headers.get("server-timing")))
        if "payment-response" in headers:
            try:
                result.settle = decode_header(headers["payment-response"], "PAYMENT-RESPONSE")
                result.transaction = str(result.settle.get("transaction") or "")
            except WireError:
                pass
        if status != 200:
            result.error = str(result.settle.get("errorReason") or _reason_of(status, headers, body))
            if challenge_s == 0.0 and not _retried and result.error in STALE_TERMS:
                self._quotes.pop(key, None)  # the terms changed under our cache: learn them again, once
                return self.pay(send, method, url, _retried=True)
        return result

"""The fast paying client: the x402 v2 handshake over any transport.

`PayerCore.pay(send, method, url)` drives one paid request through a
`send(method, url, headers) -> (status, headers, body)` callable, so the same code pays from
Locust's FastHttpUser, httpx (`HttpxPayer` below) or a test. The flow, as the SDK client's:
request; on 402 decode PAYMENT-REQUIRED, choose the "exact" requirement for our network (and
asset, if pinned), sign an EIP-3009 authorization, retry once with PAYMENT-SIGNATURE.

With `cache=True` the chosen terms are kept per (method, URL) and later calls pay on the first
request: one round trip instead of two. If such a paid attempt is refused with a 402 saying the
terms no longer match (or have expired), the cache entry is dropped and the full handshake runs
once. Timings per phase and the decoded PAYMENT-RESPONSE and Server-Timing come back in a
`PaymentResult`; nothing raises for an HTTP-level refusal.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from x402.mechanisms.evm import constants as evm

from services.payer.payload import (
    Payment,
    PaymentResponse,
    Quote,
    Tamper,
    WireError,
    NoMatchingRequirements,
    decode_payment_required,
    decode_payment_response,
    normalize_requirement,
    sign_payment,
)
from services.payer.signing import AuthorizationSigner
from x402bench.registry import register

__all__ = [
    "Send", "PaymentResult", "PayerCore", "HttpxPayer", "httpx_send", "parse_server_timing", "header_value",
    "STALE_REASONS", "Tamper",
]

#: The transport: (method, url, request headers) -> (status, response headers, body). Status 0 = no answer.
Send = Callable[[str, str, dict[str, str]], tuple[int, Mapping[str, str], bytes]]

PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"

#: Reasons a refused *cached* payment means "your terms are stale": learn them again, once.
#: The SDK middleware says "No matching payment requirements" when `accepted` differs from the
#: route's current terms; a facilitator says so with these codes.
STALE_REASONS = frozenset({
    "No matching payment requirements", "invalid_payment_requirements", evm.ERR_RECIPIENT_MISMATCH,
    evm.ERR_AUTHORIZATION_VALUE_MISMATCH, evm.ERR_NETWORK_MISMATCH, evm.ERR_TOKEN_NAME_MISMATCH,
    evm.ERR_TOKEN_VERSION_MISMATCH, evm.ERR_MISSING_EIP712_DOMAIN, evm.ERR_VALID_BEFORE_EXPIRED,
})
_STALE_WORDS = ("mismatch", "expired", "no matching")

# client-side reason codes (the server never saw a payment)
ERR_TRANSPORT = "transport_error"
ERR_BAD_402 = "invalid_payment_required"
ERR_NO_MATCH = "no_matching_requirements"


@dataclass(slots=True)
class PaymentResult:
    """What one paid request did and where its time went (seconds, perf_counter)."""

    status: int  # final HTTP status (0: the transport got no answer)
    error: str = ""  # x402 reason code, or a client-side code; "" on 200
    challenge_s: float = 0.0  # unpaid request -> 402 round trip (0 when paid from the cache)
    sign_s: float = 0.0  # building and signing the payment(s)
    paid_s: float = 0.0  # the (last) paid round trip
    total_s: float = 0.0  # the whole call, stale retries included
    amount: int = 0  # atomic units authorized in the last payment sent
    payer: str = ""
    nonce: str = ""  # EIP-3009 nonce of the last payment sent, 0x-hex
    response: PaymentResponse | None = None  # decoded PAYMENT-RESPONSE, if any
    server_timing: dict[str, float] = field(default_factory=dict)  # Server-Timing name -> seconds
    round_trips: int = 0
    cached: bool = False  # the first request already carried a payment from cached terms
    stale_retry: bool = False  # cached terms were refused as stale and the handshake was redone
    stale_s: float = 0.0  # the refused cached attempt's round trip
    detail: str = ""  # human-readable context for client-side errors
    payment_required: dict[str, Any] | None = None  # last decoded PAYMENT-REQUIRED
    payment: Payment | None = None  # the last payment sent (header, nonce, payload when tampered)
    body: bytes = b""
    # batch-settlement (services.payer.channel): the channel paid from, the voucher's signed cumulative amount,
    # what this request deposited (0: a voucher alone), and whether a corrective 402 made it sign again
    scheme: str = "exact"
    channel: str = ""
    cumulative: int = 0
    deposit: int = 0
    corrected: bool = False

    @property
    def total(self) -> float:
        return self.total_s

    @property
    def paid(self) -> bool:
        return self.status == 200 and self.payment is not None

    @property
    def transaction(self) -> str:
        return self.response.transaction if self.response else ""

    @property
    def network(self) -> str:
        return self.response.network if self.response else ""


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (transports differ: Locust keeps case, we lower it)."""
    value = headers.get(name.lower())
    if value is None:
        value = headers.get(name)
        if value is None:
            lowered = name.lower()
            for key, item in headers.items():
                if key.lower() == lowered:
                    return item
    return value


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` except inside double-quoted strings (Server-Timing desc="a,b")."""
    if '"' not in text:
        return text.split(sep)
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def parse_server_timing(value: str | None) -> dict[str, float]:
    """`verify;dur=12.3, settle;desc="x";dur=40` -> {"verify": 0.0123, "settle": 0.04} (seconds).

    Entries without a numeric dur are skipped; a repeated name keeps its last value.
    """
    timings: dict[str, float] = {}
    for entry in _split_outside_quotes(value or "", ","):
        name, *params = _split_outside_quotes(entry, ";")
        name = name.strip()
        if not name:
            continue
        for param in params:
            key, _, number = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    timings[name] = float(number.strip().strip('"')) / 1000
                except ValueError:
                    pass
    return timings


def _body_error(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict):
        reason = data.get("error") or data.get("errorReason") or data.get("invalidReason")
        return str(reason) if reason else None
    return None


def refusal(status: int, reply: Mapping[str, str], body: bytes, result: PaymentResult) -> None:
    """Why a paid request was not served, for every scheme: the corrective 402's reason, else the
    PAYMENT-RESPONSE's, else the body's error, else the bare status."""
    reason: str | None = None
    if status == 402:
        required_header = header_value(reply, "payment-required")
        if required_header:
            try:
                required = decode_payment_required(required_header)
                result.payment_required = required
                reason = str(required.get("error") or "") or None
            except WireError as exc:
                result.detail = str(exc)
        if reason is None and result.response is not None:
            reason = result.response.error_reason
    result.error = reason or _body_error(body) or str(status)


Q = TypeVar("Q")


def challenge(send: Send, method: str, url: str, base: dict[str, str], result: PaymentResult,
              quote_of: Callable[[dict[str, Any]], Q]) -> Q | None:
    """The unpaid request every scheme starts with; the terms to pay (`quote_of` the 402's body) if it
    answered 402 with payable ones, else None with `result` saying why (free, an error, an unusable 402)."""
    t0 = time.perf_counter()
    status, reply, body = send(method, url, dict(base))
    result.challenge_s = time.perf_counter() - t0
    result.round_trips += 1
    result.status, result.body = status, body
    if status != 402:  # free, or an error before any payment: report it as is
        result.server_timing = parse_server_timing(header_value(reply, "server-timing"))
        if status != 200:
            result.error = ERR_TRANSPORT if status == 0 else (_body_error(body) or str(status))
        return None
    try:
        required = decode_payment_required(header_value(reply, "payment-required"))
        result.payment_required = required
        return quote_of(required)
    except NoMatchingRequirements as exc:
        result.error, result.detail = ERR_NO_MATCH, str(exc)
    except WireError as exc:
        result.error, result.detail = ERR_BAD_402, str(exc)
    return None


class PayerCore:
    """One wallet's synchronous x402 client, transport-agnostic (cheap: one per agent)."""

    def __init__(
        self, private_key: str | bytes | AuthorizationSigner, network: str, cache: bool = True,
        asset: str | None = None, tamper: Tamper | None = None, scheme: str = "exact",
    ) -> None:
        self.signer = private_key if isinstance(private_key, AuthorizationSigner) else AuthorizationSigner(private_key)
        self.network = network
        self.cache = cache
        self.asset = asset
        self.scheme = scheme
        self.tamper = tamper  # default hooks for every payment (hostile tests); pay(tamper=...) overrides
        self._quotes: dict[tuple[str, str], Quote] = {}

    @property
    def address(self) -> str:
        return self.signer.address

    def quote(self, payment_required: dict[str, Any]) -> Quote:
        """Terms this payer would pay from a decoded PaymentRequired (NoMatchingRequirements if none)."""
        return Quote.from_payment_required(payment_required, self.network, self.scheme, self.asset)

    def sign(self, quote: Quote, tamper: Tamper | None = None) -> Payment:
        """A fresh signed payment for the quoted terms."""
        return sign_payment(quote, self.signer, tamper=tamper if tamper is not None else self.tamper)

    def cached_quote(self, method: str, url: str) -> Quote | None:
        return self._quotes.get((method.upper(), url))

    def forget(self, method: str | None = None, url: str | None = None) -> None:
        """Drop cached terms for one (method, URL), or all of them."""
        if method is None or url is None:
            self._quotes.clear()
        else:
            self._quotes.pop((method.upper(), url), None)

    def remember(self, method: str, url: str, quote: Quote) -> None:
        """Seed the cache (e.g. terms learned elsewhere); used only when caching is on."""
        self._quotes[(method.upper(), url)] = quote

    def pay(
        self, send: Send, method: str, url: str, headers: Mapping[str, str] | None = None,
        tamper: Tamper | None = None,
    ) -> PaymentResult:
        """One paid request: at most one refused cached attempt, one 402, one paid retry."""
        start = time.perf_counter()
        result = PaymentResult(status=0, payer=self.signer.address)
        base = dict(headers or {})
        key = (method.upper(), url)
        hooks = tamper if tamper is not None else self.tamper
        quote = self._quotes.get(key) if self.cache else None
        if quote is not None:
            result.cached = True
            status, reply, body = self._send_paid(send, method, url, base, quote, hooks, result)
            # tampered payments are judged as sent: no second, differently refused attempt
            if status == 402 and hooks is None and self._stale(reply, quote):
                self._quotes.pop(key, None)
                result.stale_retry, result.stale_s, result.paid_s = True, result.paid_s, 0.0
                quote = None
            else:
                self._finish(result, status, reply, body)
        if quote is None:
            quote = self._challenge(send, method, url, base, result)
            if quote is not None:
                if self.cache:
                    self._quotes[key] = quote
                status, reply, body = self._send_paid(send, method, url, base, quote, hooks, result)
                self._finish(result, status, reply, body)
        result.total_s = time.perf_counter() - start
        return result

    def resend(self, send: Send, method: str, url: str, result: PaymentResult,
               headers: Mapping[str, str] | None = None) -> PaymentResult:
        """Send the payment `result` already carries once more, unchanged: the retry of a payment whose
        answer never came. The same authorization lets the facilitator recognise it (settled already:
        served with the original transaction; still in flight: settlement_pending) rather than charge
        twice. Updates and returns `result` (round trips and total time accumulate)."""
        if result.payment is None:
            raise ValueError("nothing to resend: this result carries no payment")
        start = time.perf_counter()
        status, reply, body = send(method, url, {**dict(headers or {}), PAYMENT_SIGNATURE: result.payment.header})
        result.paid_s = time.perf_counter() - start
        result.round_trips += 1
        result.response, result.detail = None, ""
        self._finish(result, status, reply, body)
        result.total_s += time.perf_counter() - start
        return result

    # --- steps --------------------------------------------------------------------------

    def _challenge(self, send: Send, method: str, url: str, base: dict[str, str],
                   result: PaymentResult) -> Quote | None:
        return challenge(send, method, url, base, result, self.quote)

    def _send_paid(self, send: Send, method: str, url: str, base: dict[str, str], quote: Quote,
                   hooks: Tamper | None, result: PaymentResult) -> tuple[int, Mapping[str, str], bytes]:
        t0 = time.perf_counter()
        payment = sign_payment(quote, self.signer, tamper=hooks)
        t1 = time.perf_counter()
        status, reply, body = send(method, url, {**base, PAYMENT_SIGNATURE: payment.header})
        t2 = time.perf_counter()
        result.sign_s += t1 - t0
        result.paid_s = t2 - t1
        result.round_trips += 1
        result.payment, result.nonce, result.amount = payment, payment.nonce, payment.amount
        return status, reply, body

    def _stale(self, reply: Mapping[str, str], quote: Quote) -> bool:
        """Was a cached payment refused because the terms changed or expired?"""
        try:
            required = decode_payment_required(header_value(reply, "payment-required"))
        except WireError:
            return False  # e.g. a settlement failure: 402 with only PAYMENT-RESPONSE
        reason = str(required.get("error") or "")
        if reason in STALE_REASONS or any(word in reason.lower() for word in _STALE_WORDS):
            return True
        # the server's current terms no longer include what we paid against
        for option in required.get("accepts", []):
            try:
                if normalize_requirement(option) == quote.offered:
                    return False
            except WireError:
                continue
        return True

    def _finish(self, result: PaymentResult, status: int, reply: Mapping[str, str], body: bytes) -> None:
        """Fill status, reason code, PAYMENT-RESPONSE and Server-Timing from the paid answer."""
        result.status, result.body = status, body
        result.server_timing = parse_server_timing(header_value(reply, "server-timing"))
        settle_header = header_value(reply, "payment-response") or header_value(reply, "x-payment-response")
        if settle_header:
            try:
                result.response = decode_payment_response(settle_header)
            except WireError as exc:
                result.detail = str(exc)
        if status == 200:
            result.error = ""
            return
        if status == 0:
            result.error = ERR_TRANSPORT
            return
        refusal(status, reply, body, result)


# --- httpx convenience ---------------------------------------------------------------------


def httpx_send(client: Any) -> Send:
    """A Send over an httpx.Client (headers lower-cased; repeated headers joined by ", ")."""

    def send(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        reply = client.request(method, url, headers=headers)
        return reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.content

    return send


class HttpxPayer:
    """PayerCore over its own httpx.Client: `with HttpxPayer(key, network) as p: p.pay(url)`."""

    def __init__(
        self, private_key: str | bytes | AuthorizationSigner, network: str, *, cache: bool = True,
        asset: str | None = None, timeout: float = 60.0, client: Any = None,
    ) -> None:
        import httpx

        self.core = PayerCore(private_key, network, cache=cache, asset=asset)
        self._own = client is None
        self.http = client if client is not None else httpx.Client(timeout=timeout)
        self._send = httpx_send(self.http)

    def pay(self, url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
            tamper: Tamper | None = None) -> PaymentResult:
        """Pay for one request; a connection failure comes back as status 0, error transport_error."""
        import httpx

        try:
            return self.core.pay(self._send, method, url, headers, tamper)
        except httpx.TransportError as exc:
            return PaymentResult(status=0, error=ERR_TRANSPORT, detail=f"{type(exc).__name__}: {exc}",
                                 payer=self.core.address)

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> "HttpxPayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


register("scheme", "payer", "exact", PayerCore)

"""Hostile payments as a check anyone can point at an x402 endpoint: `x402bench probe`.

The same attacks tests/test_hostile.py runs against x402bench's own stack, turned into a table
of cases (`CASES`) that run against any priced service route or any facilitator on a world's
chain. Each case says what a correct endpoint must answer; it *holds* when the endpoint refused
as required, answered in time and without a 5xx, and the chain shows nothing was paid for it.
Valid payments (the control, the first of a replay, one of the concurrent copies) must be
served and settled instead, and the payee's balance must move by exactly what they paid.

Reason codes are strict only where every conforming endpoint finds the same fault first (a
wrong payee is a recipient mismatch wherever it is caught). Where implementations legitimately
disagree, any refusal holds: terms that differ from the quote are refused by the SDK middleware
itself ("No matching payment requirements") before a facilitator sees them, a high-s signature
may only be caught by the token, a mangled field is found by whichever check reads it first.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal

from services.payer.payload import Quote, encode_header
from services.payer.signing import SECP256K1_N, AuthorizationSigner

Target = Literal["service", "facilitator"]
Kind = Literal["paid", "once", "replay", "concurrent"]

COPIES = 10  # concurrent copies of one payment: exactly one may be served
OTHER_ADDRESS = "0x" + "22" * 20  # a payee nobody quoted
OTHER_TOKEN = "0x" + "33" * 20  # a token nobody quoted


class ReasonCode:
    """The x402 reason codes the cases name: the SDK's own constants and the spec's generic codes.

    Written out rather than imported from the SDK, whose EVM package loads web3 (a second of
    start-up before `probe` could even say a URL is unreachable); tests/test_probe.py checks
    every one against services.facilitator.reasons.
    """

    INVALID_PAYLOAD = "invalid_payload"
    INVALID_X402_VERSION = "invalid_x402_version"
    NETWORK_MISMATCH = "network_mismatch"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_SIGNATURE = "invalid_exact_evm_payload_signature"
    RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
    VALUE_MISMATCH = "invalid_exact_evm_payload_authorization_value_mismatch"
    VALID_BEFORE_EXPIRED = "invalid_exact_evm_payload_authorization_valid_before"
    VALID_AFTER_FUTURE = "invalid_exact_evm_payload_authorization_valid_after"
    NONCE_ALREADY_USED = "invalid_exact_evm_nonce_already_used"
    INSUFFICIENT_BALANCE = "invalid_exact_evm_insufficient_balance"
    TRANSACTION_FAILED = "transaction_failed"


r = ReasonCode  # short, as the table reads it: r.RECIPIENT_MISMATCH


class ProbeInputError(Exception):
    """Bad input to the probe (unreachable URL, no 402, unusable world file): exit 2, no traceback."""


# --- what a correct endpoint answers ---------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """A refusal: the HTTP statuses allowed per target and the reason codes allowed (None: any reason).

    `settle` overrides `reasons` for a facilitator's /settle, for faults only the chain can see:
    a facilitator may broadcast without simulating and report the revert as transaction_failed.
    """

    reasons: frozenset[str] | None = None
    settle: frozenset[str] | None = None
    service_statuses: frozenset[int] = frozenset({402})
    facilitator_statuses: frozenset[int] = frozenset({200, 400})

    def reasons_for(self, step: str) -> frozenset[str] | None:
        return self.settle if step == "settle" and self.settle is not None else self.reasons


def refused(*codes: str, settle: tuple[str, ...] | None = None) -> Expect:
    """Refused naming one of `codes` (none given: any reason)."""
    return Expect(frozenset(codes) or None, frozenset(settle) if settle else None)


ANY_REFUSAL = Expect()
#: the request cannot be read as an x402 payment at all: the spec's invalid_payload, with a 400 from a service
MALFORMED = Expect(frozenset({r.INVALID_PAYLOAD}), service_statuses=frozenset({400}))
#: readable, but one field is nonsense: whichever check reads it first refuses, with its own reason
BAD_FIELD = Expect(service_statuses=frozenset({400, 402}))
#: too big to read: refused before decoding (413/431 from a server limit carry no reason)
OVERSIZE = Expect(frozenset({r.INVALID_PAYLOAD}), service_statuses=frozenset({400, 413, 431}),
                  facilitator_statuses=frozenset({200, 400, 413}))
#: a /settle that does not simulate first broadcasts anyway and reports the chain's refusal (the SDK's does)
CHAIN_SEES_IT = (r.TRANSACTION_FAILED,)


# --- building payments -------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case builds from: the terms, this case's payer, and a few strangers."""

    quote: Quote  # the terms paid: learned from the service's 402, or built from the world file
    payer: AuthorizationSigner  # a funded agent, fresh for this case
    bystander: str  # another funded agent's address (for a forged `from`)
    unfunded: AuthorizationSigner  # a wallet that holds nothing
    random_key: AuthorizationSigner  # a key that is nobody's payer
    now: int

    @property
    def other_chain_id(self) -> int:
        return 1 if self.quote.chain_id != 1 else 10

    def request(self, payment_payload: Any) -> dict[str, Any]:
        """A facilitator /verify or /settle body for this payload against the terms."""
        return {"x402Version": 2, "paymentPayload": payment_payload, "paymentRequirements": self.quote.requirement}


@dataclass
class Attempt:
    """One request a case sends: a payload (encoded per target) or raw bytes for malformed cases."""

    payload: dict[str, Any] | None = None
    header: str | None = None  # raw PAYMENT-SIGNATURE value (service)
    body: bytes | None = None  # raw request body (facilitator)

    def header_value(self) -> str:
        return self.header if self.header is not None else encode_header(self.payload or {})

    def request_body(self, ctx: Ctx) -> bytes:
        return self.body if self.body is not None else json.dumps(ctx.request(self.payload)).encode()

    def authorization_id(self) -> tuple[str, str] | None:
        """(from, nonce) when the payload names a well-formed pair, so the chain can say if it was used."""
        try:
            auth = self.payload["payload"]["authorization"]  # type: ignore[index]
            payer, nonce = auth["from"], auth["nonce"]
            if isinstance(payer, str) and len(payer) == 42 and isinstance(nonce, str) and len(nonce) == 66:
                int(payer, 16), int(nonce, 16)
                return payer, nonce
        except (TypeError, KeyError, ValueError):
            pass
        return None


Build = Callable[[Ctx], list[Attempt]]
Fields = dict[str, Any] | Callable[[Ctx], dict[str, Any]]
Mutate = Callable[[dict[str, Any]], None]


def _fields(value: Fields | None, ctx: Ctx) -> dict[str, Any]:
    return (value(ctx) if callable(value) else dict(value)) if value else {}


def signed(*, accepted: Fields | None = None, auth: Fields | None = None, domain: Fields | None = None,
           payer: Callable[[Ctx], AuthorizationSigner] | None = None,
           key: Callable[[Ctx], AuthorizationSigner] | None = None, then: Mutate | None = None) -> Build:
    """A payment signed for the quoted terms, except what the keywords change.

    `accepted` changes the echoed terms and signs for them (its network and asset become the
    EIP-712 domain, its payTo and amount the authorization); `auth` and `domain` change only
    what is signed; `payer` pays from another wallet, `key` signs with another key; `then`
    edits the finished payload (after signing, so the signature no longer covers it).
    """

    def build(ctx: Ctx) -> list[Attempt]:
        terms = {**ctx.quote.requirement, **_fields(accepted, ctx)}
        wallet = payer(ctx) if payer else ctx.payer
        extra = terms.get("extra") or {}
        message = {"from": wallet.address, "to": terms["payTo"], "value": int(terms["amount"]), "validAfter": 0,
                   "validBefore": ctx.now + int(terms["maxTimeoutSeconds"] or 3600),
                   "nonce": "0x" + os.urandom(32).hex(), **_fields(auth, ctx)}
        sign_domain = {"name": extra.get("name", ctx.quote.name), "version": extra.get("version", ctx.quote.version),
                       "chainId": int(str(terms["network"]).split(":")[-1]), "verifyingContract": terms["asset"],
                       **_fields(domain, ctx)}
        signature = (key(ctx) if key else wallet).sign(
            sign_domain["name"], sign_domain["version"], sign_domain["chainId"], sign_domain["verifyingContract"],
            message["to"], message["value"], message["validAfter"], message["validBefore"], message["nonce"],
            payer=message["from"])
        wire = {k: str(v) if k in ("value", "validAfter", "validBefore") else v for k, v in message.items()}
        payload: dict[str, Any] = {"x402Version": 2, "payload": {"authorization": wire, "signature": signature},
                                   "accepted": terms}
        if ctx.quote.resource is not None:
            payload["resource"] = copy.deepcopy(ctx.quote.resource)
        if then is not None:
            then(payload)
        return [Attempt(payload)]

    return build


def replay(build: Build, then: Mutate | None = None) -> Build:
    """The same payment sent twice, one after the other (the second edited by `then`, if given)."""

    def twice(ctx: Ctx) -> list[Attempt]:
        (first,) = build(ctx)
        second = copy.deepcopy(first.payload)
        if then is not None:
            then(second)
        return [first, Attempt(second)]

    return twice


def copies(build: Build, n: int) -> Build:
    """`n` byte-identical copies of one payment, sent at once."""
    return lambda ctx: build(ctx) * n


def raw(header: str, body: bytes | Callable[[Ctx], bytes]) -> Build:
    """Bytes that are not a payment: `header` for a service, `body` for a facilitator."""
    return lambda ctx: [Attempt(header=header, body=body(ctx) if callable(body) else body)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _auth(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["payload"]["authorization"]


def set_auth(**fields: Any) -> Mutate:
    return lambda payload: _auth(payload).update(fields)


def null_authorization(payload: dict[str, Any]) -> None:
    payload["payload"]["authorization"] = None


def integer_from(payload: dict[str, Any]) -> None:
    _auth(payload)["from"] = int(_auth(payload)["from"], 16)


def high_s(payload: dict[str, Any]) -> None:
    """The same signature's malleable twin: s -> n - s and the other recovery id (valid for ecrecover, not for EIP-2)."""
    sig = bytes.fromhex(payload["payload"]["signature"][2:])
    s = SECP256K1_N - int.from_bytes(sig[32:64], "big")
    payload["payload"]["signature"] = "0x" + (sig[:32] + s.to_bytes(32, "big") + bytes([55 - sig[64]])).hex()


def truncate_signature(payload: dict[str, Any]) -> None:
    payload["payload"]["signature"] = payload["payload"]["signature"][:-2]  # 64 bytes: no v


def empty_signature(payload: dict[str, Any]) -> None:
    payload["payload"]["signature"] = ""


def _bad_request(payment_payload: Any) -> Callable[[Ctx], bytes]:
    return lambda ctx: json.dumps(ctx.request(payment_payload)).encode()


# --- the cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile (or control) payment: what it is, how it is built, what a correct endpoint answers.

    `kind`: "paid" must be served and settled; "once" must be refused; "replay" sends its
    attempts in turn, the first paid and the rest refused; "concurrent" sends them at once,
    exactly one paid. `expect` is the refusal; `service` overrides it for a priced route.
    `same_answer_ok`: the repeats are byte-identical to the first payment, so an endpoint that treats
    them as retries (idempotently: answered with the first payment's own transaction, charged once,
    as x402bench's facilitator does) holds too; the payee delta still proves nothing was paid twice.
    """

    name: str
    what: str
    build: Build
    expect: Expect = ANY_REFUSAL
    kind: Kind = "once"
    service: Expect | None = None
    same_answer_ok: bool = False

    def expect_for(self, target: Target) -> Expect:
        return self.service if target == "service" and self.service is not None else self.expect

    @property
    def pays(self) -> bool:
        return self.kind != "once"


CASES: list[Case] = [
    Case("control", "a correct payment for the quoted terms", signed(), kind="paid"),
    Case("sequential replay", "the same payment twice: served once, then refused as used or answered "
         "with its first settlement",
         replay(signed()), refused(r.NONCE_ALREADY_USED), kind="replay", same_answer_ok=True),
    Case("replay, high-s twin", "a paid payment again with its malleated signature (same nonce)",
         replay(signed(), then=high_s), kind="replay"),
    Case(f"{COPIES} concurrent copies", f"{COPIES} copies at once: settled exactly once (the others refused, "
         "or answered with that one settlement)",
         copies(signed(), COPIES), kind="concurrent", same_answer_ok=True),
    Case("wrong payee", "authorization.to is an address nobody quoted", signed(auth={"to": OTHER_ADDRESS}),
         refused(r.RECIPIENT_MISMATCH)),
    Case("amount less", "authorizes one unit less than quoted", signed(auth=lambda c: {"value": c.quote.amount - 1}),
         refused(r.VALUE_MISMATCH)),
    Case("amount more", "authorizes one unit more than quoted (exact means exact)",
         signed(auth=lambda c: {"value": c.quote.amount + 1}), refused(r.VALUE_MISMATCH)),
    Case("expired validBefore", "validBefore 10 s in the past", signed(auth=lambda c: {"validBefore": c.now - 10}),
         refused(r.VALID_BEFORE_EXPIRED)),
    Case("future validAfter", "validAfter an hour ahead", signed(auth=lambda c: {"validAfter": c.now + 3600}),
         refused(r.VALID_AFTER_FUTURE)),
    Case("domain: name", "signed under another EIP-712 name", signed(domain={"name": "USDC (probe)"}),
         refused(r.INVALID_SIGNATURE)),
    Case("domain: version", "signed under another EIP-712 version", signed(domain={"version": "99"}),
         refused(r.INVALID_SIGNATURE)),
    Case("domain: chainId", "signed for another chain", signed(domain=lambda c: {"chainId": c.other_chain_id}),
         refused(r.INVALID_SIGNATURE)),
    Case("domain: verifyingContract", "signed for another token contract",
         signed(domain={"verifyingContract": OTHER_TOKEN}), refused(r.INVALID_SIGNATURE)),
    Case("signed by a random key", "a signature by a key that is not the payer's", signed(key=lambda c: c.random_key),
         refused(r.INVALID_SIGNATURE)),
    Case("forged from", "claims another funded wallet as payer, signed with the caller's key",
         signed(auth=lambda c: {"from": c.bystander}), refused(r.INVALID_SIGNATURE)),
    Case("high-s signature", "a fresh payment sent only as its malleated twin (EIP-2 forbids high s)",
         signed(then=high_s), ANY_REFUSAL),
    Case("truncated signature", "signature cut to 64 bytes (no v)", signed(then=truncate_signature), BAD_FIELD),
    Case("empty signature", 'signature ""', signed(then=empty_signature), BAD_FIELD),
    Case("accepted: other network", "terms and signature for another chain",
         signed(accepted=lambda c: {"network": f"eip155:{c.other_chain_id}"}),
         refused(r.NETWORK_MISMATCH), service=ANY_REFUSAL),
    Case("accepted: other asset", "terms and signature for another token", signed(accepted={"asset": OTHER_TOKEN}),
         ANY_REFUSAL),
    Case("accepted: other payee", "terms and authorization to another payee",
         signed(accepted={"payTo": OTHER_ADDRESS}), refused(r.RECIPIENT_MISMATCH), service=ANY_REFUSAL),
    Case("accepted: lower amount", "terms and authorization for 1 unit",
         signed(accepted={"amount": "1"}), refused(r.VALUE_MISMATCH), service=ANY_REFUSAL),
    Case("accepted: other scheme", 'accepted.scheme "upto"', signed(accepted={"scheme": "upto"}),
         refused(r.UNSUPPORTED_SCHEME), service=ANY_REFUSAL),
    Case("unfunded payer", "a correct payment from a wallet holding nothing", signed(payer=lambda c: c.unfunded),
         refused(r.INSUFFICIENT_BALANCE, settle=(r.INSUFFICIENT_BALANCE, *CHAIN_SEES_IT))),
    Case("not base64", "header / paymentPayload is not base64 of anything",
         raw("this is not base64!!", _bad_request("this is not base64!!")), MALFORMED),
    Case("not JSON", "base64 of broken JSON / a body that is not JSON", raw(b64(b"{not json"), b"{not json"),
         MALFORMED),
    Case("JSON not an object", "a JSON list instead of an object", raw(b64(b"[1, 2, 3]"), b"[1, 2, 3]"), MALFORMED),
    Case("missing fields", "a payload without accepted or authorization",
         raw(b64(b'{"x402Version": 2, "payload": {}}'), _bad_request({"x402Version": 2, "payload": {}})), MALFORMED),
    Case("oversize", "a 27 KB header / 100 KB body of whitespace",
         raw(b64(b"{" + b" " * 20_000 + b"}"), b"{" + b" " * 100_000 + b"}"), OVERSIZE),
    Case("x402Version 1", "a v2 payload that says it is v1", signed(then=lambda p: p.update(x402Version=1)),
         refused(r.INVALID_X402_VERSION, r.INVALID_PAYLOAD), service=ANY_REFUSAL),
    Case("authorization: null", "payload.authorization is null", signed(then=null_authorization), BAD_FIELD),
    Case("integer from", "authorization.from as a JSON integer", signed(then=integer_from), BAD_FIELD),
    Case('amount "abc"', 'authorization.value "abc"', signed(then=set_auth(value="abc")), BAD_FIELD),
    Case("negative amount", 'authorization.value "-1"', signed(then=set_auth(value="-1")), BAD_FIELD),
    Case("short nonce", "authorization.nonce of 2 bytes", signed(then=set_auth(nonce="0x1234")), BAD_FIELD),
    Case("validBefore overflow", "validBefore 2**256, past uint256", signed(then=set_auth(validBefore=str(2**256))),
         BAD_FIELD),
]

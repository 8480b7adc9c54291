"""Verification of an EVM exact (EIP-3009) payment, as strict as the spec.

Split in two: `check_payment` is pure (request shape, scheme, network, asset, EIP-712
domain, recipient, amount, time window, signature) and costs no RPC; `check_chain` asks
the chain, in one batched round trip, whether the nonce is unused and the balance covers
the payment once the payer's other accepted-but-unsettled payments are set aside.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from coincurve import PublicKey
from eth_utils import to_checksum_address
from pydantic import ValidationError
from x402.schemas import PaymentPayload, PaymentRequirements

from services.facilitator import reasons
from services.facilitator.config import TokenInfo
from services.facilitator.evm import SEL_AUTHORIZATION_STATE, SEL_BALANCE_OF, AsyncRpc, RpcError, call_data
from services.payer.hashing import checksum_encode, keccak256
from services.payer.signing import authorization_digest, domain_separator

#: validBefore must leave at least this many seconds to land the tx (the SDK uses the same 6 s).
VALID_BEFORE_MARGIN_S = 6
MAX_BODY_BYTES = 64 * 1024
#: The ledger keeps amounts and times as SQLite integers (signed 64-bit): an authorization beyond that
#: would verify, then fail to be recorded at settle. Real ones are far below (2**63 s is 292 billion years).
LEDGER_INT_MAX = 2**63 - 1
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class Rejection(Exception):
    """A payment that must not be settled; `reason` is the x402 reason code sent back."""

    def __init__(self, reason: str, message: str = "", payer: str | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
        self.payer = payer


@dataclass(frozen=True, slots=True)
class Authorization:
    """A checked EIP-3009 authorization, with addresses checksummed and numbers parsed."""

    payer: str
    payee: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x + 64 hex
    signature: str  # 0x + 130 hex


def parse_request(body: bytes) -> tuple[int, PaymentPayload, PaymentRequirements]:
    """Decode a /verify or /settle body; malformed input is `invalid_payload`, never a 500."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejection(reasons.INVALID_PAYLOAD, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise Rejection(reasons.INVALID_PAYLOAD, "request body is not JSON") from None
    if not isinstance(data, dict):
        raise Rejection(reasons.INVALID_PAYLOAD, "request body is not a JSON object")
    raw_payload = data.get("paymentPayload")
    version = data.get("x402Version", raw_payload.get("x402Version") if isinstance(raw_payload, dict) else None)
    if not _is_int(version) or version != 2:
        raise Rejection(reasons.INVALID_X402_VERSION, f"x402Version {version!r} is not supported (2 is)")
    # The SDK's model defaults a missing version to 2 and coerces "2" or 2.0: the spec requires the number.
    if isinstance(raw_payload, dict) and not _is_int(raw_payload.get("x402Version")):
        raise Rejection(reasons.INVALID_PAYLOAD, "paymentPayload.x402Version is missing or not an integer")
    try:
        payload = PaymentPayload.model_validate(data.get("paymentPayload"))
    except ValidationError as exc:
        raise Rejection(reasons.INVALID_PAYLOAD, _first_error("paymentPayload", exc)) from None
    try:
        requirements = PaymentRequirements.model_validate(data.get("paymentRequirements"))
    except ValidationError as exc:
        raise Rejection(reasons.INVALID_PAYMENT_REQUIREMENTS, _first_error("paymentRequirements", exc)) from None
    if payload.x402_version != 2:
        raise Rejection(reasons.INVALID_X402_VERSION, f"payload x402Version {payload.x402_version}")
    return version, payload, requirements


def _is_int(value: Any) -> bool:
    """A JSON integer: not a bool (True == 1 in Python), a float or a numeric string."""
    return type(value) is int


def _first_error(where: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


def _address(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) != 42 or not value.startswith("0x"):
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} is not an address")
    try:
        return to_checksum_address(value)
    except ValueError:
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} is not an address") from None


def _uint(value: Any, field: str) -> int:
    """A uint256 written as the scheme writes it: a string of ASCII decimal digits. Python's int() would also
    take " 1000 ", "+1000", "1_000", fullwidth digits or a JSON number, each then verifying and settling."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} is not a string of decimal digits")
    if len(value) > 78 or int(value) >= 2**256:
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} is out of range")
    return int(value)


def _hex(value: Any, field: str, nbytes: int) -> str:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 2 + 2 * nbytes:
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} must be 0x and {nbytes} bytes of hex")
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        raise Rejection(reasons.INVALID_PAYLOAD, f"{field} is not hex") from None
    return value.lower()


def recover_signer(digest: bytes, signature: str) -> str | None:
    """The address that made this 65-byte signature, or None if it is not a valid one."""
    raw = bytes.fromhex(signature[2:])
    v = raw[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or int.from_bytes(raw[32:64], "big") > SECP256K1_HALF_N:
        return None  # high-s signatures are malleable copies; ecrecover-based tokens reject them too
    try:
        public = PublicKey.from_signature_and_message(raw[:64] + bytes([v]), digest, hasher=None)
    except Exception:
        return None
    return checksum_encode(keccak256(public.format(compressed=False)[1:])[-20:])


def check_payment(
    payload: PaymentPayload, requirements: PaymentRequirements, token: TokenInfo, chain_id: int, now: float | None = None
) -> Authorization:
    """Every check that needs no chain state; raises Rejection with the spec's reason code."""
    raw = payload.payload
    auth = raw.get("authorization") if isinstance(raw, dict) else None
    if not isinstance(auth, dict):
        raise Rejection(reasons.INVALID_PAYLOAD, "payload.authorization is missing")
    payer = _address(auth.get("from"), "authorization.from")
    accepted = payload.accepted
    network = f"eip155:{chain_id}"
    if accepted.scheme != "exact" or requirements.scheme != "exact":
        raise Rejection(reasons.UNSUPPORTED_SCHEME, f"scheme {accepted.scheme!r} (exact is)", payer)
    if accepted.network != requirements.network:
        raise Rejection(reasons.NETWORK_MISMATCH, f"{accepted.network} paid, {requirements.network} required", payer)
    if requirements.network != network:
        raise Rejection(reasons.INVALID_NETWORK, f"{requirements.network} is not {network}", payer)
    if requirements.asset.lower() != token.address.lower():
        raise Rejection(reasons.INVALID_PAYMENT_REQUIREMENTS, f"asset {requirements.asset} is not settled here", payer)
    if accepted.asset.lower() != requirements.asset.lower():
        raise Rejection(reasons.INVALID_PAYMENT_REQUIREMENTS, f"asset {accepted.asset} paid, {requirements.asset} required", payer)
    extra = requirements.extra or {}
    if "name" not in extra or "version" not in extra:
        raise Rejection(reasons.MISSING_EIP712_DOMAIN, "requirements.extra needs name and version", payer)
    if extra["name"] != token.name:
        raise Rejection(reasons.TOKEN_NAME_MISMATCH, f"{extra['name']!r} is not the token's {token.name!r}", payer)
    if extra["version"] != token.version:
        raise Rejection(reasons.TOKEN_VERSION_MISMATCH, f"{extra['version']!r} is not the token's {token.version!r}", payer)
    payee = _address(auth.get("to"), "authorization.to")
    value = _uint(auth.get("value"), "authorization.value")
    valid_after = _uint(auth.get("validAfter"), "authorization.validAfter")
    valid_before = _uint(auth.get("validBefore"), "authorization.validBefore")
    nonce = _hex(auth.get("nonce"), "authorization.nonce", 32)
    signature = _hex(raw.get("signature"), "payload.signature", 65)
    if payee.lower() != requirements.pay_to.lower() or accepted.pay_to.lower() != requirements.pay_to.lower():
        raise Rejection(reasons.RECIPIENT_MISMATCH, f"pays {payee}, {requirements.pay_to} required", payer)
    required = _uint(requirements.amount, "requirements.amount")
    if value != required or _uint(accepted.amount, "accepted.amount") != required:
        raise Rejection(reasons.VALUE_MISMATCH, f"authorizes {value}, exactly {required} required", payer)
    if required > LEDGER_INT_MAX:
        raise Rejection(reasons.INVALID_PAYMENT_REQUIREMENTS, f"amount {required} is over {LEDGER_INT_MAX}, more "
                        "than this facilitator's ledger records", payer)
    now = time.time() if now is None else now
    if valid_before > LEDGER_INT_MAX:
        raise Rejection(reasons.VALID_BEFORE_EXPIRED, f"validBefore {valid_before} is over {LEDGER_INT_MAX} s, "
                        "further out than this facilitator's ledger records", payer)
    if valid_before < now + VALID_BEFORE_MARGIN_S:
        raise Rejection(reasons.VALID_BEFORE_EXPIRED, f"validBefore {valid_before} leaves under {VALID_BEFORE_MARGIN_S} s", payer)
    if valid_after > now:
        raise Rejection(reasons.VALID_AFTER_FUTURE, f"validAfter {valid_after} is in the future", payer)
    digest = authorization_digest(
        domain_separator(token.name, token.version, chain_id, token.address),
        payer, payee, value, valid_after, valid_before, nonce,
    )
    if recover_signer(digest, signature) != payer:
        raise Rejection(reasons.INVALID_SIGNATURE, "signature does not recover to authorization.from", payer)
    return Authorization(payer, payee, value, valid_after, valid_before, nonce, signature)


async def check_chain(rpc: AsyncRpc, token: TokenInfo, auth: Authorization, reserved: int) -> None:
    """Nonce unused on chain and balance enough beyond `reserved` (this payer's unsettled payments)."""
    try:
        used, balance = await rpc.batch(
            [
                ("eth_call", [{"to": token.address, "data": call_data(SEL_AUTHORIZATION_STATE, auth.payer, auth.nonce)}, "latest"]),
                ("eth_call", [{"to": token.address, "data": call_data(SEL_BALANCE_OF, auth.payer)}, "latest"]),
            ]
        )
    except Exception as exc:
        raise Rejection(reasons.UNEXPECTED_VERIFY_ERROR, f"chain read failed: {exc}", auth.payer) from None
    for result in (used, balance):
        if isinstance(result, RpcError):
            raise Rejection(reasons.UNEXPECTED_VERIFY_ERROR, str(result), auth.payer)
    if int(used, 16):
        raise Rejection(reasons.NONCE_ALREADY_USED, "authorization nonce already used on chain", auth.payer)
    if int(balance, 16) - reserved < auth.value:
        raise Rejection(
            reasons.INSUFFICIENT_BALANCE,
            f"balance {int(balance, 16)} minus {reserved} pending does not cover {auth.value}",
            auth.payer,
        )

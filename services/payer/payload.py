"""x402 v2 wire format for the EVM "exact" scheme (EIP-3009), byte-identical to the official SDK client.

The SDK client builds a pydantic `PaymentPayload` and sends base64 of
`model_dump_json(by_alias=True, exclude_none=True)`: compact JSON, keys in model field order,
unknown keys of the 402's requirement/resource dropped, `extra` defaulting to `{}`, non-ASCII
kept as UTF-8. We produce the same bytes with plain `json` (tests compare with the SDK's header
for the same nonce and clock). Why not pydantic: validating and dumping the models costs far more
than the signature. The quoted terms (`accepted`, `resource`, `extensions`) never change between
payments, so a `Quote` serialises them once; per payment only the authorization is formatted.

Decoders for the PAYMENT-REQUIRED and PAYMENT-RESPONSE headers raise `WireError` (a ValueError)
with a message saying what was wrong, never a bare KeyError or binascii error.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from services.payer.signing import (
    AuthorizationSigner,
    address_word,
    domain_separator,
    nonce_word,
    uint_word,
)

__all__ = [
    "REQUIREMENT_FIELDS", "RESOURCE_FIELDS", "WireError", "NoMatchingRequirements", "PaymentResponse", "Quote",
    "Payment", "Tamper", "decode_header", "decode_payment_required", "decode_payment_response",
    "encode_json", "encode_header", "normalize_requirement", "normalize_resource", "select_requirement",
    "sign_payment", "chain_id_of",
]

#: Field order of the SDK's PaymentRequirements and ResourceInfo models (pydantic dumps in that order).
REQUIREMENT_FIELDS = ("scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds", "extra")
RESOURCE_FIELDS = ("url", "description", "mimeType", "serviceName", "tags", "iconUrl")
_REQUIRED_FIELDS = ("scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds")
_FLOWS_PAYABLE = (None, "authorization", "upfront", "escrow")  # what the SDK client accepts (v2)
_DEFAULT_TIMEOUT_S = 3600  # the SDK's validBefore window when maxTimeoutSeconds is 0


class WireError(ValueError):
    """A header or 402 that does not decode to what x402 v2 says it should."""


class NoMatchingRequirements(WireError):
    """The 402 offers nothing this payer can pay (scheme, network, asset, transfer method)."""


# --- JSON / base64 -------------------------------------------------------------------------


def encode_json(value: Any) -> str:
    """Compact JSON exactly as pydantic-core writes it for these payloads (checked against the SDK)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_header(payload: dict[str, Any]) -> str:
    """Standard base64 of the compact UTF-8 JSON, as the SDK's safe_base64_encode."""
    return base64.b64encode(encode_json(payload).encode("utf-8")).decode("ascii")


def decode_header(value: Any, what: str) -> dict[str, Any]:
    """The JSON object inside a base64 x402 header, or WireError naming the header and the problem."""
    if not isinstance(value, (str, bytes)) or not value:
        raise WireError(f"{what} header is missing or empty")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{what} header is not valid base64 ({exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError(f"{what} header is base64 but not UTF-8 text") from None
    except ValueError as exc:
        raise WireError(f"{what} header is base64 but not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WireError(f"{what} header JSON is a {type(data).__name__}, not an object")
    return data


def decode_payment_required(value: Any) -> dict[str, Any]:
    """A v2 PaymentRequired from its PAYMENT-REQUIRED header (structure checked, options not yet)."""
    data = decode_header(value, "PAYMENT-REQUIRED")
    version = data.get("x402Version", 2)  # the SDK's decoder defaults to 2 as well
    if version != 2:
        raise WireError(f"PAYMENT-REQUIRED has x402Version {version!r}; this payer speaks v2 only")
    accepts = data.get("accepts")
    if not isinstance(accepts, list) or not all(isinstance(a, dict) for a in accepts):
        raise WireError("PAYMENT-REQUIRED has no 'accepts' list of requirement objects")
    if data.get("resource") is not None and not isinstance(data["resource"], dict):
        raise WireError("PAYMENT-REQUIRED 'resource' is not an object")
    if data.get("extensions") is not None and not isinstance(data["extensions"], dict):
        raise WireError("PAYMENT-REQUIRED 'extensions' is not an object")
    return data


@dataclass(slots=True)
class PaymentResponse:
    """A decoded PAYMENT-RESPONSE (the SDK's SettleResponse), with the raw JSON kept."""

    success: bool
    transaction: str
    network: str
    payer: str | None
    error_reason: str | None
    error_message: str | None = None
    amount: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def decode_payment_response(value: Any) -> PaymentResponse:
    """PAYMENT-RESPONSE header -> PaymentResponse; WireError if it is not a settle response."""
    data = decode_header(value, "PAYMENT-RESPONSE")
    success = data.get("success")
    if not isinstance(success, bool):
        raise WireError(f"PAYMENT-RESPONSE 'success' is {success!r}, not a boolean")

    def text(key: str) -> str | None:
        item = data.get(key)
        return None if item is None else str(item)

    return PaymentResponse(
        success=success, transaction=text("transaction") or "", network=text("network") or "", payer=text("payer"),
        error_reason=text("errorReason"), error_message=text("errorMessage"), amount=text("amount"), raw=data,
    )


# --- requirements --------------------------------------------------------------------------


def chain_id_of(network: str) -> int:
    """Chain id of a CAIP-2 `eip155:<id>` network."""
    prefix, _, rest = str(network).partition(":")
    if prefix != "eip155" or not rest.isdigit():
        raise WireError(f"network {network!r} is not an eip155:<chainId> CAIP-2 id")
    return int(rest)


def normalize_requirement(option: dict[str, Any]) -> dict[str, Any]:
    """A requirement as the SDK echoes it in `accepted`: known fields only, in model order."""
    missing = [k for k in _REQUIRED_FIELDS if option.get(k) is None]
    if missing:
        raise WireError(f"requirement lacks {', '.join(missing)}")
    for key in ("scheme", "network", "asset", "amount", "payTo"):
        if not isinstance(option[key], str):
            raise WireError(f"requirement {key} is {type(option[key]).__name__}, not a string")
    timeout = option["maxTimeoutSeconds"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, str)):
        raise WireError(f"requirement maxTimeoutSeconds is {timeout!r}")
    try:
        timeout_int = int(timeout)
    except ValueError:
        raise WireError(f"requirement maxTimeoutSeconds is {timeout!r}") from None
    if timeout_int != float(timeout):
        raise WireError(f"requirement maxTimeoutSeconds {timeout!r} is not a whole number")
    extra = option.get("extra") or {}
    if not isinstance(extra, dict):
        raise WireError("requirement extra is not an object")
    out = {k: option[k] for k in REQUIREMENT_FIELDS[:5]}
    out["maxTimeoutSeconds"] = timeout_int  # pydantic coerces "60" / 60.0 to 60
    out["extra"] = extra
    return out


def normalize_resource(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    """ResourceInfo as the SDK echoes it: known fields, None dropped, model order."""
    if resource is None:
        return None
    if not isinstance(resource, dict) or not isinstance(resource.get("url"), str):
        raise WireError("resource is not an object with a string url")
    return {k: resource[k] for k in RESOURCE_FIELDS if resource.get(k) is not None}


def select_requirement(
    required: dict[str, Any], network: str, scheme: str = "exact", asset: str | None = None
) -> dict[str, Any]:
    """The option of a PaymentRequired this payer pays, chosen as the SDK client chooses.

    Among options with our scheme and network (and asset, if pinned) paid by EIP-3009, whose
    paymentFlow the SDK accepts: the first one without a flow or with "authorization", else the
    first. Malformed options are skipped; the error says why each one was.
    """
    candidates: list[dict[str, Any]] = []
    reasons: list[str] = []
    for i, option in enumerate(required.get("accepts") or []):
        extra = option.get("extra") if isinstance(option.get("extra"), dict) else {}
        if option.get("scheme") != scheme or option.get("network") != network:
            reasons.append(f"accepts[{i}] is {option.get('scheme')!r} on {option.get('network')!r}")
        elif asset is not None and str(option.get("asset", "")).lower() != asset.lower():
            reasons.append(f"accepts[{i}] asset {option.get('asset')!r} is not {asset}")
        elif extra.get("assetTransferMethod") not in (None, "eip3009"):
            reasons.append(f"accepts[{i}] wants {extra.get('assetTransferMethod')!r}, not eip3009")
        elif extra.get("paymentFlow") not in _FLOWS_PAYABLE:
            reasons.append(f"accepts[{i}] has paymentFlow {extra.get('paymentFlow')!r}")
        else:
            try:
                normalize_requirement(option)
            except WireError as exc:
                reasons.append(f"accepts[{i}]: {exc}")
            else:
                candidates.append(option)
    if not candidates:
        detail = "; ".join(reasons) or "accepts is empty"
        raise NoMatchingRequirements(f"no payable {scheme} requirement on {network}: {detail}")
    for option in candidates:
        if (option.get("extra") or {}).get("paymentFlow") in (None, "authorization"):
            return option
    return candidates[0]


# --- quotes and payments -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """One accepted requirement of a 402, ready to pay many times (what the payer caches)."""

    requirement: dict[str, Any]  # normalized, exactly what is echoed as `accepted`
    resource: dict[str, Any] | None
    extensions: dict[str, Any] | None
    chain_id: int
    name: str
    version: str
    separator: bytes  # EIP-712 domain separator of the token
    tail: str  # ',"accepted":{..},"resource":{..},"extensions":{..}}' as the SDK serialises it
    offered: dict[str, Any] = field(default_factory=dict, compare=False)  # as the server sent it, normalized
    _heads: dict[str, tuple[bytes, str, str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_payment_required(
        cls, required: dict[str, Any], network: str, scheme: str = "exact", asset: str | None = None
    ) -> "Quote":
        """Choose the requirement to pay from a decoded PaymentRequired and freeze it."""
        option = select_requirement(required, network, scheme, asset)
        resource = required.get("resource")
        return cls.from_requirement(option, resource, required.get("extensions"))

    @classmethod
    def from_requirement(
        cls, option: dict[str, Any], resource: dict[str, Any] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> "Quote":
        offered = copy.deepcopy(normalize_requirement(option))
        requirement = copy.deepcopy(offered)
        extra = requirement["extra"]
        chain_id = chain_id_of(requirement["network"])
        domain = extra
        if "name" not in extra:
            # The SDK signs with the default-asset table's name/version then. It writes them into
            # `requirements.extra or {}`: a non-empty extra is the echoed object and gains them,
            # an empty one is a throwaway dict and the echo stays {} (quirk reproduced).
            try:
                from x402.mechanisms.evm.utils import get_asset_info

                info = get_asset_info(requirement["network"], requirement["asset"])
            except (ValueError, ImportError):
                raise WireError("EIP-712 domain parameters (name, version) required in extra") from None
            domain = extra if extra else {}
            domain["name"] = info["name"]
            domain["version"] = info.get("version", "1")
        name, version = domain["name"], domain.get("version", "1")
        if not isinstance(name, str) or not isinstance(version, str):
            raise WireError("extra.name and extra.version must be strings")
        try:
            separator = domain_separator(name, version, chain_id, requirement["asset"])
        except ValueError as exc:
            raise WireError(f"requirement asset: {exc}") from None
        try:
            address_word(requirement["payTo"])
            uint_word(requirement["amount"])
        except ValueError as exc:
            raise WireError(f"requirement payTo/amount: {exc}") from None
        res = copy.deepcopy(normalize_resource(resource))
        ext = copy.deepcopy(extensions) or None
        tail = ',"accepted":' + encode_json(requirement)
        if res is not None:
            tail += ',"resource":' + encode_json(res)
        if ext:
            tail += ',"extensions":' + encode_json(ext)
        return cls(requirement, res, ext, chain_id, name, version, separator, tail + "}", offered)

    @property
    def amount(self) -> int:
        return int(self.requirement["amount"])

    @property
    def timeout_s(self) -> int:
        return self.requirement["maxTimeoutSeconds"] or _DEFAULT_TIMEOUT_S

    def head(self, signer: AuthorizationSigner) -> tuple[bytes, str, str]:
        """Per-signer constants: struct words before validBefore, and JSON before validBefore."""
        cached = self._heads.get(signer.address)
        if cached is None:
            req = self.requirement
            words = address_word(signer.address) + address_word(req["payTo"]) + uint_word(req["amount"]) + bytes(32)
            json_head = (
                '{"x402Version":2,"payload":{"authorization":{"from":' + encode_json(signer.address)
                + ',"to":' + encode_json(req["payTo"]) + ',"value":' + encode_json(req["amount"])
                + ',"validAfter":"0","validBefore":"'
            )
            cached = self._heads[signer.address] = (words, json_head, signer.address)
        return cached


@dataclass(slots=True)
class Payment:
    """A signed payment: the PAYMENT-SIGNATURE value and what it commits to."""

    header: str
    nonce: str  # 0x-hex bytes32
    amount: int  # atomic units authorized
    valid_before: int
    payload: dict[str, Any] | None = None  # only built on the tamper path


Hook = Callable[..., Any]


@dataclass
class Tamper:
    """Hooks for hostile-payment tests; each may mutate its argument in place or return a replacement.

    Order: `requirements(req)` on a copy of the accepted requirement (changes what is signed and
    echoed) -> `authorization(auth, domain)` on the wire-form authorization (strings) and the
    EIP-712 domain {name, version, chainId, verifyingContract} just before signing -> signing, with
    `signer` instead of the payer's key if given -> `payload(payment_payload)` on the whole dict ->
    `header(value) -> str` on the final base64 string.
    """

    requirements: Hook | None = None
    authorization: Hook | None = None
    payload: Hook | None = None
    header: Callable[[str], str] | None = None
    signer: AuthorizationSigner | None = None


def _apply(hook: Hook | None, value: Any, *args: Any) -> Any:
    if hook is None:
        return value
    replaced = hook(value, *args)
    return value if replaced is None else replaced


def sign_payment(
    quote: Quote, signer: AuthorizationSigner, *, nonce: bytes | None = None, now: float | None = None,
    tamper: Tamper | None = None,
) -> Payment:
    """Sign a fresh authorization for the quoted terms and encode the PAYMENT-SIGNATURE header.

    As the SDK: random 32-byte nonce, validAfter 0, validBefore = int(now) + maxTimeoutSeconds
    (3600 when 0). `nonce` and `now` are injectable for tests.
    """
    raw_nonce = os.urandom(32) if nonce is None else nonce_word(nonce)
    now_s = int(time.time() if now is None else now)
    if tamper is not None:
        return _sign_tampered(quote, signer, raw_nonce, now_s, tamper)
    valid_before = now_s + quote.timeout_s
    words, json_head, _ = quote.head(signer)
    signature = signer.sign_struct(quote.separator, words + valid_before.to_bytes(32, "big") + raw_nonce)
    nonce_hex = "0x" + raw_nonce.hex()
    text = (
        json_head + str(valid_before) + '","nonce":"' + nonce_hex + '"},"signature":"0x' + signature.hex() + '"}'
        + quote.tail
    )
    return Payment(base64.b64encode(text.encode("utf-8")).decode("ascii"), nonce_hex, quote.amount, valid_before)


def _sign_tampered(quote: Quote, signer: AuthorizationSigner, raw_nonce: bytes, now_s: int,
                   tamper: Tamper) -> Payment:
    """The slow, fully general path: dicts all the way, every hook applied."""
    requirement = _apply(tamper.requirements, copy.deepcopy(quote.requirement))
    extra = requirement.get("extra") if isinstance(requirement.get("extra"), dict) else {}
    try:
        chain_id = chain_id_of(requirement.get("network", ""))
    except WireError:
        chain_id = quote.chain_id
    timeout = requirement.get("maxTimeoutSeconds")
    valid_before = now_s + ((timeout or _DEFAULT_TIMEOUT_S) if isinstance(timeout, int) else quote.timeout_s)
    name, version = (extra["name"], extra.get("version", "1")) if "name" in extra else (quote.name, quote.version)
    domain = {"name": name, "version": version, "chainId": chain_id,
              "verifyingContract": requirement.get("asset", quote.requirement["asset"])}
    authorization = {
        "from": signer.address, "to": requirement.get("payTo"), "value": requirement.get("amount"),
        "validAfter": "0", "validBefore": str(valid_before), "nonce": "0x" + raw_nonce.hex(),
    }
    authorization = _apply(tamper.authorization, authorization, domain)
    key = tamper.signer or signer
    signature = key.sign(domain["name"], domain["version"], domain["chainId"], domain["verifyingContract"],
                         authorization["to"], authorization["value"], authorization["validAfter"],
                         authorization["validBefore"], authorization["nonce"], payer=authorization["from"])
    payload: dict[str, Any] = {"x402Version": 2, "payload": {"authorization": authorization, "signature": signature},
                               "accepted": requirement}
    if quote.resource is not None:
        payload["resource"] = copy.deepcopy(quote.resource)
    if quote.extensions:
        payload["extensions"] = copy.deepcopy(quote.extensions)
    payload = _apply(tamper.payload, payload)
    header = encode_header(payload)
    if tamper.header is not None:
        header = tamper.header(header)
    try:
        amount = int(authorization["value"])
    except (TypeError, ValueError):
        amount = 0
    try:
        before = int(authorization["validBefore"])
    except (TypeError, ValueError):
        before = valid_before
    return Payment(header, str(authorization["nonce"]), amount, before, payload)

"""x402 v2 wire encoding for the EVM exact scheme, byte-identical to the official SDK client.

The SDK builds a pydantic PaymentPayload and base64s `model_dump_json(by_alias=True,
exclude_none=True)`. We reproduce those bytes with plain json: the quoted terms
(`accepted`, `resource`) are serialised once per cached requirement, and only the signed
authorization changes per payment. A test compares our header with the SDK's.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

#: Field order of the SDK's PaymentRequirements and ResourceInfo models (pydantic dumps in that order).
REQUIREMENT_FIELDS = ("scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds", "extra")
RESOURCE_FIELDS = ("url", "description", "mimeType", "serviceName", "tags", "iconUrl")


class WireError(ValueError):
    """A header that does not decode to what x402 says it should."""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _ordered(data: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: data[k] for k in fields if data.get(k) is not None}


def decode_header(value: str, what: str) -> dict[str, Any]:
    """base64 JSON object from a PAYMENT-REQUIRED / PAYMENT-RESPONSE header, or WireError."""
    try:
        data = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, TypeError) as exc:
        raise WireError(f"{what} header is not base64 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError(f"{what} header is not a JSON object")
    return data


@dataclass(frozen=True)
class Quote:
    """One accepted requirement of a 402, ready to pay many times."""

    requirement: dict[str, Any]
    resource: dict[str, Any] | None
    extensions: dict[str, Any] | None
    _tail: str  # ',"accepted":{...},"resource":{...}}' as the SDK would serialise it

    @classmethod
    def from_payment_required(cls, required: dict[str, Any], network: str, scheme: str = "exact",
                              asset: str | None = None) -> "Quote":
        if required.get("x402Version") != 2:
            raise WireError(f"x402Version {required.get('x402Version')!r} is not 2")
        for option in required.get("accepts") or []:
            if option.get("scheme") == scheme and option.get("network") == network and (
                asset is None or str(option.get("asset", "")).lower() == asset.lower()
            ):
                requirement = _ordered(option, REQUIREMENT_FIELDS)
                requirement.setdefault("extra", {})
                resource = _ordered(required["resource"], RESOURCE_FIELDS) if required.get("resource") else None
                extensions = required.get("extensions") or None
                tail = ',"accepted":' + _compact(requirement)
                if resource is not None:
                    tail += ',"resource":' + _compact(resource)
                if extensions:
                    tail += ',"extensions":' + _compact(extensions)
                return cls(requirement, resource, extensions, tail + "}")
        raise WireError(f"no {scheme} requirement on {network} among the 402's accepts")

    @property
    def chain_id(self) -> int:
        return int(self.requirement["network"].split(":", 1)[1])

    def header(self, authorization: dict[str, str], signature: str) -> str:
        """The PAYMENT-SIGNATURE value for a signed authorization (values as decimal strings)."""
        inner = '{"x402Version":2,"payload":{"authorization":' + _compact(authorization)
        inner += ',"signature":' + _compact(signature) + "}" + self._tail
        return base64.b64encode(inner.encode()).decode()

    def payload_dict(self, authorization: dict[str, str], signature: str) -> dict[str, Any]:
        """The same payload as a dict, for tests that tamper with it before encoding."""
        return json.loads(base64.b64decode(self.header(authorization, signature)))


def encode_payload(payload: dict[str, Any]) -> str:
    return base64.b64encode(_compact(payload).encode()).decode()

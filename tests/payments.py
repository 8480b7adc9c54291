"""Payments built by hand for tests: signed with eth_account's own EIP-712 signing, independently of
our payer, so a bug shared by our signer and our facilitator cannot hide. Plain helpers, no fixtures."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import httpx
from eth_account import Account

from services.payer.signing import typed_data
from services.stack import World


def requirements(world: World, route: str = "weather") -> dict[str, Any]:
    reply = httpx.get(world.info.service_urls[route])
    assert reply.status_code == 402
    return json.loads(base64.b64decode(reply.headers["PAYMENT-REQUIRED"]))


def sign_authorization(key: str, domain: dict[str, Any], message: dict[str, Any]) -> str:
    """eth_account's own EIP-712 signing: independent of the payer and facilitator under test."""
    return "0x" + Account.from_key(key).sign_typed_data(full_message=typed_data(domain, message)).signature.hex()


def build_payment(world: World, agent: int, required: dict[str, Any], *, key: str | None = None,
                  auth: dict[str, Any] | None = None, domain: dict[str, Any] | None = None,
                  accepted: dict[str, Any] | None = None) -> dict[str, Any]:
    """A v2 PaymentPayload, correct unless a keyword overrides part of it."""
    accepts = required["accepts"][0]
    payer = world.agents[agent]
    message = {"from": payer.address, "to": accepts["payTo"], "value": int(accepts["amount"]), "validAfter": 0,
               "validBefore": int(time.time()) + 300, "nonce": "0x" + os.urandom(32).hex(), **(auth or {})}
    sign_domain = {"name": accepts["extra"]["name"], "version": accepts["extra"]["version"],
                   "chainId": int(accepts["network"].split(":")[1]), "verifyingContract": accepts["asset"],
                   **(domain or {})}
    signature = sign_authorization(key or payer.key_hex, sign_domain, message)
    wire_auth = {k: (str(v) if k in ("value", "validAfter", "validBefore") else v) for k, v in message.items()}
    return {"x402Version": 2, "payload": {"signature": signature, "authorization": wire_auth},
            "accepted": {**accepts, **(accepted or {})}, "resource": required["resource"]}


def encode(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def pay(world: World, header: str, route: str = "weather") -> httpx.Response:
    return httpx.get(world.info.service_urls[route], headers={"PAYMENT-SIGNATURE": header}, timeout=60)


def reason(response: httpx.Response) -> str | None:
    """The x402 reason code: refused at verify (PAYMENT-REQUIRED), at settle (PAYMENT-RESPONSE), or by the guard (body)."""
    if "PAYMENT-REQUIRED" in response.headers:
        return json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"])).get("error")
    if "PAYMENT-RESPONSE" in response.headers:
        return json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"])).get("errorReason")
    return response.json().get("error")

"""Parts of a world that x402bench did not start: a node, a facilitator, a priced service.

Each is checked once, before any traffic, and a part that cannot be used is an
`OutsideError` naming its URL and what failed (connection refused, not x402, no 402 on
the route, the wrong network or asset). A run against a dead URL must stop at once with
that sentence, never fall back to a built-in part and never measure nothing for a minute.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from x402bench.scenario import ScenarioError

TIMEOUT_S = 5.0


class OutsideError(ScenarioError):
    """An outside part that cannot be used; the message names the URL and is meant for the user as is."""


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(reason, socket.gaierror):
        return "host name not found"
    return str(reason) or type(reason).__name__


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutsideError(f"{what} {url!r}: not an http(s) URL")


def http_request(url: str, what: str, *, method: str = "GET", body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body); any failure to get an answer is an OutsideError."""
    _check_url(url, what)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:  # a status >= 400 is an answer, not a failure
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise OutsideError(f"{what} {url}: {_why(exc)}") from None


def check_node(rpc_url: str, chain_id: int | None = None) -> int:
    """The node's chain id; it must answer JSON-RPC (and be on `chain_id` when one is expected)."""
    status, _, raw = http_request(rpc_url, "node", method="POST",
                                  body={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    try:
        answer = int(json.loads(raw)["result"], 16)
    except (ValueError, KeyError, TypeError):
        raise OutsideError(f"node {rpc_url}: not an Ethereum JSON-RPC endpoint (HTTP {status} to eth_chainId)") from None
    if chain_id is not None and answer != chain_id:
        raise OutsideError(f"node {rpc_url}: chain id {answer}, but the world is on chain {chain_id}")
    return answer


def check_facilitator(url: str, network: str) -> dict[str, Any]:
    """GET /supported: it must be an x402 facilitator that settles `exact` on `network`."""
    base = url.rstrip("/")
    try:
        status, _, raw = http_request(base + "/supported", "facilitator")
    except OutsideError as exc:
        raise OutsideError(str(exc).replace(f"{base}/supported", f"{url} (GET /supported)")) from None
    try:
        supported = json.loads(raw)
        kinds = supported["kinds"]
        if not isinstance(kinds, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise OutsideError(f"facilitator {url}: not x402 (GET /supported answered HTTP {status} "
                           "without a list of kinds)") from None
    offered = [(k.get("scheme"), k.get("network")) for k in kinds if isinstance(k, dict)]
    if ("exact", network) not in offered:
        listed = ", ".join(f"{s} on {n}" for s, n in offered) or "nothing"
        raise OutsideError(f"facilitator {url}: does not settle exact on {network} (it supports {listed})")
    return supported


@dataclass(frozen=True)
class ServiceTerms:
    """What an outside priced route asks for, learned from its 402 answer."""

    name: str
    url: str
    amount: int
    pay_to: str
    asset: str
    scheme: str


def check_service(url: str, network: str) -> list[dict[str, Any]]:
    """An unpaid GET must get a 402 whose PAYMENT-REQUIRED offers `exact` on `network`: its exact options."""
    status, headers, _ = http_request(url, "service")
    if status != 402:
        raise OutsideError(f"service {url}: no 402 on the route (an unpaid GET answered HTTP {status})")
    header = headers.get("payment-required")
    if not header:
        raise OutsideError(f"service {url}: not x402 (its 402 has no PAYMENT-REQUIRED header)")
    try:
        required = json.loads(base64.b64decode(header))
        accepts = [a for a in required["accepts"] if isinstance(a, dict)]
    except (ValueError, KeyError, TypeError):
        raise OutsideError(f"service {url}: not x402 (PAYMENT-REQUIRED is not base64 of a PaymentRequired)") from None
    exact = [a for a in accepts if a.get("network") == network and a.get("scheme") == "exact"]
    if not exact:
        offered = ", ".join(f"{a.get('scheme')} on {a.get('network')}" for a in accepts) or "nothing"
        raise OutsideError(f"service {url}: asks for no exact payment on {network} (it offers {offered})")
    return exact


def service_terms(url: str, network: str, token: str, name: str) -> ServiceTerms:
    """What the route asks for in this world's token (checked again: the chain part may have just started)."""
    ours = [a for a in check_service(url, network) if str(a.get("asset", "")).lower() == token.lower()]
    if not ours:
        asked = ", ".join(sorted({str(a.get("asset")) for a in check_service(url, network)}))
        raise OutsideError(
            f"service {url}: asks for asset {asked}, but this world's token is {token}; configure the service "
            "from the world file (`x402bench up SCENARIO --only chain,facilitator --json world.json`) and attach "
            "with `--world world.json`")
    terms = ours[0]
    try:
        amount = int(terms["amount"])
        pay_to = str(terms["payTo"])
    except (KeyError, TypeError, ValueError):
        raise OutsideError(f"service {url}: its exact requirement has no usable amount and payTo") from None
    return ServiceTerms(name, url, amount, pay_to, token, "exact")


def service_name(url: str, taken: set[str]) -> str:
    """A route name for an outside URL: its path's last part, made unique."""
    stem = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].lower() or "service"
    stem = "".join(c if c.isalnum() or c in "_-" else "-" for c in stem)
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    return name

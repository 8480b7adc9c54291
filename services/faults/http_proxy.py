"""An HTTP reverse proxy in front of a facilitator, that can lose its /settle answers.

    python -m services.faults.http_proxy --upstream http://127.0.0.1:FACPORT --port N

Why: the worst moment for an answer to get lost is right after a settlement went on chain:
the payer has paid, the service never hears so, and whatever the service and the agent do
next (retry the same payment, serve or not, charge again) decides whether the payer is
charged twice or served never. A proxy on the services' facilitator URL makes that moment on
demand, in front of any facilitator, without touching its code.

Every request (method, path and query, headers, body) is forwarded to the upstream and its
answer (status, headers, body bytes, compressed or not) is returned unchanged; hop-by-hop
headers are not copied. GET /health is forwarded too, so a health check of the facilitator
through the proxy is a health check of the facilitator: when the upstream cannot be reached,
every request, /health included, gets a 502 with a JSON body naming the upstream. The proxy's
own liveness is GET /_faults, which never touches the upstream.

Mode `5xx_after_settle` ({"status": 502}): a POST to a path ending in /settle is forwarded and
the upstream's whole answer is read (the settlement really happens), then the client gets
`status` with a small JSON body instead. Each lost answer's `transaction` field (the tx hash
in an x402 SettleResponse) is kept in the counters (`lost_transactions`). Control API and
keys: services.faults.api.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from services.faults.api import HTTP_MODES, HttpCounters
from services.faults.server import FaultProxy, json_response, main

#: Not forwarded in either direction (RFC 9110 7.6.1), plus what the transport recomputes.
_HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Host", "Content-Length"))


class HttpFaultProxy(FaultProxy):
    kind = "http"
    modes = HTTP_MODES

    def __init__(self, upstream: str, seed: int = 42, max_hold_s: float = 120.0, max_connections: int = 512) -> None:
        super().__init__(upstream, seed, max_hold_s, max_connections)
        self.requests = self.forwarded = self.lost = self.upstream_errors = 0
        self.lost_transactions: list[str] = []

    def session_options(self) -> dict[str, Any]:
        # Bytes through unchanged: no decompression, no headers of our own added to the request.
        return {"auto_decompress": False, "skip_auto_headers": ("User-Agent", "Accept-Encoding", "Content-Type")}

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self._forward)]

    def counters(self) -> HttpCounters:
        return {"requests": self.requests, "forwarded": self.forwarded, "settle_answers_lost": self.lost,
                "lost_transactions": list(self.lost_transactions), "upstream_errors": self.upstream_errors}

    def _target(self, request: web.Request) -> URL:
        """The upstream's URL (its own path prefix kept) + the request's path and query, as sent."""
        return URL(self.upstream + request.raw_path, encoded=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        try:
            async with self.session.request(request.method, self._target(request), data=body or None,
                                            headers=headers, allow_redirects=False) as response:
                data = await response.read()
                status = response.status
                reply_headers = CIMultiDict((k, v) for k, v in response.headers.items()
                                            if k.lower() not in _HOP_BY_HOP)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.upstream_errors += 1
            return json_response({"error": f"upstream {self.upstream}: {exc!r}", "proxy": "x402bench fault proxy"}, 502)
        self.forwarded += 1
        lose = self.active.get("5xx_after_settle")
        if lose is not None and request.method == "POST" and request.path.rstrip("/").endswith("/settle"):
            self.lost += 1
            try:
                transaction = json.loads(data).get("transaction")
            except (ValueError, AttributeError):
                transaction = None
            if transaction:
                self.lost_transactions.append(str(transaction))
            return json_response({"error": f"the upstream's /settle answer (HTTP {status}) was lost on purpose",
                                  "proxy": "x402bench fault proxy (5xx_after_settle)"}, lose["status"])
        return web.Response(body=data, status=status, headers=reply_headers)


if __name__ == "__main__":
    main(HttpFaultProxy, __doc__ or "")

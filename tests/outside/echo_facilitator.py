"""A stand-in facilitator for testing the HTTP fault proxy: answers like one, settles nothing.

    python tests/outside/echo_facilitator.py --port N

Why: x402bench's own facilitator needs a chain, a token and keys; the proxy only needs an
upstream that counts what reached it. POST /settle answers an x402 SettleResponse-shaped
body with a fresh fake transaction hash per call; GET /count says how many /settle and
other requests arrived (and the hashes it answered); /health, /supported answer 200; any
other request is echoed back (method, raw path and query, X- headers, body) so pass-through can be
checked byte for byte. Serves aiohttp on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json

from aiohttp import web

counts = {"settle": 0, "other": 0, "transactions": []}


async def settle(request: web.Request) -> web.Response:
    body = await request.read()
    counts["settle"] += 1
    tx = "0x" + hashlib.sha256(b"%d:" % counts["settle"] + body).hexdigest()
    counts["transactions"].append(tx)
    return web.json_response({"success": True, "transaction": tx, "network": "eip155:31337", "payer": "0x" + "ab" * 20})


async def count(request: web.Request) -> web.Response:
    return web.json_response(counts)


async def health(request: web.Request) -> web.Response:
    counts["other"] += 1
    return web.json_response({"status": "ok"})


async def echo(request: web.Request) -> web.Response:
    counts["other"] += 1
    body = await request.read()
    return web.json_response(
        {"method": request.method, "raw_path": request.raw_path,
         "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-")},
         "body": body.decode(errors="replace")},
        status=int(request.headers.get("X-Status", "200")), headers={"X-Echo": "yes"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.add_routes([web.post("/settle", settle), web.get("/count", count), web.get("/health", health),
                    web.route("*", "/{tail:.*}", echo)])
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

"""A deliberately broken x402 service: it quotes correctly and serves anything that looks paid.

Unpaid requests get a correct-looking 402 (PAYMENT-REQUIRED: base64 JSON, x402Version 2, the
world's token, first payee and network); any request carrying a PAYMENT-SIGNATURE header gets
200, and no facilitator is ever called. `x402bench probe` must catch it: served replays and bad
signatures, and a payee balance short of what the served "payments" were worth.

    python tests/outside/broken_service.py --world world.json --port 8123
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response


def payment_required(world: dict[str, Any], url: str, amount: int) -> str:
    """The PAYMENT-REQUIRED value an honest service of this world would send."""
    token = world["token"]
    body = {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": url, "description": "broken on purpose", "mimeType": "application/json"},
        "accepts": [{
            "scheme": "exact", "network": world["network"], "asset": token["address"], "amount": str(amount),
            "payTo": world["payees"][0], "maxTimeoutSeconds": 300,
            "extra": {"name": token["name"], "version": token["version"]},
        }],
    }
    return base64.b64encode(json.dumps(body).encode()).decode()


def create_app(world: dict[str, Any], amount: int) -> FastAPI:
    app = FastAPI(title="broken x402 service")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def priced(request: Request, path: str) -> Response:
        if "payment-signature" in request.headers:  # the bug: a header is taken for a payment
            return Response(json.dumps({"route": path, "data": "served"}), media_type="application/json")
        header = payment_required(world, str(request.url), amount)
        return Response("{}", status_code=402, media_type="application/json", headers={"PAYMENT-REQUIRED": header})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="world JSON from `x402bench up --json`")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amount", type=int, default=None, help="atomic units quoted (default: the first price)")
    args = parser.parse_args()
    world = json.loads(args.world.read_text())
    amount = args.amount if args.amount is not None else next(iter(world["prices"].values()))
    uvicorn.run(create_app(world, amount), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""A priced service written as a seller would write it with the official x402 Python SDK.

    python tests/outside/sdk_service.py --world world.json --port 8000 \
        [--facilitator-url URL] [--path /weather] [--price 1000]

Why it exists: x402bench's own services wrap the SDK middleware in layers of ours (a guard for
malformed headers, Server-Timing, an aiohttp transport for the facilitator client). This one is the
plain SDK: `PaymentMiddlewareASGI` over an `x402ResourceServer` with `ExactEvmServerScheme` and the
SDK's own `HTTPFacilitatorClient`, so it shows what a seller who follows the SDK's README gets.

Configured from a world file: the price is an explicit asset amount of the world's token (a money
string such as "$0.001" has no default asset on chain 31337), paid to `payees[0]` on the world's
network with the "exact" scheme. The facilitator is the world's unless --facilitator-url names another.
GET /health is free. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.http.types import RouteConfig
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.server import x402ResourceServer


def load_world(path: str | Path) -> dict[str, Any]:
    """The world file written by `x402bench up --json`."""
    return json.loads(Path(path).read_text())


def price_of(world: dict[str, Any], atomic: int) -> dict[str, Any]:
    """An explicit AssetAmount in the world's token, with the EIP-712 domain the payer signs against."""
    token = world["token"]
    return {"amount": str(atomic), "asset": token["address"],
            "extra": {"name": token["name"], "version": token["version"]}}


def create_app(world: dict[str, Any], facilitator_url: str, path: str = "/weather", price: int = 1000) -> FastAPI:
    """One priced GET route and a free /health, guarded by the SDK middleware."""
    app = FastAPI(title="x402 SDK priced service (outside part)")

    @app.get(path)
    async def priced() -> dict[str, Any]:
        return {"route": path, "forecast": "sunny", "temperature_c": 21}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    routes = {
        f"GET {path}": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=world["payees"][0], price=price_of(world, price),
                                  network=world["network"]),
            description=f"{path} (x402 Python SDK example)",
            mime_type="application/json",
        ),
    }
    server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url)))
    server.register(world["network"], ExactEvmServerScheme())
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="world file from `x402bench up --json`")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--facilitator-url", default=None, help="default: the world file's facilitator_url")
    parser.add_argument("--path", default="/weather", help="the priced GET route")
    parser.add_argument("--price", type=int, default=1000, help="price in the token's atomic units")
    args = parser.parse_args(argv)
    world = load_world(args.world)
    facilitator_url = args.facilitator_url or world.get("facilitator_url") or ""
    if not facilitator_url:
        parser.error("the world file has no facilitator_url; pass --facilitator-url")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    if args.price <= 0:
        parser.error("--price must be a positive number of atomic units")
    app = create_app(world, facilitator_url, args.path, args.price)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

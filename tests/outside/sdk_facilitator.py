"""The official x402 Python SDK facilitator, run as a user would run it, configured from a world file.

    python tests/outside/sdk_facilitator.py --world world.json --port 4022 [--key-index 0]

Why it exists: x402bench's own facilitator has an `sdk` strategy, but that runs the SDK inside our
engine (ledger, dedupe, probes). This program is the baseline without any of that: the SDK's
`x402FacilitatorSync` with its EVM exact scheme and `FacilitatorWeb3Signer`, behind four FastAPI
routes, nothing else. Handlers are plain `def`s, so FastAPI runs the SDK's blocking scheme code on its
thread pool, the documented way to deploy it. It answers exactly what the SDK answers and adds no
validation: a malformed body makes the SDK raise, and the caller sees a 500. That is a property of the
baseline, kept on purpose.

It signs with `facilitator_keys[key_index]` of the world file (keys x402bench funds with ETH and never
uses itself), against the world's `rpc_url`, for the world's `network`. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from x402 import x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.schemas import parse_payment_payload, parse_payment_requirements


def load_world(path: str | Path) -> dict[str, Any]:
    """The world file written by `x402bench up --json`."""
    return json.loads(Path(path).read_text())


def create_app(world: dict[str, Any], key_index: int = 0) -> FastAPI:
    """The SDK facilitator for the world's network, signing with one of the world's outside keys."""
    keys = world.get("facilitator_keys") or []
    if not 0 <= key_index < len(keys):
        raise SystemExit(f"--key-index {key_index}: the world file has {len(keys)} facilitator_keys")
    signer = FacilitatorWeb3Signer(private_key=keys[key_index], rpc_url=world["rpc_url"])
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(facilitator, signer, networks=world["network"])

    app = FastAPI(title="x402 SDK facilitator (outside part)")

    def parsed(body: dict[str, Any]) -> tuple[Any, Any]:
        # The body as HTTPFacilitatorClient sends it; the requirements' version follows the payload's.
        payload = parse_payment_payload(body["paymentPayload"])
        requirements = parse_payment_requirements(payload.x402_version, body["paymentRequirements"])
        return payload, requirements

    @app.post("/verify")
    def verify(body: dict[str, Any]) -> dict[str, Any]:
        return facilitator.verify(*parsed(body)).model_dump(by_alias=True, exclude_none=True)

    @app.post("/settle")
    def settle(body: dict[str, Any]) -> dict[str, Any]:
        return facilitator.settle(*parsed(body)).model_dump(by_alias=True, exclude_none=True)

    @app.get("/supported")
    def supported() -> dict[str, Any]:
        return facilitator.get_supported().model_dump(by_alias=True, exclude_none=True)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "signer": signer.address, "network": world["network"]}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="world file from `x402bench up --json`")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-index", type=int, default=0, help="which of the world's facilitator_keys signs")
    args = parser.parse_args(argv)
    app = create_app(load_world(args.world), args.key_index)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

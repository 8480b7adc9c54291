"""Priced services generated from a scenario, guarded by the official x402 SDK middleware.

The SDK middleware is the real x402 server code under test; around it sit two thin
layers of ours: a guard that answers malformed PAYMENT-SIGNATURE headers with 400 and
`invalid_payload` (the SDK would silently treat them as "no payment"), and a timer that
reports the verify / handler / settle split in a `Server-Timing` header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas import PaymentPayload
from x402.server import x402ResourceServer

#: A PAYMENT-SIGNATURE larger than this is refused before decoding (a real one is ~1.2 KB).
MAX_PAYMENT_HEADER_BYTES = 8 * 1024

_timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("x402bench_timings", default=None)


@dataclass(frozen=True)
class RouteSpec:
    name: str
    path: str
    method: str
    price_atomic: int
    work_median_ms: float
    work_sigma: float
    response_bytes: int
    workers: int | None = None
    description: str = ""


@dataclass(frozen=True)
class ResourceConfig:
    facilitator_url: str
    network: str
    token_address: str
    token_name: str
    token_version: str
    pay_to: str
    routes: list[RouteSpec]
    seed: int = 0
    max_timeout_s: int = 300
    extra: dict[str, Any] = field(default_factory=dict)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ResourceConfig":
        data = json.loads(Path(path).read_text())
        data["routes"] = [RouteSpec(**r) for r in data["routes"]]
        return cls(**data)


class TimedFacilitatorClient(HTTPFacilitatorClient):
    """The SDK's HTTP facilitator client, timing each call into the request's Server-Timing."""

    async def verify(self, payload, requirements):  # noqa: ANN001, ANN201
        start = time.perf_counter()
        try:
            return await super().verify(payload, requirements)
        finally:
            _record("verify", time.perf_counter() - start)

    async def settle(self, payload, requirements):  # noqa: ANN001, ANN201
        start = time.perf_counter()
        try:
            return await super().settle(payload, requirements)
        finally:
            _record("settle", time.perf_counter() - start)


def _record(name: str, seconds: float) -> None:
    timings = _timings.get()
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + seconds


def malformed_reason(header: str) -> str | None:
    """Why a PAYMENT-SIGNATURE header cannot be a payment, or None if it decodes to one."""
    if len(header) > MAX_PAYMENT_HEADER_BYTES:
        return f"header is {len(header)} bytes, over {MAX_PAYMENT_HEADER_BYTES}"
    try:
        raw = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        return "header is not base64"
    try:
        data = json.loads(raw)
    except ValueError:
        return "header is not base64 of JSON"
    if not isinstance(data, dict):
        return "header JSON is not an object"
    try:
        PaymentPayload.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"payload field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return None


class GuardAndTiming:
    """Outermost ASGI layer: refuse malformed payments, then add Server-Timing to the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"payment-signature"), None)
        if header is not None:
            problem = malformed_reason(header)
            if problem is not None:
                body = json.dumps({"x402Version": 2, "error": "invalid_payload", "message": problem}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        timings: dict[str, float] = {}
        token = _timings.set(timings)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start" and timings:
                value = ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in timings.items())
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            _timings.reset(token)


def _route_handler(spec: RouteSpec, rng: random.Random):  # noqa: ANN202
    gate = asyncio.Semaphore(spec.workers) if spec.workers else None
    body = (b'{"route":"' + spec.name.encode() + b'","data":"')
    body += b"x" * max(0, spec.response_bytes - len(body) - 2) + b'"}'

    async def work() -> None:
        seconds = spec.work_median_ms / 1000 * (rng.lognormvariate(0, spec.work_sigma) if spec.work_sigma else 1.0)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def handler(request: Request) -> Response:
        start = time.perf_counter()
        if gate is None:
            await work()
        else:
            async with gate:
                await work()
        _record("handler", time.perf_counter() - start)
        return Response(body, media_type="application/json")

    return handler


def create_app(config: ResourceConfig) -> FastAPI:
    app = FastAPI(title="x402bench priced services")
    rng = random.Random(config.seed)
    routes: dict[str, Any] = {}
    for spec in config.routes:
        app.add_api_route(spec.path, _route_handler(spec, rng), methods=[spec.method], name=spec.name)
        routes[f"{spec.method} {spec.path}"] = {
            "accepts": {
                "scheme": "exact",
                "payTo": config.pay_to,
                "network": config.network,
                "maxTimeoutSeconds": config.max_timeout_s,
                "price": {
                    "amount": str(spec.price_atomic),
                    "asset": config.token_address,
                    "extra": {"name": config.token_name, "version": config.token_version},
                },
            },
            "description": spec.description or spec.name,
            "mimeType": "application/json",
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    server = x402ResourceServer(TimedFacilitatorClient(FacilitatorConfig(url=config.facilitator_url, timeout=300.0)))
    server.register(config.network, ExactEvmServerScheme())
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    app.add_middleware(GuardAndTiming)
    return app

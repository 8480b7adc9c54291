"""The facilitator's HTTP face: the x402 facilitator API over one settlement engine.

Malformed requests get 400 with a reason code; well-formed but invalid payments get 200
with isValid/success false, because that is what the SDK's HTTP client expects (it
treats any non-200 as a transport failure and loses the reason).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.facilitator import reasons
from services.facilitator.checks import Rejection
from services.facilitator.config import FacilitatorConfig
from services.facilitator.engines import make_engine
from services.facilitator.prom import CONTENT_TYPE_LATEST, facilitator_registry, render

#: Rejections that mean "this request is malformed", answered 400 rather than 200.
MALFORMED = {reasons.INVALID_PAYLOAD, reasons.INVALID_X402_VERSION, reasons.INVALID_PAYMENT_REQUIREMENTS}


def create_app(config: FacilitatorConfig) -> FastAPI:
    engine = make_engine(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="x402bench facilitator", lifespan=lifespan)
    app.state.engine = engine

    @app.post("/verify")
    async def verify(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await engine.verify(await request.body()))
        except Rejection as rejection:
            engine.ledger.reject(rejection.reason)
            body: dict[str, Any] = {"isValid": False, "invalidReason": rejection.reason,
                                    "invalidMessage": rejection.message}
            if rejection.payer:
                body["payer"] = rejection.payer
            return JSONResponse(body, status_code=400 if rejection.reason in MALFORMED else 200)

    @app.post("/settle")
    async def settle(request: Request) -> JSONResponse:
        result = await engine.settle(await request.body())
        status = 400 if not result.get("success") and result.get("errorReason") in MALFORMED else 200
        return JSONResponse(result, status_code=status)

    @app.get("/supported")
    async def supported() -> dict[str, Any]:
        return engine.supported()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "strategy": config.strategy, "network": config.network}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return engine.metrics()

    registry = facilitator_registry(engine.metrics, engine.ledger.path)

    @app.get("/metrics/prometheus")
    async def metrics_prometheus() -> Response:
        """The same figures as /metrics (one source: engine.metrics()), in Prometheus text format, plus the
        settlement latency histogram read from the ledger."""
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    return app

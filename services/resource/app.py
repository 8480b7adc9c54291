"""Priced services generated from a scenario, guarded by the official x402 SDK middleware.

The SDK middleware is the real x402 server code under test; around it sit two thin
layers of ours: a guard that answers malformed PAYMENT-SIGNATURE headers with 400 and
`invalid_payload` (the SDK would silently treat them as "no payment"), and a timer that
reports the verify / handler / settle split in a `Server-Timing` header.

A route whose scheme is `batch-settlement` is declared to the middleware with the SDK's
batch-settlement server scheme (receiver = pay_to, receiver-authorizer = a local test key from
the world config): the payer deposits into an escrow channel once, then pays with vouchers.
By default that scheme is services.resource.fast_voucher's subclass, which answers the common
voucher (known channel, fresh chain state, right cumulative, right signer) with the SDK's own answer at a
fraction of the CPU and leaves every other payload to the SDK's code (`voucher_check="sdk"`: the SDK's as is).
For those routes the app also has a local harness route, `POST /_channels/claim_settle`, that
runs the SDK channel manager's claim (claims_per_tx vouchers per tx) and settle for every
channel with charged-but-unclaimed vouchers and answers with the tx hashes and amounts. It is
unauthenticated and meant for a local test world only.

Several processes may serve the same routes on one address (`service_processes` > 1, one config for all;
services.stack starts them). What each keeps for itself must then be nothing a payment depends on:
- batch-settlement channels live in the shared SQLite store (channel_storage's shared mode), the claim and
  settle cadence runs in one process at a time, and its counts live in that store (channels.py);
- fast_voucher's caches hold only what a channel config and route terms mean, never channel state;
- exact payments hold no state here at all: their replay guard is the facilitator's ledger (one row per
  token, payer and EIP-3009 nonce, in the one facilitator every services process calls) and, behind it,
  the token's own used-nonce check on chain; an authorization replayed to another services process reaches
  the same ledger and is answered as it would be by the first (a retry gets its earlier answer, never a
  second settlement; a different payload with a used nonce is refused);
- the SDK scheme's request contexts are per request, and a request is served by one process.
`GET /health` answers the process's PID, so a caller can tell which process answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import os
import random
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.facilitator_client import _attach_extension_responses, _parse_facilitator_response
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm.exact import ExactEvmServerScheme

from services.background import stop_tasks
from services.process import write_private
from services.resource.channel_storage import make_storage
from services.resource.channels import ChannelKeeper, MemoryBook, ProcessLocks, SharedBook
from services.resource.fast_voucher import FastBatchSettlementScheme
from services.resource.prom import ServiceStats, service_registry
from x402.schemas import PaymentPayload, SettleResponse, VerifyResponse
from x402.server import x402ResourceServer

from x402bench.registry import register

VOUCHER_CHECKS = ("fast", "sdk")
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
    scheme: str = "exact"  # or "batch-settlement"


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
    facilitator_transport: str = "aiohttp"  # or "httpx", the SDK's own client, for comparison
    extra: dict[str, Any] = field(default_factory=dict)
    # batch-settlement routes: the receiver-authorizer's key (a local test key), the channels' withdrawDelay,
    # the deposit a new channel is asked for (None: the SDK server's default) and vouchers per claim tx.
    receiver_authorizer_key: str = ""
    withdraw_delay_s: int = 900
    min_deposit_atomic: int | None = None
    claims_per_tx: int = 100
    # The claim and settle cadence (services.resource.channels), and where the channels are kept:
    # `sqlite` under channel_dir (durable: a restarted service still holds the vouchers it served), `file`
    # (the SDK's FileChannelStorage) or `memory` (the SDK's in-memory storage), the last two for comparison.
    claim_every_s: float = 10.0
    settle_every_s: float = 30.0
    channel_storage: str = "sqlite"
    channel_dir: str = ""
    shutdown_flush_s: float = 5.0
    # `fast`: the SDK's server scheme with our cheap voucher check (services.resource.fast_voucher); `sdk`: the
    # SDK's scheme as it comes, for comparison and for the tests that hold the two to the same answers.
    voucher_check: str = "fast"
    # How many processes serve these routes on one address (services.stack): above 1, the channels are shared
    # through SQLite under channel_dir and one process at a time is the claim/settle keeper.
    service_processes: int = 1

    def dump(self, path: str | Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2))  # it may hold the receiver-authorizer key

    @classmethod
    def load(cls, path: str | Path) -> "ResourceConfig":
        data = json.loads(Path(path).read_text())
        data["routes"] = [RouteSpec(**r) for r in data["routes"]]
        return cls(**data)


@dataclass
class _Reply:
    """The slice of an httpx.Response that the SDK's response parsers read."""

    status_code: int
    text: str
    headers: Any

    def json(self) -> Any:
        return json.loads(self.text)


class TimedFacilitatorClient(HTTPFacilitatorClient):
    """The SDK's HTTP facilitator client, timing each call into the request's Server-Timing.

    With `transport="aiohttp"` the SDK's own request building and response parsing are kept
    and only the bytes travel over aiohttp: under load, httpcore's connection pool scans
    every connection on each request and took over 60% of the service's CPU at 200
    concurrent payments (measured with py-spy); `transport="httpx"` keeps the SDK's default.
    """

    def __init__(self, config: FacilitatorConfig, transport: str = "aiohttp") -> None:
        super().__init__(config)
        self._transport = transport
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> _Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout), connector=aiohttp.TCPConnector(limit=0)
            )
        async with self._session.post(f"{self._url}{path}", data=json.dumps(body),
                                      headers={"Content-Type": "application/json", **headers}) as response:
            return _Reply(response.status, await response.text(), response.headers)

    async def _call(self, path: str, model: type, version: int, payload: dict, requirements: dict) -> Any:
        headers = self._get_verify_headers() if path == "/verify" else self._get_settle_headers()
        reply = await self._post(path, headers, self._build_request_body(version, payload, requirements))
        if reply.status_code != 200:
            raise ValueError(f"Facilitator {path[1:]} failed ({reply.status_code}): {reply.text}")
        return _attach_extension_responses(_parse_facilitator_response(reply, model, path[1:]), reply)

    async def _verify_http(self, version, payload_dict, requirements_dict):  # noqa: ANN001, ANN202
        if self._transport == "httpx":
            return await super()._verify_http(version, payload_dict, requirements_dict)
        return await self._call("/verify", VerifyResponse, version, payload_dict, requirements_dict)

    async def _settle_http(self, version, payload_dict, requirements_dict):  # noqa: ANN001, ANN202
        if self._transport == "httpx":
            return await super()._settle_http(version, payload_dict, requirements_dict)
        return await self._call("/settle", SettleResponse, version, payload_dict, requirements_dict)

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
    # The SDK's model would default a missing version to 2 (and coerce "2" or 2.0), paying a payload the
    # spec calls malformed; what the number says (1, 3) is left to the SDK and the facilitator to refuse.
    if type(data.get("x402Version")) is not int:
        return "payload field x402Version: missing or not an integer"
    try:
        PaymentPayload.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"payload field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return None


class GuardAndTiming:
    """Outermost ASGI layer: refuse malformed payments, then add Server-Timing to the answer; each priced
    route's answer and its timings also go to `stats` (GET /_metrics and /_metrics/prometheus)."""

    def __init__(self, app: ASGIApp, stats: ServiceStats | None = None) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"payment-signature"), None)
        route = self.stats.route_of(scope["path"]) if self.stats is not None else None
        if header is not None:
            problem = malformed_reason(header)
            if problem is not None:
                if route is not None:
                    self.stats.answered(route, 400, {})
                body = json.dumps({"x402Version": 2, "error": "invalid_payload", "message": problem}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        timings: dict[str, float] = {}
        token = _timings.set(timings)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start" and route is not None:
                self.stats.answered(route, message["status"], timings)
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
    started: list[Any] = []  # things with async start() / stop(), run by the lifespan

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for part in started:
            part.start()
        try:
            yield
        finally:
            for part in reversed(started):
                await part.stop()

    app = FastAPI(title="x402bench priced services", lifespan=lifespan)
    rng = random.Random(config.seed)
    routes: dict[str, Any] = {}
    for spec in config.routes:
        # A plain Starlette route: the handler takes the request and nothing else, so FastAPI's dependency
        # solving and response validation around it (about 5% of a voucher request's CPU) buy nothing.
        app.router.add_route(spec.path, _route_handler(spec, rng), methods=[spec.method], name=spec.name,
                             include_in_schema=False)
        accepts: dict[str, Any] = {
            "scheme": spec.scheme,
            "payTo": config.pay_to,
            "network": config.network,
            "maxTimeoutSeconds": config.max_timeout_s,
            "price": {
                "amount": str(spec.price_atomic),
                "asset": config.token_address,
                "extra": {"name": config.token_name, "version": config.token_version},
            },
        }
        if spec.scheme == "batch-settlement" and config.min_deposit_atomic is not None:
            accepts["extra"] = {"minDeposit": str(config.min_deposit_atomic)}
        routes[f"{spec.method} {spec.path}"] = {
            "accepts": accepts,
            "description": spec.description or spec.name,
            "mimeType": "application/json",
        }

    pid = os.getpid()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pid": pid}

    stats = ServiceStats({spec.path: spec.name for spec in config.routes})
    registry = service_registry(stats)

    @app.get("/_metrics")
    async def metrics_json() -> dict[str, Any]:
        """Local harness route: this process's answers per route and status, and the Server-Timing phases."""
        return stats.json()

    @app.get("/_metrics/prometheus")
    async def metrics_prometheus() -> Response:
        """The same figures as /_metrics (one ServiceStats), in Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The SDK's default httpx pool (100 connections) would cap concurrent verify+settle calls, and with
    # 2 s blocks each settle holds its connection for a block: size the pool for the load instead.
    pool = httpx.AsyncClient(timeout=300.0, limits=httpx.Limits(max_connections=4096, max_keepalive_connections=1024))
    facilitator = FacilitatorConfig(url=config.facilitator_url, timeout=300.0, http_client=pool)
    client = TimedFacilitatorClient(facilitator, transport=config.facilitator_transport)
    server = x402ResourceServer(client)
    server.register(config.network, ExactEvmServerScheme())
    if any(spec.scheme == "batch-settlement" for spec in config.routes):
        started.append(_add_batch_settlement(app, server, client, config))
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    app.add_middleware(GuardAndTiming, stats=stats)
    return app


def _add_batch_settlement(app: FastAPI, server: x402ResourceServer, client: TimedFacilitatorClient,
                          config: ResourceConfig) -> "ChannelKeeper | _Parts":
    """The SDK's batch-settlement server scheme for this network over a durable channel storage, the keeper
    that claims and settles on the scenario's cadence, and the harness routes."""
    from eth_account import Account
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
    from x402.mechanisms.evm.batch_settlement.server import (
        BatchSettlementChannelManager,
        BatchSettlementEvmScheme,
        BatchSettlementEvmSchemeServerConfig,
        ChannelManagerConfig,
    )

    if not config.receiver_authorizer_key:
        raise ValueError("a batch-settlement route needs ResourceConfig.receiver_authorizer_key")
    shared = config.service_processes > 1
    if shared and not config.channel_dir:
        raise ValueError("several services processes share their channels through channel_dir: set it")
    if config.voucher_check not in VOUCHER_CHECKS:
        raise ValueError(f"voucher_check {config.voucher_check!r}: choose one of {', '.join(VOUCHER_CHECKS)}")
    kind = FastBatchSettlementScheme if config.voucher_check == "fast" else BatchSettlementEvmScheme
    channel_dir = config.channel_dir or tempfile.mkdtemp(prefix="x402bench-channels-")
    storage = make_storage(config.channel_storage, channel_dir, shared=shared)
    scheme = kind(config.pay_to, BatchSettlementEvmSchemeServerConfig(
        receiver_authorizer_signer=LocalAuthorizerSigner(Account.from_key(config.receiver_authorizer_key)),
        withdraw_delay=config.withdraw_delay_s, storage=storage))
    server.register(config.network, scheme)
    # scheme.create_channel_manager looks up a default asset for the network (chain 31337 has none);
    # the manager itself takes any token.
    manager = BatchSettlementChannelManager(ChannelManagerConfig(
        scheme=scheme, facilitator=client, receiver=scheme.get_receiver_address(), token=config.token_address,
        network=config.network))
    keeper = ChannelKeeper(manager, scheme, config.claims_per_tx, config.claim_every_s, config.settle_every_s,
                           flush_s=config.shutdown_flush_s, locks=ProcessLocks(channel_dir) if shared else None,
                           book=SharedBook(storage) if shared else MemoryBook())
    counts: dict[str, int] | None = getattr(scheme, "counts", None)
    reporter = VoucherCounts(storage, counts) if shared and counts is not None else None

    @app.post("/_channels/claim_settle", response_model=None)
    async def claim_settle() -> dict[str, Any] | JSONResponse:
        """Local harness route: claim every channel's charged-but-unclaimed vouchers, then settle the
        receiver's claimed total to pay_to (also a settle an earlier claim left owed). Answers the claim and
        settle txs and the amounts claimed; 502 with the error when the facilitator failed or was unreachable
        (what was claimed stays claimed, and a settle left owed goes out at the next call or tick)."""
        try:
            return await keeper.claim_and_settle()
        except Exception as exc:  # noqa: BLE001 - the caller (the load runner, a test) is told why
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"[:1000], **keeper.status()}, status_code=502)

    @app.get("/_channels/status")
    async def channel_status() -> dict[str, Any]:
        """Local harness route: what the cadence has claimed and settled, and what is still unclaimed; with the
        fast voucher check, how many vouchers it answered and how many it left to the SDK's hook."""
        vouchers = reporter.totals() if reporter is not None else dict(counts) if counts else None
        return {**keeper.status(), "voucher_check": config.voucher_check, **({"vouchers": vouchers} if vouchers else {})}

    return keeper if reporter is None else _Parts(reporter, keeper)


class VoucherCounts:
    """Several processes: each one's fast/sdk voucher counts written to the shared store every second (and at
    stop), so the status route answers every process's vouchers whichever process answers it (the others'
    figures at most a second old). Not written per request: that would be a second write on the voucher path."""

    EVERY_S = 1.0

    def __init__(self, storage: Any, counts: dict[str, int]) -> None:
        self.storage, self.counts, self.key = storage, counts, f"vouchers.{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._written: dict[str, int] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="voucher-counts")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.EVERY_S)
            self.write()

    def write(self) -> None:
        if self.counts != self._written:
            now = dict(self.counts)
            self.storage.update_book(self.key, lambda _: now)
            self._written = now

    def totals(self) -> dict[str, int]:
        books = {**self.storage.read_books("vouchers."), self.key: dict(self.counts)}
        return {name: sum(int(book.get(name, 0)) for book in books.values()) for name in self.counts}

    async def stop(self) -> None:
        await stop_tasks(self._task)
        try:
            self.write()
        except Exception:  # noqa: BLE001 - counts only; a shutdown must end
            pass


class _Parts:
    """Two lifespan parts started in order and stopped in reverse (the keeper stops, and flushes, first)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def start(self) -> None:
        for part in self.parts:
            part.start()

    async def stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop()


# How a priced route is offered, per scheme: the SDK's exact server scheme, and for batch-settlement the
# SDK's server scheme with our cheap voucher check, its cadence and storage (_add_batch_settlement).
register("scheme", "service", "exact", ExactEvmServerScheme)
register("scheme", "service", "batch-settlement", _add_batch_settlement)

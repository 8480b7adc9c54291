"""What both fault proxies share: the control routes, one pooled upstream session, and the process.

Each proxy is its own process (so a proxy that is busy holding or delaying calls never
steals the event loop of the part it sits in front of, and it can be stopped by its PID
like every other part of the world). It serves plain aiohttp on 127.0.0.1, on uvloop when
installed, and forwards over one ClientSession created inside the running loop.

On SIGTERM or SIGINT it switches every mode off first, exactly as `{"mode": "all", "on":
false}` would (held calls are released, a stalled node's mining is restored), then closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import aiohttp
from aiohttp import web

from services.faults.api import ALL, ChangeRefused, FaultState, parse_change

_JSON = "application/json"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=_JSON)


class FaultProxy:
    """The part of a proxy that is not about forwarding: modes, control API, lifecycle.

    Subclasses set `kind` and `modes`, add their forwarding routes in `routes()`, and apply
    a mode in `switch_on` / `switch_off` (both may raise ChangeRefused with a status).
    """

    kind = ""
    modes: tuple[str, ...] = ()

    def __init__(self, upstream: str, seed: int = 42, max_hold_s: float = 120.0, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.seed = seed
        self.max_hold_s = max_hold_s
        self.max_connections = max_connections
        self.active: dict[str, dict[str, Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._control_lock: asyncio.Lock | None = None

    # --- to be filled in by each proxy ------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def counters(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def session_options(self) -> dict[str, Any]:
        return {}

    async def switch_on(self, mode: str, params: dict[str, Any]) -> None:
        self.active[mode] = params

    async def switch_off(self, mode: str) -> None:
        self.active.pop(mode, None)

    # --- shared ---------------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the upstream session is made on startup"
        return self._session

    def state(self) -> FaultState:
        return {"proxy": self.kind, "upstream": self.upstream, "seed": self.seed,  # type: ignore[typeddict-item]
                "modes": list(self.modes), "active": {m: dict(p) for m, p in self.active.items()},
                "counters": self.counters(), **self.extra_state()}

    async def _get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.state())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            return json_response({"error": "the body is not JSON"}, 400)
        try:
            mode, on, params = parse_change(body, self.modes)
            assert self._control_lock is not None
            async with self._control_lock:  # one change at a time: a stall's save and restore must not interleave
                if mode == ALL:
                    await self.switch_all_off()
                elif on:
                    await self.switch_on(mode, params)
                else:
                    await self.switch_off(mode)
        except ChangeRefused as exc:
            return json_response({"error": str(exc)}, exc.status)
        return json_response(self.state())

    async def switch_all_off(self) -> None:
        errors = []
        for mode in list(self.active):
            try:
                await self.switch_off(mode)
            except ChangeRefused as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.get("/_faults", self._get_faults), web.post("/_faults", self._post_faults), *self.routes()])
        return app

    async def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve until SIGTERM/SIGINT, then switch every mode off and close."""
        self._control_lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.max_hold_s + 10),
            **self.session_options(),
        )
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096, shutdown_timeout=5.0)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"{self.kind} fault proxy on http://{host}:{port} -> {self.upstream}", flush=True)
        await stop.wait()
        try:
            async with self._control_lock:
                await self.switch_all_off()
        except ChangeRefused as exc:
            print(f"on stop: {exc}", file=sys.stderr, flush=True)
        await runner.cleanup()
        await self._session.close()


def main(proxy_class: type[FaultProxy], doc: str) -> None:
    """The body of a proxy module's `__main__`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the URL to forward to, e.g. http://127.0.0.1:8545")
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random draws (errors, jitter); default 42")
    parser.add_argument("--max-hold-s", type=float, default=120.0,
                        help="the longest a request is held by a timeout fault; default 120")
    parser.add_argument("--max-connections", type=int, default=512, help="upstream connection pool size; default 512")
    args = parser.parse_args()
    proxy = proxy_class(args.upstream, seed=args.seed, max_hold_s=args.max_hold_s, max_connections=args.max_connections)
    try:
        import uvloop
    except ImportError:
        asyncio.run(proxy.serve(args.port))
    else:
        uvloop.run(proxy.serve(args.port))

"""A JSON-RPC reverse proxy between the facilitator and the node, that breaks the node on demand.

    python -m services.faults.rpc_proxy --upstream http://127.0.0.1:NODEPORT --port N [--seed 42] [--max-hold-s 120]

Why: the faults a settlement path must survive (a slow node, a rate-limiting or failing
provider, a node that hangs and stops mining, a transaction that vanishes from the pool)
are properties of the node as the facilitator sees it. Putting them in a proxy on the
facilitator's RPC URL tests any facilitator, ours or an outside one, without changing its
code, while everyone else (the load generator, reconciliation) still reads the real chain.

Every POST (a single call or a batch, at any path) is forwarded to the upstream URL with its
body unchanged and the upstream's answer is returned as it is. GET /health answers 200 here
(the proxy is up; the node is checked through it by a call). Modes, switched through
POST /_faults (keys in services.faults.api), apply in this order to each HTTP request:

- `stall`: the request is held, not forwarded, until the stall is switched off; then every held
  request is forwarded (even if its client gave up by then: a node that hung and recovers still
  processes what it was sent). With `mining: "stop"` (the default) switching on also stops the
  node's mining (evm_setAutomine false, evm_setIntervalMining 0, after reading anvil_getAutomine
  and anvil_getIntervalMining), and switching off restores exactly that mode before the held
  requests go. The control call returns once the mode is in force (read back from the node).
  Anvil reports a sub-second block time as interval 0 and can only set whole seconds, so a
  stall that would have to restore one is refused (409); `mining: "keep"` holds calls only.
- `latency`: the request waits ms + uniform(0, jitter_ms), drawn from a seeded random.Random.
- `errors`: a fraction `rate` of requests (one draw per HTTP request, from random.Random(seed)
  restarted each time the mode is switched on) fail: HTTP 429, 500 or 503 with a small JSON-RPC
  error body (id null), or "timeout": held unanswered until the client gives up, the mode is
  switched off or changed, the proxy stops, or --max-hold-s passes; a held request still
  waiting then gets a 504 (it was never forwarded).
- `drop_sent`: every eth_sendRawTransaction in the request (each item of a batch) is forwarded,
  and each hash the node returns is removed from its pool at once with anvil_dropTransaction:
  the sender holds a hash that will never be mined. Refused (409) on an automining node, where
  the tx is in a block before its hash comes back. On an interval node a block can close
  between the node's answer and the drop: such hashes are counted as `drop_missed_hashes`.
  Anvil drops only transactions ready to mine, so a sender's next nonce, queued behind the gap
  the first drop left, is removed with all of that sender's pool transactions
  (anvil_removePoolTransactions), and those not sent under drop_sent are put back from their
  raw bytes (`resent`). eth_sendRawTransactionSync (which would wait for the receipt) is sent
  as eth_sendRawTransaction, dropped, and answered with the EIP-7966 timeout error (code 4, the
  hash in `data`), what a node answers when the tx it accepted is never mined.

Hot path: one pooled aiohttp ClientSession, the body is never parsed unless drop_sent is on and
the body mentions sendRawTransaction.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
from aiohttp import web

from services.faults.api import RPC_MODES, ChangeRefused, RpcCounters
from services.faults.server import FaultProxy, json_response, main

SEND_METHODS = ("eth_sendRawTransaction", "eth_sendRawTransactionSync")
_JSON = "application/json"
#: JSON-RPC error codes used in the bodies of failed requests (what public providers answer).
_ERROR_BODIES = {
    "429": (-32005, "limit exceeded (x402bench fault proxy: 429)"),
    "500": (-32603, "internal error (x402bench fault proxy: 500)"),
    "503": (-32000, "service unavailable (x402bench fault proxy: 503)"),
}
_CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=10)


class RpcFaultProxy(FaultProxy):
    kind = "rpc"
    modes = RPC_MODES

    def __init__(self, upstream: str, seed: int = 42, max_hold_s: float = 120.0, max_connections: int = 512) -> None:
        super().__init__(upstream, seed, max_hold_s, max_connections)
        self.requests = self.forwarded = self.batches = self.delayed = self.holding = self.upstream_errors = 0
        self.failed = {kind: 0 for kind in ("429", "500", "503", "timeout")}
        self.held = {"stall": 0, "timeout": 0}
        self.dropped_hashes: list[str] = []
        self.drop_missed_hashes: list[str] = []
        self._error_rng = random.Random(seed)
        self._jitter_rng = random.Random(seed + 1)
        self._stall_release: asyncio.Event | None = None  # set (and dropped) when the stall ends
        self._timeout_release: asyncio.Event | None = None  # set when requests held by "timeout" must go
        self._mining_saved: tuple[str, int | None] | None = None  # what the stall restores
        self._doomed: set[str] = set()  # hashes sent under drop_sent (lower-case): never put back in the pool
        self._drop_lock = asyncio.Lock()
        self.resent = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/health", self._health), web.post("/{tail:.*}", self._forward)]

    def counters(self) -> RpcCounters:
        return {"requests": self.requests, "forwarded": self.forwarded, "batches": self.batches,
                "delayed": self.delayed, "failed": dict(self.failed), "held": dict(self.held),
                "holding": self.holding, "dropped": len(self.dropped_hashes),
                "dropped_hashes": list(self.dropped_hashes), "drop_missed_hashes": list(self.drop_missed_hashes),
                "resent": self.resent, "upstream_errors": self.upstream_errors}

    def extra_state(self) -> dict[str, Any]:
        saved = self._mining_saved
        return {"mining_saved": None if saved is None else saved[0] if saved[1] is None else f"{saved[0]}:{saved[1]}"}

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "upstream": self.upstream})

    # --- the forwarding path ---------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        content_type = request.headers.get("Content-Type", _JSON)
        if self._stall_release is not None:
            await self._hold_for_stall(self._stall_release)
        latency = self.active.get("latency")
        if latency is not None:
            self.delayed += 1
            jitter = latency["jitter_ms"]
            await asyncio.sleep((latency["ms"] + (self._jitter_rng.uniform(0, jitter) if jitter else 0.0)) / 1000)
        errors = self.active.get("errors")
        if errors is not None and self._error_rng.random() < errors["rate"]:
            kind = errors["error"]
            self.failed[kind] += 1
            if kind == "timeout":
                return await self._hold_for_timeout(request)
            code, message = _ERROR_BODIES[kind]
            return json_response({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}},
                                 int(kind))
        if "drop_sent" in self.active and b"sendRawTransaction" in body:
            return await self._forward_dropping(body, content_type)
        return await self._pass(body, content_type)

    async def _pass(self, body: bytes, content_type: str) -> web.Response:
        try:
            status, data, reply_type = await self._post(body, content_type)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.upstream_errors += 1
            return json_response({"jsonrpc": "2.0", "id": None,
                                  "error": {"code": -32603, "message": f"upstream {self.upstream}: {exc!r}"}}, 502)
        return web.Response(body=data, status=status, headers={"Content-Type": reply_type})

    async def _post(self, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        async with self.session.post(self.upstream, data=body, headers={"Content-Type": content_type}) as response:
            data = await response.read()
            self.forwarded += 1
            if body.lstrip()[:1] == b"[":  # no copy unless the body starts with whitespace
                self.batches += 1
            return response.status, data, response.headers.get("Content-Type", _JSON)

    async def _hold_for_stall(self, release: asyncio.Event) -> None:
        self.held["stall"] += 1
        self.holding += 1
        try:
            await release.wait()
        finally:
            self.holding -= 1

    async def _hold_for_timeout(self, request: web.Request) -> web.Response:
        """Hold without answering until released, capped, or the client is gone (then free the slot)."""
        if self._timeout_release is None:
            self._timeout_release = asyncio.Event()
        release = self._timeout_release
        self.held["timeout"] += 1
        self.holding += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_hold_s
        try:
            while not release.is_set():
                left = deadline - loop.time()
                if left <= 0 or request.transport is None or request.transport.is_closing():
                    break
                try:
                    await asyncio.wait_for(release.wait(), min(0.5, left))
                except asyncio.TimeoutError:
                    pass
        finally:
            self.holding -= 1
        return web.Response(body=b"held by the x402bench fault proxy (errors: timeout); never forwarded\n",
                            status=504, content_type="text/plain")

    async def _forward_dropping(self, body: bytes, content_type: str) -> web.Response:
        """Forward, then drop every hash the node returned for a send; Sync sends are answered as timed out."""
        try:
            doc = json.loads(body)
        except ValueError:
            return await self._pass(body, content_type)
        items = doc if isinstance(doc, list) else [doc]
        sends: dict[str, str] = {}  # json of the id -> method the client called
        for item in items:
            if isinstance(item, dict) and item.get("method") in SEND_METHODS:
                sends[json.dumps(item.get("id"))] = item["method"]
                if item["method"] == "eth_sendRawTransactionSync":
                    item["method"] = "eth_sendRawTransaction"
                    item["params"] = list(item.get("params") or [])[:1]
        if not sends:
            return await self._pass(body, content_type)
        rewritten = "eth_sendRawTransactionSync" in sends.values()
        try:
            status, data, reply_type = await self._post(json.dumps(doc).encode() if rewritten else body, content_type)
            reply = json.loads(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.upstream_errors += 1
            return json_response({"jsonrpc": "2.0", "id": None,
                                  "error": {"code": -32603, "message": f"upstream {self.upstream}: {exc!r}"}}, 502)
        except ValueError:
            return web.Response(body=data, status=status, headers={"Content-Type": reply_type})
        replies = reply if isinstance(reply, list) else [reply]
        sent = [r for r in replies if isinstance(r, dict) and json.dumps(r.get("id")) in sends
                and isinstance(r.get("result"), str)]
        if not sent:
            return web.Response(body=data, status=status, headers={"Content-Type": reply_type})
        await self._drop([r["result"] for r in sent])
        if not rewritten:
            return web.Response(body=data, status=status, headers={"Content-Type": reply_type})
        for r in sent:
            if sends[json.dumps(r.get("id"))] == "eth_sendRawTransactionSync":
                tx_hash = r.pop("result")
                r["error"] = {"code": 4, "data": tx_hash, "message": "The transaction was added to the mempool but "
                              "wasn't processed within the designated timeout (x402bench fault proxy: drop_sent)"}
        return json_response(reply, status)

    async def _drop(self, hashes: list[str]) -> None:
        self._doomed.update(h.lower() for h in hashes)
        try:
            outcomes = await self._upstream_batch([("anvil_dropTransaction", [h]) for h in hashes])
        except ChangeRefused:
            outcomes = [None] * len(hashes)
        for tx_hash, outcome in zip(hashes, outcomes):
            if not outcome:
                try:
                    outcome = await self._remove_queued(tx_hash)
                except (ChangeRefused, KeyError, TypeError, AttributeError):
                    outcome = False
            (self.dropped_hashes if outcome else self.drop_missed_hashes).append(tx_hash)

    async def _remove_queued(self, tx_hash: str) -> bool:
        """Remove a tx anvil_dropTransaction left alone; True once it is in neither the pool nor a block.

        Anvil drops only transactions that are ready to mine. Once one of a sender's transactions is
        dropped, its next nonce waits behind the gap ("queued"), where anvil_dropTransaction cannot
        reach it, and it would be mined as soon as the gap is filled. So: remove every pool
        transaction of that sender (anvil_removePoolTransactions) and put back, from their raw bytes,
        those that were not sent under drop_sent. One at a time, so two removals never undo each other.
        """
        async with self._drop_lock:
            tx = await self._upstream_call("eth_getTransactionByHash", tx_hash)
            if tx is None:
                return True  # already gone: removed with its sender's other queued transactions
            if tx.get("blockNumber") is not None:
                return False  # mined before the drop came
            sender = str(tx["from"]).lower()
            pool = await self._upstream_call("txpool_content")
            theirs = [t for section in ("pending", "queued") for address, by_nonce in (pool.get(section) or {}).items()
                      if address.lower() == sender for t in by_nonce.values()]
            keep = sorted((t for t in theirs if str(t["hash"]).lower() not in self._doomed),
                          key=lambda t: int(t["nonce"], 16))
            raws = await self._upstream_batch([("eth_getRawTransactionByHash", [t["hash"]]) for t in keep]) if keep else []
            await self._upstream_call("anvil_removePoolTransactions", tx["from"])
            for raw in raws:
                if raw:
                    try:
                        await self._upstream_call("eth_sendRawTransaction", raw)
                        self.resent += 1
                    except ChangeRefused:
                        pass  # mined in between ("nonce too low"): nothing to put back
            return await self._upstream_call("eth_getTransactionByHash", tx_hash) is None

    # --- modes ----------------------------------------------------------------------------------

    async def switch_on(self, mode: str, params: dict[str, Any]) -> None:
        if mode == "stall":
            await self._stall_on(params)
            return
        if mode == "errors":
            previous = self.active.get("errors")
            self._error_rng = random.Random(self.seed if params["seed"] is None else params["seed"])
            if previous and previous["error"] == "timeout" and params["error"] != "timeout":
                self._release_timeouts()
        if mode == "latency":
            self._jitter_rng = random.Random(self.seed + 1)
        if mode == "drop_sent" and mode not in self.active:
            await self._check_droppable()
        self.active[mode] = params

    async def switch_off(self, mode: str) -> None:
        if mode == "stall":
            await self._stall_off()
            return
        self.active.pop(mode, None)
        if mode == "errors":
            self._release_timeouts()
        if mode == "drop_sent":
            self._doomed.clear()

    def _release_timeouts(self) -> None:
        if self._timeout_release is not None:
            self._timeout_release.set()
            self._timeout_release = None

    async def _check_droppable(self) -> None:
        """drop_sent needs Anvil (anvil_dropTransaction) and a node that does not mine a tx as it arrives."""
        try:
            automine = await self._upstream_call("anvil_getAutomine")
        except ChangeRefused as exc:
            raise ChangeRefused(f"drop_sent needs an Anvil node ({exc})", exc.status) from None
        if automine:
            raise ChangeRefused("drop_sent on an automining node cannot drop anything: a transaction is in a block "
                                "before its hash comes back; run the node with interval or manual mining", 409)

    async def _stall_on(self, params: dict[str, Any]) -> None:
        current = self.active.get("stall")
        if current is not None:
            if current == params:
                return
            raise ChangeRefused(f"stall is already on with {current}; switch it off first", 409)
        saved = await self._read_mining() if params["mining"] == "stop" else None
        self._stall_release = asyncio.Event()  # from here on every request is held
        self.active["stall"] = params
        if saved is None:
            return
        self._mining_saved = saved
        try:
            await self._upstream_call("evm_setAutomine", False)
            await self._upstream_call("evm_setIntervalMining", 0)
            if await self._read_mining() != ("manual", None):
                raise ChangeRefused("the node still mines after evm_setAutomine false and evm_setIntervalMining 0", 502)
        except ChangeRefused:
            await self._stall_off()
            raise

    async def _stall_off(self) -> None:
        if "stall" not in self.active:
            return
        saved, self._mining_saved = self._mining_saved, None
        problem = None
        if saved is not None:
            try:
                mode, interval = saved
                if mode == "auto":
                    await self._upstream_call("evm_setAutomine", True)
                elif mode == "interval":
                    await self._upstream_call("evm_setIntervalMining", interval)
                now = await self._read_mining()
                if now != saved:
                    problem = ChangeRefused(f"restored mining to {saved}, but the node reports {now}", 502)
            except ChangeRefused as exc:
                problem = ChangeRefused(f"stall switched off, but mining {saved} was not restored: {exc}", 502)
        self.active.pop("stall", None)
        release, self._stall_release = self._stall_release, None
        if release is not None:
            release.set()  # the held requests go on now, behind the restored mining
        if problem is not None:
            raise problem

    async def _read_mining(self) -> tuple[str, int | None]:
        """("auto" | "manual", None) or ("interval", seconds), as services.token.mining_mode reads it."""
        try:
            automine = await self._upstream_call("anvil_getAutomine")
            interval = await self._upstream_call("anvil_getIntervalMining")
        except ChangeRefused as exc:
            raise ChangeRefused(f"cannot read the node's mining mode ({exc}); a stall with mining: \"keep\" "
                                "holds calls without touching the node", exc.status) from None
        if automine:
            return "auto", None
        if interval is None:
            return "manual", None
        if int(interval) == 0:
            raise ChangeRefused("the node mines at a sub-second interval, which Anvil reports as 0 and can only set "
                                "in whole seconds, so a stall could not restore it; use mining: \"keep\" to hold "
                                "calls only", 409)
        return "interval", int(interval)

    async def _upstream_call(self, method: str, *params: Any) -> Any:
        return (await self._upstream_batch([(method, list(params))], single=True))[0]

    async def _upstream_batch(self, calls: list[tuple[str, list[Any]]], single: bool = False) -> list[Any]:
        """The proxy's own calls, straight to the node (never held, delayed or failed); results in order."""
        docs = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        try:
            async with self.session.post(self.upstream, data=json.dumps(docs[0] if single else docs).encode(),
                                         headers={"Content-Type": _JSON}, timeout=_CONTROL_TIMEOUT) as response:
                reply = json.loads(await response.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise ChangeRefused(f"upstream {self.upstream} did not answer {calls[0][0]}: {exc!r}", 502) from None
        replies = sorted(reply if isinstance(reply, list) else [reply], key=lambda r: r.get("id", 0))
        out = []
        for (method, _), r in zip(calls, replies):
            if "error" in r:
                message = r["error"].get("message", r["error"]) if isinstance(r["error"], dict) else r["error"]
                raise ChangeRefused(f"upstream {self.upstream}: {method} failed: {message}", 409)
            out.append(r.get("result"))
        return out


if __name__ == "__main__":
    main(RpcFaultProxy, __doc__ or "")

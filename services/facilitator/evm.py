"""The few EVM calls the facilitator makes, encoded by hand.

Every argument of authorizationState, balanceOf and transferWithAuthorization is a
static 32-byte word, so hex concatenation is exact and an order of magnitude cheaper
than a generic ABI encoder on the settlement hot path.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import json

import aiohttp
from eth_utils import keccak

from services.background import stop_tasks


def selector(signature: str) -> str:
    return keccak(text=signature)[:4].hex()


SEL_AUTHORIZATION_STATE = selector("authorizationState(address,bytes32)")
SEL_BALANCE_OF = selector("balanceOf(address)")
SEL_TRANSFER_WITH_AUTHORIZATION = selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
SEL_BATCH_SETTLE = selector(
    "settle(address,(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)[])"
)
# keccak("Transfer(address,address,uint256)") and keccak("AuthorizationUsed(address,bytes32)")
TOPIC_TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
TOPIC_AUTHORIZATION_USED = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()


def authorizations_used(receipt: dict, token: str) -> set[tuple[str, str]]:
    """(payer, nonce) of every EIP-3009 authorization the token consumed in this tx, lower-case 0x-hex:
    how one payment's fate is read from a receipt, single transfer or batch alike."""
    token = token.lower()
    return {("0x" + log["topics"][1][-40:].lower(), log["topics"][2].lower()) for log in receipt.get("logs") or []
            if log["address"].lower() == token and len(log["topics"]) == 3 and log["topics"][0] == TOPIC_AUTHORIZATION_USED}


def word(value: int | str | bytes) -> str:
    """One 32-byte ABI word as 64 hex chars (addresses and bytes32 left-padded, ints big-endian)."""
    if isinstance(value, bytes):
        return value.hex().rjust(64, "0")
    if isinstance(value, str):
        return value.lower().removeprefix("0x").rjust(64, "0")
    return format(value, "064x")


def call_data(sel: str, *args: int | str | bytes) -> str:
    return "0x" + sel + "".join(word(a) for a in args)


AuthorizationArgs = tuple[str, str, int, int, int, str, str]  # payer, payee, value, validAfter, validBefore, nonce, sig


def _authorization_words(payer: str, payee: str, value: int, valid_after: int, valid_before: int, nonce: str,
                         signature: str) -> str:
    """The nine ABI words of one authorization in its v/r/s form."""
    sig = signature.removeprefix("0x")
    r, s, v = sig[:64], sig[64:128], int(sig[128:130], 16)
    if v < 27:
        v += 27
    return "".join(word(a) for a in (payer, payee, value, valid_after, valid_before, nonce, v, r, s))


def transfer_with_authorization_data(
    payer: str, payee: str, value: int, valid_after: int, valid_before: int, nonce: str, signature: str
) -> str:
    return "0x" + SEL_TRANSFER_WITH_AUTHORIZATION + _authorization_words(
        payer, payee, value, valid_after, valid_before, nonce, signature)


BATCH_GAS_FIXED = 60_000
BATCH_GAS_PER_ITEM = 90_000  # above a first payment to a new payee (~70,000 inside a batch): never short


def batch_gas_limit(size: int) -> int:
    """The gas limit a batch of `size` authorizations is sent with (only gasUsed is paid)."""
    return BATCH_GAS_FIXED + BATCH_GAS_PER_ITEM * size


def batch_settle_data(token: str, authorizations: list[AuthorizationArgs]) -> str:
    """BatchSettler.settle(token, auths): the tuple is static, so the array's items sit inline after its length."""
    head = word(token) + word(0x40) + word(len(authorizations))
    return "0x" + SEL_BATCH_SETTLE + head + "".join(_authorization_words(*a) for a in authorizations)


class RpcError(RuntimeError):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.error = error
        data = error.get("data")
        super().__init__(f"{method}: {error.get('message', error)}" + (f" ({data})" if data else ""))


class AsyncRpc:
    """JSON-RPC over one pooled aiohttp session; supports batches to save round trips.

    aiohttp rather than httpx: profiling the facilitator under load showed httpx's
    per-request machinery at over 70% of its CPU; aiohttp (already here through web3)
    costs a fraction of that.
    """

    def __init__(self, url: str, timeout: float = 60.0, max_connections: int = 200) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0  # JSON-RPC calls made (a batch counts each call): the cost figure operators ask for

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session must be born inside the running loop
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._max_connections),
                json_serialize=json.dumps,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, body: Any) -> Any:
        async with self._client().post(self.url, data=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"}) as response:
            return json.loads(await response.read())

    async def call(self, method: str, *params: Any) -> Any:
        self.calls += 1
        reply = await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        if "error" in reply:
            raise RpcError(method, reply["error"])
        return reply["result"]

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any | RpcError]:
        """Results in call order; a failed call yields its RpcError in place instead of raising."""
        self.calls += len(calls)
        first = next(self._ids)
        body = [{"jsonrpc": "2.0", "id": first + i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        for _ in range(len(calls) - 1):
            next(self._ids)
        answer = await self._post(body)
        if not isinstance(answer, list):  # the whole batch refused (an HTTP 429/5xx with one error object)
            raise RpcError("batch", answer.get("error", {"message": str(answer)}) if isinstance(answer, dict) else
                           {"message": str(answer)})
        replies = {r["id"]: r for r in answer}
        out: list[Any | RpcError] = []
        for i, (method, _) in enumerate(calls):
            reply = replies[first + i]
            out.append(RpcError(method, reply["error"]) if "error" in reply else reply["result"])
        return out

    async def eth_call(self, to: str, data: str) -> str:
        return await self.call("eth_call", {"to": to, "data": data}, "latest")


class ReceiptWatcher:
    """Resolves waiting settlements from whole blocks instead of polling each tx.

    One task follows the chain head and fetches each new block's receipts once, so the
    RPC cost is per block, not per payment, however many settlements are waiting.
    """

    def __init__(self, rpc: AsyncRpc, poll_s: float) -> None:
        self.rpc = rpc
        self.poll_s = poll_s
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next_block: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self.automine = False

    async def start(self) -> None:
        self._next_block = int(await self.rpc.call("eth_blockNumber"), 16) + 1
        try:  # on an automining node a tx is in a block by the time its send returns: look at once
            self.automine = bool(await self.rpc.call("anvil_getAutomine"))
        except RpcError:
            self.automine = False
        self._task = asyncio.create_task(self._follow())

    def sent(self) -> None:
        """A tx was just broadcast: on an automining chain its receipt is ready now."""
        if self.automine:
            self._kick.set()

    async def stop(self) -> None:
        await stop_tasks(self._task)

    def expect(self, tx_hash: str) -> "asyncio.Future[dict[str, Any]]":
        """A future for the receipt; register before or right after sending: blocks are scanned in order."""
        fut = self._waiting.get(tx_hash.lower())
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiting[tx_hash.lower()] = fut
        return fut

    def rewind(self, block: int) -> None:
        """Scan again from `block` (a reorg replaced it): transactions sent again may land in the new blocks."""
        if self._next_block is not None:
            self._next_block = min(self._next_block, block)

    async def lookup(self, tx_hash: str) -> dict[str, Any] | None:
        """A receipt for a tx sent before this watcher started (recovery path)."""
        return await self.rpc.call("eth_getTransactionReceipt", tx_hash)

    async def _follow(self) -> None:
        while True:
            try:
                head = int(await self.rpc.call("eth_blockNumber"), 16)
                while self._next_block is not None and self._next_block <= head:
                    last = min(head, self._next_block + 49)
                    blocks = range(self._next_block, last + 1)
                    results = await self.rpc.batch([("eth_getBlockReceipts", [hex(b)]) for b in blocks])
                    for receipts in results:
                        if isinstance(receipts, RpcError):
                            raise receipts
                        for receipt in receipts or []:
                            fut = self._waiting.pop(receipt["transactionHash"].lower(), None)
                            if fut is not None and not fut.done():
                                fut.set_result(receipt)
                    self._next_block = last + 1
            except asyncio.CancelledError:
                raise
            except Exception:  # a transient RPC failure must not kill the watcher; the next poll retries
                pass
            try:
                await asyncio.wait_for(self._kick.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()

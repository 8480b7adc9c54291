"""Our facilitator's side of the x402 `batch-settlement` scheme, shared by every one of our strategies.

The strategies (sync, pipelined, batched) differ in how they settle *exact* payments; a channel
payload is settled the same way whichever runs, so this one handler serves them all. It speaks the
scheme's wire format exactly as the official SDK's server scheme, channel manager and client expect it
(payload types deposit / voucher / refund on /verify; deposit / claim / settle / enriched refund on
/settle; the SDK's reason codes), so they run unmodified against it.

What it does per payload:
- deposit: channel config and voucher checked locally (EIP-712, coincurve), the ERC-3009
  ReceiveWithAuthorization signature recovered locally, then one batched chain read (channel,
  pending withdrawal, refund nonce, payer balance, and the deposit itself simulated with eth_call);
  /settle sends `deposit(config, amount, collector, collectorData)`. The authorization is recorded
  (UNIQUE on payer and ERC-3009 nonce) before anything is sent: a retried deposit is answered from
  its record, never sent again.
- voucher / refund voucher (/verify, when the server's copy of the chain state is stale): local
  signature check, one batched read of the channel.
- claim: `claimWithSignature` with the server's authorizer signature, simulated and sent.
- settle: `settle(receiver, token)`, serialised per (receiver, token) so two callers never race
  (the contract makes a second one a no-op anyway); the amount is read from the Settled log.
- enriched refund: `refundWithSignature` (in a `multicall` after the claim when claims come with it),
  keyed on (channel, refund nonce): a retry is answered from its record.

Every tx goes out through the engine's signer lanes (local nonces), its receipt comes from the
engine's ReceiptWatcher, and a SettlementGuard of its own sends it again if the chain drops or reorgs
it. Records live in the engine's ledger file, table `channel_txs`, so a restarted facilitator
answers retries and closes what its predecessor left open.

What the engine supplies (`ChannelHost`): `config` (chain id, token, ledger path, receipt timeout),
`rpc` (AsyncRpc), `watcher` (a started ReceiptWatcher) and `pool` (a LanePool). Not served: Permit2
deposits and ERC-6492 counterfactual wallets (refused with the SDK's codes). Claims and refunds carry
the server's authorizer signatures; with a receiver-authorizer key of its own (FacilitatorConfig.extra
"receiver_authorizer_key") the facilitator advertises it in /supported and signs those that come without.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from coincurve import PrivateKey
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from x402.mechanisms.evm.batch_settlement import errors as E
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    BATCH_SETTLEMENT_DOMAIN_NAME,
    BATCH_SETTLEMENT_DOMAIN_VERSION,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    SCHEME_BATCH_SETTLEMENT,
)
from x402.schemas import PaymentPayload, PaymentRequirements

from services.contracts import load_artifact
from services.escrow import decode_escrow_log, decode_revert
from services.facilitator import reasons
from services.facilitator.checks import recover_signer
from services.facilitator.evm import SEL_AUTHORIZATION_STATE, SEL_BALANCE_OF, AsyncRpc, ReceiptWatcher, RpcError, call_data
from services.facilitator.guard import SettlementGuard
from services.facilitator.signers import LanePool
from services.payer.hashing import checksum_encode, keccak256
from services.payer.signing import domain_separator

log = logging.getLogger("x402bench.facilitator.channels")

ESCROW = to_checksum_address(BATCH_SETTLEMENT_ADDRESS)
COLLECTOR = to_checksum_address(ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
ZERO = "0x" + "00" * 20
CONFIG_TYPE = "(address,address,address,address,address,uint40,bytes32)"
ERC1271_MAGIC = "0x1626ba7e"

CHANNEL_CONFIG_TYPEHASH = keccak256(
    b"ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,"
    b"address token,uint40 withdrawDelay,bytes32 salt)")
VOUCHER_TYPEHASH = keccak256(b"Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
REFUND_TYPEHASH = keccak256(b"Refund(bytes32 channelId,uint256 nonce,uint128 amount)")
CLAIM_ENTRY_TYPEHASH = keccak256(b"ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
CLAIM_BATCH_TYPEHASH = keccak256(
    b"ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
RECEIVE_TYPEHASH = keccak256(
    b"ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,"
    b"bytes32 nonce)")

#: Gas limits per tx kind (only gasUsed is paid): measured ~110k for a first deposit, ~30k + ~25k per claim row.
GAS_DEPOSIT = 300_000
GAS_SETTLE = 150_000
GAS_REFUND = 250_000
GAS_CLAIM_FIXED = 120_000
GAS_CLAIM_PER_ROW = 60_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_txs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    payer TEXT,
    channel_id TEXT,
    amount TEXT,
    signature TEXT,
    answer_extra TEXT,
    accepted_at REAL NOT NULL,
    state TEXT NOT NULL,
    signer TEXT,
    tx_nonce INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    gas_used INTEGER,
    included_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS channel_txs_state ON channel_txs (state);
"""


class ChannelHost(Protocol):
    config: Any
    rpc: AsyncRpc
    watcher: ReceiptWatcher
    pool: LanePool


class Refusal(Exception):
    """A channel payload that must not go further; `reason` is the SDK's code."""

    def __init__(self, reason: str, message: str = "", payer: str | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason, self.message, self.payer = reason, message, payer


# --- encoding -------------------------------------------------------------------------------


def _abi_type(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple"):]
    return kind


@lru_cache(maxsize=None)
def _function(name: str) -> tuple[bytes, tuple[str, ...]]:
    (item,) = [i for i in load_artifact("BatchSettlementEscrow")["abi"] if i["type"] == "function" and i["name"] == name]
    types = tuple(_abi_type(i) for i in item["inputs"])
    return keccak(text=f"{name}({','.join(types)})")[:4], types


def escrow_call(name: str, *args: Any) -> str:
    selector, types = _function(name)
    return "0x" + (selector + abi_encode(list(types), list(args))).hex()


def _word(value: str | int) -> bytes:
    if isinstance(value, int):
        return value.to_bytes(32, "big")
    return bytes.fromhex(value.removeprefix("0x").rjust(64, "0"))


@lru_cache(maxsize=16)
def batch_separator(chain_id: int) -> bytes:
    return domain_separator(BATCH_SETTLEMENT_DOMAIN_NAME, BATCH_SETTLEMENT_DOMAIN_VERSION, chain_id, ESCROW)


def _typed(separator: bytes, struct: bytes) -> bytes:
    return keccak256(b"\x19\x01" + separator + struct)


# --- parsed payload pieces ------------------------------------------------------------------


def _addr(value: Any, code: str) -> str:
    if not isinstance(value, str) or len(value) != 42 or not value.startswith("0x"):
        raise Refusal(code, "not an address")
    try:
        return to_checksum_address(value)
    except ValueError:
        raise Refusal(code, "not an address") from None


def _uint(value: Any, code: str, bits: int = 256) -> int:
    if isinstance(value, bool):
        raise Refusal(code, "not an unsigned integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 78:
        number = int(value)
    else:
        raise Refusal(code, "not an unsigned integer")
    if not 0 <= number < 1 << bits:
        raise Refusal(code, "out of range")
    return number


def _bytes32(value: Any, code: str) -> str:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 66:
        raise Refusal(code, "not 32 bytes of hex")
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        raise Refusal(code, "not hex") from None
    return value.lower()


def _sig(value: Any, code: str) -> str:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) < 4 or len(value) % 2:
        raise Refusal(code, "signature is not hex")
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        raise Refusal(code, "signature is not hex") from None
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """A ChannelConfig, checksummed."""

    payer: str
    payer_authorizer: str
    receiver: str
    receiver_authorizer: str
    token: str
    withdraw_delay: int
    salt: str

    @classmethod
    def parse(cls, raw: Any, code: str) -> "Config":
        if not isinstance(raw, dict):
            raise Refusal(code, "channelConfig is not an object")
        return cls(_addr(raw.get("payer"), code), _addr(raw.get("payerAuthorizer"), code),
                   _addr(raw.get("receiver"), code), _addr(raw.get("receiverAuthorizer"), code),
                   _addr(raw.get("token"), code), _uint(raw.get("withdrawDelay"), code, 40),
                   _bytes32(raw.get("salt"), code))

    def tuple(self) -> tuple:
        return (self.payer, self.payer_authorizer, self.receiver, self.receiver_authorizer, self.token,
                self.withdraw_delay, bytes.fromhex(self.salt[2:]))

    def channel_id(self, chain_id: int) -> str:
        struct = keccak256(CHANNEL_CONFIG_TYPEHASH + b"".join(_word(a) for a in (
            self.payer, self.payer_authorizer, self.receiver, self.receiver_authorizer, self.token))
            + _word(self.withdraw_delay) + _word(self.salt))
        return "0x" + _typed(batch_separator(chain_id), struct).hex()


@dataclass(frozen=True, slots=True)
class Voucher:
    channel_id: str
    max_claimable: int
    signature: str

    @classmethod
    def parse(cls, raw: Any, code: str) -> "Voucher":
        if not isinstance(raw, dict):
            raise Refusal(code, "voucher is not an object")
        return cls(_bytes32(raw.get("channelId"), code), _uint(raw.get("maxClaimableAmount"), code, 128),
                   _sig(raw.get("signature"), code))

    def digest(self, chain_id: int) -> bytes:
        return _typed(batch_separator(chain_id), keccak256(VOUCHER_TYPEHASH + _word(self.channel_id)
                                                           + _word(self.max_claimable)))


@dataclass(frozen=True, slots=True)
class State:
    """A channel's on-chain state as the scheme's answers carry it."""

    balance: int
    total_claimed: int
    withdraw_amount: int
    withdraw_requested_at: int
    refund_nonce: int

    def extra(self, channel_id: str) -> dict[str, Any]:
        return {"channelId": channel_id, "balance": str(self.balance), "totalClaimed": str(self.total_claimed),
                "withdrawRequestedAt": self.withdraw_requested_at, "refundNonce": str(self.refund_nonce)}


def _state_calls(channel_id: str) -> list[tuple[str, list[Any]]]:
    word = channel_id.removeprefix("0x")
    return [("eth_call", [{"to": ESCROW, "data": "0x" + sel + word}, "latest"])
            for sel in (_SEL_CHANNELS, _SEL_PENDING, _SEL_REFUND_NONCE)]


_SEL_CHANNELS = keccak(text="channels(bytes32)")[:4].hex()
_SEL_PENDING = keccak(text="pendingWithdrawals(bytes32)")[:4].hex()
_SEL_REFUND_NONCE = keccak(text="refundNonce(bytes32)")[:4].hex()
_SEL_RECEIVERS = keccak(text="receivers(address,address)")[:4].hex()
_SEL_IS_VALID_SIGNATURE = keccak(text="isValidSignature(bytes32,bytes)")[:4].hex()


def _words(hexdata: str) -> list[int]:
    raw = bytes.fromhex(hexdata.removeprefix("0x"))
    return [int.from_bytes(raw[i:i + 32], "big") for i in range(0, len(raw), 32)]


def _parse_state(replies: list[Any]) -> State:
    if any(isinstance(r, RpcError) or not isinstance(r, str) for r in replies):
        raise Refusal(E.ERR_RPC_READ_FAILED, "channel state read failed")
    balance, claimed = _words(replies[0])[:2]
    wd_amount, wd_at = _words(replies[1])[:2]
    (nonce,) = _words(replies[2])[:1]
    return State(balance, claimed, wd_amount, wd_at, nonce)


def _revert_text(error: Any) -> str:
    if isinstance(error, RpcError):
        data = error.error.get("data")
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            return decode_revert(data)
        return str(error)[:300]
    return str(error)[:300]


# --- the record table -------------------------------------------------------------------------


class ChannelRecords:
    """The `channel_txs` table: one row per deposit authorization, claim batch, settle and refund nonce.

    The UNIQUE key is what makes a racing retry find the first attempt rather than send again."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def insert(self, kind: str, key: str, payer: str | None, channel_id: str | None, amount: str,
               signature: str, extra: dict[str, Any] | None) -> int | None:
        """The new row's id, or None when the key is already there."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO channel_txs (kind, key, payer, channel_id, amount, signature, answer_extra, "
                    "accepted_at, state) VALUES (?,?,?,?,?,?,?,?, 'accepted')",
                    (kind, key, payer, channel_id, amount, signature, json.dumps(extra) if extra else None, time.time()))
            except sqlite3.IntegrityError:
                return None
            return int(cur.lastrowid)

    def find(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM channel_txs WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def get(self, row_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM channel_txs WHERE id = ?", (row_id,)).fetchone()
        return dict(row) if row else None

    def release(self, row_id: int, sent: bool = False) -> None:
        """Nothing was sent for it (`sent`: or the node never saw what was): the key is free again, a retry
        is judged afresh."""
        with self._lock:
            states = ("accepted", "submitted") if sent else ("accepted",)
            self._db.execute(f"DELETE FROM channel_txs WHERE id = ? AND state IN ({','.join('?' * len(states))})",
                             (row_id, *states))

    def forget_failed(self, key: str) -> None:
        """A tx that reverted moved nothing: its key may be tried again."""
        with self._lock:
            self._db.execute("DELETE FROM channel_txs WHERE key = ? AND state = 'failed'", (key,))

    def set_extra(self, row_id: int, extra: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE channel_txs SET answer_extra = ? WHERE id = ?", (json.dumps(extra), row_id))

    def submitted(self, ids: list[int], signer: str, tx_nonce: int, tx_hash: str) -> None:
        with self._lock:
            self._db.executemany("UPDATE channel_txs SET state = 'submitted', signer = ?, tx_nonce = ?, tx_hash = ? "
                                 "WHERE id = ?", [(signer, tx_nonce, tx_hash, i) for i in ids])

    def finished(self, row_id: int, ok: bool, tx_hash: str, block: int | None, gas: int | None,
                 extra: dict[str, Any] | None, amount: str | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE channel_txs SET state = ?, tx_hash = ?, block_number = ?, gas_used = ?, included_at = ?, "
                "answer_extra = COALESCE(?, answer_extra), amount = COALESCE(?, amount), error = ? WHERE id = ?",
                ("settled" if ok else "failed", tx_hash, block, gas, time.time(),
                 json.dumps(extra) if extra is not None else None, amount, error, row_id))

    def open_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM channel_txs WHERE state IN ('accepted', 'submitted')").fetchall()
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT kind, state, COUNT(*) FROM channel_txs GROUP BY kind, state").fetchall()
        out: dict[str, dict[str, int]] = {}
        for kind, state, n in rows:
            out.setdefault(kind, {})[state] = n
        return out


@dataclass(frozen=True, slots=True)
class _Row:
    """What the guard needs of a sent tx's record: its id, and for a deposit the authorization it spends."""

    id: int
    payer: str
    nonce: str


class _GuardHost:
    """The SettlementGuard's view of this handler: our rows are what it resends and recloses."""

    def __init__(self, handler: "ChannelSettlement") -> None:
        self.handler = handler
        self.config = handler.host.config
        self.rpc = handler.host.rpc
        self.watcher = handler.host.watcher
        self.ledger = handler.records

    async def reclose(self, claims: list[_Row], receipt: dict[str, Any]) -> None:
        for row in claims:
            record = self.handler.records.get(row.id)
            if record is not None:
                self.handler._close(record, receipt, count=False)


# --- the handler ------------------------------------------------------------------------------


@dataclass
class ChannelSettlement:
    """The batch-settlement scheme for one of our engines; see the module docstring."""

    host: ChannelHost
    counters: dict[str, int] = field(default_factory=lambda: {
        "deposits_verified": 0, "deposits": 0, "deposits_answered_again": 0, "vouchers_verified": 0,
        "refund_vouchers_verified": 0, "claims": 0, "claimed_vouchers": 0, "settles": 0, "refunds": 0,
        "refused": 0, "tx_failed": 0})
    refusals: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.chain_id = int(self.host.config.chain_id)
        self.network = f"eip155:{self.chain_id}"
        self.records = ChannelRecords(self.host.config.ledger_path)
        self.guard = SettlementGuard(_GuardHost(self))  # type: ignore[arg-type]
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._settle_locks: dict[tuple[str, str], asyncio.Lock] = {}
        key = str((getattr(self.host.config, "extra", None) or {}).get("receiver_authorizer_key") or "")
        self._authorizer = PrivateKey(bytes.fromhex(key.removeprefix("0x"))) if key else None
        self.authorizer_address = (checksum_encode(keccak256(self._authorizer.public_key.format(compressed=False)[1:])[-20:])
                                   if self._authorizer else None)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._recover()
        self.guard.start()

    async def stop(self) -> None:
        if self._running:
            await asyncio.wait([asyncio.ensure_future(f) for f in self._running.values()], timeout=5.0)
        await self.guard.stop()
        self.records.close()

    def supported_kind(self) -> dict[str, Any]:
        """With a receiver-authorizer key (config.extra["receiver_authorizer_key"]) the kind's extra names its
        address, which an SDK server scheme without a signer of its own puts in its 402s, and this facilitator
        signs the claims and refunds that come without a signature. Without one, no extra: the servers sign."""
        kind: dict[str, Any] = {"x402Version": 2, "scheme": SCHEME_BATCH_SETTLEMENT, "network": self.network}
        if self.authorizer_address:
            kind["extra"] = {"receiverAuthorizer": self.authorizer_address}
        return kind

    def _sign(self, digest: bytes) -> str:
        assert self._authorizer is not None
        raw = self._authorizer.sign_recoverable(digest, hasher=None)
        return "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")

    def _authorize_claims(self, rows: list[tuple], payer: str | None = None) -> str:
        """The ClaimBatch signature of rows that came without one: ours, if every row names our key."""
        if self._authorizer is None:
            raise Refusal(E.ERR_AUTHORIZER_NOT_CONFIGURED, "this facilitator holds no receiver-authorizer key; send "
                          "the authorizer signatures", payer)
        entries = b""
        for (config, ceiling), _, total in rows:
            if config[3].lower() != str(self.authorizer_address).lower():
                raise Refusal(E.ERR_AUTHORIZER_ADDRESS_MISMATCH, "a channel's receiverAuthorizer is not this "
                              "facilitator's key", payer)
            channel_id = Config(*config[:6], "0x" + config[6].hex()).channel_id(self.chain_id)
            entries += keccak256(CLAIM_ENTRY_TYPEHASH + _word(channel_id) + _word(ceiling) + _word(total))
        return self._sign(_typed(batch_separator(self.chain_id), keccak256(CLAIM_BATCH_TYPEHASH + keccak256(entries))))

    def _authorize_refund(self, config: "Config", channel_id: str, nonce: int, amount: int) -> str:
        if self._authorizer is None:
            raise Refusal(E.ERR_AUTHORIZER_NOT_CONFIGURED, "this facilitator holds no receiver-authorizer key; send "
                          "refundAuthorizerSignature", config.payer)
        if config.receiver_authorizer.lower() != str(self.authorizer_address).lower():
            raise Refusal(E.ERR_AUTHORIZER_ADDRESS_MISMATCH, "the channel's receiverAuthorizer is not this "
                          "facilitator's key", config.payer)
        return self._sign(_typed(batch_separator(self.chain_id),
                                 keccak256(REFUND_TYPEHASH + _word(channel_id) + _word(nonce) + _word(amount))))

    def metrics(self) -> dict[str, Any]:
        return {**self.counters, "refusals": dict(self.refusals), "records": self.records.counts(),
                "guard": {"resends": self.guard.resends, "reorgs": self.guard.reorgs}}

    # --- entry points -----------------------------------------------------------------------

    @staticmethod
    def handles(payload: PaymentPayload, requirements: PaymentRequirements) -> bool:
        return SCHEME_BATCH_SETTLEMENT in (payload.accepted.scheme, requirements.scheme)

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> dict[str, Any]:
        raw = payload.payload
        payer = _payer_of(raw)
        try:
            self._check_envelope(payload, requirements)
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind == "deposit" and _has(raw, "channelConfig", "voucher", "deposit"):
                deposit = self._parse_deposit(raw, requirements)
                known = self.records.find(deposit.key)
                if known is not None and known["signature"] == deposit.signature and known["state"] != "failed":
                    state = json.loads(known["answer_extra"] or "{}").get("pre") or {}
                    return {"isValid": True, "payer": deposit.config.payer, "extra": state}
                state = await self._check_deposit_chain(deposit, requirements)
                self.counters["deposits_verified"] += 1
                return {"isValid": True, "payer": deposit.config.payer, "extra": state.extra(deposit.voucher.channel_id)}
            if kind in ("voucher", "refund") and _has(raw, "channelConfig", "voucher"):
                code = E.ERR_VOUCHER_PAYLOAD if kind == "voucher" else E.ERR_REFUND_PAYLOAD
                config = Config.parse(raw["channelConfig"], code)
                voucher = Voucher.parse(raw["voucher"], code)
                self._check_config(config, voucher.channel_id, requirements)
                state = await self._check_voucher(config, voucher, refund=kind == "refund")
                self.counters["vouchers_verified" if kind == "voucher" else "refund_vouchers_verified"] += 1
                return {"isValid": True, "payer": config.payer, "extra": state.extra(voucher.channel_id)}
            raise Refusal(E.ERR_INVALID_PAYLOAD_TYPE, f"payload type {kind!r} is not verified here", payer)
        except Exception as exc:  # noqa: BLE001 - a 500 would read as a transport failure to the SDK client
            refusal = exc if isinstance(exc, Refusal) else self._unexpected(exc, reasons.UNEXPECTED_VERIFY_ERROR, payer)
            self._refused(refusal.reason)
            answer: dict[str, Any] = {"isValid": False, "invalidReason": refusal.reason}
            if refusal.message:
                answer["invalidMessage"] = refusal.message
            if refusal.payer or payer:
                answer["payer"] = refusal.payer or payer
            return answer

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> dict[str, Any]:
        raw = payload.payload
        payer = _payer_of(raw)
        try:
            self._check_envelope(payload, requirements)
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind == "deposit" and _has(raw, "channelConfig", "voucher", "deposit"):
                return await self._settle_deposit(raw, requirements)
            if kind == "claim" and isinstance(raw.get("claims"), list):
                return await self._claim(raw, requirements)
            if kind == "refund" and _has(raw, "channelConfig", "voucher", "refundNonce", "claims"):
                return await self._refund(raw, requirements)
            if kind == "settle" and _has(raw, "receiver", "token"):
                return await self._settle(raw, requirements)
            raise Refusal(E.ERR_INVALID_PAYLOAD_TYPE, f"payload type {kind!r} is not settled here", payer)
        except Exception as exc:  # noqa: BLE001 - a 500 would read as a transport failure to the SDK client
            refusal = exc if isinstance(exc, Refusal) else self._unexpected(exc, reasons.UNEXPECTED_SETTLE_ERROR, payer)
            self._refused(refusal.reason)
            return self._failure(refusal.reason, refusal.message, refusal.payer or payer)

    @staticmethod
    def _unexpected(exc: Exception, reason: str, payer: str | None) -> Refusal:
        log.exception("batch-settlement payload raised")
        return Refusal(reason, f"{type(exc).__name__}: {exc}"[:300], payer)

    # --- shared checks ----------------------------------------------------------------------

    def _refused(self, reason: str) -> None:
        self.counters["refused"] += 1
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def _failure(self, reason: str, message: str = "", payer: str | None = None, tx: str = "") -> dict[str, Any]:
        answer: dict[str, Any] = {"success": False, "errorReason": reason, "transaction": tx, "network": self.network}
        if message:
            answer["errorMessage"] = message
        if payer:
            answer["payer"] = payer
        return answer

    def _check_envelope(self, payload: PaymentPayload, requirements: PaymentRequirements) -> None:
        if payload.accepted.scheme != SCHEME_BATCH_SETTLEMENT or requirements.scheme != SCHEME_BATCH_SETTLEMENT:
            raise Refusal(E.ERR_INVALID_SCHEME, "both the payload and the requirements must say batch-settlement")
        if payload.accepted.network != requirements.network or requirements.network != self.network:
            raise Refusal(E.ERR_NETWORK_MISMATCH, f"{payload.accepted.network} / {requirements.network}, "
                          f"this facilitator settles {self.network}")

    def _check_config(self, config: Config, channel_id: str, requirements: PaymentRequirements) -> None:
        """The scheme's channel-config rules, in the SDK's order (so the first failing rule names the code)."""
        payer = config.payer
        if config.channel_id(self.chain_id) != channel_id.lower():
            raise Refusal(E.ERR_CHANNEL_ID_MISMATCH, "channelId is not the config's", payer)
        if config.receiver.lower() != requirements.pay_to.lower():
            raise Refusal(E.ERR_RECEIVER_MISMATCH, f"receiver {config.receiver}, payTo {requirements.pay_to}", payer)
        extra = requirements.extra or {}
        wanted = extra.get("receiverAuthorizer")
        if not isinstance(wanted, str) or wanted.lower() in ("", ZERO) or wanted.lower() != config.receiver_authorizer.lower():
            raise Refusal(E.ERR_RECEIVER_AUTHORIZER_MISMATCH, "receiverAuthorizer is not the requirements'", payer)
        if config.token.lower() != requirements.asset.lower():
            raise Refusal(E.ERR_TOKEN_MISMATCH, f"token {config.token}, asset {requirements.asset}", payer)
        delay = extra.get("withdrawDelay")
        if delay is not None and str(config.withdraw_delay) != str(delay):
            raise Refusal(E.ERR_WITHDRAW_DELAY_MISMATCH, f"withdrawDelay {config.withdraw_delay}, required {delay}", payer)
        if not MIN_WITHDRAW_DELAY <= config.withdraw_delay <= MAX_WITHDRAW_DELAY:
            raise Refusal(E.ERR_WITHDRAW_DELAY_OUT_OF_RANGE, f"withdrawDelay {config.withdraw_delay}", payer)

    def _voucher_signer_calls(self, config: Config, voucher: Voucher) -> list[tuple[str, list[Any]]]:
        """Reads a voucher's signature needs: none when a payer authorizer signs (checked locally, as the
        contract does), else the payer's code and its ERC-1271 answer (the contract asks a wallet with code)."""
        if int(config.payer_authorizer, 16) != 0:
            if len(voucher.signature) != 132 or recover_signer(voucher.digest(self.chain_id),
                                                               voucher.signature) != config.payer_authorizer:
                raise Refusal(E.ERR_INVALID_VOUCHER_SIGNATURE, "voucher not signed by the payer authorizer", config.payer)
            return []
        return self._wallet_calls(config.payer, voucher.digest(self.chain_id), voucher.signature)

    def _wallet_calls(self, signer: str, digest: bytes, signature: str) -> list[tuple[str, list[Any]]]:
        data = ("0x" + _SEL_IS_VALID_SIGNATURE + digest.hex() + _word(64).hex()
                + _word(len(signature) // 2 - 1).hex() + signature[2:].ljust(((len(signature) - 2 + 63) // 64) * 64, "0"))
        return [("eth_getCode", [signer, "latest"]), ("eth_call", [{"to": signer, "data": data}, "latest"])]

    @staticmethod
    def _wallet_ok(signer: str, digest: bytes, signature: str, code: Any, answer: Any) -> bool:
        """What the contract's signature check concludes: ECDSA for an address without code, ERC-1271 with."""
        if isinstance(code, str) and code not in ("0x", "0x0", ""):
            return isinstance(answer, str) and answer[:10].lower() == ERC1271_MAGIC
        return len(signature) == 132 and recover_signer(digest, signature) == signer

    async def _check_voucher(self, config: Config, voucher: Voucher, refund: bool) -> State:
        wallet = self._voucher_signer_calls(config, voucher)
        try:
            replies = await self.host.rpc.batch(_state_calls(voucher.channel_id) + wallet)
        except Exception as exc:
            raise Refusal(E.ERR_CHANNEL_NOT_FOUND, f"chain read failed: {exc}"[:200], config.payer) from None
        if wallet and not self._wallet_ok(config.payer, voucher.digest(self.chain_id), voucher.signature, *replies[3:5]):
            raise Refusal(E.ERR_INVALID_VOUCHER_SIGNATURE, "voucher not signed by the payer", config.payer)
        try:
            state = _parse_state(replies[:3])
        except Refusal:
            raise Refusal(E.ERR_CHANNEL_NOT_FOUND, "channel state read failed", config.payer) from None
        if state.balance == 0:
            raise Refusal(E.ERR_CHANNEL_NOT_FOUND, "the channel holds nothing", config.payer)
        if voucher.max_claimable > state.balance:
            raise Refusal(E.ERR_CUMULATIVE_EXCEEDS_BALANCE, f"{voucher.max_claimable} > balance {state.balance}", config.payer)
        if voucher.max_claimable < state.total_claimed or (not refund and voucher.max_claimable == state.total_claimed):
            raise Refusal(E.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
                          f"{voucher.max_claimable} not above claimed {state.total_claimed}", config.payer)
        return state

    # --- deposits -----------------------------------------------------------------------------

    def _parse_deposit(self, raw: dict[str, Any], requirements: PaymentRequirements) -> "_Deposit":
        code = E.ERR_DEPOSIT_PAYLOAD
        config = Config.parse(raw["channelConfig"], code)
        voucher = Voucher.parse(raw["voucher"], code)
        self._check_config(config, voucher.channel_id, requirements)
        deposit = raw["deposit"]
        if not isinstance(deposit, dict) or not isinstance(deposit.get("authorization"), dict):
            raise Refusal(code, "deposit.authorization is missing", config.payer)
        amount = _uint(deposit.get("amount"), code, 128)
        if amount == 0:
            raise Refusal(code, "deposit amount is zero", config.payer)
        extra = requirements.extra or {}
        authorization = deposit["authorization"]
        method = extra.get("assetTransferMethod") or ("permit2" if "permit2Authorization" in authorization
                                                      and "erc3009Authorization" not in authorization else "eip3009")
        if method != "eip3009":
            raise Refusal(E.ERR_INVALID_PAYLOAD_TYPE, "only ERC-3009 deposits are served here", config.payer)
        auth = authorization.get("erc3009Authorization")
        if not isinstance(auth, dict):
            raise Refusal(E.ERR_ERC3009_AUTHORIZATION_REQUIRED, "deposit carries no erc3009Authorization", config.payer)
        name, version = extra.get("name"), extra.get("version")
        if not name or not version:
            raise Refusal(E.ERR_MISSING_EIP712_DOMAIN, "requirements.extra needs name and version", config.payer)
        valid_after, valid_before = _uint(auth.get("validAfter"), code), _uint(auth.get("validBefore"), code)
        salt = _salt(auth.get("salt"), code)
        signature = _sig(auth.get("signature"), E.ERR_INVALID_RECEIVE_AUTHORIZATION_SIGNATURE)
        now = time.time()
        if valid_before < now + 6:
            raise Refusal(E.ERR_VALID_BEFORE_EXPIRED, f"validBefore {valid_before} leaves under 6 s", config.payer)
        if valid_after > now:
            raise Refusal(E.ERR_VALID_AFTER_IN_FUTURE, f"validAfter {valid_after} is in the future", config.payer)
        if len(signature) != 132:  # ERC-6492 wrapped or a smart wallet's: not served here
            raise Refusal(E.ERR_INVALID_RECEIVE_AUTHORIZATION_SIGNATURE, "a 65-byte ECDSA signature is required",
                          config.payer)
        nonce = "0x" + keccak256(_word(voucher.channel_id) + _word(salt)).hex()
        separator = domain_separator(str(name), str(version), self.chain_id, requirements.asset)
        digest = _typed(separator, keccak256(RECEIVE_TYPEHASH + _word(config.payer) + _word(COLLECTOR) + _word(amount)
                                             + _word(valid_after) + _word(valid_before) + _word(nonce)))
        if recover_signer(digest, signature) != config.payer:
            raise Refusal(E.ERR_INVALID_RECEIVE_AUTHORIZATION_SIGNATURE, "authorization not signed by the payer",
                          config.payer)
        collector_data = abi_encode(["uint256", "uint256", "uint256", "bytes"],
                                    [valid_after, valid_before, salt, bytes.fromhex(signature[2:])])
        data = escrow_call("deposit", config.tuple(), amount, COLLECTOR, collector_data)
        return _Deposit(config, voucher, amount, nonce, signature, data, f"deposit:{config.payer.lower()}:{nonce}")

    async def _check_deposit_chain(self, d: "_Deposit", requirements: PaymentRequirements) -> State:
        """One batched read: the channel's three words, the payer's balance, the authorization's state, the
        deposit simulated; plus the payer's code and ERC-1271 answer when no payer authorizer signs vouchers."""
        payer = d.config.payer
        wallet = self._voucher_signer_calls(d.config, d.voucher)
        calls = _state_calls(d.voucher.channel_id) + [
            ("eth_call", [{"to": requirements.asset, "data": call_data(SEL_BALANCE_OF, payer)}, "latest"]),
            ("eth_call", [{"to": requirements.asset, "data": call_data(SEL_AUTHORIZATION_STATE, payer, d.nonce)}, "latest"]),
            ("eth_call", [{"to": ESCROW, "data": d.data}, "latest"]),
        ] + wallet
        try:
            replies = await self.host.rpc.batch(calls)
        except Exception as exc:
            raise Refusal(E.ERR_RPC_READ_FAILED, f"chain read failed: {exc}"[:200], payer) from None
        if wallet and not self._wallet_ok(payer, d.voucher.digest(self.chain_id), d.voucher.signature, *replies[6:8]):
            raise Refusal(E.ERR_INVALID_VOUCHER_SIGNATURE, "voucher not signed by the payer", payer)
        state = _parse_state(replies[:3])
        balance, used, simulated = replies[3], replies[4], replies[5]
        if isinstance(balance, RpcError) or isinstance(used, RpcError):
            raise Refusal(E.ERR_RPC_READ_FAILED, "balance or authorization state read failed", payer)
        if int(balance, 16) < d.amount:
            raise Refusal(E.ERR_INSUFFICIENT_BALANCE, f"balance {int(balance, 16)} < deposit {d.amount}", payer)
        if d.voucher.max_claimable > state.balance + d.amount:
            raise Refusal(E.ERR_CUMULATIVE_EXCEEDS_BALANCE, f"{d.voucher.max_claimable} > {state.balance + d.amount}", payer)
        if d.voucher.max_claimable <= state.total_claimed:
            raise Refusal(E.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED, f"not above claimed {state.total_claimed}", payer)
        if int(used, 16):
            raise Refusal(E.ERR_DEPOSIT_SIMULATION_FAILED, "the deposit authorization is already used", payer)
        if isinstance(simulated, RpcError):
            raise Refusal(E.ERR_DEPOSIT_SIMULATION_FAILED, _revert_text(simulated), payer)
        return state

    async def _settle_deposit(self, raw: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
        d = self._parse_deposit(raw, requirements)
        self.records.forget_failed(d.key)
        row_id = self.records.insert("deposit", d.key, d.config.payer, d.voucher.channel_id, str(d.amount),
                                     d.signature, None)
        if row_id is None:
            return await self._answer_again(d.key, d.signature, d.config.payer)
        try:
            state = await self._check_deposit_chain(d, requirements)
        except BaseException:  # nothing was sent: the authorization may be tried again
            self.records.release(row_id)
            raise
        pre = state.extra(d.voucher.channel_id)
        self.records.set_extra(row_id, {"pre": pre})
        return await self._run(d.key, self._send("deposit", row_id, d.data, GAS_DEPOSIT, payer=d.config.payer,
                                                 rows=[_Row(row_id, d.config.payer, d.nonce)]))

    async def _answer_again(self, key: str, signature: str, payer: str | None) -> dict[str, Any]:
        """A request seen before (a retry): its running outcome, or what its record says. Never a second send."""
        row = self.records.find(key)
        if row is None or row["signature"] != signature:
            raise Refusal(E.ERR_DEPOSIT_SIMULATION_FAILED if key.startswith("deposit") else E.ERR_REFUND_SIMULATION_FAILED,
                          "this authorization was already used by another payload", payer)
        if key.startswith("deposit"):
            self.counters["deposits_answered_again"] += 1
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        deadline = time.monotonic() + float(self.host.config.receipt_timeout_s)
        while row is not None and row["state"] in ("accepted", "submitted") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            row = self.records.find(key)
        if row is None:
            raise Refusal(E.ERR_DEPOSIT_TRANSACTION_FAILED, "the earlier attempt sent nothing; send again", payer)
        return self._answer_from_row(row)

    def _answer_from_row(self, row: dict[str, Any]) -> dict[str, Any]:
        kind, payer = row["kind"], row["payer"]
        failed = {"deposit": E.ERR_DEPOSIT_TRANSACTION_FAILED, "claim": E.ERR_CLAIM_TRANSACTION_FAILED,
                  "settle": E.ERR_SETTLE_TRANSACTION_FAILED, "refund": E.ERR_REFUND_TRANSACTION_FAILED}[kind]
        if row["state"] == "settled":
            answer: dict[str, Any] = {"success": True, "transaction": row["tx_hash"], "network": self.network}
            if payer:
                answer["payer"] = payer
            extra = json.loads(row["answer_extra"] or "{}")
            if row["amount"] is not None and kind != "claim":
                answer["amount"] = row["amount"]
            if extra.get("channelState"):
                answer["extra"] = {"channelState": extra["channelState"]}
            return answer
        if row["state"] == "failed":
            return self._failure(row["error"] or failed, "", payer, row["tx_hash"] or "")
        return self._failure(reasons.SETTLEMENT_PENDING, "the transaction has no receipt yet", payer, row["tx_hash"] or "")

    # --- claims, settle, refunds --------------------------------------------------------------

    def _claim_rows(self, claims: list[Any], code: str) -> list[tuple]:
        rows = []
        for entry in claims:
            if not isinstance(entry, dict) or not isinstance(entry.get("voucher"), dict):
                raise Refusal(code, "a claim entry is not an object with a voucher")
            config = Config.parse(entry["voucher"].get("channel"), code)
            rows.append(((config.tuple(), _uint(entry["voucher"].get("maxClaimableAmount"), code, 128)),
                         bytes.fromhex(_sig(entry.get("signature"), code)[2:]), _uint(entry.get("totalClaimed"), code, 128)))
        return rows

    async def _claim(self, raw: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
        if not raw["claims"]:
            raise Refusal(E.ERR_CLAIM_PAYLOAD, "no claims")
        rows = self._claim_rows(raw["claims"], E.ERR_CLAIM_PAYLOAD)
        signature = raw.get("claimAuthorizerSignature") or self._authorize_claims(rows)
        data = escrow_call("claimWithSignature", rows, bytes.fromhex(_sig(signature, E.ERR_CLAIM_PAYLOAD)[2:]))
        key = "claim:" + keccak256(bytes.fromhex(data[2:])).hex()
        self.records.forget_failed(key)
        row_id = self.records.insert("claim", key, None, None, str(sum(r[2] for r in rows)), signature, None)
        if row_id is None:  # the same batch again: the contract would make it a no-op; answer the first
            return await self._answer_again(key, signature, None)
        # Claims are rare and their gas grows with the rows: estimated (which also simulates), not guessed.
        lane = self.host.pool.pick()
        simulated, estimate = await self._estimate(data, lane.address)
        if simulated is not None:
            self.records.release(row_id)
            raise Refusal(E.ERR_CLAIM_SIMULATION_FAILED, simulated)
        gas = min(estimate * 6 // 5 + 20_000 if estimate else GAS_CLAIM_FIXED + GAS_CLAIM_PER_ROW * len(rows),
                  int(self.host.config.batch_settlement_gas_limit))
        answer = await self._run(key, self._send("claim", row_id, data, gas))
        if answer.get("success"):
            self.counters["claimed_vouchers"] += len(rows)
        return answer

    async def _settle(self, raw: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
        receiver, token = _addr(raw["receiver"], E.ERR_SETTLE_PAYLOAD), _addr(raw["token"], E.ERR_SETTLE_PAYLOAD)
        lock = self._settle_locks.setdefault((receiver, token), asyncio.Lock())
        async with lock:  # one settle per (receiver, token) at a time: the next sees what this one paid
            data = escrow_call("settle", receiver, token)
            try:
                totals, simulated = await self.host.rpc.batch([
                    ("eth_call", [{"to": ESCROW, "data": "0x" + _SEL_RECEIVERS + _word(receiver).hex() + _word(token).hex()},
                                  "latest"]),
                    ("eth_call", [{"to": ESCROW, "data": data}, "latest"])])
            except Exception as exc:
                raise Refusal(E.ERR_RPC_READ_FAILED, str(exc)[:200]) from None
            if isinstance(totals, RpcError):
                raise Refusal(E.ERR_RPC_READ_FAILED, str(totals)[:200])
            claimed, settled = _words(totals)[:2]
            if claimed <= settled:
                raise Refusal(E.ERR_NOTHING_TO_SETTLE, "nothing to settle for receiver and token")
            if isinstance(simulated, RpcError):
                raise Refusal(E.ERR_SETTLE_SIMULATION_FAILED, _revert_text(simulated))
            key = f"settle:{receiver.lower()}:{token.lower()}:{claimed}"
            self.records.forget_failed(key)
            row_id = self.records.insert("settle", key, None, None, str(claimed - settled), "", None)
            if row_id is None:
                return await self._answer_again(key, "", None)
            return await self._run(key, self._send("settle", row_id, data, GAS_SETTLE))

    async def _refund(self, raw: dict[str, Any], requirements: PaymentRequirements) -> dict[str, Any]:
        code = E.ERR_REFUND_PAYLOAD
        config = Config.parse(raw["channelConfig"], code)
        channel_id = config.channel_id(self.chain_id)
        amount = _uint(raw.get("amount"), code, 128)
        nonce = _uint(raw.get("refundNonce"), code)
        claims = raw.get("claims") or []
        rows = self._claim_rows(claims, code)
        refund_signature = raw.get("refundAuthorizerSignature") or self._authorize_refund(config, channel_id, nonce, amount)
        claim_signature = raw.get("claimAuthorizerSignature") or (self._authorize_claims(rows, config.payer) if rows else None)
        refund_data = escrow_call("refundWithSignature", config.tuple(), amount, nonce,
                                  bytes.fromhex(_sig(refund_signature, code)[2:]))
        if rows:
            claim_data = escrow_call("claimWithSignature", rows, bytes.fromhex(_sig(claim_signature, code)[2:]))
            data = escrow_call("multicall", [bytes.fromhex(claim_data[2:]), bytes.fromhex(refund_data[2:])])
        else:
            data = refund_data
        key = f"refund:{channel_id}:{nonce}"
        try:
            replies = await self.host.rpc.batch(_state_calls(channel_id) + [("eth_call", [{"to": ESCROW, "data": data}, "latest"])])
        except Exception as exc:
            raise Refusal(E.ERR_REFUND_TRANSACTION_FAILED, str(exc)[:200], config.payer) from None
        self.records.forget_failed(key)
        if self.records.find(key) is not None:
            return await self._answer_again(key, str(refund_signature), config.payer)
        pre = _parse_state(replies[:3])
        post_claimed = max([pre.total_claimed] + [r[2] for r, c in zip(rows, claims)
                                                  if Config.parse(c["voucher"]["channel"], code).channel_id(self.chain_id) == channel_id])
        if post_claimed > pre.balance or amount == 0:  # the contract would revert: what its simulation says
            raise Refusal(E.ERR_REFUND_SIMULATION_FAILED, "claims exceed the balance or the amount is zero", config.payer)
        if pre.balance - post_claimed == 0:
            raise Refusal(E.ERR_REFUND_NO_BALANCE, "Nothing to refund", config.payer)
        if isinstance(replies[3], RpcError):
            raise Refusal(E.ERR_REFUND_SIMULATION_FAILED, _revert_text(replies[3]), config.payer)
        row_id = self.records.insert("refund", key, config.payer, channel_id, str(amount), str(refund_signature),
                                     {"pre": pre.extra(channel_id), "post_claimed": post_claimed,
                                      "wd_amount": pre.withdraw_amount})
        if row_id is None:
            return await self._answer_again(key, str(refund_signature), config.payer)
        return await self._run(key, self._send("refund", row_id, data, GAS_REFUND + GAS_CLAIM_PER_ROW * len(rows),
                                               payer=config.payer))

    async def _estimate(self, data: str, sender: str) -> tuple[str | None, int]:
        """(why it would revert, or None; its gas estimate, 0 when unknown)."""
        try:
            (reply,) = await self.host.rpc.batch([("eth_estimateGas", [{"from": sender, "to": ESCROW, "data": data}])])
        except Exception as exc:
            return str(exc)[:200], 0
        if isinstance(reply, RpcError):
            return _revert_text(reply), 0
        return None, int(reply, 16) if isinstance(reply, str) else 0

    # --- sending and closing --------------------------------------------------------------------

    async def _run(self, key: str, work: Any) -> dict[str, Any]:
        """Run a send to its end even if the caller goes away; a retry of the same key awaits the same outcome."""
        future = asyncio.ensure_future(work)
        self._running[key] = future
        future.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(future)

    async def _send(self, kind: str, row_id: int, data: str, gas: int, payer: str | None = None,
                    rows: list[_Row] | None = None) -> dict[str, Any]:
        host = self.host
        lane = host.pool.pick()
        lane.in_flight += 1
        pending: list[asyncio.Future[dict[str, Any]]] = []
        # A deposit's row carries its authorization (the guard sends it again after a reorg only if the token
        # says it is unused again); the others carry none, so a reorged claim / settle / refund is always sent
        # again (the contract makes a repeated claim or settle a no-op, a refund is bound to its nonce).
        tracked = rows if rows is not None else [_Row(row_id, ZERO, "0x" + "00" * 32)]

        def on_hash(tx_hash: str) -> None:
            pending.append(host.watcher.expect(tx_hash))

        failed = {"deposit": E.ERR_DEPOSIT_TRANSACTION_FAILED, "claim": E.ERR_CLAIM_TRANSACTION_FAILED,
                  "settle": E.ERR_SETTLE_TRANSACTION_FAILED, "refund": E.ERR_REFUND_TRANSACTION_FAILED}[kind]
        try:
            try:
                sent = await lane.send(ESCROW, data, on_hash=on_hash, gas=gas)
            except Exception as exc:
                log.warning("%s: send failed: %s", kind, exc)
                self.records.release(row_id)
                return self._failure(failed, str(exc)[:300], payer)
            host.watcher.sent()
            self.records.submitted([row_id], sent.signer, sent.nonce, sent.tx_hash)
            # Deposits only: the guard asks the token whether the authorization is unused again after a reorg.
            self.guard.sent(sent, tracked, lane, ESCROW, data, gas)  # type: ignore[arg-type]
            try:
                receipt = await asyncio.wait_for(pending[-1], float(host.config.receipt_timeout_s))
            except asyncio.TimeoutError:
                return self._failure(reasons.SETTLEMENT_PENDING, "no receipt yet", payer, sent.tx_hash)
            self.guard.mined(receipt)
            record = self.records.get(row_id)
            return self._close(record or {"id": row_id, "kind": kind, "payer": payer, "amount": None,
                                          "answer_extra": None}, receipt)
        finally:
            lane.in_flight -= 1

    def _close(self, record: dict[str, Any], receipt: dict[str, Any], count: bool = True) -> dict[str, Any]:
        """Record a receipt's outcome and build the scheme's answer from its logs."""
        kind, payer, tx_hash = record["kind"], record.get("payer"), receipt["transactionHash"]
        block, gas = int(receipt["blockNumber"], 16), int(receipt["gasUsed"], 16)
        failed = {"deposit": E.ERR_DEPOSIT_TRANSACTION_FAILED, "claim": E.ERR_CLAIM_TRANSACTION_FAILED,
                  "settle": E.ERR_SETTLE_TRANSACTION_FAILED, "refund": E.ERR_REFUND_TRANSACTION_FAILED}[kind]
        if int(receipt.get("status", "0x0"), 16) != 1:
            self.records.finished(record["id"], False, tx_hash, block, gas, None, error=failed)
            self.counters["tx_failed"] += 1
            return self._failure(failed, "the transaction reverted", payer, tx_hash)
        events = [e for e in (decode_escrow_log(lg) for lg in receipt.get("logs") or []
                              if lg.get("address", "").lower() == ESCROW.lower()) if e is not None]
        stored = json.loads(record.get("answer_extra") or "{}")
        answer: dict[str, Any] = {"success": True, "transaction": tx_hash, "network": self.network}
        if payer:
            answer["payer"] = payer
        extra: dict[str, Any] | None = None
        amount: str | None = record.get("amount")
        if kind == "deposit":
            pre = stored.get("pre") or {}
            deposited = next((e for e in events if e["event"] == "Deposited"), None)
            state = dict(pre)
            if deposited is not None:
                state["balance"] = str(deposited["args"]["balance"])
            extra = {"pre": pre, "channelState": state}
            answer["amount"] = amount
            answer["extra"] = {"channelState": state}
            self.counters["deposits"] += count
        elif kind == "claim":
            self.counters["claims"] += count
        elif kind == "settle":
            settled = next((e for e in events if e["event"] == "Settled"), None)
            amount = str(settled["args"]["amount"]) if settled is not None else ""
            answer["amount"] = amount
            self.counters["settles"] += count
        elif kind == "refund":
            pre = stored.get("pre") or {}
            refunded = next((e for e in events if e["event"] == "Refunded"), None)
            actual = int(refunded["args"]["amount"]) if refunded is not None else 0
            nonce = int(refunded["args"]["nonce"]) + 1 if refunded is not None else int(pre.get("refundNonce", 0)) + 1
            wd_at = int(pre.get("withdrawRequestedAt", 0))
            if wd_at and actual >= int(stored.get("wd_amount", 0)):
                wd_at = 0
            state = {"channelId": pre.get("channelId", record.get("channel_id")),
                     "balance": str(int(pre.get("balance", 0)) - actual),
                     "totalClaimed": str(stored.get("post_claimed", pre.get("totalClaimed", 0))),
                     "withdrawRequestedAt": wd_at, "refundNonce": str(nonce)}
            amount = str(actual)
            extra = {**stored, "channelState": state}
            answer["amount"] = amount
            answer["extra"] = {"channelState": state}
            self.counters["refunds"] += count
        self.records.finished(record["id"], True, tx_hash, block, gas, extra, amount=amount)
        return answer

    async def _recover(self) -> None:
        """Close what a killed predecessor left open; never send again what may have landed. A row whose
        tx has a receipt is closed from it; one still in the node's pool is followed; one the node never
        saw is released, so a retry is judged afresh (a deposit's ERC-3009 nonce still guards the money)."""
        for row in self.records.open_rows():
            tx_hash = row["tx_hash"]
            if not tx_hash:
                self.records.release(row["id"])
                continue
            try:
                receipt = await self.host.watcher.lookup(tx_hash)
                if receipt is not None:
                    self._close(row, receipt)
                    continue
                if await self.host.rpc.call("eth_getTransactionByHash", tx_hash) is not None:
                    asyncio.create_task(self._follow(row, tx_hash))
                    continue
            except Exception as exc:  # noqa: BLE001 - the node is down: leave the row for the next start
                log.warning("recovering %s %s: %s", row["kind"], tx_hash, exc)
                continue
            self.records.release(row["id"], sent=True)

    async def _follow(self, row: dict[str, Any], tx_hash: str) -> None:
        try:
            receipt = await asyncio.wait_for(self.host.watcher.expect(tx_hash), float(self.host.config.receipt_timeout_s))
        except asyncio.TimeoutError:
            return
        self._close(row, receipt)


@dataclass(frozen=True, slots=True)
class _Deposit:
    config: Config
    voucher: Voucher
    amount: int
    nonce: str  # the ERC-3009 nonce: keccak(channelId, salt)
    signature: str
    data: str  # deposit() calldata
    key: str



def _salt(value: Any, code: str) -> int:
    """The deposit salt as the collector takes it (a uint256): 0x-hex or decimal on the wire."""
    if isinstance(value, str) and value[:2] in ("0x", "0X") and 2 < len(value) <= 66:
        try:
            return int(value[2:], 16)
        except ValueError:
            raise Refusal(code, "salt is not hex") from None
    return _uint(value, code)


def _has(raw: Any, *keys: str) -> bool:
    return isinstance(raw, dict) and all(k in raw for k in keys)


def _payer_of(raw: Any) -> str | None:
    config = raw.get("channelConfig") if isinstance(raw, dict) else None
    payer = config.get("payer") if isinstance(config, dict) else None
    return payer if isinstance(payer, str) else None


__all__ = ["ChannelHost", "ChannelSettlement", "Refusal"]

"""The mock USDC on the local chain: deploy it, fund agents with it, read balances.

Everything goes through JSON-RPC (services.chain.Rpc, batched for reads) with locally signed
transactions sent back to back, so deploying is four sends plus one receipt wait, and funding
10,000 agents is twenty `mintBatch` transactions. Works whatever Anvil's mining mode is: in
automine and interval mode we wait for the receipts, in manual mode we mine them ourselves.

Deploying and funding sign with DEV_PRIVATE_KEY (deployer, owner, master minter and minter) at
its pending nonce; do not send from that key concurrently with these helpers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypedDict

import rlp
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from services.chain import DEV_ADDRESS, DEV_PRIVATE_KEY, ChainError, Rpc
from services.contracts import link, load_artifact

#: Admin of the token proxy. Like real USDC, the proxy admin may not call the token, so it is a
#: key of its own (deterministic, so an upgrade can be scripted; fund it with ETH to use it).
PROXY_ADMIN_PRIVATE_KEY = "0x" + keccak(b"x402bench proxy admin").hex()
PROXY_ADMIN_ADDRESS = Account.from_key(PROXY_ADMIN_PRIVATE_KEY).address

MAX_UINT256 = 2**256 - 1
#: Recipients per mintBatch transaction: about 25k gas each for a new holder, so a chunk stays
#: under EIP-7825's 16,777,216 per-transaction cap (enforced on Osaka chains) with margin.
FUND_CHUNK = 500
_GAS_PER_RECIPIENT = 27_000
_GAS_PER_BATCH = 80_000


class TokenError(ChainError):
    """A token transaction reverted or did not get mined in time."""


class TxRequest(TypedDict, total=False):
    """A transaction to sign: `to` absent means contract creation."""

    to: str
    data: str
    gas: int
    value: int


# --- ABI encoding (no web3 contract objects: a selector and eth_abi are all we need) -----------


def selector(signature: str) -> bytes:
    """The 4-byte function selector of e.g. "mintBatch(address[],uint256)"."""
    return keccak(text=signature)[:4]


def encode_call(signature: str, *args: Any) -> str:
    """Calldata (0x-hex) for `signature` applied to `args`, types taken from the signature."""
    types = _arg_types(signature)
    return "0x" + (selector(signature) + abi_encode(types, list(args))).hex()


def _arg_types(signature: str) -> list[str]:
    inner = signature[signature.index("(") + 1 : signature.rindex(")")]
    return [t for t in inner.split(",") if t]


def create_address(sender: str, nonce: int) -> str:
    """The address a CREATE from `sender` at `nonce` lands at, known before sending."""
    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


# --- transactions ---------------------------------------------------------------------------


def mining_mode(rpc: Rpc) -> str:
    """Anvil's mining mode: "auto", "interval" or "manual" (mine yourself)."""
    automine, interval = rpc.batch([("anvil_getAutomine", []), ("anvil_getIntervalMining", [])])
    if automine:
        return "auto"
    return "manual" if interval is None else "interval"


def send_transactions(
    rpc_url: str, private_key: str | bytes, txs: Sequence[TxRequest], timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Sign `txs` with consecutive nonces, send them back to back, return their receipts in order.

    Raises TokenError naming the revert reason if any of them failed.
    """
    rpc = Rpc(rpc_url, timeout=max(30.0, timeout_s))
    account = Account.from_key(private_key)
    chain_id, nonce, gas_price = rpc.batch(
        [("eth_chainId", []), ("eth_getTransactionCount", [account.address, "pending"]), ("eth_gasPrice", [])]
    )
    nonce, gas_price = int(nonce, 16), int(gas_price, 16) * 2  # headroom if the base fee moves
    raw = []
    for i, tx in enumerate(txs):
        fields = {
            "chainId": int(chain_id, 16),
            "nonce": nonce + i,
            "gasPrice": gas_price,
            "gas": tx.get("gas", 1_000_000),
            "value": tx.get("value", 0),
            "data": tx.get("data", "0x"),
        }
        if tx.get("to"):
            fields["to"] = tx["to"]
        raw.append("0x" + account.sign_transaction(fields).raw_transaction.hex())
    # One request per transaction, in nonce order. Not a JSON-RPC batch: Anvil may handle a batch's
    # items out of order, and in automine mode a transaction that arrived before its predecessor
    # then sits in the pool unmined (seen with 20 mintBatch transactions in one batch).
    hashes = [rpc.call("eth_sendRawTransaction", r) for r in raw]
    receipts = wait_for_receipts(rpc, hashes, timeout_s)
    for tx, receipt in zip(txs, receipts):
        if int(receipt["status"], 16) != 1:
            raise TokenError(f"transaction {receipt['transactionHash']} reverted: {_revert_reason(rpc, account.address, tx)}")
    return receipts


def wait_for_receipts(rpc: Rpc, hashes: Sequence[str], timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Receipts of `hashes`, mining blocks ourselves when Anvil is in manual mode."""
    manual = mining_mode(rpc) == "manual"
    receipts: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [h for h in hashes if h not in receipts]
        if manual:
            rpc.call("anvil_mine", "0x1")
        for h, receipt in zip(pending, rpc.batch([("eth_getTransactionReceipt", [h]) for h in pending])):
            if receipt is not None:
                receipts[h] = receipt
        if len(receipts) == len(hashes):
            return [receipts[h] for h in hashes]
        if time.monotonic() > deadline:
            raise TokenError(f"{len(hashes) - len(receipts)} transaction(s) not mined within {timeout_s} s")
        if not manual:
            time.sleep(0.02)


def _revert_reason(rpc: Rpc, sender: str, tx: TxRequest) -> str:
    """Replay a failed transaction as eth_call to learn why (best effort)."""
    try:
        rpc.call("eth_call", {"from": sender, "to": tx.get("to"), "data": tx.get("data", "0x"), "gas": hex(tx.get("gas", 1_000_000))}, "latest")
    except ChainError as exc:
        return str(exc)
    return "unknown (it succeeds when replayed; out of gas?)"


def call(rpc_url: str, to: str, data: str, sender: str | None = None) -> str:
    """eth_call at the latest block; raises ChainError with the revert text on a revert."""
    params: dict[str, str] = {"to": to, "data": data}
    if sender:
        params["from"] = sender
    return Rpc(rpc_url).call("eth_call", params, "latest")


# --- the token ----------------------------------------------------------------------------


def deploy_usdc(
    rpc_url: str,
    name: str = "USD Coin",
    version: str = "2",
    decimals: int = 6,
    symbol: str = "USDC",
    admin: str = PROXY_ADMIN_ADDRESS,
) -> str:
    """Deploy MockUSDC (linked to its SignatureChecker library) behind a UsdcProxy, initialised,
    with DEV_ADDRESS as owner, pauser, blacklister, master minter and unlimited minter.

    `name` and `version` are the EIP-712 domain clients must sign against. Returns the proxy's
    (the token's) address. Four transactions, sent together, one receipt wait.
    """
    nonce = int(Rpc(rpc_url).call("eth_getTransactionCount", DEV_ADDRESS, "pending"), 16)
    checker, implementation, proxy = (create_address(DEV_ADDRESS, nonce + i) for i in range(3))
    init = encode_call(
        "initialize(string,string,string,uint8,string,address,address,address,address)",
        name, symbol, "USD", decimals, version, DEV_ADDRESS, DEV_ADDRESS, DEV_ADDRESS, DEV_ADDRESS,
    )
    proxy_args = abi_encode(["address", "address", "bytes"], [implementation, admin, bytes.fromhex(init[2:])])
    send_transactions(
        rpc_url,
        DEV_PRIVATE_KEY,
        [
            {"data": load_artifact("SignatureChecker")["bytecode"], "gas": 1_000_000},
            {"data": link(load_artifact("MockUSDC"), {"SignatureChecker": checker}), "gas": 6_000_000},
            {"data": load_artifact("UsdcProxy")["bytecode"] + proxy_args.hex(), "gas": 1_500_000},
            {"to": proxy, "data": encode_call("configureMinter(address,uint256)", DEV_ADDRESS, MAX_UINT256), "gas": 200_000},
        ],
    )
    return proxy


def deploy_batch_settler(rpc_url: str) -> str:
    """Deploy the BatchSettler the `batched` strategy relays through; returns its address."""
    nonce = int(Rpc(rpc_url).call("eth_getTransactionCount", DEV_ADDRESS, "pending"), 16)
    send_transactions(rpc_url, DEV_PRIVATE_KEY, [{"data": load_artifact("BatchSettler")["bytecode"], "gas": 1_000_000}])
    return create_address(DEV_ADDRESS, nonce)


def fund(
    rpc_url: str, token: str, addresses: Sequence[str], amount_atomic: int, chunk: int = FUND_CHUNK
) -> list[dict[str, Any]]:
    """Mint `amount_atomic` to every address, `chunk` recipients per mintBatch, all sent at once.

    Returns the receipts (one per chunk). 10,000 new holders take about 250M gas in all.
    """
    if amount_atomic <= 0 or not addresses:
        raise ValueError("fund needs at least one address and a positive amount")
    txs: list[TxRequest] = []
    for start in range(0, len(addresses), chunk):
        part = [to_checksum_address(a) for a in addresses[start : start + chunk]]
        txs.append(
            {
                "to": token,
                "data": encode_call("mintBatch(address[],uint256)", part, amount_atomic),
                "gas": _GAS_PER_BATCH + _GAS_PER_RECIPIENT * len(part),
            }
        )
    return send_transactions(rpc_url, DEV_PRIVATE_KEY, txs, timeout_s=60.0 + 2.0 * len(txs))


def balance_of(rpc_url: str, token: str, addr: str) -> int:
    """The token balance of `addr`, in atomic units."""
    return balances_of(rpc_url, token, [addr])[0]


def balances_of(rpc_url: str, token: str, addresses: Sequence[str]) -> list[int]:
    """Token balances of many addresses in one batched request."""
    rpc = Rpc(rpc_url)
    calls = [("eth_call", [{"to": token, "data": encode_call("balanceOf(address)", a)}, "latest"]) for a in addresses]
    return [int(r, 16) for r in rpc.batch(calls)]


def total_supply(rpc_url: str, token: str) -> int:
    """The token's total supply, in atomic units."""
    return int(call(rpc_url, token, encode_call("totalSupply()")), 16)


def read_string(rpc_url: str, token: str, getter: str) -> str:
    """A string view such as "name()" or "version()" (the EIP-712 domain fields)."""
    return abi_decode(["string"], bytes.fromhex(call(rpc_url, token, encode_call(getter))[2:]))[0]

"""The x402 `batch-settlement` contracts on the local chain: deploy them where the SDK looks, read them.

The official SDK (x402 2.25, `x402.mechanisms.evm.batch_settlement`) hard-codes where the scheme's
contracts live, as the canonical CREATE2 addresses of the real deployments:

| contract (ours, services/contracts/) | SDK constant | address |
| --- | --- | --- |
| BatchSettlementEscrow.sol | BATCH_SETTLEMENT_ADDRESS | 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003 |
| Erc3009DepositCollector.sol | ERC3009_DEPOSIT_COLLECTOR_ADDRESS | 0x4020806089470a89826cB9fB1f4059150b550004 |
| Multicall3Subset.sol | MULTICALL3_ADDRESS (x402.mechanisms.evm.constants) | 0xcA11bde05977b3631167028862bE2a173976CA11 |

The SDK's facilitator reads channel state through Multicall3's `tryAggregate`, which Anvil does not
pre-deploy, hence the third contract. All three are ours, written from the scheme's specification;
only their ABI, EIP-712 types and addresses are the SDK's.

How the addresses are satisfied: `deploy_batch_settlement` deploys each contract normally (CREATE
from DEV_ADDRESS, so its constructor really runs), reads the deployed runtime code back with
eth_getCode, and copies it with `anvil_setCode` to the SDK's address. That is sound because none of
the three has code that depends on where it was deployed:

- the escrow has no constructor, no immutables and no storage initialised at deploy time; its
  EIP-712 domain separator (verifyingContract = address(this)) is computed on every call, so at the
  SDK address it is the SDK's domain and channel ids match `compute_channel_id`;
- the collector's one piece of configuration, the escrow it serves, is an immutable, so it lives in
  the runtime code: it is deployed with the SDK's escrow address as constructor argument (not the
  escrow's temporary CREATE address), and the copied code carries it;
- the Multicall3 subset is stateless.

No storage needs initialising at the SDK addresses. The temporary CREATE copies stay on chain,
unused (the collector copy serves the SDK escrow address too, but nothing points at it).
Other code already at the escrow or collector address (a fork of a real network) is an error
unless `replace=True`; code already at Multicall3's address is kept (the real Multicall3 does
everything ours does).

Reads go through JSON-RPC (services.chain.Rpc, batched), like services.token.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.constants import MULTICALL3_ADDRESS

from services.chain import DEV_ADDRESS, DEV_PRIVATE_KEY, ChainError, Rpc
from services.contracts import load_artifact
from services.token import create_address, encode_call, send_transactions

ESCROW_ADDRESS = to_checksum_address(BATCH_SETTLEMENT_ADDRESS)
ERC3009_COLLECTOR_ADDRESS = to_checksum_address(ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
MULTICALL_ADDRESS = to_checksum_address(MULTICALL3_ADDRESS)

#: The ChannelConfig tuple as the ABI spells it (payer, payerAuthorizer, receiver,
#: receiverAuthorizer, token, withdrawDelay, salt).
CHANNEL_CONFIG_TYPE = "(address,address,address,address,address,uint40,bytes32)"


class EscrowError(ChainError):
    """The batch-settlement contracts could not be placed, or a read failed."""


# --- deployment ----------------------------------------------------------------------------


def deploy_batch_settlement(rpc_url: str, replace: bool = False) -> dict[str, Any]:
    """Place the escrow, the ERC-3009 deposit collector and Multicall3 at the SDK's addresses.

    Returns {"escrow", "erc3009_collector", "multicall3"} (the addresses the SDK uses),
    "deployed_at" (each contract's temporary CREATE address) and "placed" (which addresses got
    code from us; an address that already had the same code is not rewritten). Three transactions
    sent together and one receipt wait, then RPC calls; works in every mining mode.
    """
    rpc = Rpc(rpc_url)
    nonce = int(rpc.call("eth_getTransactionCount", DEV_ADDRESS, "pending"), 16)
    temp = {name: create_address(DEV_ADDRESS, nonce + i) for i, name in enumerate(("escrow", "erc3009_collector", "multicall3"))}
    collector_args = encode_call("f(address)", ESCROW_ADDRESS)[10:]  # the constructor argument, ABI-encoded
    send_transactions(
        rpc_url,
        DEV_PRIVATE_KEY,
        [
            {"data": load_artifact("BatchSettlementEscrow")["bytecode"], "gas": 4_000_000},
            {"data": load_artifact("Erc3009DepositCollector")["bytecode"] + collector_args, "gas": 1_000_000},
            {"data": load_artifact("Multicall3Subset")["bytecode"], "gas": 1_000_000},
        ],
    )
    targets = {"escrow": ESCROW_ADDRESS, "erc3009_collector": ERC3009_COLLECTOR_ADDRESS, "multicall3": MULTICALL_ADDRESS}
    codes = rpc.batch([("eth_getCode", [temp[name], "latest"]) for name in targets])
    existing = rpc.batch([("eth_getCode", [address, "latest"]) for address in targets.values()])
    placed = []
    for (name, address), code, current in zip(targets.items(), codes, existing):
        if code in ("0x", ""):
            raise EscrowError(f"{name} deployed at {temp[name]} has no code")
        if current == code:
            continue
        if current not in ("0x", ""):
            if name == "multicall3":
                continue  # a real Multicall3 is there already: it does everything ours does
            if not replace:
                raise EscrowError(f"{address} already holds other code than our {name}; pass replace=True to overwrite it")
        rpc.call("anvil_setCode", address, code)
        placed.append(address)
    if call_address(rpc_url, ERC3009_COLLECTOR_ADDRESS, "escrow()") != ESCROW_ADDRESS:
        raise EscrowError("the collector at the SDK address does not point at the SDK escrow address")
    return {**targets, "deployed_at": temp, "placed": placed}


# --- reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelState:
    """A channel as the escrow holds it (atomic token units; times in chain seconds)."""

    channel_id: str
    balance: int
    total_claimed: int
    withdraw_amount: int  # pending timed withdrawal, 0 if none
    withdraw_initiated_at: int  # 0 if none
    refund_nonce: int

    @property
    def unclaimed(self) -> int:
        """What the payer could still get back: balance - totalClaimed."""
        return self.balance - self.total_claimed


def channel_states(rpc_url: str, channel_ids: Sequence[str], escrow: str = ESCROW_ADDRESS) -> list[ChannelState]:
    """The state of many channels in one batched request (three eth_calls each)."""
    calls = []
    for cid in channel_ids:
        raw = _bytes32(cid)
        for signature in ("channels(bytes32)", "pendingWithdrawals(bytes32)", "refundNonce(bytes32)"):
            calls.append(("eth_call", [{"to": escrow, "data": encode_call(signature, raw)}, "latest"]))
    replies = Rpc(rpc_url).batch(calls)
    states = []
    for i, cid in enumerate(channel_ids):
        balance, claimed = abi_decode(["uint128", "uint128"], _hex_bytes(replies[3 * i]))
        amount, initiated = abi_decode(["uint128", "uint40"], _hex_bytes(replies[3 * i + 1]))
        (nonce,) = abi_decode(["uint256"], _hex_bytes(replies[3 * i + 2]))
        states.append(ChannelState("0x" + _bytes32(cid).hex(), balance, claimed, amount, initiated, nonce))
    return states


def channel_state(rpc_url: str, channel_id: str, escrow: str = ESCROW_ADDRESS) -> ChannelState:
    """balance, totalClaimed, pending withdrawal and refund nonce of one channel."""
    return channel_states(rpc_url, [channel_id], escrow)[0]


def receiver_totals(rpc_url: str, receiver: str, token: str, escrow: str = ESCROW_ADDRESS) -> tuple[int, int]:
    """(totalClaimed, totalSettled) of a receiver in a token; their difference is what settle() pays."""
    data = encode_call("receivers(address,address)", to_checksum_address(receiver), to_checksum_address(token))
    claimed, settled = abi_decode(["uint128", "uint128"], _hex_bytes(Rpc(rpc_url).call("eth_call", {"to": escrow, "data": data}, "latest")))
    return claimed, settled


def config_tuple(config: Mapping[str, Any] | Any) -> tuple:
    """A ChannelConfig (the SDK's dataclass, or its camelCase dict) as the ABI tuple."""
    if not isinstance(config, Mapping):
        config = config.to_dict()
    return (
        to_checksum_address(config["payer"]),
        to_checksum_address(config["payerAuthorizer"]),
        to_checksum_address(config["receiver"]),
        to_checksum_address(config["receiverAuthorizer"]),
        to_checksum_address(config["token"]),
        int(config["withdrawDelay"]),
        _bytes32(config["salt"]),
    )


def channel_id_onchain(rpc_url: str, config: Mapping[str, Any] | Any, escrow: str = ESCROW_ADDRESS) -> str:
    """The escrow's own getChannelId(config) (the SDK computes the same locally)."""
    data = "0x" + (keccak(text=f"getChannelId({CHANNEL_CONFIG_TYPE})")[:4] + abi_encode([CHANNEL_CONFIG_TYPE], [config_tuple(config)])).hex()
    return Rpc(rpc_url).call("eth_call", {"to": escrow, "data": data}, "latest")


def encode_escrow_call(function: str, *args: Any, contract: str = "BatchSettlementEscrow") -> str:
    """Calldata (0x-hex) for one of our contracts' functions by name, types from its artifact's ABI;
    a ChannelConfig argument may be the SDK's dataclass or dict (see config_tuple)."""
    matches = [i for i in load_artifact(contract)["abi"] if i["type"] == "function" and i["name"] == function]
    if len(matches) != 1:
        raise ValueError(f"{contract} has {len(matches)} functions named {function!r}")
    types = [_abi_type(i) for i in matches[0]["inputs"]]
    values = [config_tuple(a) if t == CHANNEL_CONFIG_TYPE and not isinstance(a, tuple) else a for t, a in zip(types, args)]
    selector = keccak(text=f"{function}({','.join(types)})")[:4]
    return "0x" + (selector + abi_encode(types, values)).hex()


def simulate(rpc_url: str, to: str, data: str, sender: str | None = None) -> str | None:
    """eth_call at the latest block: None if it succeeds, else the revert decoded (decode_revert)."""
    params: dict[str, str] = {"to": to, "data": data}
    if sender:
        params["from"] = sender
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [params, "latest"]}).encode()
    request = urllib.request.Request(rpc_url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    if "error" not in reply:
        return None
    revert = reply["error"].get("data")
    if isinstance(revert, dict):  # some nodes nest it
        revert = revert.get("data")
    return decode_revert(revert) if isinstance(revert, str) and revert.startswith("0x") else str(reply["error"].get("message"))


def call_address(rpc_url: str, to: str, signature: str) -> str:
    """A no-argument view returning an address, e.g. the collector's escrow()."""
    reply = Rpc(rpc_url).call("eth_call", {"to": to, "data": encode_call(signature)}, "latest")
    return to_checksum_address(abi_decode(["address"], _hex_bytes(reply))[0])


# --- events and errors -------------------------------------------------------------------------


def _abi_type(item: Mapping[str, Any]) -> str:
    kind = item["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple"):]
    return kind


@lru_cache(maxsize=None)
def _event_table(contract: str) -> dict[str, dict[str, Any]]:
    table = {}
    for item in load_artifact(contract)["abi"]:
        if item["type"] != "event":
            continue
        types = [_abi_type(i) for i in item["inputs"]]
        topic = "0x" + keccak(text=f"{item['name']}({','.join(types)})").hex()
        table[topic] = {"name": item["name"], "inputs": item["inputs"], "types": types}
    return table


@lru_cache(maxsize=None)
def _error_table(contracts: tuple[str, ...]) -> dict[str, tuple[str, list[str]]]:
    table = {"0x08c379a0": ("Error", ["string"]), "0x4e487b71": ("Panic", ["uint256"])}
    for contract in contracts:
        for item in load_artifact(contract)["abi"]:
            if item["type"] == "error":
                types = [_abi_type(i) for i in item["inputs"]]
                table["0x" + keccak(text=f"{item['name']}({','.join(types)})")[:4].hex()] = (item["name"], types)
    return table


#: topic0 of every event the escrow emits, e.g. EVENT_TOPICS["Settled"].
EVENT_TOPICS = {spec["name"]: topic for topic, spec in _event_table("BatchSettlementEscrow").items()}


def decode_escrow_log(log: Mapping[str, Any]) -> dict[str, Any] | None:
    """One receipt/eth_getLogs log of the escrow as {"event", "args", "block", "tx", "log_index"};
    None for a log that is not one of its events."""
    spec = _event_table("BatchSettlementEscrow").get(log["topics"][0] if log.get("topics") else "")
    if spec is None:
        return None
    topics = list(log["topics"][1:])
    data_inputs = [(i, t) for i, t in zip(spec["inputs"], spec["types"]) if not i["indexed"]]
    data_values = abi_decode([t for _, t in data_inputs], _hex_bytes(log["data"])) if data_inputs else ()
    values = iter(data_values)
    args: dict[str, Any] = {}
    for item, kind in zip(spec["inputs"], spec["types"]):
        if item["indexed"]:
            (value,) = abi_decode([kind], _hex_bytes(topics.pop(0)))
        else:
            value = next(values)
        if isinstance(value, bytes):
            value = "0x" + value.hex()
        elif isinstance(value, str) and kind == "address":
            value = to_checksum_address(value)
        args[item["name"]] = value
    if "config" in args:
        names = ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token", "withdrawDelay", "salt")
        raw = dict(zip(names, args["config"]))
        raw["salt"] = "0x" + raw["salt"].hex()
        args["config"] = {k: (to_checksum_address(v) if isinstance(v, str) and k != "salt" else v) for k, v in raw.items()}
    return {
        "event": spec["name"],
        "args": args,
        "block": int(log["blockNumber"], 16) if isinstance(log.get("blockNumber"), str) else log.get("blockNumber"),
        "tx": log.get("transactionHash"),
        "log_index": int(log["logIndex"], 16) if isinstance(log.get("logIndex"), str) else log.get("logIndex"),
    }


def escrow_events(
    rpc_url: str,
    from_block: int = 0,
    to_block: int | str = "latest",
    event: str | None = None,
    channel_id: str | None = None,
    escrow: str = ESCROW_ADDRESS,
) -> list[dict[str, Any]]:
    """The escrow's decoded events in a block range, oldest first, optionally of one kind and/or
    one channel (every event but Settled has the channel id as first indexed topic)."""
    topics: list[Any] = [EVENT_TOPICS[event] if event else None]
    if channel_id is not None:
        topics.append("0x" + _bytes32(channel_id).hex())
    while topics and topics[-1] is None:
        topics.pop()
    flt: dict[str, Any] = {"address": escrow, "fromBlock": hex(from_block),
                           "toBlock": to_block if isinstance(to_block, str) else hex(to_block)}
    if topics:
        flt["topics"] = topics
    logs = Rpc(rpc_url).call("eth_getLogs", flt)
    return [decoded for log in logs if (decoded := decode_escrow_log(log)) is not None]


def decode_revert(data: str | bytes) -> str:
    """A revert's return data as text: "WithdrawNotReady(1700000900)", "Error: ...", or the hex."""
    raw = data if isinstance(data, bytes) else _hex_bytes(data)
    spec = _error_table(("BatchSettlementEscrow", "Erc3009DepositCollector")).get("0x" + raw[:4].hex())
    if spec is None:
        return "0x" + raw.hex()
    name, types = spec
    values = abi_decode(types, raw[4:]) if types else ()
    shown = ["0x" + v.hex() if isinstance(v, bytes) else str(v) for v in values]
    return f"{name}({', '.join(shown)})" if name not in ("Error", "Panic") else f"{name}: {shown[0]}"


# --- small encoding helpers ----------------------------------------------------------------


def _bytes32(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))

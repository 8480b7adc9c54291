"""The mock USDC against a real Anvil: reproducible build, gas parity with real USDC, EIP-3009 and
EIP-2612 behaviour, revert texts the x402 SDK understands, and fast funding.

Signatures are made with eth_account's EIP-712 typed-data signing, an implementation independent
of the contract's own hashing, so a wrong type hash or domain in the contract fails here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from x402.mechanisms.evm.constants import (
    ERR_INSUFFICIENT_BALANCE,
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_VALID_AFTER_FUTURE,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.exact.eip3009_utils import parse_eip3009_transfer_error

from services.chain import DEV_ADDRESS, DEV_PRIVATE_KEY, Anvil, ChainError
from services.contracts import ARTIFACTS_DIR, build
from services.token import (
    PROXY_ADMIN_ADDRESS,
    TokenError,
    balance_of,
    balances_of,
    call,
    deploy_usdc,
    encode_call,
    fund,
    read_string,
    send_transactions,
    total_supply,
)

# Real USDC (FiatTokenV2_2 behind its proxy), transferWithAuthorization receipt gasUsed.
ANCHOR_EXISTING_RECIPIENT = 85_704
ANCHOR_NEW_RECIPIENT = 102_792
GAS_TOLERANCE = 0.02

TWA = {
    "vrs": "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
    "bytes": "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
}
RWA = {
    "vrs": "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
    "bytes": "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
}
CANCEL = {
    "vrs": "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)",
    "bytes": "cancelAuthorization(address,bytes32,bytes)",
}
PERMIT_VRS = "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"

_AUTH_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "TransferWithAuthorization": _AUTH_FIELDS,
    "ReceiveWithAuthorization": _AUTH_FIELDS,
    "CancelAuthorization": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}
EVENT_AUTHORIZATION_USED = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
EVENT_AUTHORIZATION_CANCELED = "0x" + keccak(text="AuthorizationCanceled(address,bytes32)").hex()
EVENT_TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


@dataclass
class Usdc:
    """A deployed token with a funded payer and an ETH-funded relayer (a third party, like a facilitator)."""

    chain: Anvil
    token: str
    payer: LocalAccount
    relayer: LocalAccount
    name: str = "USD Coin"
    version: str = "2"

    @property
    def url(self) -> str:
        return self.chain.url

    def sign(self, primary: str, message: dict[str, Any], key: Any = None, version: str | None = None) -> Any:
        """EIP-712 signature by eth_account (the payer's key unless `key` is given)."""
        data = {
            "types": {"EIP712Domain": TYPES["EIP712Domain"], primary: TYPES[primary]},
            "primaryType": primary,
            "domain": {
                "name": self.name,
                "version": version or self.version,
                "chainId": self.chain.chain_id,
                "verifyingContract": self.token,
            },
            "message": message,
        }
        return Account.sign_message(encode_typed_data(full_message=data), key if key is not None else self.payer.key)

    def now(self) -> int:
        return int(self.chain.rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def authorization(self, to: str, value: int, valid_after: int = 0, valid_before: int | None = None) -> dict[str, Any]:
        return {
            "from": self.payer.address,
            "to": to,
            "value": value,
            "validAfter": valid_after,
            "validBefore": valid_before if valid_before is not None else self.now() + 3600,
            "nonce": os.urandom(32),
        }


def with_signature(signature: str, args: list[Any], signed: Any, form: str) -> str:
    """Calldata for the v/r/s or the bytes-signature overload."""
    if form == "vrs":
        return encode_call(signature, *args, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"))
    return encode_call(signature, *args, bytes(signed.signature))


def auth_call(kind: dict[str, str], auth: dict[str, Any], signed: Any, form: str) -> str:
    args = [auth["from"], auth["to"], auth["value"], auth["validAfter"], auth["validBefore"], auth["nonce"]]
    return with_signature(kind[form], args, signed, form)


def revert_text(usdc: Usdc, data: str, sender: str) -> str:
    """The revert message of an eth_call that must fail."""
    with pytest.raises(ChainError) as failure:
        call(usdc.url, usdc.token, data, sender=sender)
    return str(failure.value)


def send(usdc: Usdc, account: LocalAccount | str, data: str, gas: int = 400_000) -> dict[str, Any]:
    key = account if isinstance(account, str) else account.key
    return send_transactions(usdc.url, key, [{"to": usdc.token, "data": data, "gas": gas}])[0]


def authorization_state(usdc: Usdc, authorizer: str, nonce: bytes) -> bool:
    return int(call(usdc.url, usdc.token, encode_call("authorizationState(address,bytes32)", authorizer, nonce)), 16) == 1


@pytest.fixture
def usdc(anvil: Anvil) -> Usdc:
    token = deploy_usdc(anvil.url)
    payer, relayer = Account.create(), Account.create()
    anvil.set_balance(relayer.address, 10**18)
    fund(anvil.url, token, [payer.address], 100_000_000)
    return Usdc(anvil, token, payer, relayer)


def random_addresses(n: int) -> list[str]:
    return [to_checksum_address(os.urandom(20)) for _ in range(n)]


# --- build ------------------------------------------------------------------------------


def test_artifacts_rebuild_byte_identical(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in build.build(tmp_path)}
    committed = {p.name: p.read_bytes() for p in ARTIFACTS_DIR.glob("*.json")}
    assert {"MockUSDC.json", "UsdcProxy.json", "SignatureChecker.json"} <= fresh.keys()
    assert fresh.keys() == committed.keys()
    for name, content in fresh.items():
        assert content == committed[name], f"{name} differs from a rebuild: run `make contracts` and commit"


# --- deployment and proxy -----------------------------------------------------------------


def test_deploy_sets_domain_and_metadata(anvil: Anvil) -> None:
    token = deploy_usdc(anvil.url, name="USDC", version="7", decimals=18, symbol="mUSDC")
    assert read_string(anvil.url, token, "name()") == "USDC"
    assert read_string(anvil.url, token, "version()") == "7"
    assert read_string(anvil.url, token, "symbol()") == "mUSDC"
    assert int(call(anvil.url, token, encode_call("decimals()")), 16) == 18
    expected = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": TYPES["EIP712Domain"], "CancelAuthorization": TYPES["CancelAuthorization"]},
            "primaryType": "CancelAuthorization",
            "domain": {"name": "USDC", "version": "7", "chainId": anvil.chain_id, "verifyingContract": token},
            "message": {"authorizer": DEV_ADDRESS, "nonce": b"\x00" * 32},
        }
    ).header  # the domain separator, as eth_account hashes it
    assert call(anvil.url, token, encode_call("DOMAIN_SEPARATOR()")) == "0x" + bytes(expected).hex()


def test_proxy_uses_eip1967_slots_and_keeps_admin_out(usdc: Usdc) -> None:
    rpc = usdc.chain.rpc
    impl_slot = hex(int.from_bytes(keccak(text="eip1967.proxy.implementation"), "big") - 1)
    admin_slot = hex(int.from_bytes(keccak(text="eip1967.proxy.admin"), "big") - 1)
    implementation = "0x" + rpc.call("eth_getStorageAt", usdc.token, impl_slot, "latest")[-40:]
    admin = "0x" + rpc.call("eth_getStorageAt", usdc.token, admin_slot, "latest")[-40:]
    assert admin.lower() == PROXY_ADMIN_ADDRESS.lower()
    implementation_code = rpc.call("eth_getCode", implementation, "latest")
    assert len(implementation_code) > 2 and implementation_code != rpc.call("eth_getCode", usdc.token, "latest")
    # Token state lives in the proxy, not in the implementation.
    assert balance_of(usdc.url, usdc.token, usdc.payer.address) == 100_000_000
    assert balance_of(usdc.url, implementation, usdc.payer.address) == 0
    text = revert_text(usdc, encode_call("balanceOf(address)", usdc.payer.address), PROXY_ADMIN_ADDRESS)
    assert "Cannot call fallback function from the proxy admin" in text
    assert "FiatToken: contract is already initialized" in revert_text(
        usdc,
        encode_call(
            "initialize(string,string,string,uint8,string,address,address,address,address)",
            "X", "X", "X", 6, "1", DEV_ADDRESS, DEV_ADDRESS, DEV_ADDRESS, DEV_ADDRESS,
        ),
        DEV_ADDRESS,
    )


# --- gas parity with real USDC ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["vrs", "bytes"])
def test_transfer_with_authorization_gas_matches_real_usdc(usdc: Usdc, form: str) -> None:
    holder = Account.create().address
    fund(usdc.url, usdc.token, [holder], 1_000_000)
    measured = {}
    for label, recipient in (("existing", holder), ("new", Account.create().address)):
        auth = usdc.authorization(recipient, 10_000, valid_after=usdc.now() - 600)
        receipt = send(usdc, usdc.relayer, auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), form))
        measured[label] = int(receipt["gasUsed"], 16)
    print(
        f"\ntransferWithAuthorization ({form}) gasUsed: existing recipient {measured['existing']:,} "
        f"(real USDC {ANCHOR_EXISTING_RECIPIENT:,}, {measured['existing'] / ANCHOR_EXISTING_RECIPIENT - 1:+.2%}), "
        f"new recipient {measured['new']:,} (real {ANCHOR_NEW_RECIPIENT:,}, {measured['new'] / ANCHOR_NEW_RECIPIENT - 1:+.2%})"
    )
    assert measured["existing"] == pytest.approx(ANCHOR_EXISTING_RECIPIENT, rel=GAS_TOLERANCE)
    assert measured["new"] == pytest.approx(ANCHOR_NEW_RECIPIENT, rel=GAS_TOLERANCE)


# --- EIP-3009 -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["vrs", "bytes"])
def test_transfer_with_authorization_moves_funds_once(usdc: Usdc, form: str) -> None:
    payee = Account.create().address
    auth = usdc.authorization(payee, 1_234_567)
    data = auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), form)
    assert not authorization_state(usdc, usdc.payer.address, auth["nonce"])
    receipt = send(usdc, usdc.relayer, data)
    assert balances_of(usdc.url, usdc.token, [usdc.payer.address, payee]) == [100_000_000 - 1_234_567, 1_234_567]
    assert authorization_state(usdc, usdc.payer.address, auth["nonce"])
    topics = {log["topics"][0]: log["topics"] for log in receipt["logs"]}
    assert topics[EVENT_AUTHORIZATION_USED][2] == "0x" + auth["nonce"].hex()
    assert topics[EVENT_TRANSFER][2][-40:] == payee[2:].lower()
    # Replaying the same authorization is refused, with the text the SDK maps to "nonce already used".
    text = revert_text(usdc, data, usdc.relayer.address)
    assert "FiatTokenV2: authorization is used or canceled" in text
    assert parse_eip3009_transfer_error(ChainError(text)) == ERR_NONCE_ALREADY_USED


def test_time_window_is_enforced(usdc: Usdc) -> None:
    payee = Account.create().address
    early = usdc.authorization(payee, 1, valid_after=usdc.now() + 3600)
    text = revert_text(usdc, auth_call(TWA, early, usdc.sign("TransferWithAuthorization", early), "vrs"), usdc.relayer.address)
    assert "FiatTokenV2: authorization is not yet valid" in text
    assert parse_eip3009_transfer_error(ChainError(text)) == ERR_VALID_AFTER_FUTURE

    late = usdc.authorization(payee, 1, valid_before=usdc.now() - 1)
    text = revert_text(usdc, auth_call(TWA, late, usdc.sign("TransferWithAuthorization", late), "vrs"), usdc.relayer.address)
    assert "FiatTokenV2: authorization is expired" in text
    assert parse_eip3009_transfer_error(ChainError(text)) == ERR_VALID_BEFORE_EXPIRED


@pytest.mark.parametrize("form", ["vrs", "bytes"])
def test_bad_signatures_are_refused(usdc: Usdc, form: str) -> None:
    payee = Account.create().address
    auth = usdc.authorization(payee, 500)
    cases = {
        "signed by someone else": (auth, usdc.sign("TransferWithAuthorization", auth, key=Account.create().key)),
        "wrong domain version": (auth, usdc.sign("TransferWithAuthorization", auth, version="1")),
        "amount changed after signing": ({**auth, "value": 501}, usdc.sign("TransferWithAuthorization", auth)),
        "receive typehash used for transfer": (auth, usdc.sign("ReceiveWithAuthorization", auth)),
    }
    for case, (message, signed) in cases.items():
        text = revert_text(usdc, auth_call(TWA, message, signed, form), usdc.relayer.address)
        assert "FiatTokenV2: invalid signature" in text, case
        assert parse_eip3009_transfer_error(ChainError(text)) == ERR_INVALID_SIGNATURE, case
    if form == "bytes":
        truncated = encode_call(TWA["bytes"], *auth.values(), b"\x01" * 64)
        text = revert_text(usdc, truncated, usdc.relayer.address)
        assert "ECRecover: invalid signature length" in text
        assert parse_eip3009_transfer_error(ChainError(text)) == ERR_INVALID_SIGNATURE
    # The untampered authorization still passes (so the failures above were the tampering).
    call(usdc.url, usdc.token, auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), form), sender=usdc.relayer.address)


def test_insufficient_balance_maps_to_sdk_reason(usdc: Usdc) -> None:
    auth = usdc.authorization(Account.create().address, 100_000_001)
    text = revert_text(usdc, auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), "vrs"), usdc.relayer.address)
    assert "ERC20: transfer amount exceeds balance" in text
    assert parse_eip3009_transfer_error(ChainError(text)) == ERR_INSUFFICIENT_BALANCE


def test_contract_signer_is_asked_with_eip1271(usdc: Usdc) -> None:
    # Runtime code that answers every call with the EIP-1271 magic value 0x1626ba7e.
    always_valid = "0x631626ba7e60e01b60005260206000f3"
    usdc.chain.rpc.call("anvil_setCode", usdc.payer.address, always_valid)
    payee = Account.create().address
    auth = usdc.authorization(payee, 42)
    signed = usdc.sign("TransferWithAuthorization", auth, key=Account.create().key)  # not the payer's key
    send(usdc, usdc.relayer, auth_call(TWA, auth, signed, "bytes"))
    assert balance_of(usdc.url, usdc.token, payee) == 42
    usdc.chain.rpc.call("anvil_setCode", usdc.payer.address, "0x60006000f3")  # answers nothing
    auth = usdc.authorization(payee, 42)
    text = revert_text(usdc, auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), "bytes"), usdc.relayer.address)
    assert "FiatTokenV2: invalid signature" in text


@pytest.mark.parametrize("form", ["vrs", "bytes"])
def test_receive_with_authorization_requires_the_payee_as_caller(usdc: Usdc, form: str) -> None:
    payee = Account.create()
    usdc.chain.set_balance(payee.address, 10**18)
    auth = usdc.authorization(payee.address, 777)
    data = auth_call(RWA, auth, usdc.sign("ReceiveWithAuthorization", auth), form)
    assert "FiatTokenV2: caller must be the payee" in revert_text(usdc, data, usdc.relayer.address)
    send(usdc, payee, data)
    assert balance_of(usdc.url, usdc.token, payee.address) == 777
    # A transfer-typed signature does not work for receive (distinct type hashes).
    auth = usdc.authorization(payee.address, 1)
    wrong = auth_call(RWA, auth, usdc.sign("TransferWithAuthorization", auth), form)
    assert "FiatTokenV2: invalid signature" in revert_text(usdc, wrong, payee.address)


@pytest.mark.parametrize("form", ["vrs", "bytes"])
def test_cancel_authorization(usdc: Usdc, form: str) -> None:
    auth = usdc.authorization(Account.create().address, 5)
    transfer = auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), form)
    cancel_message = {"authorizer": usdc.payer.address, "nonce": auth["nonce"]}
    forged = with_signature(
        CANCEL[form], [usdc.payer.address, auth["nonce"]], usdc.sign("CancelAuthorization", cancel_message, key=Account.create().key), form
    )
    assert "FiatTokenV2: invalid signature" in revert_text(usdc, forged, usdc.relayer.address)
    cancel = with_signature(CANCEL[form], [usdc.payer.address, auth["nonce"]], usdc.sign("CancelAuthorization", cancel_message), form)
    receipt = send(usdc, usdc.relayer, cancel)
    assert [log["topics"][0] for log in receipt["logs"]] == [EVENT_AUTHORIZATION_CANCELED]
    assert authorization_state(usdc, usdc.payer.address, auth["nonce"])
    assert "FiatTokenV2: authorization is used or canceled" in revert_text(usdc, transfer, usdc.relayer.address)
    assert "FiatTokenV2: authorization is used or canceled" in revert_text(usdc, cancel, usdc.relayer.address)


def test_pause_and_blacklist_block_authorizations(usdc: Usdc) -> None:
    payee = Account.create().address
    auth = usdc.authorization(payee, 9)
    data = auth_call(TWA, auth, usdc.sign("TransferWithAuthorization", auth), "vrs")
    send(usdc, DEV_PRIVATE_KEY, encode_call("blacklist(address)", usdc.payer.address))
    assert "Blacklistable: account is blacklisted" in revert_text(usdc, data, usdc.relayer.address)
    assert balance_of(usdc.url, usdc.token, usdc.payer.address) == 100_000_000  # the flag hides no funds
    send(usdc, DEV_PRIVATE_KEY, encode_call("unBlacklist(address)", usdc.payer.address))
    send(usdc, DEV_PRIVATE_KEY, encode_call("pause()"))
    assert "Pausable: paused" in revert_text(usdc, data, usdc.relayer.address)
    send(usdc, DEV_PRIVATE_KEY, encode_call("unpause()"))
    send(usdc, usdc.relayer, data)
    assert balance_of(usdc.url, usdc.token, payee) == 9


# --- EIP-2612 ----------------------------------------------------------------------------


def test_permit(usdc: Usdc) -> None:
    spender = Account.create()
    usdc.chain.set_balance(spender.address, 10**18)
    nonces = encode_call("nonces(address)", usdc.payer.address)
    nonce = int(call(usdc.url, usdc.token, nonces), 16)
    message = {"owner": usdc.payer.address, "spender": spender.address, "value": 3_000, "nonce": nonce, "deadline": usdc.now() + 600}
    signed = usdc.sign("Permit", message)
    args = [message["owner"], message["spender"], message["value"], message["deadline"]]
    data = with_signature(PERMIT_VRS, args, signed, "vrs")
    send(usdc, usdc.relayer, data)
    allowance = encode_call("allowance(address,address)", usdc.payer.address, spender.address)
    assert int(call(usdc.url, usdc.token, allowance), 16) == 3_000
    assert int(call(usdc.url, usdc.token, nonces), 16) == nonce + 1
    assert "EIP2612: invalid signature" in revert_text(usdc, data, usdc.relayer.address)  # nonce moved on
    stale = {**message, "nonce": nonce + 1, "deadline": usdc.now() - 1}
    expired = with_signature(PERMIT_VRS, [*args[:3], stale["deadline"]], usdc.sign("Permit", stale), "vrs")
    assert "FiatTokenV2: permit is expired" in revert_text(usdc, expired, usdc.relayer.address)
    # The allowance is usable, and bounded.
    send(usdc, spender, encode_call("transferFrom(address,address,uint256)", usdc.payer.address, spender.address, 3_000))
    assert balance_of(usdc.url, usdc.token, spender.address) == 3_000
    over = encode_call("transferFrom(address,address,uint256)", usdc.payer.address, spender.address, 1)
    assert "ERC20: transfer amount exceeds allowance" in revert_text(usdc, over, spender.address)


# --- funding -------------------------------------------------------------------------------


def test_fund_ten_thousand_agents(anvil: Anvil) -> None:
    token = deploy_usdc(anvil.url)
    agents = random_addresses(10_000)
    started = time.perf_counter()
    receipts = fund(anvil.url, token, agents, 20_000_000)
    elapsed = time.perf_counter() - started
    gas = sum(int(r["gasUsed"], 16) for r in receipts)
    print(f"\nfunded {len(agents):,} agents in {elapsed:.2f} s ({len(receipts)} txs, {gas / len(agents):,.0f} gas each)")
    sample = agents[:: len(agents) // 50] + [agents[-1]]
    assert balances_of(anvil.url, token, sample) == [20_000_000] * len(sample)
    assert total_supply(anvil.url, token) == 20_000_000 * len(agents)
    assert balance_of(anvil.url, token, random_addresses(1)[0]) == 0


@pytest.mark.parametrize("anvil", ["interval", "manual"], indirect=True)
def test_fund_works_in_every_mining_mode(anvil: Anvil) -> None:
    token = deploy_usdc(anvil.url)
    agents = random_addresses(1_200)  # three mintBatch transactions
    fund(anvil.url, token, agents + agents[:1], 7)  # listing an agent twice funds it twice
    assert balances_of(anvil.url, token, [agents[0], agents[1], agents[-1]]) == [14, 7, 7]
    assert total_supply(anvil.url, token) == 7 * 1_201


def test_fund_reports_a_revert(usdc: Usdc) -> None:
    with pytest.raises(TokenError, match="mint to the zero address"):
        fund(usdc.url, usdc.token, ["0x" + "00" * 20], 1)

"""EIP-712 hashing of EIP-3009 TransferWithAuthorization, shared by payer and facilitator.

Hand-rolled because every field is a static type: the digest is three keccaks over
fixed-width words, far cheaper than a generic typed-data encoder on the hot path. Its
correctness is pinned by tests against eth_account's own typed-data signing.
"""

from __future__ import annotations

from functools import lru_cache

from eth_utils import keccak

DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
TRANSFER_TYPEHASH = keccak(
    text="TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)


def _word(value: int | str) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x").rjust(64, "0"))
    return value.to_bytes(32, "big")


@lru_cache(maxsize=256)
def domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        DOMAIN_TYPEHASH + keccak(text=name) + keccak(text=version) + _word(chain_id) + _word(verifying_contract)
    )


def authorization_digest(
    name: str, version: str, chain_id: int, token: str,
    payer: str, payee: str, value: int, valid_after: int, valid_before: int, nonce: str,
) -> bytes:
    """The 32-byte digest an EIP-3009 authorization signs (what ecrecover checks on chain)."""
    struct = keccak(
        TRANSFER_TYPEHASH + _word(payer) + _word(payee) + _word(value) + _word(valid_after)
        + _word(valid_before) + _word(nonce)
    )
    return keccak(b"\x19\x01" + domain_separator(name, version, chain_id, token) + struct)

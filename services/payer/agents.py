"""Agent wallets derived from the scenario's seed: a rerun replays the same agents.

These are local test keys, derived from public inputs (seed and index): never send real
funds to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from coincurve import PrivateKey
from eth_utils import keccak, to_checksum_address

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True)
class Agent:
    index: int
    key: bytes
    address: str

    @property
    def key_hex(self) -> str:
        return "0x" + self.key.hex()


def derive_key(seed: int, index: int) -> bytes:
    """keccak(seed, index), re-hashed in the (astronomically rare) case it is not a valid scalar."""
    material = keccak(f"x402bench-agent:{seed}:{index}".encode())
    while not 0 < int.from_bytes(material, "big") < SECP256K1_N:
        material = keccak(material)
    return material


def address_of(key: bytes) -> str:
    public = PrivateKey(key).public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak(public)[-20:])


def derive_agents(seed: int, count: int, start: int = 0) -> list[Agent]:
    return [Agent(i, key, address_of(key)) for i in range(start, start + count) for key in (derive_key(seed, i),)]

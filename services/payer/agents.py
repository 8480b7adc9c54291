"""Deterministic agent wallets from a scenario's seed: a rerun replays the same agents.

LOCAL TEST KEYS ONLY. Every key is keccak("x402bench-agent:<seed>:<index>"), computed from
public inputs: anyone can recompute them. Never fund them on a real network.

Derivation is one keccak (re-hashed in the astronomically rare case the result is not a valid
secp256k1 scalar, 0 < k < n), the public key from libsecp256k1 via coincurve, and the address
as keccak(X || Y)[12:] in EIP-55 form, all with the fast keccak in `hashing`. About 35 us per
agent here, so 100,000 agents take a few seconds (eth_utils' checksum alone made it ~24 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from coincurve import PublicKey

from services.payer.hashing import checksum_encode, keccak256
from services.payer.signing import SECP256K1_N, AuthorizationSigner

__all__ = ["Agent", "derive_key", "address_of", "derive_agents"]


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent wallet: its index in the population, 32-byte secret, checksummed address."""

    index: int
    key: bytes
    address: str

    @property
    def key_hex(self) -> str:
        return "0x" + self.key.hex()

    def signer(self) -> AuthorizationSigner:
        """A signer for this wallet (address already known, so no public-key work)."""
        return AuthorizationSigner(self.key, self.address)


def derive_key(seed: int, index: int) -> bytes:
    """The agent's secret: keccak of seed and index, re-hashed until it is a valid scalar."""
    material = keccak256(f"x402bench-agent:{int(seed)}:{int(index)}".encode("ascii"))
    while not 0 < int.from_bytes(material, "big") < SECP256K1_N:
        material = keccak256(material)
    return material


def _public_key_function():  # noqa: ANN202
    """X || Y of a secret: libsecp256k1 directly when coincurve exposes it (saves ~25% per agent)."""
    try:
        from coincurve._libsecp256k1 import ffi, lib
        from coincurve.context import GLOBAL_CONTEXT

        ctx, uncompressed = GLOBAL_CONTEXT.ctx, lib.SECP256K1_EC_UNCOMPRESSED
    except (ImportError, AttributeError):  # pragma: no cover - other coincurve layouts
        return lambda key: PublicKey.from_secret(key).format(compressed=False)[1:]

    def public_xy(key: bytes) -> bytes:
        # fresh buffers per call: safe under threads; the key was range-checked by derive_key
        point, out, size = ffi.new("secp256k1_pubkey *"), ffi.new("unsigned char[65]"), ffi.new("size_t *", 65)
        if not lib.secp256k1_ec_pubkey_create(ctx, point, key):
            raise ValueError("invalid secp256k1 secret")
        lib.secp256k1_ec_pubkey_serialize(ctx, out, size, point, uncompressed)
        return ffi.buffer(out, 65)[1:]

    return public_xy


_public_xy = _public_key_function()


def address_of(key: bytes) -> str:
    """Checksummed address of a 32-byte secret."""
    if len(key) != 32 or not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise ValueError("not a valid secp256k1 secret")
    return checksum_encode(keccak256(_public_xy(key))[12:])


def derive_agents(seed: int, count: int, start: int = 0) -> list[Agent]:
    """Agents start .. start+count-1 of the population for `seed` (same seed, same wallets)."""
    if count < 0 or start < 0:
        raise ValueError("count and start must be >= 0")
    agents = []
    for index in range(start, start + count):
        key = derive_key(seed, index)
        agents.append(Agent(index, key, address_of(key)))
    return agents

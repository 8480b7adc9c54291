"""EIP-3009 TransferWithAuthorization signing (EIP-712) with coincurve: the agent's hot path.

Why hand-rolled: every field of the struct is a static 32-byte word, so the EIP-712 digest is
two keccaks over concatenated words once the domain separator (one per token, cached) and the
type hash are known. eth_account rebuilds and re-validates the whole typed-data tree per call.
The ECDSA part is libsecp256k1 through coincurve (RFC 6979 nonces, low-s), exactly what eth_keys'
coincurve backend and therefore eth_account do, so signatures are byte-identical; tests sign the
same authorization both ways and through the official SDK client.

Signatures are 65 bytes r || s || v with v = 27 or 28, the form eth_account returns and the SDK
client hex-encodes (`"0x" + signed.signature.hex()`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from coincurve import PrivateKey

from services.payer.hashing import checksum_encode, keccak256

__all__ = [
    "SECP256K1_N", "EIP712_DOMAIN_TYPEHASH", "TRANSFER_WITH_AUTHORIZATION_TYPEHASH", "AuthorizationSigner",
    "address_word", "uint_word", "nonce_word", "domain_separator", "authorization_digest", "address_of_key",
    "private_key_bytes", "typed_data",
]

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

EIP712_DOMAIN_TYPEHASH = keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
    b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
_ZERO12 = bytes(12)
_EIP191_PREFIX = b"\x19\x01"


def address_word(address: str) -> bytes:
    """ABI word of an address given as 0x-hex (any case; the checksum is not enforced)."""
    text = address[2:] if address[:2] in ("0x", "0X") else address
    if len(text) != 40:
        raise ValueError(f"not a 20-byte hex address: {address!r}")
    return _ZERO12 + bytes.fromhex(text)


def uint_word(value: int | str) -> bytes:
    """ABI word of a uint256 (int, or decimal string as on the x402 wire)."""
    number = int(value)
    if not 0 <= number < 1 << 256:
        raise ValueError(f"not a uint256: {value!r}")
    return number.to_bytes(32, "big")


def nonce_word(nonce: str | bytes) -> bytes:
    """The bytes32 nonce as given (0x-hex of exactly 32 bytes, or 32 raw bytes)."""
    raw = nonce if isinstance(nonce, bytes) else bytes.fromhex(nonce[2:] if nonce[:2] in ("0x", "0X") else nonce)
    if len(raw) != 32:
        raise ValueError(f"EIP-3009 nonce must be 32 bytes, got {len(raw)}")
    return raw


@lru_cache(maxsize=1024)
def domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    """EIP-712 domain separator of a token; cached because agents pay the same few tokens forever."""
    return keccak256(
        EIP712_DOMAIN_TYPEHASH + keccak256(name.encode("utf-8")) + keccak256(version.encode("utf-8"))
        + uint_word(chain_id) + address_word(verifying_contract)
    )


def authorization_digest(
    separator: bytes, payer: str, payee: str, value: int | str, valid_after: int | str, valid_before: int | str,
    nonce: str | bytes,
) -> bytes:
    """The 32-byte EIP-712 digest of a TransferWithAuthorization under a domain separator."""
    struct = keccak256(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH + address_word(payer) + address_word(payee) + uint_word(value)
        + uint_word(valid_after) + uint_word(valid_before) + nonce_word(nonce)
    )
    return keccak256(_EIP191_PREFIX + separator + struct)


def typed_data(domain: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """The authorization as EIP-712 typed data: what eth_account's independent signer takes, so tests
    and benchmarks can cross-check this module against it."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}],
        },
        "primaryType": "TransferWithAuthorization", "domain": domain, "message": message,
    }


def private_key_bytes(private_key: str | bytes) -> bytes:
    """32-byte secret from 0x-hex or bytes; ValueError unless it is a valid secp256k1 scalar."""
    raw = private_key if isinstance(private_key, bytes) else bytes.fromhex(private_key.removeprefix("0x"))
    if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise ValueError("private key must be 32 bytes and a valid secp256k1 scalar")
    return raw


def address_of_key(key: PrivateKey) -> str:
    """Checksummed Ethereum address of a coincurve key: last 20 bytes of keccak(X || Y)."""
    return checksum_encode(keccak256(key.public_key.format(compressed=False)[1:])[12:])


class AuthorizationSigner:
    """One wallet's signing key; signs EIP-3009 authorizations and raw digests."""

    __slots__ = ("key", "address", "_key", "_from_word")

    def __init__(self, private_key: str | bytes, address: str | None = None) -> None:
        self.key = private_key_bytes(private_key)
        self._key = PrivateKey(self.key)
        # a caller that already knows the address (derive_agents) saves a public-key computation
        self.address = address or address_of_key(self._key)
        self._from_word = address_word(self.address)

    @property
    def key_hex(self) -> str:
        return "0x" + self.key.hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r || s || v (v = 27/28) over a 32-byte digest, as eth_account's unsafe_sign_hash."""
        sig = self._key.sign_recoverable(digest, hasher=None)  # r || s || recovery id (0/1)
        return sig[:64] + bytes((sig[64] + 27,))

    def sign_struct(self, separator: bytes, struct_body: bytes) -> bytes:
        """Sign a TransferWithAuthorization given its encoded words (everything after the type hash)."""
        struct = keccak256(TRANSFER_WITH_AUTHORIZATION_TYPEHASH + struct_body)
        return self.sign_digest(keccak256(_EIP191_PREFIX + separator + struct))

    def sign(
        self, name: str, version: str, chain_id: int, token: str, payee: str, value: int | str,
        valid_after: int | str, valid_before: int | str, nonce: str | bytes, *, payer: str | None = None,
    ) -> str:
        """0x-hex signature of an authorization from this wallet (or a claimed `payer`, for hostile tests)."""
        words = (
            (self._from_word if payer is None else address_word(payer)) + address_word(payee) + uint_word(value)
            + uint_word(valid_after) + uint_word(valid_before) + nonce_word(nonce)
        )
        return "0x" + self.sign_struct(domain_separator(name, version, int(chain_id), token), words).hex()

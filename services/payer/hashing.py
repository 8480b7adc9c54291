"""Keccak-256 and EIP-55 addresses, as fast as the installed packages allow.

Why not `eth_utils.keccak`: it reaches pycryptodome's C keccak through two Python layers and a
fresh hash object per call (about 9 us for a 200-byte input here). Calling the same C library
(`Crypto/Hash/_keccak*.so`, the only keccak in the venv) directly through ctypes with pooled,
reused states costs about 1.6 us. Signing an authorization needs two keccaks and deriving an
address two more, so this is most of the Python-side cost. If the library cannot be loaded the
module falls back to eth_hash (same bytes, slower); `KECCAK_BACKEND` says which one is in use.
"""

from __future__ import annotations

import ctypes
import importlib.util
from typing import Callable

__all__ = ["KECCAK_BACKEND", "keccak256", "to_checksum_address", "checksum_encode"]

_MAX_LEN = 2**31 - 1  # lengths go to C as a plain int (libffi sign-extends it into size_t)


def _load_raw_keccak() -> Callable[[bytes], bytes] | None:
    """keccak256 over pycryptodome's raw C functions, or None when they are not loadable."""
    try:
        spec = importlib.util.find_spec("Crypto.Hash._keccak")
        if spec is None or not spec.origin:
            return None
        lib = ctypes.CDLL(spec.origin)  # our own handle: pycryptodome's function objects stay untouched
        init, reset, absorb, digest = lib.keccak_init, lib.keccak_reset, lib.keccak_absorb, lib.keccak_digest
    except (OSError, AttributeError, ImportError, ValueError):
        return None
    # A pool of (state, output buffer) pairs: each call owns one pair for its duration. ctypes
    # releases the GIL during C calls, so a shared state would be corrupted by two threads; the
    # pool is also safe under gevent and never grows beyond the peak number of concurrent calls.
    # list.pop()/append() are atomic under the GIL.
    pool: list[tuple[ctypes.c_void_p, ctypes.Array[ctypes.c_char]]] = []

    def fresh() -> tuple[ctypes.c_void_p, ctypes.Array[ctypes.c_char]]:
        pointer = ctypes.c_void_p()
        # capacity 64 bytes (keccak-256), 24 rounds: what Crypto.Hash.keccak.new(digest_bits=256) uses
        if init(ctypes.byref(pointer), ctypes.c_size_t(64), ctypes.c_ubyte(24)):
            raise MemoryError("keccak_init failed")
        return pointer, ctypes.create_string_buffer(32)

    def keccak256(data: bytes) -> bytes:
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size > _MAX_LEN:
            return _slow_keccak(data)
        try:
            pair = pool.pop()
        except IndexError:
            pair = fresh()
        pointer, out = pair
        reset(pointer)
        absorb(pointer, data, size)
        digest(pointer, out, 32, 1)  # padding 0x01: original Keccak, not SHA3's 0x06
        result = out.raw
        pool.append(pair)
        return result

    return keccak256


def _slow_keccak(data: bytes) -> bytes:
    from eth_hash.auto import keccak

    return keccak(data)


_raw = _load_raw_keccak()
if _raw is not None and _raw(b"") == bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"):
    keccak256: Callable[[bytes], bytes] = _raw
    KECCAK_BACKEND = "pycryptodome C keccak via ctypes"
else:  # pragma: no cover - only without a loadable pycryptodome
    keccak256 = _slow_keccak
    KECCAK_BACKEND = "eth_hash"

# EIP-55 in bulk: a byte is upper-cased (xor 0x20) iff it is a letter a-f and the matching
# nibble of keccak(lowercase hex) is >= 8. Two translate() masks and big-int ands do the whole
# address in C instead of a 40-step Python loop.
_HIGH_NIBBLE = bytes(0x20 if chr(b) in "89abcdef" else 0 for b in range(256))
_LETTER = bytes(0x20 if chr(b) in "abcdef" else 0 for b in range(256))


def checksum_encode(raw20: bytes) -> str:
    """EIP-55 mixed-case 0x address of 20 raw bytes (same output as eth_utils.to_checksum_address)."""
    low = raw20.hex().encode("ascii")
    hashed = keccak256(low).hex().encode("ascii")[:40]
    flip = int.from_bytes(hashed.translate(_HIGH_NIBBLE), "big") & int.from_bytes(low.translate(_LETTER), "big")
    return "0x" + (int.from_bytes(low, "big") ^ flip).to_bytes(40, "big").decode("ascii")


def to_checksum_address(address: str | bytes) -> str:
    """EIP-55 form of a 20-byte address given as raw bytes or (any-case) hex; ValueError otherwise."""
    if isinstance(address, (bytes, bytearray)):
        raw = bytes(address)
    else:
        text = address[2:] if address[:2] in ("0x", "0X") else address
        if len(text) != 40:
            raise ValueError(f"not a 20-byte hex address: {address!r}")
        raw = bytes.fromhex(text)
    if len(raw) != 20:
        raise ValueError(f"not a 20-byte address: {len(raw)} bytes")
    return checksum_encode(raw)

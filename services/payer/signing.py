"""EIP-3009 authorization signing with coincurve: the agent's hot path.

About ten times faster than eth_account's pure typed-data path, and byte-identical to it
(a test signs the same authorization both ways).
"""

from __future__ import annotations

from coincurve import PrivateKey

from services.eip3009 import authorization_digest


class AuthorizationSigner:
    def __init__(self, private_key: str | bytes) -> None:
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
        self._key = PrivateKey(raw)
        from services.payer.agents import address_of

        self.address = address_of(raw)

    def sign(self, name: str, version: str, chain_id: int, token: str, payee: str, value: int,
             valid_after: int, valid_before: int, nonce: str) -> str:
        """The 65-byte r||s||v signature (v = 27/28, as eth_account and the SDK encode it), 0x-hex."""
        digest = authorization_digest(name, version, chain_id, token, self.address, payee, value,
                                      valid_after, valid_before, nonce)
        sig = self._key.sign_recoverable(digest, hasher=None)
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")

"""The fast channel payer: the x402 `batch-settlement` scheme over the same transport seam as PayerCore.

A batch-settlement route is paid from an escrow channel. The channel's identity is its config
(payer, payer authorizer, receiver, receiver authorizer, token, withdrawDelay, salt) and its id is
the EIP-712 hash of that config under the escrow's domain, so the payer computes it locally,
without asking anyone. The first paid request carries a deposit (an ERC-3009
ReceiveWithAuthorization of the payer's tokens to the deposit collector, its nonce bound to the
channel id) together with the first voucher; every later request carries only a voucher: an
EIP-712 signature over (channelId, maxClaimableAmount), the cumulative amount the receiver may
claim. When the next voucher would exceed what is deposited, that request tops up with a new
deposit. No transaction is needed per request, and no chain read by the payer.

Why hand-rolled rather than the SDK client: every struct here is static 32-byte words, so a
voucher is two keccaks and one libsecp256k1 signature over precomputed domain separators, and
the header is a string built around a JSON prefix formatted once per channel. The SDK client
rebuilds and re-validates typed data through eth_account per voucher.

Resynchronisation, as the scheme specifies: a voucher whose cumulative amount does not match the
server's books is refused with a corrective 402 whose offer carries `extra.channelState` (the
server's chargedCumulativeAmount, balance, totalClaimed) and `extra.voucherState` (the last
voucher it holds and its signature). The payer adopts the server's charged amount only if it can
check it: the held voucher's signature recovers to this payer and covers that amount, or the
amount is at most the highest cumulative this payer itself signed for the channel. Then it signs
again and resends once. A voucher refused because it exceeds the deposited balance is resent once
with a top-up deposit.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from coincurve import PublicKey

from services.payer.client import (
    ERR_TRANSPORT, PAYMENT_SIGNATURE, PaymentResult, Send, challenge, header_value, parse_server_timing, refusal,
)
from services.payer.hashing import checksum_encode, keccak256, to_checksum_address
from services.payer.payload import (
    NoMatchingRequirements, Payment, Quote, WireError, decode_payment_required, decode_payment_response, encode_json,
)
from services.payer.signing import AuthorizationSigner, address_word, domain_separator, uint_word
from x402bench.registry import register

__all__ = [
    "SCHEME", "ESCROW", "DEPOSIT_COLLECTOR", "ZERO_SALT", "CHANNEL_CONFIG_TYPEHASH", "VOUCHER_TYPEHASH",
    "RECEIVE_WITH_AUTHORIZATION_TYPEHASH", "ERR_MISMATCH", "ERR_BELOW_CLAIMED", "ERR_EXCEEDS_BALANCE",
    "ERR_SPEND_CAP", "ChannelQuote", "ChannelBook", "ChannelPayer", "channel_id_of", "voucher_digest",
    "deposit_nonce", "recover_signer",
]

SCHEME = "batch-settlement"
#: Where the scheme's contracts live: fixed by the spec (CREATE2 addresses), the same on every chain.
ESCROW = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
DEPOSIT_COLLECTOR = "0x4020806089470a89826cB9fB1f4059150b550004"
DOMAIN_NAME, DOMAIN_VERSION = "x402 Batch Settlement", "1"
ZERO_SALT = "0x" + "00" * 32

CHANNEL_CONFIG_TYPEHASH = keccak256(
    b"ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,"
    b"address token,uint40 withdrawDelay,bytes32 salt)")
VOUCHER_TYPEHASH = keccak256(b"Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
    b"ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,"
    b"bytes32 nonce)")
_PREFIX = b"\x19\x01"

#: The scheme's reason codes the payer acts on.
ERR_MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
ERR_BELOW_CLAIMED = "invalid_batch_settlement_evm_cumulative_below_claimed"
ERR_EXCEEDS_BALANCE = "invalid_batch_settlement_evm_cumulative_exceeds_balance"
#: Client-side: paying would need a deposit larger than the caller allows (nothing was sent).
ERR_SPEND_CAP = "spend_cap_reached"
_DEFAULT_DEPOSIT_MULTIPLE = 10  # price multiples deposited when the 402 announces no minDeposit


def _escrow_separator(chain_id: int) -> bytes:
    return domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, ESCROW)


def _bytes32(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


def channel_id_of(config: Mapping[str, Any], chain_id: int) -> str:
    """The channel id (0x-hex, lower case) of a camelCase ChannelConfig on a chain: what the escrow's
    getChannelId returns, so the payer never needs to ask."""
    struct = keccak256(
        CHANNEL_CONFIG_TYPEHASH + address_word(config["payer"]) + address_word(config["payerAuthorizer"])
        + address_word(config["receiver"]) + address_word(config["receiverAuthorizer"])
        + address_word(config["token"]) + uint_word(int(config["withdrawDelay"])) + _bytes32(config["salt"]))
    return "0x" + keccak256(_PREFIX + _escrow_separator(chain_id) + struct).hex()


def voucher_digest(separator: bytes, channel_id: bytes, cumulative: int) -> bytes:
    """EIP-712 digest of a Voucher under the escrow's domain separator."""
    return keccak256(_PREFIX + separator + keccak256(VOUCHER_TYPEHASH + channel_id + uint_word(cumulative)))


def deposit_nonce(channel_id: bytes, salt: bytes) -> bytes:
    """The ERC-3009 nonce of a deposit: keccak(abi.encode(bytes32 channelId, uint256 salt)), which binds the
    authorization to one channel (the collector recomputes it)."""
    return keccak256(channel_id + salt)


def recover_signer(digest: bytes, signature: str) -> str | None:
    """Checksummed address that signed a 32-byte digest (65-byte r||s||v, v 27/28 or 0/1), or None."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        if len(raw) != 65:
            return None
        v = raw[64] - 27 if raw[64] >= 27 else raw[64]
        if v not in (0, 1):
            return None
        key = PublicKey.from_signature_and_message(raw[:64] + bytes((v,)), digest, hasher=None)
    except Exception:  # bad hex, or coincurve's own errors on a signature that is no point
        return None
    return checksum_encode(keccak256(key.format(compressed=False)[1:])[12:])


@dataclass(slots=True)
class ChannelBook:
    """What the payer knows of one of its channels (atomic units)."""

    charged: int = 0      # cumulative the server has charged (its books, as its answers said)
    balance: int = 0      # deposited into the channel, as far as this payer knows
    signed_max: int = 0   # the highest cumulative this payer ever signed for it
    deposits: int = 0     # deposits sent and accepted

    @property
    def headroom(self) -> int:
        """What the deposit still covers beyond what is charged."""
        return self.balance - self.charged


@dataclass(slots=True)
class ChannelQuote:
    """A batch-settlement offer of a 402 turned into this payer's channel, ready to pay many times."""

    quote: Quote  # the offer as echoed in `accepted` (+ resource, extensions) and the token's domain separator
    config: dict[str, Any]
    channel_id: str
    channel_word: bytes
    separator: bytes  # the escrow's EIP-712 domain separator on this chain
    price: int
    min_deposit: int | None
    voucher_head: str  # JSON of a voucher payload up to maxClaimableAmount's value
    deposit_head: str  # JSON of a deposit payload up to maxClaimableAmount's value
    book: ChannelBook = field(default_factory=ChannelBook)

    @classmethod
    def build(cls, quote: Quote, payer: str, salt: str = ZERO_SALT) -> "ChannelQuote":
        extra = quote.requirement.get("extra") or {}
        authorizer = extra.get("receiverAuthorizer")
        try:
            zero = int(authorizer, 16) == 0 if isinstance(authorizer, str) else True
        except ValueError:
            zero = True
        if zero:
            raise WireError("batch-settlement offer lacks a non-zero extra.receiverAuthorizer")
        delay = extra.get("withdrawDelay")
        if not isinstance(delay, int) or isinstance(delay, bool):
            raise WireError(f"batch-settlement offer has extra.withdrawDelay {delay!r}, not an integer")
        method = extra.get("assetTransferMethod") or "eip3009"
        if method != "eip3009":
            raise NoMatchingRequirements(f"batch-settlement deposits by {method!r}: this payer deposits by eip3009 only")
        min_deposit = extra.get("minDeposit")
        try:
            min_deposit = int(min_deposit) if min_deposit is not None else None
        except (TypeError, ValueError):
            min_deposit = None
        req = quote.requirement
        config = {
            "payer": to_checksum_address(payer), "payerAuthorizer": to_checksum_address(payer),
            "receiver": to_checksum_address(req["payTo"]), "receiverAuthorizer": to_checksum_address(authorizer),
            "token": to_checksum_address(req["asset"]), "withdrawDelay": delay, "salt": salt,
        }
        channel_id = channel_id_of(config, quote.chain_id)
        common = '"channelConfig":' + encode_json(config) + ',"voucher":{"channelId":"' + channel_id + \
            '","maxClaimableAmount":"'
        return cls(quote, config, channel_id, _bytes32(channel_id), _escrow_separator(quote.chain_id), quote.amount,
                   min_deposit, '{"x402Version":2,"payload":{"type":"voucher",' + common,
                   '{"x402Version":2,"payload":{"type":"deposit",' + common)


class ChannelPayer:
    """One wallet's batch-settlement client, transport-agnostic like PayerCore: `pay(send, method, url)`.

    `deposit` fixes the amount of each deposit (default: the offer's minDeposit, else ten prices);
    `pay(..., deposit_limit=N)` caps what this call may deposit, so a caller with a budget never
    locks more than it may spend.
    """

    def __init__(self, private_key: str | bytes | AuthorizationSigner, network: str, cache: bool = True,
                 asset: str | None = None, deposit: int | None = None, salt: str = ZERO_SALT) -> None:
        self.signer = private_key if isinstance(private_key, AuthorizationSigner) else AuthorizationSigner(private_key)
        self.network = network
        self.cache = cache
        self.asset = asset
        self.deposit = deposit
        self.salt = salt
        self._quotes: dict[tuple[str, str], ChannelQuote] = {}
        self._books: dict[str, ChannelBook] = {}  # channel id -> book, shared by every URL paying that channel

    @property
    def address(self) -> str:
        return self.signer.address

    def book(self, channel_id: str) -> ChannelBook | None:
        return self._books.get(channel_id.lower())

    def channel_of(self, method: str, url: str) -> ChannelQuote | None:
        """The channel a (method, URL) is paid from, once its terms are known."""
        return self._quotes.get((method.upper(), url))

    def headroom(self, method: str, url: str) -> int | None:
        """Deposited but not yet charged on the channel paying this URL; None before its first 402."""
        channel = self.channel_of(method, url)
        return None if channel is None else channel.book.headroom

    def channel_quote(self, payment_required: dict[str, Any]) -> ChannelQuote:
        """This payer's channel for a decoded PaymentRequired (NoMatchingRequirements if it offers none)."""
        quote = Quote.from_payment_required(payment_required, self.network, SCHEME, self.asset)
        channel = ChannelQuote.build(quote, self.signer.address, self.salt)
        channel.book = self._books.setdefault(channel.channel_id, ChannelBook())
        return channel

    # --- signing ------------------------------------------------------------------------------

    def sign_voucher(self, channel: ChannelQuote, cumulative: int) -> str:
        """0x-hex signature of a voucher for `cumulative` on the channel."""
        return "0x" + self.signer.sign_digest(voucher_digest(channel.separator, channel.channel_word, cumulative)).hex()

    def voucher_header(self, channel: ChannelQuote, cumulative: int) -> str:
        """PAYMENT-SIGNATURE of a voucher-only payment."""
        text = (channel.voucher_head + str(cumulative) + '","signature":"' + self.sign_voucher(channel, cumulative)
                + '"}}' + channel.quote.tail)
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    def deposit_header(self, channel: ChannelQuote, cumulative: int, amount: int,
                       now_s: int | None = None, salt: bytes | None = None) -> str:
        """PAYMENT-SIGNATURE of a deposit of `amount` with the voucher for `cumulative`."""
        salt = salt if salt is not None else os.urandom(32)
        valid_before = (int(time.time()) if now_s is None else now_s) + channel.quote.timeout_s
        struct = keccak256(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH + address_word(self.signer.address) + address_word(DEPOSIT_COLLECTOR)
            + uint_word(amount) + bytes(32) + uint_word(valid_before) + deposit_nonce(channel.channel_word, salt))
        authorization = self.signer.sign_digest(keccak256(_PREFIX + channel.quote.separator + struct))
        text = (channel.deposit_head + str(cumulative) + '","signature":"' + self.sign_voucher(channel, cumulative)
                + '"},"deposit":{"amount":"' + str(amount) + '","authorization":{"erc3009Authorization":{'
                + '"validAfter":"0","validBefore":"' + str(valid_before) + '","salt":"0x' + salt.hex()
                + '","signature":"0x' + authorization.hex() + '"}}}}' + channel.quote.tail)
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    def deposit_amount(self, channel: ChannelQuote, needed: int, limit: int | None) -> int | None:
        """What to deposit when `needed` more is required: the configured or announced amount (at least
        `needed`), cut to `limit`; None when even `needed` is over the limit."""
        target = self.deposit or channel.min_deposit or _DEFAULT_DEPOSIT_MULTIPLE * channel.price
        amount = max(needed, target)
        if limit is not None:
            if limit < needed:
                return None
            amount = min(amount, limit)
        return amount

    # --- the request --------------------------------------------------------------------------

    def pay(self, send: Send, method: str, url: str, headers: Mapping[str, str] | None = None,
            deposit_limit: int | None = None) -> PaymentResult:
        """One paid request: a 402 first unless the channel is known, then a voucher (with a deposit when the
        channel needs funds); at most one resend after a corrective 402 or a balance refusal.
        `result.amount` is the price charged, `result.deposit` what this request deposited."""
        start = time.perf_counter()
        result = PaymentResult(status=0, payer=self.signer.address, scheme=SCHEME)
        base = dict(headers or {})
        key = (method.upper(), url)
        channel = self._quotes.get(key) if self.cache else None
        result.cached = channel is not None
        if channel is None:
            channel = self._challenge(send, method, url, base, result)
            if channel is not None and self.cache:
                self._quotes[key] = channel
        if channel is not None:
            result.channel = channel.channel_id
            status, reply, body = self._send_paid(send, method, url, base, channel, result, deposit_limit)
            if status == 402 and self._recover(channel, reply, result):
                result.corrected = True
                status, reply, body = self._send_paid(send, method, url, base, channel, result, deposit_limit)
            if status >= 0:
                self._finish(channel, result, status, reply, body)
        result.total_s = time.perf_counter() - start
        return result

    def _challenge(self, send: Send, method: str, url: str, base: dict[str, str],
                   result: PaymentResult) -> ChannelQuote | None:
        return challenge(send, method, url, base, result, self.channel_quote)

    def _send_paid(self, send: Send, method: str, url: str, base: dict[str, str], channel: ChannelQuote,
                   result: PaymentResult, deposit_limit: int | None) -> tuple[int, Mapping[str, str], bytes]:
        """Sign the next voucher (and a deposit if the channel's balance does not cover it) and send it;
        status -1 when the deposit it needs is over `deposit_limit` (nothing sent)."""
        book = channel.book
        t0 = time.perf_counter()
        cumulative = book.charged + channel.price
        deposit = 0
        if cumulative > book.balance:
            amount = self.deposit_amount(channel, cumulative - book.balance, deposit_limit)
            if amount is None:
                result.status, result.error = 0, ERR_SPEND_CAP
                result.detail = f"a deposit of {cumulative - book.balance} is over the limit {deposit_limit}"
                return -1, {}, b""
            header = self.deposit_header(channel, cumulative, amount)
            deposit = amount
        else:
            header = self.voucher_header(channel, cumulative)
        book.signed_max = max(book.signed_max, cumulative)
        t1 = time.perf_counter()
        status, reply, body = send(method, url, {**base, PAYMENT_SIGNATURE: header})
        result.sign_s += t1 - t0
        result.paid_s = time.perf_counter() - t1
        result.round_trips += 1
        result.cumulative, result.deposit = cumulative, deposit
        result.payment = Payment(header, "", cumulative, 0)
        return status, reply, body

    def _recover(self, channel: ChannelQuote, reply: Mapping[str, str], result: PaymentResult) -> bool:
        """Resynchronise the channel's book from a refusal, if it is one the spec lets a payer correct and
        the server's claim checks out; True when the payment is worth signing and sending again."""
        try:
            required = decode_payment_required(header_value(reply, "payment-required"))
        except WireError:
            return False
        reason = str(required.get("error") or "")
        book = channel.book
        if reason == ERR_EXCEEDS_BALANCE:  # our idea of the balance was too high: top up on the resend
            book.balance = min(book.balance, book.charged)
            return True
        if reason != ERR_MISMATCH:
            return False
        for option in required.get("accepts") or []:
            extra = option.get("extra") if isinstance(option, dict) else None
            state = extra.get("channelState") if isinstance(extra, dict) else None
            if not isinstance(state, dict) or str(state.get("channelId", "")).lower() != channel.channel_id:
                continue
            try:
                charged = int(state["chargedCumulativeAmount"])
                balance = int(state.get("balance") or 0)
            except (KeyError, TypeError, ValueError):
                return False
            if not self._provable(channel, charged, extra.get("voucherState")):
                return False
            book.charged = charged
            book.balance = max(book.balance, balance)
            return True
        return False

    def _provable(self, channel: ChannelQuote, charged: int, voucher_state: Any) -> bool:
        """May the payer adopt the server's charged amount? Only if this payer signed a voucher covering it:
        the voucher the server holds recovers to us, or the amount is within what we signed ourselves."""
        if charged < 0:
            return False
        if charged <= channel.book.signed_max:
            return True
        if not isinstance(voucher_state, dict):
            return False
        try:
            signed = int(voucher_state["signedMaxClaimable"])
            signature = str(voucher_state["signature"])
        except (KeyError, TypeError, ValueError):
            return False
        if charged > signed:
            return False
        digest = voucher_digest(channel.separator, channel.channel_word, signed)
        if recover_signer(digest, signature) != self.signer.address:
            return False
        channel.book.signed_max = max(channel.book.signed_max, signed)
        return True

    def _finish(self, channel: ChannelQuote, result: PaymentResult, status: int, reply: Mapping[str, str],
                body: bytes) -> None:
        result.status, result.body = status, body
        result.server_timing = parse_server_timing(header_value(reply, "server-timing"))
        settle_header = header_value(reply, "payment-response")
        if settle_header:
            try:
                result.response = decode_payment_response(settle_header)
            except WireError as exc:
                result.detail = str(exc)
        book = channel.book
        if status == 200:
            result.error = ""
            extra = (result.response.raw.get("extra") if result.response else None) or {}
            try:
                charged = int(extra.get("chargedAmount", channel.price))
            except (TypeError, ValueError):
                charged = channel.price
            result.amount = charged
            state = extra.get("channelState") if isinstance(extra.get("channelState"), dict) else {}
            try:
                book.charged = int(state["chargedCumulativeAmount"])
            except (KeyError, TypeError, ValueError):
                book.charged += charged
            if result.deposit:
                book.balance += result.deposit
                book.deposits += 1
            return
        result.amount, result.deposit = 0, 0  # a refused deposit locked nothing
        if status == 0:
            result.error = result.error or ERR_TRANSPORT
            return
        refusal(status, reply, body, result)


register("scheme", "payer", "batch-settlement", ChannelPayer)

"""The SDK's batch-settlement server scheme with its per-voucher local check made cheap.

What it replaces, and only that: the happy path of the SDK's `before_verify` hook for a voucher payload
(x402.mechanisms.evm.batch_settlement.server.verify.handle_before_verify and its _verify_voucher_locally):
the request whose channel config binds to the claimed channel id, whose channel the service holds with
fresh on-chain state, whose cumulative amount is exactly what the service charged plus the price, and
whose signature recovers to the config's (non-zero) payer authorizer within the deposited balance and
above what is claimed. For that request this class reaches the same conclusion as the SDK, and answers
with the same SkipVerifyResult and the same request context, at a fraction of the CPU.

Why: under load the services process is the bottleneck of a batch-settlement run, and that hook was
most of its CPU (measured with py-spy, 100 closed-loop payers: ~40% of the process). The SDK hashes the
channel config with eth_account's encode_typed_data twice per voucher (once to bind the id, once inside
validate_channel_config), rebuilds the voucher's typed data, and recovers the signer through eth_account;
each step re-validates the whole typed-data tree and checksums addresses through eth_utils. Here:
- the channel id and validate_channel_config's verdict are computed once per (channel config, network,
  requirements terms) by the SDK's own functions, then cached;
- the voucher digest is two keccaks over the escrow's domain separator, computed once per chain
  (services/facilitator/channels.py batch_separator, services/payer/channel.py voucher_digest);
- the signer is recovered with libsecp256k1 through coincurve (services/payer/channel.py recover_signer).

Everything else is the SDK's: any payload that is not a voucher (deposits, refunds), and any voucher
for which one of the checks above does not pass or does not apply (unknown channel, stale chain state,
a cumulative mismatch, a wrong signer or channel id, over the balance, a signature in a form other than
0x + 65 bytes with v 27/28, an input of an unexpected type) goes to the SDK's hook unchanged, which
then decides, with its own reason codes, corrective 402 and context. The fast path never refuses
anything, so it cannot refuse differently; it accepts only what the SDK's code accepts (same digest,
same recovery, same comparisons; tests/test_voucher_fast_path.py checks both over HTTP).

`enhance_payment_requirements` is memoised too: the SDK middleware calls it for every request with the
same route terms, and its result depends only on them and on this scheme's fixed configuration.

With several services processes (Scenario.service_processes) each has these caches of its own, and that is
right: they hold what a channel config and route terms mean (pure functions of them), never a channel's
state. The snapshot a voucher is checked against is read from the storage for every voucher (in the shared
mode from SQLite), so a voucher charged by another process is seen, and the charge itself is the SDK's
before_settle update, one transaction in the shared store. `counts` is this process's (the status route
sums every process's: services.resource.app.VoucherCounts).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from x402.mechanisms.evm.batch_settlement.facilitator.utils import validate_channel_config
from x402.mechanisms.evm.batch_settlement.server import BatchSettlementEvmScheme
from x402.mechanisms.evm.batch_settlement.server.scheme import BatchSettlementRequestContext
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id, is_canonical_channel_id
from x402.mechanisms.evm.utils import create_nonce, get_evm_chain_id
from x402.schemas import PaymentRequirements, SupportedKind, VerifyResponse
from x402.schemas.hooks import SkipVerifyResult, VerifyContext

from services.facilitator.channels import batch_separator
from services.payer.channel import recover_signer, voucher_digest
from services.payer.hashing import to_checksum_address

__all__ = ["FastBatchSettlementScheme", "CONFIG_KEYS"]

#: The ChannelConfig fields as the wire names them, in the order the cache key holds them.
CONFIG_KEYS = ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token", "withdrawDelay", "salt")
_UINT128 = 1 << 128
_MAX_CACHED = 100_000  # channels (and their terms) remembered; the oldest is forgotten beyond that
_SCALARS = (str, int, float, bool, type(None))


class _Channel:
    """What one channel config means on one network, computed once with the SDK's functions."""

    __slots__ = ("channel_id", "channel_word", "payer", "authorizer", "chain_id", "separator", "terms")

    def __init__(self, cfg: dict[str, Any], network: str) -> None:
        config = ChannelConfig.from_dict(cfg)
        self.channel_id = compute_channel_id(config, network).lower()
        self.channel_word = bytes.fromhex(self.channel_id[2:])
        self.payer = str(cfg.get("payer", ""))
        # None: a zero (or unreadable) payer authorizer, whose vouchers the SDK checks through ERC-1271 or not at all
        try:
            self.authorizer = to_checksum_address(config.payer_authorizer) if int(config.payer_authorizer, 16) else None
        except (TypeError, ValueError):
            self.authorizer = None
        self.chain_id = get_evm_chain_id(network)
        self.separator = batch_separator(self.chain_id)
        self.terms: dict[tuple[Any, ...], str | None] = {}  # requirements' terms -> validate_channel_config's verdict

    def config_error(self, cfg: dict[str, Any], requirements: PaymentRequirements) -> str | None:
        extra = requirements.extra or {}
        key = (requirements.network, requirements.pay_to, requirements.asset, extra.get("receiverAuthorizer"),
               extra.get("withdrawDelay"))
        try:
            return self.terms[key]
        except KeyError:
            pass
        verdict = validate_channel_config(ChannelConfig.from_dict(cfg), self.channel_id, requirements)
        self.terms[key] = verdict
        return verdict


class FastBatchSettlementScheme(BatchSettlementEvmScheme):
    """BatchSettlementEvmScheme whose voucher check costs two keccaks and one libsecp256k1 recovery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channels: OrderedDict[tuple[Any, ...], _Channel] = OrderedDict()
        self._enhanced: dict[tuple[Any, ...], tuple[str, str, dict[str, Any]]] = {}
        #: how many vouchers each path answered: the fast one, and the SDK's (everything it did not take)
        self.counts = {"fast": 0, "sdk": 0}

    # --- the voucher check --------------------------------------------------------------------

    def _channel(self, cfg: dict[str, Any], network: str) -> _Channel | None:
        try:
            key = (network, *(cfg[k] for k in CONFIG_KEYS))
            hash(key)
        except (KeyError, TypeError):
            return None
        if not all(isinstance(v, _SCALARS) for v in key):
            return None
        channel = self._channels.get(key)
        if channel is None:
            try:
                channel = _Channel(cfg, network)
            except Exception:  # noqa: BLE001 - whatever the SDK makes of such a config, it says it
                return None
            self._channels[key] = channel
            if len(self._channels) > _MAX_CACHED:
                self._channels.popitem(last=False)
        return channel

    def _fast_voucher(self, context: VerifyContext) -> SkipVerifyResult | None:
        """The SDK's answer for a voucher that passes every local check, or None to let the SDK decide."""
        payload = context.payment_payload
        raw = payload.payload
        if type(raw) is not dict or raw.get("type") != "voucher":
            return None
        cfg, voucher = raw.get("channelConfig"), raw.get("voucher")
        if type(cfg) is not dict or type(voucher) is not dict:
            return None
        claimed, amount, signature = voucher.get("channelId"), voucher.get("maxClaimableAmount"), voucher.get("signature")
        if type(claimed) is not str or type(signature) is not str or len(signature) != 132 or signature[:2] != "0x":
            return None
        if type(amount) is str and amount.isascii() and amount.isdigit():
            cumulative = int(amount)
        elif type(amount) is int:
            cumulative = amount
        else:
            return None
        requirements = context.requirements
        network = requirements.network
        channel = self._channel(cfg, network)
        if channel is None or channel.authorizer is None or not is_canonical_channel_id(claimed) \
                or claimed.lower() != channel.channel_id:
            return None
        snapshot = self.get_storage().get(channel.channel_id)
        if snapshot is None:
            return None
        now = int(time.time() * 1000)
        synced = snapshot.onchain_synced_at
        if synced is None or now - synced > self.get_onchain_state_ttl_ms():
            return None
        if not 0 <= cumulative < _UINT128 or cumulative != int(snapshot.charged_cumulative_amount) + int(requirements.amount):
            return None
        if cumulative > int(snapshot.balance) or cumulative <= int(snapshot.total_claimed):
            return None
        if channel.config_error(cfg, requirements) is not None:
            return None
        if signature[130:] not in ("1b", "1c", "1B", "1C"):  # v 27/28; other forms are the SDK's to judge
            return None
        if recover_signer(voucher_digest(channel.separator, channel.channel_word, cumulative), signature) != channel.authorizer:
            return None
        answer = SkipVerifyResult(result=VerifyResponse(is_valid=True, payer=channel.payer, extra={
            "channelId": claimed, "balance": snapshot.balance, "totalClaimed": snapshot.total_claimed,
            "withdrawRequestedAt": snapshot.withdraw_requested_at, "refundNonce": snapshot.refund_nonce}))
        # last, so that nothing of this request is remembered when the SDK's hook is to decide instead
        self.merge_request_context(payload, BatchSettlementRequestContext(
            channel_id=channel.channel_id, pending_id=create_nonce(), channel_snapshot=snapshot, local_verify=True))
        return answer

    def before_verify(self, context: VerifyContext) -> Any:
        try:
            fast = self._fast_voucher(context)
        except Exception:  # noqa: BLE001 - the SDK's hook decides what an unexpected input means
            fast = None
        if fast is not None:
            self.counts["fast"] += 1
            return fast
        self.counts["sdk"] += 1
        return super().before_verify(context)

    # --- requirements ---------------------------------------------------------------------------

    def enhance_payment_requirements(self, requirements: PaymentRequirements, supported_kind: SupportedKind,
                                     extension_keys: list[str]) -> PaymentRequirements:
        extra = requirements.extra or {}
        kind_extra = supported_kind.extra if isinstance(supported_kind.extra, dict) else {}
        try:
            key = (requirements.network, requirements.asset, requirements.amount,
                   tuple(sorted(extra.items())), kind_extra.get("receiverAuthorizer"))
            hash(key)
        except TypeError:
            key = None
        if key is not None and all(isinstance(v, _SCALARS) for _, v in key[3]):
            hit = self._enhanced.get(key)
            if hit is not None:
                requirements.asset, requirements.amount, requirements.extra = hit[0], hit[1], dict(hit[2])
                return requirements
            enhanced = super().enhance_payment_requirements(requirements, supported_kind, extension_keys)
            if all(isinstance(v, _SCALARS) for v in (enhanced.extra or {}).values()) and len(self._enhanced) < 1024:
                self._enhanced[key] = (enhanced.asset, enhanced.amount, dict(enhanced.extra or {}))
            return enhanced
        return super().enhance_payment_requirements(requirements, supported_kind, extension_keys)

"""x402 reason codes the facilitator answers with.

The EVM exact codes are the official SDK's own constants (so the SDK's clients and
middleware recognise them); the generic ones are the spec's facilitator error codes,
which the SDK does not define."""

from x402.mechanisms.evm.constants import (  # noqa: F401  (re-exported)
    ERR_AUTHORIZATION_VALUE_MISMATCH as VALUE_MISMATCH,
    ERR_INSUFFICIENT_BALANCE as INSUFFICIENT_BALANCE,
    ERR_INVALID_SIGNATURE as INVALID_SIGNATURE,
    ERR_MISSING_EIP712_DOMAIN as MISSING_EIP712_DOMAIN,
    ERR_NETWORK_MISMATCH as NETWORK_MISMATCH,
    ERR_NONCE_ALREADY_USED as NONCE_ALREADY_USED,
    ERR_RECIPIENT_MISMATCH as RECIPIENT_MISMATCH,
    ERR_TOKEN_NAME_MISMATCH as TOKEN_NAME_MISMATCH,
    ERR_TOKEN_VERSION_MISMATCH as TOKEN_VERSION_MISMATCH,
    ERR_TRANSACTION_FAILED as TRANSACTION_FAILED,
    ERR_SETTLEMENT_PENDING as SETTLEMENT_PENDING,
    ERR_UNSUPPORTED_SCHEME as UNSUPPORTED_SCHEME,
    ERR_VALID_AFTER_FUTURE as VALID_AFTER_FUTURE,
    ERR_VALID_BEFORE_EXPIRED as VALID_BEFORE_EXPIRED,
)

INVALID_PAYLOAD = "invalid_payload"
INVALID_PAYMENT_REQUIREMENTS = "invalid_payment_requirements"
INVALID_NETWORK = "invalid_network"
INVALID_X402_VERSION = "invalid_x402_version"
UNEXPECTED_VERIFY_ERROR = "unexpected_verify_error"
UNEXPECTED_SETTLE_ERROR = "unexpected_settle_error"

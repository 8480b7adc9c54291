// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice EIP-3009's receive entry point, bytes-signature form (EOA or EIP-1271 payers), as in
///         FiatTokenV2_2 and MockUSDC.
interface IReceiveWithAuthorization {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;

    function transfer(address to, uint256 value) external returns (bool);
}

/// @title Erc3009DepositCollector
/// @notice The `eip3009` deposit path of the x402 `batch-settlement` scheme: the payer signs an
///         EIP-3009 ReceiveWithAuthorization to this collector, whose nonce is
///         keccak256(abi.encode(channelId, salt)); the escrow's deposit() calls `collect`, which
///         redeems the authorisation (receiveWithAuthorization requires the payee, this contract,
///         as caller) and forwards the tokens to the escrow in the same transaction.
/// @dev collectorData = abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature),
///      the SDK's encoding. Only the escrow may call `collect`: otherwise anyone holding a signed
///      deposit could redeem it outside deposit(), and the tokens would reach the escrow uncredited.
///      The nonce binds the authorisation to one channel id (so to its payer, receiver, token and
///      terms): replaying it for another channel fails the token's signature check, and the token
///      refuses a nonce twice.
///      `escrow` is an immutable: it lives in the runtime code, so services/escrow.py deploys this
///      with the SDK's escrow address as argument and copies the runtime code to the SDK's
///      collector address. The collector never keeps a balance between transactions.
contract Erc3009DepositCollector {
    address public immutable escrow;

    error OnlyEscrow();
    error TransferFailed();

    constructor(address escrow_) {
        escrow = escrow_;
    }

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != escrow) revert OnlyEscrow();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IReceiveWithAuthorization(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        (bool ok, bytes memory result) =
            token.call(abi.encodeCall(IReceiveWithAuthorization.transfer, (msg.sender, amount)));
        if (!ok || (result.length != 0 && !abi.decode(result, (bool)))) revert TransferFailed();
    }
}

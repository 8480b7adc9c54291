// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Multicall3Subset
/// @notice The read-batching entry points of Multicall3 that x402 SDKs call at Multicall3's
///         canonical address (0xcA11bde05977b3631167028862bE2a173976CA11), which Anvil does not
///         pre-deploy: the Python SDK's batch-settlement facilitator reads channel state through
///         `tryAggregate`, viem-based SDKs use `aggregate3`. Same ABI and semantics, written here;
///         services/escrow.py places its runtime code at the canonical address with anvil_setCode.
/// @dev No state, no constructor, no immutables: the runtime code works at any address.
contract Multicall3Subset {
    struct Call {
        address target;
        bytes callData;
    }

    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Call each target in order; with `requireSuccess` any failure reverts the batch.
    function tryAggregate(bool requireSuccess, Call[] calldata calls) public payable returns (Result[] memory returnData) {
        uint256 n = calls.length;
        returnData = new Result[](n);
        for (uint256 i = 0; i < n; ++i) {
            (bool success, bytes memory result) = calls[i].target.call(calls[i].callData);
            if (requireSuccess && !success) revert("Multicall3: call failed");
            returnData[i] = Result(success, result);
        }
    }

    /// @notice Call each target in order; a failing call reverts the batch unless it allows failure.
    function aggregate3(Call3[] calldata calls) public payable returns (Result[] memory returnData) {
        uint256 n = calls.length;
        returnData = new Result[](n);
        for (uint256 i = 0; i < n; ++i) {
            Call3 calldata c = calls[i];
            (bool success, bytes memory result) = c.target.call(c.callData);
            if (!success && !c.allowFailure) revert("Multicall3: call failed");
            returnData[i] = Result(success, result);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }
}

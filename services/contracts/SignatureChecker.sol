// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title SignatureChecker
/// @notice Signature verification for MockUSDC, deployed as a separate library and linked:
///         real USDC (FiatTokenV2_2) calls its SignatureChecker the same way, an external library
///         function reached by DELEGATECALL, and that call (a cold account, about 2,600 gas,
///         plus ABI encoding of the signature) is part of what a real USDC transfer costs.
/// @dev EOAs are checked with ecrecover (EIP-2 low-s, v in {27, 28}); accounts with code (smart
///      wallets, EIP-7702 delegated EOAs) with EIP-1271 isValidSignature.
library SignatureChecker {
    /// Largest s accepted (half the secp256k1 order), so a signature has one valid form only.
    uint256 private constant MAX_S = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes4 private constant ERC1271_MAGIC = 0x1626ba7e; // isValidSignature(bytes32,bytes)

    function isValidSignatureNow(address signer, bytes32 digest, bytes memory signature)
        external
        view
        returns (bool)
    {
        if (signer.code.length == 0) {
            return recover(digest, signature) == signer;
        }
        (bool ok, bytes memory result) = signer.staticcall(abi.encodeWithSelector(ERC1271_MAGIC, digest, signature));
        return ok && result.length >= 32 && abi.decode(result, (bytes32)) == bytes32(ERC1271_MAGIC);
    }

    /// The address that signed `digest`; reverts (texts as FiatToken's ECRecover) on a malformed one.
    function recover(bytes32 digest, bytes memory signature) internal pure returns (address signer) {
        require(signature.length == 65, "ECRecover: invalid signature length");
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(signature, 32))
            s := mload(add(signature, 64))
            v := byte(0, mload(add(signature, 96)))
        }
        require(uint256(s) <= MAX_S, "ECRecover: invalid signature 's' value");
        require(v == 27 || v == 28, "ECRecover: invalid signature 'v' value");
        signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "ECRecover: invalid signature");
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice What the escrow needs of a token: balance reads and plain transfers out.
interface IEscrowToken {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
}

/// @notice A deposit collector moves `amount` of `token` from `payer` into the escrow (its
///         caller), authorised by whatever `collectorData` carries; the escrow checks what arrived.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}

interface IERC1271 {
    function isValidSignature(bytes32 digest, bytes calldata signature) external view returns (bytes4);
}

/// @title BatchSettlementEscrow
/// @notice The escrow of the x402 `batch-settlement` scheme on EVM (written here from the scheme's
///         specification; its ABI, EIP-712 types and digests are the ones the official SDKs use):
///         capital-backed unidirectional payment channels. A payer deposits into a channel once,
///         signs a cumulative voucher per request off chain; the receiver side claims the latest
///         voucher of many channels in one transaction (accounting only) and `settle` sweeps
///         everything claimed for a (receiver, token) pair in one transfer.
/// @dev Units. A channel holds `balance` (deposited minus withdrawn and refunded) and
///      `totalClaimed` (cumulative, never decreases, never above `balance`); the unclaimed escrow
///      is their difference. Claimed funds stay in `balance` and are owed to the receiver through
///      `receivers[receiver][token]` until `settle` pays them out.
///      Identity. channelId = EIP-712 hash of the ChannelConfig under the domain
///      {name "x402 Batch Settlement", version "1", chainId, verifyingContract = this}; the domain
///      separator is computed per call from `address(this)`, never cached, so the runtime code
///      works unchanged at any address (services/escrow.py copies it to the SDK's address).
///      No constructor, no immutables, no owner.
///      Gas choices: a channel is one storage word (balance | totalClaimed) and so is a pending
///      withdrawal; a claim batch writes each receiver's totals once per run of rows with the same
///      (receiver, token); a claim row that does not raise `totalClaimed` is skipped without its
///      signature check, so a stale or repeated row cannot sink the batch.
///      Every state-changing entry point holds a transient-storage lock (EIP-1153), so a deposit
///      collector (arbitrary code chosen by whoever deposits) cannot re-enter.
contract BatchSettlementEscrow {
    struct ChannelConfig {
        address payer;
        address payerAuthorizer; // EOA that signs vouchers, or 0: vouchers are checked against `payer` (EIP-1271)
        address receiver;
        address receiverAuthorizer; // signs claim batches and refunds (EOA or EIP-1271 contract); never 0
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature; // the payer side's signature of Voucher(channelId, maxClaimableAmount)
        uint128 totalClaimed; // the channel's new cumulative claimed total, at most maxClaimableAmount
    }

    struct Channel {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverTotals {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900; // 15 minutes
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000; // 30 days

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant VERSION_HASH = keccak256("1");
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    /// secp256k1n / 2: the one accepted `s` half, so each ECDSA signature has a single valid form.
    uint256 private constant MAX_S = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    mapping(bytes32 channelId => Channel) public channels;
    mapping(bytes32 channelId => PendingWithdrawal) public pendingWithdrawals;
    /// The nonce the next `refundWithSignature` of a channel must carry; every refund advances it.
    mapping(bytes32 channelId => uint256) public refundNonce;
    mapping(address receiver => mapping(address token => ReceiverTotals)) public receivers;

    bool private transient _locked;

    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);
    event Deposited(bytes32 indexed channelId, address indexed collector, uint128 amount, uint128 balance);
    event Claimed(bytes32 indexed channelId, uint128 amount, uint128 totalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event Refunded(bytes32 indexed channelId, uint128 amount, uint256 nonce);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint256 finalizeAfter);
    event Withdrawn(bytes32 indexed channelId, uint128 amount);

    error Reentrancy();
    error ZeroAmount();
    error InvalidChannelConfig();
    error DepositNotReceived(uint256 expected, uint256 received);
    error EmptyClaimBatch();
    error NotReceiverSide();
    error NotPayerSide();
    error AuthorizerMismatch(uint256 index);
    error InvalidAuthorizerSignature();
    error InvalidVoucherSignature(bytes32 channelId);
    error ClaimExceedsVoucher(bytes32 channelId);
    error ClaimExceedsBalance(bytes32 channelId);
    error InvalidRefundNonce(uint256 expected);
    error WithdrawExceedsUnclaimed(uint128 available);
    error WithdrawAlreadyPending();
    error NoPendingWithdraw();
    error WithdrawNotReady(uint256 finalizeAfter);
    error TransferFailed();
    error AmountOverflow();

    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    // ------------------------------------------------------------------------------------
    // Deposits
    // ------------------------------------------------------------------------------------

    /// @notice Credit `amount` to the channel of `config`, collected from its payer by `collector`.
    /// @dev Permissionless: the collector's authorisation (for the ERC-3009 collector, a
    ///      ReceiveWithAuthorization whose nonce binds the channel id) is what protects the payer.
    ///      The escrow trusts no collector: it credits only what its own token balance gained.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        _validateConfig(config);
        bytes32 channelId = _channelId(config, _separator());
        IEscrowToken token = IEscrowToken(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received < amount) revert DepositNotReceived(amount, received);

        Channel storage channel = channels[channelId];
        uint128 previous = channel.balance;
        uint128 balance = _add(previous, amount);
        channel.balance = balance;
        // totalClaimed <= balance, so an empty balance means a channel that is new (or was
        // drained before anything was claimed): it is (re)created.
        if (previous == 0) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, collector, amount, balance);
    }

    // ------------------------------------------------------------------------------------
    // Claims and settlement
    // ------------------------------------------------------------------------------------

    /// @notice Claim vouchers as the receiver side: the caller must be the receiver or the
    ///         receiver authorizer of every row's channel.
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        uint256 n = voucherClaims.length;
        for (uint256 i = 0; i < n; ++i) {
            ChannelConfig calldata config = voucherClaims[i].voucher.channel;
            if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotReceiverSide();
        }
        _applyClaims(voucherClaims, _separator(), address(0));
    }

    /// @notice Claim vouchers with the receiver authorizer's EIP-712 ClaimBatch signature over all
    ///         rows (which must share that receiver authorizer); anyone may relay it.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        if (voucherClaims.length == 0) revert EmptyClaimBatch();
        bytes32 separator = _separator();
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        if (authorizer == address(0)) revert InvalidAuthorizerSignature(); // no channel has one
        bytes32 entriesHash = _applyClaims(voucherClaims, separator, authorizer);
        // Checked after the effects (the whole transaction reverts on a bad signature); only
        // staticcalls happen in between.
        bytes32 digest = _typedDigest(separator, _hash2(CLAIM_BATCH_TYPEHASH, entriesHash));
        if (!_isValidSignatureNow(authorizer, digest, authorizerSignature)) revert InvalidAuthorizerSignature();
    }

    /// @notice Pay everything claimed and not yet settled for (`receiver`, `token`) to `receiver`,
    ///         in one transfer. Permissionless; nothing to settle is a no-op.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverTotals storage totals = receivers[receiver][token];
        uint128 claimed = totals.totalClaimed;
        uint128 amount = claimed - totals.totalSettled;
        if (amount == 0) return;
        totals.totalSettled = claimed;
        emit Settled(receiver, token, msg.sender, amount);
        _transferOut(token, receiver, amount);
    }

    /// @param authorizer every row's receiverAuthorizer must be this one (address(0): no check)
    /// @return entriesHash keccak256 of the rows' ClaimEntry struct hashes (EIP-712 array encoding),
    ///         over all rows, including those that change nothing
    function _applyClaims(VoucherClaim[] calldata voucherClaims, bytes32 separator, address authorizer)
        private
        returns (bytes32 entriesHash)
    {
        uint256 n = voucherClaims.length;
        bytes32[] memory entries = new bytes32[](n);
        // Running (receiver, token) and the amount claimed for it, written when the pair changes.
        address receiver;
        address token;
        uint256 pending;
        for (uint256 i = 0; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            ChannelConfig calldata config = row.voucher.channel;
            if (authorizer != address(0) && config.receiverAuthorizer != authorizer) revert AuthorizerMismatch(i);
            uint128 delta;
            (entries[i], delta) = _claimOne(row, separator);
            if (delta == 0) continue;
            if (config.receiver != receiver || config.token != token) {
                _creditReceiver(receiver, token, pending);
                (receiver, token, pending) = (config.receiver, config.token, 0);
            }
            pending += delta;
        }
        _creditReceiver(receiver, token, pending);
        assembly {
            entriesHash := keccak256(add(entries, 0x20), mul(n, 0x20))
        }
    }

    /// @return entry the row's ClaimEntry struct hash
    /// @return delta how much the row raised its channel's totalClaimed (0: nothing to do)
    function _claimOne(VoucherClaim calldata row, bytes32 separator) private returns (bytes32 entry, uint128 delta) {
        bytes32 channelId = _channelId(row.voucher.channel, separator);
        uint128 ceiling = row.voucher.maxClaimableAmount;
        uint128 total = row.totalClaimed;
        entry = _hash4(CLAIM_ENTRY_TYPEHASH, channelId, bytes32(uint256(ceiling)), bytes32(uint256(total)));
        Channel storage channel = channels[channelId];
        Channel memory current = channel; // one cold SLOAD for both halves of the word
        if (total <= current.totalClaimed) return (entry, 0);
        if (total > ceiling) revert ClaimExceedsVoucher(channelId);
        if (total > current.balance) revert ClaimExceedsBalance(channelId);
        bytes32 digest = _typedDigest(separator, _hash3(VOUCHER_TYPEHASH, channelId, bytes32(uint256(ceiling))));
        if (!_isVoucherSigner(row.voucher.channel, digest, row.signature)) revert InvalidVoucherSignature(channelId);
        channel.totalClaimed = total;
        unchecked {
            delta = total - current.totalClaimed;
        }
        emit Claimed(channelId, delta, total);
    }

    function _creditReceiver(address receiver, address token, uint256 amount) private {
        if (amount == 0) return;
        ReceiverTotals storage totals = receivers[receiver][token];
        // Each delta is below 2^128 and their sum is bounded by deposited tokens; checked anyway.
        uint256 claimed = totals.totalClaimed + amount;
        if (claimed > type(uint128).max) revert AmountOverflow();
        totals.totalClaimed = uint128(claimed);
    }

    // ------------------------------------------------------------------------------------
    // Cooperative refunds
    // ------------------------------------------------------------------------------------

    /// @notice Return up to `amount` of the unclaimed escrow to the payer, as the receiver side.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotReceiverSide();
        _refund(config, _channelId(config, _separator()), amount);
    }

    /// @notice Return up to `amount` of the unclaimed escrow to the payer, with the receiver
    ///         authorizer's EIP-712 Refund signature for the channel's current refund nonce.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 separator = _separator();
        bytes32 channelId = _channelId(config, separator);
        uint256 expected = refundNonce[channelId];
        if (nonce != expected) revert InvalidRefundNonce(expected);
        bytes32 digest =
            _typedDigest(separator, _hash4(REFUND_TYPEHASH, channelId, bytes32(nonce), bytes32(uint256(amount))));
        if (!_isValidSignatureNow(config.receiverAuthorizer, digest, receiverAuthorizerSignature)) {
            revert InvalidAuthorizerSignature();
        }
        _refund(config, channelId, amount);
    }

    /// @dev The nonce advances first, whatever moves: a refund with nothing left to return still
    ///      consumes its nonce (and so invalidates any signed refund for it). A pending timed
    ///      withdrawal shrinks by the refunded amount, and is cancelled once that covers it.
    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert ZeroAmount();
        uint256 nonce = refundNonce[channelId]++;
        Channel storage channel = channels[channelId];
        uint128 balance = channel.balance;
        uint128 available = balance - channel.totalClaimed;
        uint128 refunded = amount < available ? amount : available;
        if (refunded == 0) return;
        unchecked {
            balance -= refunded;
        }
        channel.balance = balance;
        PendingWithdrawal storage pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt != 0) {
            if (refunded >= pending.amount) {
                delete pendingWithdrawals[channelId];
            } else {
                unchecked {
                    pending.amount -= refunded;
                }
            }
        }
        emit Refunded(channelId, refunded, nonce);
        if (balance == 0) emit ChannelClosed(channelId, config);
        _transferOut(config.token, config.payer, refunded);
    }

    // ------------------------------------------------------------------------------------
    // Timed withdrawal (the payer's escape hatch)
    // ------------------------------------------------------------------------------------

    /// @notice Start withdrawing `amount` (at most the unclaimed escrow now); the receiver side
    ///         may still claim during the channel's withdrawDelay.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        _onlyPayerSide(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = _channelId(config, _separator());
        Channel storage channel = channels[channelId];
        uint128 available = channel.balance - channel.totalClaimed;
        if (amount > available) revert WithdrawExceedsUnclaimed(available);
        PendingWithdrawal storage pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt != 0) revert WithdrawAlreadyPending();
        pending.amount = amount;
        pending.initiatedAt = uint40(block.timestamp);
        emit WithdrawInitiated(channelId, amount, block.timestamp + config.withdrawDelay);
    }

    /// @notice After the withdrawDelay, pay the pending withdrawal to the payer, capped to the
    ///         unclaimed escrow left at this point.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        _onlyPayerSide(config);
        bytes32 channelId = _channelId(config, _separator());
        PendingWithdrawal memory pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt == 0) revert NoPendingWithdraw();
        uint256 finalizeAfter = uint256(pending.initiatedAt) + config.withdrawDelay;
        if (block.timestamp < finalizeAfter) revert WithdrawNotReady(finalizeAfter);
        delete pendingWithdrawals[channelId];
        Channel storage channel = channels[channelId];
        uint128 balance = channel.balance;
        uint128 available = balance - channel.totalClaimed;
        uint128 amount = pending.amount < available ? pending.amount : available;
        unchecked {
            balance -= amount;
        }
        channel.balance = balance;
        emit Withdrawn(channelId, amount);
        if (balance == 0) emit ChannelClosed(channelId, config);
        if (amount != 0) _transferOut(config.token, config.payer, amount);
    }

    // ------------------------------------------------------------------------------------
    // Batching
    // ------------------------------------------------------------------------------------

    /// @notice Run several calls to this contract in one transaction (e.g. claimWithSignature
    ///         then refundWithSignature), each with the caller's msg.sender; any failure reverts all.
    function multicall(bytes[] calldata data) external returns (bytes[] memory results) {
        uint256 n = data.length;
        results = new bytes[](n);
        for (uint256 i = 0; i < n; ++i) {
            (bool ok, bytes memory result) = address(this).delegatecall(data[i]);
            if (!ok) {
                assembly {
                    revert(add(result, 0x20), mload(result))
                }
            }
            results[i] = result;
        }
    }

    // ------------------------------------------------------------------------------------
    // Views: identities and digests
    // ------------------------------------------------------------------------------------

    function domainSeparator() external view returns (bytes32) {
        return _separator();
    }

    function getChannelId(ChannelConfig calldata config) external view returns (bytes32) {
        return _channelId(config, _separator());
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32) {
        return _typedDigest(_separator(), _hash3(VOUCHER_TYPEHASH, channelId, bytes32(uint256(maxClaimableAmount))));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32) {
        return _typedDigest(
            _separator(), _hash4(REFUND_TYPEHASH, channelId, bytes32(nonce), bytes32(uint256(amount)))
        );
    }

    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32) {
        bytes32 separator = _separator();
        uint256 n = voucherClaims.length;
        bytes32[] memory entries = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            entries[i] = _hash4(
                CLAIM_ENTRY_TYPEHASH,
                _channelId(row.voucher.channel, separator),
                bytes32(uint256(row.voucher.maxClaimableAmount)),
                bytes32(uint256(row.totalClaimed))
            );
        }
        bytes32 entriesHash;
        assembly {
            entriesHash := keccak256(add(entries, 0x20), mul(n, 0x20))
        }
        return _typedDigest(separator, _hash2(CLAIM_BATCH_TYPEHASH, entriesHash));
    }

    // ------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------

    function _validateConfig(ChannelConfig calldata config) private pure {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0) || config.withdrawDelay < MIN_WITHDRAW_DELAY
                || config.withdrawDelay > MAX_WITHDRAW_DELAY
        ) revert InvalidChannelConfig();
    }

    function _onlyPayerSide(ChannelConfig calldata config) private view {
        if (msg.sender != config.payer && (config.payerAuthorizer == address(0) || msg.sender != config.payerAuthorizer))
        {
            revert NotPayerSide();
        }
    }

    function _separator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// EIP-712's encodeData of a ChannelConfig is its seven calldata words as they stand (addresses
    /// and the uint40 left-padded to 32 bytes), so they are hashed in place, in scratch memory that
    /// is not kept (the free memory pointer does not move). Dirty high bits are refused, as the ABI
    /// decoder would refuse them.
    function _channelId(ChannelConfig calldata config, bytes32 separator) private pure returns (bytes32) {
        bytes32 typehash = CHANNEL_CONFIG_TYPEHASH;
        bytes32 structHash;
        assembly {
            let dirty := shr(160, calldataload(config))
            dirty := or(dirty, shr(160, calldataload(add(config, 0x20))))
            dirty := or(dirty, shr(160, calldataload(add(config, 0x40))))
            dirty := or(dirty, shr(160, calldataload(add(config, 0x60))))
            dirty := or(dirty, shr(160, calldataload(add(config, 0x80))))
            dirty := or(dirty, shr(40, calldataload(add(config, 0xa0))))
            if dirty { revert(0, 0) }
            let p := mload(0x40)
            mstore(p, typehash)
            calldatacopy(add(p, 0x20), config, 0xe0)
            structHash := keccak256(p, 0x100)
        }
        return _typedDigest(separator, structHash);
    }

    /// keccak256 of two, three or four words, in scratch memory that is not kept.
    function _hash2(bytes32 a, bytes32 b) private pure returns (bytes32 h) {
        assembly {
            let p := mload(0x40)
            mstore(p, a)
            mstore(add(p, 0x20), b)
            h := keccak256(p, 0x40)
        }
    }

    function _hash3(bytes32 a, bytes32 b, bytes32 c) private pure returns (bytes32 h) {
        assembly {
            let p := mload(0x40)
            mstore(p, a)
            mstore(add(p, 0x20), b)
            mstore(add(p, 0x40), c)
            h := keccak256(p, 0x60)
        }
    }

    function _hash4(bytes32 a, bytes32 b, bytes32 c, bytes32 d) private pure returns (bytes32 h) {
        assembly {
            let p := mload(0x40)
            mstore(p, a)
            mstore(add(p, 0x20), b)
            mstore(add(p, 0x40), c)
            mstore(add(p, 0x60), d)
            h := keccak256(p, 0x80)
        }
    }

    function _typedDigest(bytes32 separator, bytes32 structHash) private pure returns (bytes32 digest) {
        assembly {
            let p := mload(0x40)
            mstore(p, hex"1901")
            mstore(add(p, 0x02), separator)
            mstore(add(p, 0x22), structHash)
            digest := keccak256(p, 0x42)
        }
    }

    /// A voucher is the payer side's: the payerAuthorizer's ECDSA signature when one is
    /// committed (no contract path: the scheme promises servers a local check), otherwise the
    /// payer's, by ECDSA for an account without code or EIP-1271 for one with code.
    function _isVoucherSigner(ChannelConfig calldata config, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        address authorizer = config.payerAuthorizer;
        if (authorizer != address(0)) return _recover(digest, signature) == authorizer;
        return _isValidSignatureNow(config.payer, digest, signature);
    }

    function _isValidSignatureNow(address signer, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (signer.code.length == 0) {
            address recovered = _recover(digest, signature);
            return recovered != address(0) && recovered == signer;
        }
        (bool ok, bytes memory result) =
            signer.staticcall(abi.encodeCall(IERC1271.isValidSignature, (digest, signature)));
        return ok && result.length >= 32 && abi.decode(result, (bytes4)) == IERC1271.isValidSignature.selector;
    }

    /// The signer of `digest`, or address(0) for anything but a 65-byte low-s signature.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        if (uint256(s) > MAX_S || (v != 27 && v != 28)) return address(0);
        return ecrecover(digest, v, r, s);
    }

    function _add(uint128 a, uint128 b) private pure returns (uint128) {
        uint256 sum = uint256(a) + b;
        if (sum > type(uint128).max) revert AmountOverflow();
        return uint128(sum);
    }

    function _transferOut(address token, address to, uint256 amount) private {
        (bool ok, bytes memory result) = token.call(abi.encodeCall(IEscrowToken.transfer, (to, amount)));
        if (!ok || (result.length != 0 && !abi.decode(result, (bool)))) revert TransferFailed();
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SignatureChecker} from "./SignatureChecker.sol";

/// @title MockUSDC
/// @notice Token logic behind UsdcProxy, built to behave and cost like real USDC (FiatTokenV2_2)
///         so that the gas x402bench reports is worth reporting: ERC-20 with configurable
///         decimals, EIP-3009 (transfer/receive/cancel with authorization, v/r/s and bytes
///         signature forms), EIP-2612 permit, minters with allowances, pause and blacklist.
///         Revert texts are FiatToken's, because x402 facilitators map them to reason codes.
/// @dev Gas of transferWithAuthorization (v/r/s form, via the proxy, relayer EOA, payer and
///      payee already funded), by what it touches (EVM prices; real USDC touches the same):
///        21,000  intrinsic, plus ~2,900 calldata (292 bytes)
///         6,800  proxy: cold SLOAD admin + cold SLOAD implementation + cold DELEGATECALL
///         2,100  whenNotPaused: cold SLOAD of the pauser/paused slot
///         4,200  notBlacklisted(from), notBlacklisted(to): cold SLOADs of the two balance
///                words (the blacklist flag is the top bit of the balance word, as in V2_2,
///                so the transfer later reads them warm)
///        22,100  authorization state: cold SLOAD, then SSTORE false -> true
///         2,100  EIP-712 domain separator: cold SLOAD (cached per chain id and address, where
///                V2_2 reads its `name` string and hashes it: the same one cold SLOAD)
///         2,600  DELEGATECALL to the linked SignatureChecker library (cold), as in V2_2
///         2,600  EXTCODESIZE of the signer (cold): EOA -> ecrecover, contract -> EIP-1271
///         3,100  ecrecover precompile
///         5,800  two balance SSTOREs (warm, nonzero -> nonzero); a new payee pays 20,000
///                instead of 2,900 for its word, hence the ~17,100 gap between the anchors
///         3,256  events AuthorizationUsed (LOG3) and Transfer (LOG3 + 32 bytes)
///        ~6,500  the rest: dispatch, ABI encoding/decoding (twice, for the library call),
///                hashing, memory, checks. Compiled with solc's default 200 optimizer runs
///                (build.py); 10,000 runs would make a transfer ~450 gas cheaper than real USDC.
contract MockUSDC {
    // ------------------------------------------------------------------------------------
    // Storage. It lives in the proxy; append only, never reorder.
    // ------------------------------------------------------------------------------------
    address private _owner; // slot 0
    address public pauser; // slot 1, packed with `paused`: one SLOAD for whenNotPaused
    bool public paused;
    address public blacklister; // slot 2
    string public name; // slot 3
    string public symbol; // slot 4
    uint8 public decimals; // slot 5
    string public currency; // slot 6
    address public masterMinter; // slot 7, packed with `_initialized`
    bool private _initialized;
    /// Balance in the low 255 bits, blacklist flag in the top bit (FiatTokenV2_2's layout).
    mapping(address => uint256) private _balanceAndBlacklistStates; // slot 8
    mapping(address => mapping(address => uint256)) private _allowed; // slot 9
    uint256 private _totalSupply; // slot 10
    mapping(address => bool) private _minters; // slot 11
    mapping(address => uint256) private _minterAllowed; // slot 12
    string private _version; // slot 13
    /// EIP-712 domain separator by keccak256(chainId, address(this)); recomputed from
    /// name/version when the chain id or address changes (a fork, a copy with anvil_setCode).
    mapping(bytes32 => bytes32) private _domainSeparators; // slot 14
    mapping(address => mapping(bytes32 => bool)) private _authorizationStates; // slot 15
    mapping(address => uint256) private _permitNonces; // slot 16

    uint256 private constant BLACKLIST_FLAG = 1 << 255;
    uint256 private constant MAX_BALANCE = (1 << 255) - 1;

    bytes32 public constant EIP712_DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Mint(address indexed minter, address indexed to, uint256 amount);
    event Burn(address indexed burner, uint256 amount);
    event MinterConfigured(address indexed minter, uint256 minterAllowedAmount);
    event MinterRemoved(address indexed oldMinter);
    event MasterMinterChanged(address indexed newMasterMinter);
    event Pause();
    event Unpause();
    event PauserChanged(address indexed newAddress);
    event Blacklisted(address indexed account);
    event UnBlacklisted(address indexed account);
    event BlacklisterChanged(address indexed newBlacklister);
    event OwnershipTransferred(address previousOwner, address newOwner);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// The logic contract itself is never a token: lock it so nobody can initialise it.
    constructor() {
        _initialized = true;
    }

    /// @notice One-time setup through the proxy (UsdcProxy's constructor calls it).
    /// @param eip712Version the EIP-712 domain version, "2" for real USDC
    function initialize(
        string memory tokenName,
        string memory tokenSymbol,
        string memory tokenCurrency,
        uint8 tokenDecimals,
        string memory eip712Version,
        address newMasterMinter,
        address newPauser,
        address newBlacklister,
        address newOwner
    ) external {
        require(!_initialized, "FiatToken: contract is already initialized");
        require(newMasterMinter != address(0), "FiatToken: new masterMinter is the zero address");
        require(newPauser != address(0), "FiatToken: new pauser is the zero address");
        require(newBlacklister != address(0), "FiatToken: new blacklister is the zero address");
        require(newOwner != address(0), "FiatToken: new owner is the zero address");
        name = tokenName;
        symbol = tokenSymbol;
        currency = tokenCurrency;
        decimals = tokenDecimals;
        _version = eip712Version;
        masterMinter = newMasterMinter;
        pauser = newPauser;
        blacklister = newBlacklister;
        _owner = newOwner;
        _initialized = true;
        _domainSeparators[_domainKey()] = _computeDomainSeparator();
    }

    // ------------------------------------------------------------------------------------
    // Modifiers and roles
    // ------------------------------------------------------------------------------------
    modifier whenNotPaused() {
        require(!paused, "Pausable: paused");
        _;
    }

    modifier notBlacklisted(address account) {
        require(!_isBlacklisted(account), "Blacklistable: account is blacklisted");
        _;
    }

    modifier onlyOwner() {
        require(msg.sender == _owner, "Ownable: caller is not the owner");
        _;
    }

    modifier onlyMinters() {
        require(_minters[msg.sender], "FiatToken: caller is not a minter");
        _;
    }

    function owner() external view returns (address) {
        return _owner;
    }

    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "Ownable: new owner is the zero address");
        emit OwnershipTransferred(_owner, newOwner);
        _owner = newOwner;
    }

    function pause() external {
        require(msg.sender == pauser, "Pausable: caller is not the pauser");
        paused = true;
        emit Pause();
    }

    function unpause() external {
        require(msg.sender == pauser, "Pausable: caller is not the pauser");
        paused = false;
        emit Unpause();
    }

    function updatePauser(address newPauser) external onlyOwner {
        require(newPauser != address(0), "Pausable: new pauser is the zero address");
        pauser = newPauser;
        emit PauserChanged(newPauser);
    }

    function isBlacklisted(address account) external view returns (bool) {
        return _isBlacklisted(account);
    }

    function blacklist(address account) external {
        require(msg.sender == blacklister, "Blacklistable: caller is not the blacklister");
        _balanceAndBlacklistStates[account] |= BLACKLIST_FLAG;
        emit Blacklisted(account);
    }

    function unBlacklist(address account) external {
        require(msg.sender == blacklister, "Blacklistable: caller is not the blacklister");
        _balanceAndBlacklistStates[account] &= MAX_BALANCE;
        emit UnBlacklisted(account);
    }

    function updateBlacklister(address newBlacklister) external onlyOwner {
        require(newBlacklister != address(0), "Blacklistable: new blacklister is the zero address");
        blacklister = newBlacklister;
        emit BlacklisterChanged(newBlacklister);
    }

    // ------------------------------------------------------------------------------------
    // Minting
    // ------------------------------------------------------------------------------------
    function updateMasterMinter(address newMasterMinter) external onlyOwner {
        require(newMasterMinter != address(0), "FiatToken: new masterMinter is the zero address");
        masterMinter = newMasterMinter;
        emit MasterMinterChanged(newMasterMinter);
    }

    function configureMinter(address minter, uint256 minterAllowedAmount) external whenNotPaused returns (bool) {
        require(msg.sender == masterMinter, "FiatToken: caller is not the masterMinter");
        _minters[minter] = true;
        _minterAllowed[minter] = minterAllowedAmount;
        emit MinterConfigured(minter, minterAllowedAmount);
        return true;
    }

    function removeMinter(address minter) external returns (bool) {
        require(msg.sender == masterMinter, "FiatToken: caller is not the masterMinter");
        _minters[minter] = false;
        _minterAllowed[minter] = 0;
        emit MinterRemoved(minter);
        return true;
    }

    function isMinter(address account) external view returns (bool) {
        return _minters[account];
    }

    function minterAllowance(address minter) external view returns (uint256) {
        return _minterAllowed[minter];
    }

    function mint(address to, uint256 amount)
        external
        whenNotPaused
        onlyMinters
        notBlacklisted(msg.sender)
        notBlacklisted(to)
        returns (bool)
    {
        require(to != address(0), "FiatToken: mint to the zero address");
        require(amount > 0, "FiatToken: mint amount not greater than 0");
        _spendMinterAllowance(amount);
        _totalSupply += amount;
        _setBalance(to, _balanceOf(to) + amount);
        emit Mint(msg.sender, to, amount);
        emit Transfer(address(0), to, amount);
        return true;
    }

    /// @notice Mint `amount` to each of `to` in one transaction: funding thousands of agents
    ///         costs one Transfer event and one balance write per agent, not one transaction.
    function mintBatch(address[] calldata to, uint256 amount)
        external
        whenNotPaused
        onlyMinters
        notBlacklisted(msg.sender)
        returns (bool)
    {
        require(amount > 0, "FiatToken: mint amount not greater than 0");
        uint256 total = amount * to.length;
        _spendMinterAllowance(total);
        _totalSupply += total;
        for (uint256 i = 0; i < to.length; ++i) {
            address account = to[i];
            require(account != address(0), "FiatToken: mint to the zero address");
            require(!_isBlacklisted(account), "Blacklistable: account is blacklisted");
            _setBalance(account, _balanceOf(account) + amount);
            emit Transfer(address(0), account, amount);
        }
        return true;
    }

    function burn(uint256 amount) external whenNotPaused onlyMinters notBlacklisted(msg.sender) {
        uint256 balance = _balanceOf(msg.sender);
        require(amount > 0, "FiatToken: burn amount not greater than 0");
        require(balance >= amount, "FiatToken: burn amount exceeds balance");
        _totalSupply -= amount;
        _setBalance(msg.sender, balance - amount);
        emit Burn(msg.sender, amount);
        emit Transfer(msg.sender, address(0), amount);
    }

    function _spendMinterAllowance(uint256 amount) private {
        uint256 allowed = _minterAllowed[msg.sender];
        require(amount <= allowed, "FiatToken: mint amount exceeds minterAllowance");
        _minterAllowed[msg.sender] = allowed - amount;
    }

    // ------------------------------------------------------------------------------------
    // ERC-20
    // ------------------------------------------------------------------------------------
    function totalSupply() external view returns (uint256) {
        return _totalSupply;
    }

    function balanceOf(address account) external view returns (uint256) {
        return _balanceOf(account);
    }

    function allowance(address holder, address spender) external view returns (uint256) {
        return _allowed[holder][spender];
    }

    function approve(address spender, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(spender)
        returns (bool)
    {
        _approve(msg.sender, spender, value);
        return true;
    }

    function increaseAllowance(address spender, uint256 increment)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(spender)
        returns (bool)
    {
        _approve(msg.sender, spender, _allowed[msg.sender][spender] + increment);
        return true;
    }

    function decreaseAllowance(address spender, uint256 decrement)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(spender)
        returns (bool)
    {
        uint256 current = _allowed[msg.sender][spender];
        require(decrement <= current, "ERC20: decreased allowance below zero");
        _approve(msg.sender, spender, current - decrement);
        return true;
    }

    function transfer(address to, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(to)
        returns (bool)
    {
        _transfer(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value)
        external
        whenNotPaused
        notBlacklisted(msg.sender)
        notBlacklisted(from)
        notBlacklisted(to)
        returns (bool)
    {
        uint256 allowed = _allowed[from][msg.sender];
        require(value <= allowed, "ERC20: transfer amount exceeds allowance");
        _transfer(from, to, value);
        _allowed[from][msg.sender] = allowed - value;
        return true;
    }

    // ------------------------------------------------------------------------------------
    // EIP-712 / EIP-2612
    // ------------------------------------------------------------------------------------
    function version() external view returns (string memory) {
        return _version;
    }

    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparator();
    }

    function nonces(address holder) external view returns (uint256) {
        return _permitNonces[holder];
    }

    function permit(
        address holder,
        address spender,
        uint256 value,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused notBlacklisted(holder) notBlacklisted(spender) {
        _permit(holder, spender, value, deadline, abi.encodePacked(r, s, v));
    }

    function permit(address holder, address spender, uint256 value, uint256 deadline, bytes memory signature)
        external
        whenNotPaused
        notBlacklisted(holder)
        notBlacklisted(spender)
    {
        _permit(holder, spender, value, deadline, signature);
    }

    function _permit(address holder, address spender, uint256 value, uint256 deadline, bytes memory signature)
        private
    {
        require(deadline == type(uint256).max || deadline >= block.timestamp, "FiatTokenV2: permit is expired");
        bytes32 structHash =
            keccak256(abi.encode(PERMIT_TYPEHASH, holder, spender, value, _permitNonces[holder]++, deadline));
        require(_isValidSignature(holder, structHash, signature), "EIP2612: invalid signature");
        _approve(holder, spender, value);
    }

    // ------------------------------------------------------------------------------------
    // EIP-3009
    // ------------------------------------------------------------------------------------
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused notBlacklisted(from) notBlacklisted(to) {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, abi.encodePacked(r, s, v)
        );
    }

    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external whenNotPaused notBlacklisted(from) notBlacklisted(to) {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, signature
        );
    }

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused notBlacklisted(from) notBlacklisted(to) {
        require(to == msg.sender, "FiatTokenV2: caller must be the payee");
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, abi.encodePacked(r, s, v)
        );
    }

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external whenNotPaused notBlacklisted(from) notBlacklisted(to) {
        require(to == msg.sender, "FiatTokenV2: caller must be the payee");
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, signature
        );
    }

    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s)
        external
        whenNotPaused
    {
        _cancelAuthorization(authorizer, nonce, abi.encodePacked(r, s, v));
    }

    function cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) external whenNotPaused {
        _cancelAuthorization(authorizer, nonce, signature);
    }

    function _transferWithAuthorization(
        bytes32 typeHash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) private {
        require(block.timestamp > validAfter, "FiatTokenV2: authorization is not yet valid");
        require(block.timestamp < validBefore, "FiatTokenV2: authorization is expired");
        require(!_authorizationStates[from][nonce], "FiatTokenV2: authorization is used or canceled");
        bytes32 structHash = keccak256(abi.encode(typeHash, from, to, value, validAfter, validBefore, nonce));
        require(_isValidSignature(from, structHash, signature), "FiatTokenV2: invalid signature");
        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }

    function _cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) private {
        require(!_authorizationStates[authorizer][nonce], "FiatTokenV2: authorization is used or canceled");
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        require(_isValidSignature(authorizer, structHash, signature), "FiatTokenV2: invalid signature");
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    // ------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------
    function _balanceOf(address account) private view returns (uint256) {
        return _balanceAndBlacklistStates[account] & MAX_BALANCE;
    }

    function _isBlacklisted(address account) private view returns (bool) {
        return _balanceAndBlacklistStates[account] >> 255 == 1;
    }

    /// Writing a balance word also clears the flag, so refuse blacklisted accounts here too.
    function _setBalance(address account, uint256 balance) private {
        require(balance <= MAX_BALANCE, "FiatTokenV2_2: Balance exceeds (2^255 - 1)");
        require(!_isBlacklisted(account), "FiatTokenV2_2: Account is blacklisted");
        _balanceAndBlacklistStates[account] = balance;
    }

    function _transfer(address from, address to, uint256 value) private {
        require(from != address(0), "ERC20: transfer from the zero address");
        require(to != address(0), "ERC20: transfer to the zero address");
        uint256 fromBalance = _balanceOf(from);
        require(value <= fromBalance, "ERC20: transfer amount exceeds balance");
        unchecked {
            _setBalance(from, fromBalance - value);
            // Both terms are below 2^255, so the sum cannot wrap; _setBalance bounds it.
            _setBalance(to, _balanceOf(to) + value);
        }
        emit Transfer(from, to, value);
    }

    function _approve(address holder, address spender, uint256 value) private {
        require(holder != address(0), "ERC20: approve from the zero address");
        require(spender != address(0), "ERC20: approve to the zero address");
        _allowed[holder][spender] = value;
        emit Approval(holder, spender, value);
    }

    function _domainKey() private view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this)));
    }

    function _computeDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                EIP712_DOMAIN_TYPEHASH,
                keccak256(bytes(name)),
                keccak256(bytes(_version)),
                block.chainid,
                address(this)
            )
        );
    }

    function _domainSeparator() private view returns (bytes32 separator) {
        separator = _domainSeparators[_domainKey()];
        if (separator == bytes32(0)) {
            separator = _computeDomainSeparator();
        }
    }

    function _isValidSignature(address signer, bytes32 structHash, bytes memory signature)
        private
        view
        returns (bool)
    {
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
        return SignatureChecker.isValidSignatureNow(signer, digest, signature);
    }
}

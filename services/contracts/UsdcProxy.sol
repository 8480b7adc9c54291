// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title UsdcProxy
/// @notice A transparent upgradeable proxy shaped like the one real USDC sits behind
///         (FiatTokenProxy): every call from anyone but the admin is forwarded with DELEGATECALL
///         to the implementation, so the token's storage lives here and EIP-712's
///         verifyingContract is this address.
/// @dev Why the shape matters for gas: a forwarded call pays two cold SLOADs (admin slot, to
///      refuse the admin; implementation slot) and a DELEGATECALL to a cold account, about
///      6,800 gas that real USDC transfers pay too. Slots follow EIP-1967.
contract UsdcProxy {
    /// keccak256("eip1967.proxy.implementation") - 1
    bytes32 private constant IMPLEMENTATION_SLOT =
        0x360894a13ba1a3210667c828492db98dca3e2076cc3735a920a3ca505d382bbc;
    /// keccak256("eip1967.proxy.admin") - 1
    bytes32 private constant ADMIN_SLOT =
        0xb53127684a568b3173ae13b9f8a6016e243e63b6e8ee1178d6a717850b5d6103;

    event Upgraded(address indexed implementation);
    event AdminChanged(address previousAdmin, address newAdmin);

    /// @param implementation_ the token logic contract
    /// @param admin_ may upgrade, and (like real USDC's proxy admin) may not use the token
    /// @param initData calldata run against the implementation in this proxy's context, so the
    ///        token is initialised in the same transaction that creates it
    constructor(address implementation_, address admin_, bytes memory initData) payable {
        _setImplementation(implementation_);
        _setAdmin(admin_);
        if (initData.length > 0) {
            _delegateInit(implementation_, initData);
        }
    }

    modifier ifAdmin() {
        if (msg.sender == _admin()) {
            _;
        } else {
            _fallback();
        }
    }

    function admin() external ifAdmin returns (address) {
        return _admin();
    }

    function implementation() external ifAdmin returns (address) {
        return _implementation();
    }

    function changeAdmin(address newAdmin) external ifAdmin {
        require(newAdmin != address(0), "Cannot change the admin of a proxy to the zero address");
        emit AdminChanged(_admin(), newAdmin);
        _setAdmin(newAdmin);
    }

    function upgradeTo(address newImplementation) external ifAdmin {
        _setImplementation(newImplementation);
    }

    function upgradeToAndCall(address newImplementation, bytes calldata data) external payable ifAdmin {
        _setImplementation(newImplementation);
        _delegateInit(newImplementation, data);
    }

    fallback() external payable {
        _fallback();
    }

    function _fallback() private {
        require(msg.sender != _admin(), "Cannot call fallback function from the proxy admin");
        address impl = _implementation();
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), impl, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            switch ok
            case 0 { revert(0, returndatasize()) }
            default { return(0, returndatasize()) }
        }
    }

    function _delegateInit(address impl, bytes memory data) private {
        (bool ok, bytes memory ret) = impl.delegatecall(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    function _admin() private view returns (address a) {
        bytes32 slot = ADMIN_SLOT;
        assembly {
            a := sload(slot)
        }
    }

    function _implementation() private view returns (address impl) {
        bytes32 slot = IMPLEMENTATION_SLOT;
        assembly {
            impl := sload(slot)
        }
    }

    function _setAdmin(address newAdmin) private {
        bytes32 slot = ADMIN_SLOT;
        assembly {
            sstore(slot, newAdmin)
        }
    }

    function _setImplementation(address newImplementation) private {
        require(newImplementation.code.length > 0, "Cannot set a proxy implementation to a non-contract address");
        bytes32 slot = IMPLEMENTATION_SLOT;
        assembly {
            sstore(slot, newImplementation)
        }
        emit Upgraded(newImplementation);
    }
}

"""What one facilitator process needs to know, handed over as a JSON file.

The stack writes it and starts `python -m services.facilitator CONFIG`; keeping it a
plain file (not CLI flags) means an operator can rerun the very same facilitator by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.process import write_private


@dataclass(frozen=True)
class TokenInfo:
    address: str
    name: str
    version: str
    decimals: int = 6


@dataclass(frozen=True)
class FacilitatorConfig:
    rpc_url: str
    chain_id: int
    token: TokenInfo
    signer_keys: list[str]
    ledger_path: str
    strategy: str = "sync"
    receipt_poll_s: float = 0.05
    gas_price_wei: int = 1_000_000_000
    tx_gas_limit: int = 120_000
    receipt_timeout_s: float = 120.0
    batch_max_size: int = 50
    batch_max_age_s: float = 1.0
    settler: str | None = None  # the BatchSettler contract (strategy "batched")
    #: Also serve the x402 `batch-settlement` scheme (strategy "sdk"; the escrow is at the SDK's addresses).
    batch_settlement: bool = False
    #: Gas limit of the SDK's batch-settlement txs: a claim of 100 channels needs ~1.5M, the SDK signer's default is 500,000.
    batch_settlement_gas_limit: int = 15_000_000
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def dump(self, path: str | Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2))  # it holds the signer keys

    @classmethod
    def load(cls, path: str | Path) -> "FacilitatorConfig":
        data = json.loads(Path(path).read_text())
        data["token"] = TokenInfo(**data["token"])
        return cls(**data)

"""Bring up a scenario's world as real processes on loopback, and take it down again.

    with World(scenario) as world:
        world.info.service_urls["weather"]  # pay it

Order matters and is the only order that works: the chain first, then the token and the
funded wallets, then the facilitator (the SDK middleware asks it /supported as soon as
the services start), then the services. Teardown runs in reverse and always runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.chain import Anvil
from services.facilitator.config import FacilitatorConfig, TokenInfo
from services.payer.agents import Agent, derive_agents
from services.process import ServiceProcess
from services.resource.app import ResourceConfig, RouteSpec
from services.token import deploy_batch_settler, deploy_usdc, fund
from x402bench.scenario import Scenario, ScenarioError

SIGNER_ETH_WEI = 10_000 * 10**18
#: Keys an outside facilitator may settle with (funded with ETH, never used by ours: no nonce clashes).
OUTSIDE_SIGNER_KEYS = 4
#: The payee starts with a balance, as a real merchant does: settlement gas then matches
#: the "recipient already holds USDC" anchor (85,704) rather than the first-payment one.
PAYEE_STARTING_ATOMIC = 1_000_000


def role_keys(seed: int, role: str, count: int) -> list[Agent]:
    """Wallets for the world's own roles, from the seed but never colliding with agents'."""
    offset = {"signer": 1_000_003, "payee": 2_000_003, "outside-signer": 3_000_003}[role]
    return derive_agents(seed * 7_919 + offset, count)


@dataclass
class WorldInfo:
    """Everything another tool needs to point at a running world (written by `up --json`).

    This is the contract outside parts are configured from; its keys are kept stable:
    `rpc_url`, `chain_id`, `network` (eip155:N), `token` (address, name, version, decimals),
    `payees` (pay-to addresses: they sign nothing and hold no ETH), `facilitator_url` ("" when no
    facilitator runs), `facilitator_keys` (private keys funded with ETH that an outside facilitator
    may settle with; x402bench's own facilitator never uses them), `agents` (address, private_key).
    All keys are local test keys on a local chain.
    """

    scenario: str
    rpc_url: str
    chain_id: int
    network: str
    token: dict[str, Any]
    facilitator_url: str
    facilitator_strategy: str
    signers: list[str]
    pay_to: str  # payees[0], for readers of older world files
    service_urls: dict[str, str]
    prices: dict[str, int]
    agents: list[dict[str, str]] = field(default_factory=list)
    payees: list[str] = field(default_factory=list)
    facilitator_keys: list[str] = field(default_factory=list)
    ledger_path: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    workdir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class World:
    """A scenario's live world. Use as a context manager; `info` is ready inside it."""

    def __init__(self, scenario: Scenario, workdir: Path | None = None, agent_count: int | None = None) -> None:
        self.scenario = scenario
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"x402bench-{scenario.name}-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.agent_count = agent_count if agent_count is not None else scenario.agents.count
        self.anvil: Anvil | None = None
        self.processes: list[ServiceProcess] = []
        self.agents: list[Agent] = []
        self.info: WorldInfo | None = None

    def __enter__(self) -> "World":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        s = self.scenario
        from services.facilitator.engines import ENGINES

        if s.facilitator.strategy not in ENGINES:
            raise ScenarioError(
                f"{s.name}: facilitator.strategy {s.facilitator.strategy!r} is modelled by `x402bench sim` but not "
                f"available live yet; live strategies: {', '.join(sorted(ENGINES))}"
            )
        if s.facilitator.strategy == "batched" and s.facilitator.batch is not None:
            from services.facilitator.evm import batch_gas_limit

            if batch_gas_limit(s.facilitator.batch.max_size) > s.chain.gas_limit:
                raise ScenarioError(
                    f"{s.name}: facilitator.batch.max_size {s.facilitator.batch.max_size} needs up to "
                    f"{batch_gas_limit(s.facilitator.batch.max_size):,} gas per batch tx, over chain.gas_limit "
                    f"{s.chain.gas_limit:,}; lower the batch size or raise the block gas limit"
                )
        chain = s.chain
        # Deploy and fund on an automining chain (seconds, not a block wait per funding tx), then
        # switch to the scenario's mode; only sub-second intervals must be set at start-up.
        switch_later = chain.mining != "interval" or float(chain.block_time_s or 0).is_integer()
        self.anvil = Anvil(chain_id=chain.chain_id, mining="auto" if switch_later else chain.mining,
                           block_time_s=None if switch_later else chain.block_time_s,
                           gas_limit=chain.gas_limit, log_path=self.workdir / "anvil.log").start()
        rpc_url = self.anvil.url
        token_address = deploy_usdc(rpc_url, s.token.name, s.token.version, s.token.decimals, s.token.symbol)
        settler = deploy_batch_settler(rpc_url) if s.facilitator.strategy == "batched" else None
        self.agents = derive_agents(s.seed, self.agent_count)
        signers = role_keys(s.seed, "signer", s.facilitator.signer_keys)
        (payee,) = role_keys(s.seed, "payee", 1)
        outside_signers = role_keys(s.seed, "outside-signer", OUTSIDE_SIGNER_KEYS)
        self.anvil.set_balances([a.address for a in signers + outside_signers], SIGNER_ETH_WEI)
        fund(rpc_url, token_address, [a.address for a in self.agents], int(s.agents.funding_usdc * 10**s.token.decimals))
        fund(rpc_url, token_address, [payee.address], PAYEE_STARTING_ATOMIC)
        if switch_later and chain.mining != "auto":
            self.anvil.switch_mining(chain.mining, chain.block_time_s)

        token = TokenInfo(token_address, s.token.name, s.token.version, s.token.decimals)
        facilitator_config = FacilitatorConfig(
            rpc_url=rpc_url, chain_id=chain.chain_id, token=token, signer_keys=[a.key_hex for a in signers],
            ledger_path=str(self.workdir / "ledger.sqlite"), strategy=s.facilitator.strategy,
            receipt_poll_s=s.facilitator.receipt_poll_s,
            batch_max_size=s.facilitator.batch.max_size if s.facilitator.batch else 50,
            batch_max_age_s=s.facilitator.batch.max_age_s if s.facilitator.batch else 1.0,
            settler=settler,
        )
        facilitator_config.dump(self.workdir / "facilitator.json")
        facilitator = self._spawn("facilitator", "services.facilitator", self.workdir / "facilitator.json")

        resource_config = ResourceConfig(
            facilitator_url=facilitator.url, network=s.network, token_address=token_address,
            token_name=s.token.name, token_version=s.token.version, pay_to=payee.address, seed=s.seed,
            routes=[
                RouteSpec(name=v.name, path=v.path, method=v.method, price_atomic=s.price_atomic(v),
                          work_median_ms=v.work_ms.median, work_sigma=v.work_ms.sigma,
                          response_bytes=v.response_bytes, workers=v.workers, description=v.description)
                for v in s.services
            ],
        )
        resource_config.dump(self.workdir / "resource.json")
        resource = self._spawn("services", "services.resource", self.workdir / "resource.json")

        self.info = WorldInfo(
            scenario=s.name, rpc_url=rpc_url, chain_id=chain.chain_id, network=s.network,
            token={"address": token_address, "name": s.token.name, "version": s.token.version,
                   "decimals": s.token.decimals, "symbol": s.token.symbol},
            facilitator_url=facilitator.url, facilitator_strategy=s.facilitator.strategy,
            signers=[a.address for a in signers], pay_to=payee.address,
            service_urls={v.name: resource.url + v.path for v in s.services},
            prices={v.name: s.price_atomic(v) for v in s.services},
            agents=[{"address": a.address, "private_key": a.key_hex} for a in self.agents],
            payees=[payee.address], facilitator_keys=[a.key_hex for a in outside_signers],
            ledger_path=facilitator_config.ledger_path,
            pids={"anvil": self.anvil.process.pid if self.anvil.process else 0,
                  **{p.name: p.pid or 0 for p in self.processes}},
            workdir=str(self.workdir),
        )

    def _spawn(self, name: str, module: str, config_path: Path) -> ServiceProcess:
        process = ServiceProcess(name, module, config_path, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process.start()

    def stop(self) -> None:
        """Stop services, facilitator and chain, in that order; safe to call twice."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

"""Bring up a scenario's world as real processes on loopback, and take it down again.

    with World(scenario) as world:
        world.info.service_urls["weather"]  # pay it

Order matters and is the only order that works: the chain first, then the token and the
funded wallets, then the facilitator (the SDK middleware asks it /supported as soon as
the services start), then the services. Teardown runs in reverse and always runs.

A world may be built in parts (`parts`) and from parts x402bench did not start (`Outside`):
a node at a URL, a facilitator at a URL, priced services at URLs, or a whole running world
described by its world file. Outside parts are checked before use and never stopped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.chain import DEV_ADDRESS, DEV_PRIVATE_KEY, Anvil, ChainError, Rpc, free_port
from services.facilitator.config import FacilitatorConfig, TokenInfo
from services.escrow import deploy_batch_settlement
from services.faults.control import FaultProxyProcess
from services.outside import (
    OutsideError, ServiceTerms, check_facilitator, check_node, check_service, service_name, service_terms,
)
from services.payer.agents import Agent, derive_agents
from services.process import ProcessGroup, ServiceProcess, SharedPortMember
from services.resource.app import ResourceConfig, RouteSpec
from services.token import deploy_batch_settler, deploy_usdc, fund, send_transactions
from x402bench.scenario import Scenario, ScenarioError

SIGNER_ETH_WEI = 10_000 * 10**18
#: Keys an outside facilitator may settle with (funded with ETH, never used by ours: no nonce clashes).
OUTSIDE_SIGNER_KEYS = 4
#: The payee starts with a balance, as a real merchant does: settlement gas then matches
#: the "recipient already holds USDC" anchor (85,704) rather than the first-payment one.
PAYEE_STARTING_ATOMIC = 1_000_000


def role_keys(seed: int, role: str, count: int) -> list[Agent]:
    """Wallets for the world's own roles, from the seed but never colliding with agents'."""
    offset = {"signer": 1_000_003, "payee": 2_000_003, "outside-signer": 3_000_003,
              "receiver-authorizer": 4_000_003}[role]
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
    parts: dict[str, Any] = field(default_factory=dict)  # {"started": [...], "outside": {...}}: who runs what
    fault_proxies: dict[str, str] = field(default_factory=dict)  # "rpc" / "http" -> control URL, when faults need one

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


#: Fault kinds that need a proxy: "rpc" between our facilitator and the node, "http" between our services
#: and the facilitator (services.faults).
PROXIED_FAULTS = {"rpc": {"chain_stall", "rpc_latency", "rpc_errors", "tx_dropped"},
                  "http": {"facilitator_5xx_after_settle"}}

#: The parts of a world, in the order they start: each needs the one before it.
PARTS = ("chain", "facilitator", "services")


@dataclass(frozen=True)
class Outside:
    """Parts the world uses but does not start; each is checked (services.outside) before use.

    `world` is a world file's contents: its chain, token, agents and keys are used as they are
    (nothing is deployed or funded), and so are its facilitator and services unless
    `facilitator_url` or `service_urls` say otherwise.
    """

    rpc_url: str | None = None
    facilitator_url: str | None = None
    service_urls: tuple[str, ...] = ()
    world: dict[str, Any] | None = None

    @property
    def attached(self) -> bool:
        return self.world is not None

    @classmethod
    def of(cls, scenario: Scenario, *, rpc_url: str | None = None, facilitator_url: str | None = None,
           service_urls: tuple[str, ...] | list[str] = (), world: dict[str, Any] | None = None) -> "Outside":
        """Command-line targets over the scenario's own (`chain.rpc_url`, `facilitator.external_url`,
        `external_service_url`): a flag wins over the field it names."""
        if world is not None and (rpc_url or scenario.chain.rpc_url):
            raise ScenarioError("--world already names the chain (its rpc_url); drop --rpc-url / chain.rpc_url")
        return cls(rpc_url=rpc_url or scenario.chain.rpc_url,
                   facilitator_url=facilitator_url or scenario.facilitator.external_url,
                   service_urls=tuple(service_urls) or scenario.service_urls, world=world)


def read_world_file(path: Path) -> dict[str, Any]:
    """A world file written by `x402bench up --json`, checked for the keys every reader needs; a bad one is
    an OutsideError (exit 2) naming the file and what is wrong."""
    try:
        world = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OutsideError(f"world file {path} does not exist (write one with `x402bench up SCENARIO --json FILE`)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutsideError(f"world file {path} is not readable JSON: {exc}") from None
    if not isinstance(world, dict):
        raise OutsideError(f"world file {path} is not a JSON object")
    missing = [k for k in ("rpc_url", "chain_id", "network", "token", "agents") if k not in world]
    token = world.get("token")
    if isinstance(token, dict):
        missing += [f"token.{k}" for k in ("address", "name", "version") if k not in token]
    elif "token" in world:
        missing.append("token (an object)")
    if missing:
        raise OutsideError(f"world file {path} lacks {', '.join(missing)}")
    agents = world["agents"]
    if not isinstance(agents, list) or not agents or not all(
            isinstance(a, dict) and "private_key" in a and "address" in a for a in agents):
        raise OutsideError(f"world file {path} has no agents with addresses and private keys to pay with")
    return world


class World:
    """A scenario's live world. Use as a context manager; `info` is ready inside it.

    `parts` says which parts the caller needs ("chain" always; "facilitator" for traffic that
    calls a facilitator; "services" for traffic through priced services). A part the caller
    needs comes from `outside` when given there, else x402bench starts its own. The facilitator
    is also started when x402bench's own services need one.
    """

    def __init__(self, scenario: Scenario, workdir: Path | None = None, agent_count: int | None = None,
                 parts: tuple[str, ...] = PARTS, outside: Outside = Outside()) -> None:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or "chain" not in parts:
            raise ScenarioError(f"world parts {', '.join(parts)}: choose from {', '.join(PARTS)}, chain included")
        self.scenario = scenario
        self.parts = parts
        self.outside = outside
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"x402bench-{scenario.name}-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.agent_count = agent_count if agent_count is not None else scenario.agents.count
        self.anvil: Anvil | None = None
        self.processes: list[ServiceProcess | ProcessGroup] = []
        self.agents: list[Agent] = []
        self.info: WorldInfo | None = None
        self._signers: list[str] = []
        self._ledger_path = ""
        self.proxies: dict[str, FaultProxyProcess] = {}

    def __enter__(self) -> "World":
        if self.info is not None or self.anvil is not None or self.processes:
            raise RuntimeError("this world is already up; a second start would orphan the first one's processes")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- which part comes from where --------------------------------------------------------

    def _outside_services(self) -> list[str]:
        """Service URLs to pay instead of starting ours: given, or the attached world's own."""
        if self.outside.service_urls:
            return list(self.outside.service_urls)
        world = self.outside.world
        if world and world.get("service_urls") and not self.outside.facilitator_url:
            return list(world["service_urls"].values())
        return []

    def _outside_facilitator(self) -> str | None:
        world = self.outside.world or {}
        return self.outside.facilitator_url or world.get("facilitator_url") or None

    def _start(self) -> None:
        s = self.scenario
        wants_services = "services" in self.parts
        outside_services = self._outside_services() if wants_services else []
        own_services = wants_services and not outside_services
        wants_facilitator = own_services or ("facilitator" in self.parts and not outside_services)
        own_facilitator = wants_facilitator and not self._outside_facilitator()
        if own_facilitator:
            check_live_strategy(s)
        # Outside parts are asked first, so a dead URL stops the run before anything starts.
        network = f"eip155:{(self.outside.world or {}).get('chain_id', s.chain.chain_id)}"
        if wants_facilitator and not own_facilitator:
            check_facilitator(self._outside_facilitator() or "", network)
        for url in outside_services:
            check_service(url, network)
        if outside_services and s.service_processes > 1:
            raise ScenarioError(f"{s.name}: service_processes {s.service_processes} asks for processes x402bench "
                                "starts, but this run pays services at outside URLs (drop one or the other)")
        chain = self._attach_chain(self.outside.world) if self.outside.attached else self._start_chain()

        facilitator_url = ""
        if not wants_facilitator and self.outside.world and not self.outside.service_urls:
            facilitator_url = self.outside.world.get("facilitator_url") or ""  # the attached world's own services use it
        if wants_facilitator:
            if own_facilitator:
                facilitator_url = self._start_facilitator(chain)
            else:
                facilitator_url = self._outside_facilitator() or ""
        routes: dict[str, ServiceTerms] = {}
        if own_services:
            routes = self._start_services(chain, facilitator_url)
        for url in outside_services:
            name = self._route_name(url, set(routes))
            routes[name] = service_terms(url, chain.network, chain.token["address"], name)

        payees = list(dict.fromkeys([*(t.pay_to for t in routes.values()), *chain.payees]))
        strategy = s.facilitator.strategy if own_facilitator else ("outside" if facilitator_url else "")
        self.info = WorldInfo(
            scenario=s.name, rpc_url=chain.rpc_url, chain_id=chain.chain_id, network=chain.network,
            token=chain.token, facilitator_url=facilitator_url, facilitator_strategy=strategy,
            signers=self._signers if own_facilitator else [], pay_to=payees[0],
            service_urls={n: t.url for n, t in routes.items()}, prices={n: t.amount for n, t in routes.items()},
            agents=[{"address": a.address, "private_key": a.key_hex} for a in self.agents],
            payees=payees, facilitator_keys=chain.facilitator_keys,
            ledger_path=self._ledger_path if own_facilitator else self._attached_ledger(facilitator_url),
            pids={**({"anvil": self.anvil.process.pid} if self.anvil and self.anvil.process else {}),
                  **{p.name: p.pid or 0 for p in self._children()}},
            workdir=str(self.workdir),
            fault_proxies={k: p.url for k, p in self.proxies.items()},
            parts={"started": [p for p, own in (("chain", self.anvil is not None and not self.outside.rpc_url),
                                                ("facilitator", own_facilitator), ("services", own_services)) if own],
                   "outside": {k: v for k, v in (("world", self.outside.attached), ("rpc_url", chain.outside_node),
                                                 ("facilitator_url", bool(facilitator_url) and not own_facilitator),
                                                 ("service_urls", bool(outside_services))) if v}},
        )

    def _attached_ledger(self, facilitator_url: str) -> str:
        """The attached world's ledger, when the facilitator in use is that world's own (ours, run by `up`)."""
        world = self.outside.world or {}
        same = bool(facilitator_url) and facilitator_url == world.get("facilitator_url")
        return str(world.get("ledger_path") or "") if same and world.get("facilitator_strategy") != "outside" else ""

    def _route_name(self, url: str, taken: set[str]) -> str:
        """The scenario's name for a route at that path, else one made from the URL."""
        path = urlsplit(url).path
        for service in self.scenario.services:
            if service.path == path and service.name not in taken:
                return service.name
        return service_name(url, taken)

    # --- the parts ----------------------------------------------------------------------------

    def _start_chain(self) -> "_Chain":
        """Anvil (or the node at `outside.rpc_url`), the token, and every key funded."""
        s = self.scenario
        chain = s.chain
        node_url = self.outside.rpc_url or chain.rpc_url
        if node_url:
            check_node(node_url, chain.chain_id)
            rpc_url = node_url
            prepare_outside_node(node_url)
        else:
            # Deploy and fund on an automining chain (seconds, not a block wait per funding tx), then
            # switch to the scenario's mode; only sub-second intervals must be set at start-up.
            switch_later = chain.mining != "interval" or float(chain.block_time_s or 0).is_integer()
            self.anvil = Anvil(chain_id=chain.chain_id, mining="auto" if switch_later else chain.mining,
                               block_time_s=None if switch_later else chain.block_time_s,
                               gas_limit=chain.gas_limit, log_path=self.workdir / "anvil.log").start()
            rpc_url = self.anvil.url
        token_address = deploy_usdc(rpc_url, s.token.name, s.token.version, s.token.decimals, s.token.symbol)
        self.agents = derive_agents(s.seed, self.agent_count)
        (payee,) = role_keys(s.seed, "payee", 1)
        outside_signers = role_keys(s.seed, "outside-signer", OUTSIDE_SIGNER_KEYS)
        give_eth(rpc_url, [a.address for a in outside_signers])
        fund(rpc_url, token_address, [a.address for a in self.agents], s.funding_atomic())
        fund(rpc_url, token_address, [payee.address], PAYEE_STARTING_ATOMIC)
        if self.anvil is not None and chain.mining != "auto" and self.anvil.mining == "auto":
            self.anvil.switch_mining(chain.mining, chain.block_time_s)
        token = {"address": token_address, "name": s.token.name, "version": s.token.version,
                 "decimals": s.token.decimals, "symbol": s.token.symbol}
        return _Chain(rpc_url, chain.chain_id, token, [payee.address], [a.key_hex for a in outside_signers],
                      outside_node=bool(node_url))

    def _attach_chain(self, world: dict[str, Any]) -> "_Chain":
        """A running world's chain and token, and its agents: nothing deployed, nothing funded."""
        try:
            rpc_url, chain_id, token = world["rpc_url"], int(world["chain_id"]), dict(world["token"])
            agents = [Agent(i, bytes.fromhex(a["private_key"].removeprefix("0x")), a["address"])
                      for i, a in enumerate(world["agents"])]
            payees = list(world.get("payees") or [world["pay_to"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise OutsideError(f"world file: missing or malformed key {exc} (write it with `x402bench up --json`)") from None
        check_node(rpc_url, chain_id)
        self.agents = agents[: self.agent_count] if self.agent_count else agents
        return _Chain(rpc_url, chain_id, token, payees, list(world.get("facilitator_keys") or []))

    def _proxy(self, kind: str, upstream: str) -> str:
        """A fault proxy in front of `upstream` when the scenario's faults need one; else upstream itself."""
        needed = {f.kind for f in self.scenario.faults} & PROXIED_FAULTS[kind]
        if not needed:
            return upstream
        proxy = FaultProxyProcess(kind, upstream, log_path=self.workdir / f"{kind}-proxy.log", seed=self.scenario.seed)
        self.proxies[kind] = proxy.start()
        return proxy.url

    def _start_facilitator(self, chain: "_Chain") -> str:
        s = self.scenario
        signers = role_keys(s.seed, "signer", s.facilitator.signer_keys)
        give_eth(chain.rpc_url, [a.address for a in signers])
        settler = deploy_batch_settler(chain.rpc_url) if s.facilitator.strategy == "batched" else None
        if s.batch_settlement_services:
            # The escrow, its ERC-3009 deposit collector and Multicall3, at the addresses the SDK hard-codes.
            deploy_batch_settlement(chain.rpc_url)
        self._signers = [a.address for a in signers]
        self._ledger_path = str(self.workdir / "ledger.sqlite")
        token = chain.token
        config = FacilitatorConfig(
            rpc_url=self._proxy("rpc", chain.rpc_url), chain_id=chain.chain_id,
            token=TokenInfo(token["address"], token["name"], token["version"], int(token["decimals"])),
            signer_keys=[a.key_hex for a in signers], ledger_path=self._ledger_path, strategy=s.facilitator.strategy,
            receipt_poll_s=s.facilitator.receipt_poll_s,
            batch_max_size=s.facilitator.batch.max_size if s.facilitator.batch else 50,
            batch_max_age_s=s.facilitator.batch.max_age_s if s.facilitator.batch else 1.0,
            settler=settler,
            batch_settlement=bool(s.batch_settlement_services),
        )
        config.dump(self.workdir / "facilitator.json")
        return self._spawn("facilitator", "services.facilitator", self.workdir / "facilitator.json").url

    def _start_services(self, chain: "_Chain", facilitator_url: str) -> dict[str, ServiceTerms]:
        s = self.scenario
        token = chain.token
        pay_to = chain.payees[0]
        terms = s.channel_terms
        (authorizer,) = role_keys(s.seed, "receiver-authorizer", 1)
        config = ResourceConfig(
            facilitator_url=self._proxy("http", facilitator_url), network=chain.network, token_address=token["address"],
            token_name=token["name"], token_version=token["version"], pay_to=pay_to, seed=s.seed,
            routes=[
                RouteSpec(name=v.name, path=v.path, method=v.method, price_atomic=s.price_atomic(v),
                          work_median_ms=v.work_ms.median, work_sigma=v.work_ms.sigma,
                          response_bytes=v.response_bytes, workers=v.workers, description=v.description,
                          scheme=v.scheme)
                for v in s.services
            ],
            receiver_authorizer_key=authorizer.key_hex if s.batch_settlement_services else "",
            withdraw_delay_s=terms.withdraw_delay_s, min_deposit_atomic=s.deposit_atomic(),
            claims_per_tx=terms.claims_per_tx, claim_every_s=terms.claim_every_s, settle_every_s=terms.settle_every_s,
            channel_dir=str(self.workdir / "channels"),  # durable: a restarted service keeps the vouchers it served
            service_processes=s.service_processes,
        )
        config.dump(self.workdir / "resource.json")
        if s.service_processes == 1:
            resource: ServiceProcess | ProcessGroup = self._spawn("services", "services.resource",
                                                                  self.workdir / "resource.json")
        else:
            resource = self._spawn_group("services", "services.resource", self.workdir / "resource.json",
                                         s.service_processes)
        return {v.name: ServiceTerms(v.name, resource.url + v.path, s.price_atomic(v), pay_to, token["address"], v.scheme)
                for v in s.services}

    def process(self, name: str) -> ServiceProcess | ProcessGroup:
        """One of the parts this world started ("facilitator", "services"), for fault injection: a ServiceProcess,
        or the ProcessGroup of several services processes (it kills, restarts and stops every member, each by
        its own PID)."""
        for process in self.processes:
            if process.name == name:
                return process
        raise KeyError(f"this world did not start {name!r}")

    def _children(self) -> list[ServiceProcess]:
        """Every child process, a group's members one by one ("services", "services.2", ...)."""
        return [m for p in self.processes for m in (p.members if isinstance(p, ProcessGroup) else [p])]

    def _spawn(self, name: str, module: str, config_path: Path) -> ServiceProcess:
        process = ServiceProcess(name, module, config_path, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process.start()

    def _spawn_group(self, name: str, module: str, config_path: Path, count: int) -> ProcessGroup:
        """`count` processes of one server on one shared port (SO_REUSEPORT), each health-checked on its own."""
        port = free_port()
        members = [SharedPortMember(name if i == 1 else f"{name}.{i}", module, config_path,
                                    self.workdir / (f"{name}.log" if i == 1 else f"{name}.{i}.log"), shared_port=port)
                   for i in range(1, count + 1)]
        group = ProcessGroup(name, members, port)
        self.processes.append(group)
        return group.start()

    def stop(self) -> None:
        """Stop services, facilitator and chain, in that order; safe to call twice."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        for proxy in self.proxies.values():  # a proxy switches its faults off as it stops (a stalled node mines again)
            proxy.stop()
        self.proxies.clear()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class _Chain:
    """The chain part as the other parts need it, whoever started it."""

    rpc_url: str
    chain_id: int
    token: dict[str, Any]
    payees: list[str]
    facilitator_keys: list[str]
    outside_node: bool = False

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"


def check_live_strategy(s: Scenario) -> None:
    """What our own facilitator cannot run is refused before anything starts."""
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


def prepare_outside_node(rpc_url: str) -> None:
    """A node we did not start must let Anvil's first dev account deploy and fund: say so when it cannot."""
    balance = int(Rpc(rpc_url).call("eth_getBalance", DEV_ADDRESS, "latest"), 16)
    if balance == 0:
        raise OutsideError(
            f"node {rpc_url}: the deployer {DEV_ADDRESS} (Anvil's first dev account, key {DEV_PRIVATE_KEY}) holds "
            "no ETH; x402bench deploys the mock USDC and funds the agents and signer keys from it: fund that "
            "account on the node (Anvil and Hardhat dev nodes start with it funded)")


def give_eth(rpc_url: str, addresses: list[str]) -> None:
    """SIGNER_ETH_WEI to each address: anvil_setBalance where the node has it, else sent by the deployer."""
    rpc = Rpc(rpc_url)
    try:
        rpc.batch([("anvil_setBalance", [a, hex(SIGNER_ETH_WEI)]) for a in addresses])
        return
    except ChainError:
        pass
    deployer = int(rpc.call("eth_getBalance", DEV_ADDRESS, "latest"), 16)
    each = min(SIGNER_ETH_WEI, deployer // (2 * max(1, len(addresses))))
    if each == 0:
        raise OutsideError(f"node {rpc_url}: the deployer {DEV_ADDRESS} has too little ETH to fund {len(addresses)} keys")
    send_transactions(rpc_url, DEV_PRIVATE_KEY, [{"to": a, "value": each, "gas": 21_000} for a in addresses])

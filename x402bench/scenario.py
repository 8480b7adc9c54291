"""The scenario file: one YAML document that describes a whole x402 world.

Everything downstream (the live stack, the Locust run, the SimPy model, the
report) reads a validated :class:`Scenario`, never raw YAML, so a typo is
caught once, here, with the file name and the field path in the message.
Every model forbids unknown keys: a misspelt key must not silently fall back
to a default and produce a plausible but wrong benchmark.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, ValidationError, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from x402bench.durations import DURATION_PATTERN, parse_duration
from x402bench import shipped
from x402bench.registry import SCHEMES, STRATEGIES, schema_help


class ScenarioError(Exception):
    """A scenario file that cannot be used; the message is meant for the user as is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Chain(_Strict):
    """The local chain Anvil runs."""

    chain_id: int = Field(31337, ge=1, description="EIP-155 chain id; the x402 network is eip155:<chain_id>.")
    mining: Literal["auto", "interval", "manual"] = Field(
        "auto", description="auto: one block per tx; interval: a block every block_time_s; manual: only on request."
    )
    block_time_s: float | None = Field(None, gt=0, le=60, description="Block interval for mining=interval.")
    gas_limit: int = Field(60_000_000, ge=1_000_000, description="Block gas limit.")
    rpc_url: str | None = Field(
        None, pattern=r"^https?://", description="Use the node already running at this JSON-RPC URL instead of "
        "starting Anvil: the token is deployed and the agents funded there from Anvil's first dev account. The "
        "node's own mining applies; mining and block_time_s must then be left unset.")

    @model_validator(mode="after")
    def _block_time_matches_mining(self) -> "Chain":
        if self.rpc_url and (self.mining != "auto" or self.block_time_s is not None or self.gas_limit != 60_000_000):
            raise ValueError("rpc_url names a node that mines as it does: mining, block_time_s and gas_limit "
                             "cannot be set with it")
        if self.mining == "interval" and self.block_time_s is None:
            raise ValueError("mining 'interval' needs block_time_s")
        if self.mining != "interval" and self.block_time_s is not None:
            raise ValueError(f"block_time_s is only meaningful with mining 'interval', not {self.mining!r}")
        return self


class Token(_Strict):
    """The mock USDC; name and version form its EIP-712 domain, as on real USDC."""

    name: str = Field("USD Coin", min_length=1)
    version: str = Field("2", min_length=1)
    symbol: str = Field("USDC", min_length=1)
    decimals: int = Field(6, ge=0, le=18)


class Economics(_Strict):
    """What gas costs in money; the chain itself is free, so these turn gas into USD."""

    gas_price_gwei: float = Field(0.012, ge=0)
    eth_usd: float = Field(2500.0, ge=0)
    l1_fee_usd_per_tx: float = Field(0.0, ge=0, description="L1 data fee per settlement tx (rollups).")


class Batch(_Strict):
    max_size: int = Field(50, ge=1, le=1000)
    max_age_s: float = Field(1.0, gt=0)


class Facilitator(_Strict):
    strategy: Literal[tuple(STRATEGIES)] = Field(  # type: ignore[valid-type]
        "sync", description=schema_help("strategy"))
    signer_keys: int = Field(1, ge=1, le=64)
    batch: Batch | None = None
    receipt_poll_s: float = Field(0.05, gt=0, le=5, description="How often a waiting settlement polls for its receipt.")
    external_url: str | None = Field(
        None, pattern=r"^https?://", description="The priced services x402bench starts use the facilitator already "
        "running at this URL instead of starting one (`load --facilitator-url` overrides it).")

    @model_validator(mode="before")
    @classmethod
    def _batched_gets_batch_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("strategy") == "batched" and data.get("batch") is None:
            return {**data, "batch": {}}
        return data


def lognormal_sigma(median: float, p99: float | None) -> float:
    """Lognormal shape putting the 99th percentile on p99 (z_0.99 = 2.3263); 0 means constant."""
    if p99 is None or median <= 0 or p99 == median:
        return 0.0
    return math.log(p99 / median) / 2.3263478740408408


class Duration(_Strict):
    """A time distribution in milliseconds: lognormal from median and p99, constant when p99 is absent."""

    median: float = Field(ge=0)
    p99: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _p99_not_below_median(self) -> "Duration":
        if self.p99 is not None and self.p99 < self.median:
            raise ValueError(f"p99 ({self.p99}) is below the median ({self.median})")
        return self

    @property
    def sigma(self) -> float:
        return lognormal_sigma(self.median, self.p99)


def _coerce_duration(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"median": value}
    return value


class _OrBareMedian:
    """JSON Schema only: a Duration field also takes a bare number, its median (what _coerce_duration
    accepts), so the schema offers `{median, p99}` or a number >= 0."""

    def __get_pydantic_json_schema__(self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), {"type": "number", "minimum": 0,
                                            "description": "A constant duration: the median, no p99."}]}


#: A Duration field as a scenario may write it: a mapping, or a bare number read as its median.
DurationOrMedian = Annotated[Duration, _OrBareMedian()]


#: The string prices the JSON Schema offers: "$0.001", "0.001 USDC" (or "0.001USDC", any case, "$" allowed),
#: or whole atomic units as a string ("1000"); positive; at most 6 decimals of a dollar (the services check
#: every price at 6 decimals; trailing zeros do not count). parse_price reads a few more spellings that the
#: schema does not advertise (an exponent, a sign, `_` digit groups, repeated "$", spaces around), and
#: refuses a price finer than token.decimals when those are under 6, which the schema cannot see.
PRICE_PATTERN = (r"^(?=.*[1-9])(?:"
                 r"\$(?:[0-9]+(?:\.[0-9]{0,6}0*)?|\.[0-9]{1,6}0*)"
                 r"|\$?(?:[0-9]+(?:\.[0-9]{0,6}0*)?|\.[0-9]{1,6}0*) ?[Uu][Ss][Dd][Cc]"
                 r"|[0-9]+(?:\.0*)?"
                 r")$")


def parse_price(price: str | int, decimals: int) -> int:
    """Turn "$0.001", "0.001 USDC" or an atomic integer into atomic token units."""
    if isinstance(price, bool):
        raise ValueError("price must be a number of atomic units or a string like '$0.001'")
    if isinstance(price, int):
        atomic = price
    else:
        text = price.strip()
        dollars = text.startswith("$") or text.upper().endswith("USDC")
        text = text.lstrip("$").upper().removesuffix("USDC").strip()
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"price {price!r} is neither atomic units nor a dollar amount like '$0.001'") from None
        if not value.is_finite():  # Decimal takes "Infinity" and "NaN", which no amount of money is
            raise ValueError(f"price {price!r} is not a finite amount")
        if dollars:
            scaled = value * (Decimal(10) ** decimals)
            if scaled != scaled.to_integral_value():
                raise ValueError(f"price {price!r} is finer than the token's {decimals} decimals")
            atomic = int(scaled)
        else:
            if value != value.to_integral_value():
                raise ValueError(f"price {price!r} without '$' is atomic units and must be a whole number")
            atomic = int(value)
    if atomic <= 0:
        raise ValueError(f"price {price!r} must be positive")
    return atomic


class ChannelTerms(_Strict):
    """The `batch-settlement` scheme's terms, shared by every such route of the priced services (one
    SDK server scheme serves them all): the payer deposits into an escrow channel once, then pays each
    request with a signed voucher; the services claim the vouchers and settle to the payee later."""

    withdraw_delay_s: int = Field(
        900, ge=900, le=2_592_000, description="The channels' withdrawDelay: how long a payer's timed withdrawal "
        "waits, so the receiver can still claim (the scheme's bounds: 15 minutes to 30 days).")
    deposit_usdc: float | None = Field(
        None, gt=0, description="The deposit a new channel is asked for (the 402's extra.minDeposit, which the SDK "
        "client deposits); absent: the SDK server's default, a multiple of the price.")
    claims_per_tx: int = Field(100, ge=1, le=1000, description="Vouchers per claimWithSignature tx when the services "
                               "claim (on their cadence and on the local harness route POST /_channels/claim_settle).")
    claim_every_s: float = Field(10.0, gt=0, le=86_400, description="How often the services claim the vouchers "
                                 "they hold (one claimWithSignature per claims_per_tx channels).")
    settle_every_s: float = Field(30.0, gt=0, le=86_400, description="How often the services settle what was claimed "
                                  "to the receiver (one settle tx per receiver and token).")


class Service(_Strict):
    """One priced route of the resource server."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    path: str = Field(pattern=r"^/[A-Za-z0-9_/.-]*$")
    method: Literal["GET", "POST"] = "GET"
    scheme: Literal[tuple(SCHEMES)] = Field("exact", description=schema_help("scheme"))  # type: ignore[valid-type]
    price: str | int = Field(description="Atomic units (1000) or dollars ('$0.001').", json_schema_extra={"anyOf": [
        {"type": "integer", "minimum": 1, "description": "Atomic token units."},
        {"type": "string", "pattern": PRICE_PATTERN, "description": "'$0.001', '0.001 USDC' or atomic units '1000'."},
    ]})
    work_ms: Annotated[DurationOrMedian, Field(default_factory=lambda: Duration(median=0))]
    response_bytes: int = Field(256, ge=0, le=10_000_000)
    workers: int | None = Field(None, ge=1, description="Concurrent requests the handler serves; the rest queue.")
    description: str = ""

    _coerce_work = field_validator("work_ms", mode="before")(classmethod(lambda cls, v: _coerce_duration(v)))

    @field_validator("price", mode="before")
    @classmethod
    def _price_is_not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic would read `true` as 1 atomic unit before parse_price saw it
            raise ValueError("price must be a number of atomic units or a string like '$0.001', not true/false")
        return value

    @field_validator("price")
    @classmethod
    def _price_is_parseable(cls, value: str | int) -> str | int:
        parse_price(value, 6)  # decimals are re-applied by Scenario; this only rejects nonsense early
        return value


class Arrivals(_Strict):
    """How one agent spaces its requests."""

    kind: Literal["constant", "poisson", "bursts", "ramp", "closed"] = Field(
        "poisson", description="closed: each agent sends its next request as soon as the last one answered."
    )
    rate_per_agent_s: float = Field(0.2, gt=0, description="Mean requests per second per agent (peak for ramp).")
    burst_size: int = Field(10, ge=1, description="bursts: requests per burst.")
    ramp_s: float = Field(30.0, gt=0, description="ramp: seconds to climb linearly to the full rate.")


class Agents(_Strict):
    count: int = Field(10, ge=1, le=1_000_000)
    funding_usdc: float = Field(20.0, ge=0, description="USDC minted to each agent at start.")
    budget_usdc: float | None = Field(None, gt=0, description="Most an agent will spend; stops paying after.")
    arrivals: Arrivals = Field(default_factory=Arrivals)
    mix: dict[str, float] = Field(
        default_factory=dict, description="Service name -> weight; empty = uniform.",
        # what _weights_positive refuses: a negative weight, and weights that are all zero
        json_schema_extra={"additionalProperties": {"type": "number", "minimum": 0},
                           "not": {"minProperties": 1, "additionalProperties": {"const": 0}}})
    cache_requirements: bool = Field(True, description="Reuse the 402 requirements and pay on the first request.")
    sign_ms: Annotated[DurationOrMedian, Field(default_factory=lambda: Duration(median=0.4))]
    rtt_ms: Annotated[DurationOrMedian, Field(default_factory=lambda: Duration(median=0.3))]
    retry: "Retry" = Field(default_factory=lambda: Retry())

    _coerce_sign = field_validator("sign_ms", "rtt_ms", mode="before")(
        classmethod(lambda cls, v: _coerce_duration(v))
    )

    @field_validator("mix")
    @classmethod
    def _weights_positive(cls, mix: dict[str, float]) -> dict[str, float]:
        for name, weight in mix.items():
            if weight < 0:
                raise ValueError(f"weight of {name!r} is negative ({weight})")
        if mix and sum(mix.values()) <= 0:
            raise ValueError("weights sum to zero")
        return mix


class _OrDurationText:
    """JSON Schema only: a run time also takes a duration string ('90s', '2m', '1h30m', '500ms'), what
    x402bench.durations.parse_duration reads, as `-t/--run-time` does on the command line."""

    def __get_pydantic_json_schema__(self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), {"type": "string", "pattern": DURATION_PATTERN,
                                            "description": "A duration: 90s, 2m, 1h30m, 500ms."}]}


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, (str, bool)) else value  # a bool is no run time


class Run(_Strict):
    duration_s: Annotated[float, _OrDurationText()] = Field(30.0, gt=0, le=86_400, description="Seconds, or '2m'.")
    warmup_s: Annotated[float, _OrDurationText()] = Field(0.0, ge=0, description="Excluded from the steady window.")
    users: int = Field(10, ge=1, le=100_000, description="Locust users; each drives one or more agents.")
    spawn_rate: float = Field(10.0, gt=0)
    max_requests: int | None = Field(None, ge=1, description="Hard cap on paid requests for the whole run.")

    _durations = field_validator("duration_s", "warmup_s", mode="before")(classmethod(lambda cls, v: _seconds(v)))


class Slo(_Strict):
    min_throughput_rps: float | None = Field(None, ge=0)
    max_p95_request_s: float | None = Field(None, gt=0)
    max_p95_settlement_s: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_gas_per_payment: float | None = Field(None, gt=0)
    max_cost_per_payment_usd: float | None = Field(None, ge=0)


# --- faults: a timeline of things that break during a run ----------------------------------------


class _Fault(_Strict):
    """One entry of the `faults:` timeline. Every kind states when it strikes (`at_s`, seconds from the
    start of traffic) and, for windows, how long it lasts (`for_s`); crashes may restart after
    `restart_after_s` (absent: the part stays down). A kind is declared once, here, with its own
    fields; the live fault driver and the sim read the same entry, and a kind one of them cannot
    apply is refused there by name rather than ignored."""

    at_s: float = Field(ge=0, description="Seconds after traffic starts.")

    @property
    def window(self) -> tuple[float, float]:
        """(start, end) of the fault in run seconds; a crash lasts until its restart (or the end of the run)."""
        end = getattr(self, "for_s", None) or getattr(self, "restart_after_s", None)
        return self.at_s, self.at_s + end if end is not None else float("inf")


class _Window(_Fault):
    for_s: float = Field(gt=0, description="How long the fault lasts.")


class FacilitatorCrash(_Fault):
    """SIGKILL the facilitator; with restart_after_s it comes back on the same port and ledger."""

    kind: Literal["facilitator_crash"]
    restart_after_s: float | None = Field(None, gt=0)


class ServiceCrash(_Fault):
    """SIGKILL the priced services; with restart_after_s they come back on the same port."""

    kind: Literal["service_crash"]
    restart_after_s: float | None = Field(None, gt=0)


class ChainStall(_Window):
    """The node stops answering and mining for for_s (the facilitator's RPC hangs)."""

    kind: Literal["chain_stall"]


class RpcLatency(_Window):
    """Every JSON-RPC call of the facilitator is delayed by ms (+ uniform jitter up to jitter_ms)."""

    kind: Literal["rpc_latency"]
    ms: float = Field(gt=0, le=60_000)
    jitter_ms: float = Field(0.0, ge=0, le=60_000)


class RpcErrors(_Window):
    """A fraction `rate` of the facilitator's JSON-RPC calls fail: HTTP 429, 500 or 503, or a timeout."""

    kind: Literal["rpc_errors"]
    rate: float = Field(gt=0, le=1)
    error: Literal["429", "500", "503", "timeout"] = "503"


class TxDropped(_Window):
    """Settlement transactions sent in the window vanish from the node's pool (anvil_dropTransaction)."""

    kind: Literal["tx_dropped"]


class Reorg(_Fault):
    """The node replaces its last `depth` blocks (anvil_reorg): their transactions are no longer mined."""

    kind: Literal["reorg"]
    depth: int = Field(ge=1, le=64)


class SignerOutOfGas(_Window):
    """The facilitator's signer keys lose their ETH for for_s, then get it back."""

    kind: Literal["signer_out_of_gas"]


class Facilitator5xxAfterSettle(_Window):
    """The facilitator settles on chain, then its /settle answer is lost: the service gets a 502."""

    kind: Literal["facilitator_5xx_after_settle"]


class ClientDisconnect(_Window):
    """A fraction `rate` of agents drop the connection right after sending their payment."""

    kind: Literal["client_disconnect"]
    rate: float = Field(1.0, gt=0, le=1)


Fault = Annotated[
    FacilitatorCrash | ServiceCrash | ChainStall | RpcLatency | RpcErrors | TxDropped | Reorg | SignerOutOfGas
    | Facilitator5xxAfterSettle | ClientDisconnect,
    Field(discriminator="kind"),
]

#: Every fault kind, as the scenario spells it.
FAULT_KINDS: tuple[str, ...] = tuple(
    m.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (FacilitatorCrash, ServiceCrash, ChainStall, RpcLatency, RpcErrors, TxDropped, Reorg, SignerOutOfGas,
              Facilitator5xxAfterSettle, ClientDisconnect))


class Retry(_Strict):
    """What an agent does when a paid request got no answer (a dropped connection, a timeout, a 5xx):
    it sends the very same signed payment again, so the facilitator can recognise it and the payment
    is served once and charged once."""

    attempts: int = Field(0, ge=0, le=10, description="Retries after the first try; 0 = never retry.")
    backoff_s: float = Field(0.5, ge=0, le=60, description="Wait before each retry.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="A paid request with no answer by then is retried.")

    @model_validator(mode="after")
    def _knobs_need_attempts(self) -> "Retry":
        idle = [k for k in ("backoff_s", "timeout_s") if getattr(self, k) != type(self).model_fields[k].default]
        if idle and self.attempts == 0:
            raise ValueError(f"{' and '.join(idle)} {'apply' if len(idle) > 1 else 'applies'} only to retries: "
                             "set attempts (it is 0)")
        return self


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 42
    chain: Chain = Field(default_factory=Chain)
    token: Token = Field(default_factory=Token)
    economics: Economics = Field(default_factory=Economics)
    facilitator: Facilitator = Field(default_factory=Facilitator)
    services: list[Service] = Field(min_length=1)
    agents: Agents = Field(default_factory=Agents)
    run: Run = Field(default_factory=Run)
    slo: Slo = Field(default_factory=Slo)
    faults: list[Fault] = Field(default_factory=list, description="What breaks during the run, and when.")
    channel: ChannelTerms | None = Field(
        None, description="Terms of the batch-settlement routes (defaults when absent); only with such a route.")
    external_service_url: str | list[str] | None = Field(
        None, description="Pay the priced route(s) already running at this URL (or these URLs) instead of starting "
        "services; price, payee and asset come from each one's 402 answer (`load --service-url` overrides it).",
        json_schema_extra={"anyOf": [  # what _service_urls_are_http refuses: a URL not starting http(s)://
            {"type": "string", "pattern": "^https?://"},
            {"type": "array", "items": {"type": "string", "pattern": "^https?://"}},
            {"type": "null"}]})
    service_processes: int = Field(
        1, ge=1, le=64,
        description="How many processes serve the priced services, all on one address (SO_REUSEPORT: the kernel "
        "spreads connections over them). One Python process uses at most one core, and on a batch-settlement "
        "route the services process is the run's bottleneck; raise it when the machine has a core to spare. "
        "Channel state is then shared through SQLite and one process at a time runs the claim/settle cadence.")

    @field_validator("external_service_url")
    @classmethod
    def _service_urls_are_http(cls, value: str | list[str] | None) -> str | list[str] | None:
        for url in [value] if isinstance(value, str) else value or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @property
    def service_urls(self) -> tuple[str, ...]:
        """The outside priced routes this scenario names, if any."""
        value = self.external_service_url
        return (value,) if isinstance(value, str) else tuple(value or ())

    @model_validator(mode="after")
    def _cross_checks(self) -> "Scenario":
        names = [s.name for s in self.services]
        paths = [(s.method, s.path) for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        if len(set(paths)) != len(paths):
            raise ValueError("two services share the same method and path")
        unknown = sorted(set(self.agents.mix) - set(names))
        if unknown:
            raise ValueError(f"agents.mix names unknown services {unknown}; known: {names}")
        for i, service in enumerate(self.services):
            try:
                parse_price(service.price, self.token.decimals)
            except ValueError as exc:
                raise ValueError(f"services.{i}.price: {exc}") from None
        if self.service_processes > 1 and self.service_urls:
            raise ValueError("service_processes: set, but external_service_url names services x402bench does not "
                             "start (the processes would not exist)")
        if self.channel is not None and not self.batch_settlement_services:
            raise ValueError("channel: set, but no service has scheme 'batch-settlement' (the terms would be ignored)")
        if self.channel is not None and self.channel.deposit_usdc is not None:
            try:
                deposit = parse_price(f"${self.channel.deposit_usdc!r}", self.token.decimals)
            except ValueError as exc:
                raise ValueError(f"channel.deposit_usdc: {exc}") from None
            for i, service in enumerate(self.services):
                if service.scheme == "batch-settlement" and deposit < parse_price(service.price, self.token.decimals):
                    raise ValueError(f"channel.deposit_usdc: below services.{i}.price: a deposit must cover one request")
        return self

    @property
    def batch_settlement_services(self) -> list[Service]:
        """The routes paid with the batch-settlement scheme."""
        return [s for s in self.services if s.scheme == "batch-settlement"]

    @property
    def channel_terms(self) -> ChannelTerms:
        """The batch-settlement terms in force (the defaults when the section is absent)."""
        return self.channel or ChannelTerms()

    def deposit_atomic(self) -> int | None:
        """channel.deposit_usdc in atomic units, or None for the SDK server's default."""
        deposit = self.channel_terms.deposit_usdc
        return None if deposit is None else parse_price(f"${deposit!r}", self.token.decimals)

    @property
    def network(self) -> str:
        """CAIP-2 network id used on the wire."""
        return f"eip155:{self.chain.chain_id}"

    def price_atomic(self, service: Service) -> int:
        return parse_price(service.price, self.token.decimals)

    def funding_atomic(self) -> int:
        """What each agent is minted at start, in atomic units (decimal arithmetic: 0.3 USDC is 300,000,
        where float arithmetic would mint 299,999)."""
        return int((Decimal(repr(self.agents.funding_usdc)) * 10**self.token.decimals).to_integral_value())

    def spend_cap_atomic(self) -> int:
        """The most one agent may spend, in atomic units: its funding, or its budget when that is smaller
        (an agent cannot spend what it was never given). The one definition live agents and the sim share."""
        a = self.agents
        cap = min(a.funding_usdc, a.budget_usdc) if a.budget_usdc is not None else a.funding_usdc
        return int((Decimal(repr(cap)) * 10**self.token.decimals).to_integral_value())

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def mix_weights(self) -> dict[str, float]:
        """Normalised route weights; services absent from a non-empty mix get weight 0."""
        raw = self.agents.mix or {s.name: 1.0 for s in self.services}
        total = sum(raw.values())
        return {s.name: raw.get(s.name, 0.0) / total for s in self.services}

    def with_overrides(self, **sections: dict[str, Any]) -> "Scenario":
        """A copy with some fields of some sections replaced, validated again (used by CLI flags and sweeps)."""
        data = self.model_dump(mode="python")
        for section, fields in sections.items():
            if isinstance(data.get(section), dict):
                data[section].update(fields)
            else:
                data[section] = fields
        return validate_scenario(data, source=f"{self.name} (overridden)")


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-")) or "(top level)"


def validate_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed data, raising ScenarioError that names every bad field."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the file must hold a mapping at the top level, not {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field (check the spelling; `x402bench schema` lists the fields)"
            lines.append(f"  {_format_location(err['loc'])}: {message}")
        raise ScenarioError(f"{source}: invalid scenario\n" + "\n".join(lines)) from None


#: A scenario is a page of YAML; anything this big is the wrong file (and /dev/zero must not fill memory).
MAX_SCENARIO_BYTES = 4 * 1024 * 1024


def _scenario_text(path: Path) -> str:
    """The file as UTF-8 text, or a ScenarioError saying in one line why it is not a scenario file.

    The user passed a path on the command line: a directory, a binary file, a file saved as UTF-16
    or Latin-1 must each get a message naming the file and what is wrong, never a traceback."""
    if path.is_dir():
        raise ScenarioError(f"{path}: is a directory, not a scenario file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file ({exc.strerror or exc})") from None
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{path}: over {MAX_SCENARIO_BYTES // (1024 * 1024)} MB, not a scenario file")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte order mark, as some editors write, is harmless
    except UnicodeDecodeError as exc:
        hint = "; it starts like UTF-16: save it as UTF-8" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise ScenarioError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}{hint})") from None
    if "\0" in text:
        offset = raw.index(b"\0")
        raise ScenarioError(f"{path}: not a text file (a NUL byte at offset {offset})")
    return text


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = shipped.resolve(path)  # a missing `scenarios/NAME.yaml` is the shipped one (installed from a wheel)
    text = _scenario_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ScenarioError(f"{path}: YAML nested too deeply to read") from None
    if data is None:
        raise ScenarioError(f"{path}: the file holds no YAML document (a scenario needs at least name and services)")
    return validate_scenario(data, source=str(path))


def json_schema() -> str:
    """The JSON Schema of scenario files, for editors' autocompletion and outside validators.

    It takes what the models take, shorthands included (a bare number for a Duration, one URL or a list),
    and refuses what their per-field validators refuse (the price format, http(s) URLs, mix weights);
    tests/test_schema.py holds the two to each other case by case. Cross-field rules (a p99 below the
    median, mix names, a price finer than token.decimals, ...) are the models' alone."""
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "x402bench scenario"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"

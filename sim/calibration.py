"""The calibration file: every timing and gas figure the sim needs that a scenario does not say.

A scenario describes the world (block time, prices, work times, agents); how long the
facilitator spends verifying, how long a signer key holds its nonce lock, how often
receipts are polled and what a settlement costs in gas are properties of the software
and the chain, measured on a live run by `x402bench calibrate` and stored here as JSON.
Without a file the sim uses the documented defaults below (`default_calibration()`),
which come from live runs measured on a 2-core machine and from reading the SDK and our facilitator.

Every time is in seconds. A `Dist` is a constant, a lognormal (median, p99) or, when
measured, an empirical distribution given by evenly spaced quantiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from x402bench.registry import STRATEGIES, register
from x402bench.scenario import lognormal_sigma

CALIBRATION_VERSION = 1

Strategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]


class CalibrationError(Exception):
    """A calibration file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dist(_Strict):
    """A time distribution in seconds."""

    median: float = Field(0.0, ge=0)
    p99: float | None = Field(None, ge=0, description="Lognormal when given; constant at the median otherwise.")
    quantiles: list[float] | None = Field(
        None, description="Measured: evenly spaced quantiles q0..q100 (at least 2); overrides median/p99."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Dist":
        if self.p99 is not None and self.p99 < self.median:
            raise ValueError(f"p99 ({self.p99}) is below the median ({self.median})")
        if self.quantiles is not None:
            if len(self.quantiles) < 2:
                raise ValueError("quantiles needs at least 2 values (q0 and q100)")
            if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:])) or self.quantiles[0] < 0:
                raise ValueError("quantiles must be non-negative and non-decreasing")
        return self

    @property
    def sigma(self) -> float:
        return lognormal_sigma(self.median, self.p99)

    @property
    def is_zero(self) -> bool:
        """Always zero: a stage costing nothing, which the model skips (no queue, no event)."""
        if self.quantiles is not None:
            return self.quantiles[-1] == 0
        return self.median == 0

    @property
    def mean(self) -> float:
        """Expected value, for capacity formulas."""
        if self.quantiles is not None:
            q = self.quantiles
            return sum((a + b) / 2 for a, b in zip(q, q[1:])) / (len(q) - 1)
        return self.median * math.exp(self.sigma**2 / 2)

    @classmethod
    def const(cls, seconds: float) -> "Dist":
        return cls(median=seconds)

    @classmethod
    def exponential(cls, mean: float, points: int = 21) -> "Dist":
        """An exponential distribution of this mean, as evenly spaced quantiles (the top one at the 99.5%
        point, all scaled so the piecewise-linear mean is exactly `mean`)."""
        if mean <= 0:
            return cls.const(0.0)
        qs = [-math.log(1.0 - min(i / (points - 1), 0.995)) for i in range(points)]
        area = sum((a + b) / 2 for a, b in zip(qs, qs[1:])) / (points - 1)
        return cls(median=mean * math.log(2.0), quantiles=[mean * q / area for q in qs])

    @classmethod
    def from_ms(cls, median_ms: float, p99_ms: float | None = None) -> "Dist":
        return cls(median=median_ms / 1000, p99=None if p99_ms is None else p99_ms / 1000)


class StrategyTiming(_Strict):
    """How one settlement strategy spends its time; see sim/facilitator.py for the flow."""

    threads: int | None = Field(
        None, ge=1, description="Handlers that may run at once (sdk: FastAPI's 40-thread pool); null = async."
    )
    verify_cpu_s: Dist = Field(description="Facilitator CPU per /verify (one core: a Python process and its GIL).")
    verify_io_s: Dist = Field(description="Waiting on RPC during /verify (eth_getCode, eth_call).")
    settle_cpu_s: Dist = Field(description="Facilitator CPU per /settle besides receipt polls (those are poll_cpu_s).")
    settle_io_s: Dist = Field(description="Waiting on RPC before the tx goes out (nonce, gas price, balance).")
    submit_s: Dist = Field(description="Held under the signer key's nonce lock: sign the tx and send it.")
    receipt: Literal["watcher", "poll"] = Field(
        "watcher",
        description="watcher: one poller per process every receipt_poll_s; poll: each settle polls from its send.",
    )
    receipt_poll_s: float | None = Field(None, gt=0, description="null: the scenario's facilitator.receipt_poll_s.")
    poll_cpu_s: Dist = Field(
        default_factory=lambda: Dist.const(0.0),
        description="receipt 'poll': facilitator CPU per receipt poll, spent on its CPU while the block is awaited.",
    )
    answer_after: Literal["included", "submitted", "accepted"] = Field(
        "included", description="When /settle answers: after the receipt (x402's default), after the send, at once."
    )


class Network(_Strict):
    """Round trips that are not CPU: client to service, service to facilitator."""

    rtt_s: Dist | None = Field(None, description="Client <-> service round trip; null: the scenario's agents.rtt_ms.")
    hop_s: Dist = Field(default_factory=lambda: Dist.const(0.0003), description="Service <-> facilitator, one way.")


class Client(_Strict):
    """The paying side."""

    sign_s: Dist | None = Field(None, description="Signing one authorization; null: the scenario's agents.sign_ms.")
    cpu_s: Dist = Field(
        default_factory=lambda: Dist.const(0.0012),
        description="Load generator CPU per paid request besides signing (driver 'locust' only).",
    )
    cores: int = Field(1, ge=1, description="Load generator processes (driver 'locust' only).")


class Service(_Strict):
    """The resource server process (the SDK middleware around the routes)."""

    cpu_s: Dist = Field(default_factory=lambda: Dist.const(0.0015), description="CPU per paid request.")
    challenge_cpu_s: Dist = Field(default_factory=lambda: Dist.const(0.0004), description="CPU per unpaid 402.")
    voucher_verify_s: Dist = Field(
        default_factory=lambda: Dist.const(0.0005),
        description="CPU of the local check of one batch-settlement voucher (EIP-712 recovery: 0.45 ms median "
                    "measured on the SDK's verify_batch_settlement_voucher_typed_data), besides cpu_s.")
    voucher_wait_s: Dist = Field(
        default_factory=lambda: Dist.const(0.0),
        description="What a voucher waits for at the service that is not CPU the model places (the event loop's "
                    "other work, the channel store's write, the handler's lateness beyond its work); measured.")
    cores: int = Field(1, ge=1, description="CPU servers per services process (one Python process: 1, the GIL); the "
                                            "sim runs the scenario's service_processes of them, on the shared host's "
                                            "cores when machine_cores is set.")


class Chain(_Strict):
    automine_tx_s: float = Field(0.00154, ge=0, description="Anvil automine: time to mine a one-tx block (651 tx/s).")
    automine_slowdown_s_per_block: float = Field(
        1.33e-6, ge=0, description="Anvil automine slows as blocks pile up (651 -> 181 tx/s over 3,000 blocks)."
    )
    block_phase_s: float | None = Field(None, ge=0, description="First block after run start; null: random.")
    receipt_delay_s: float = Field(0.0, ge=0, description="From a block to its receipts being served.")
    block_tx_s: float = Field(
        0.00011, ge=0, description="Interval mining: the node's time per tx to mine a block, during which it answers "
                                   "no RPC (a send waits behind it: with one signer key, every block pauses the "
                                   "sender); on a shared machine only, and part of node_cpu_s. Measured: 0.11 ms.")
    block_history_s: float = Field(
        1.3e-6, ge=0, description="... plus this per tx already in the chain, per block: Anvil's mining slows as its "
                                  "state grows, as automine's does (measured: 1.2-1.5 us, from 10 ms to 26 ms per "
                                  "0.2 s block of ~50 txs over 15,000 payments).")
    node_cpu_s: float = Field(
        0.0, ge=0, description="The node's CPU per payment (its RPC answers, mining); counted only on a shared machine."
    )


class Gas(_Strict):
    """Gas per settlement tx (real USDC's figures, measured)."""

    transfer_existing: int = Field(85_704, ge=21_000, description="transferWithAuthorization to a payee holding USDC.")
    transfer_new: int = Field(102_792, ge=21_000, description="... to a payee with no USDC yet.")
    batch_fixed: int = Field(40_000, ge=21_000, description="Batch tx: base cost whatever its size.")
    batch_per_item: int = Field(48_000, ge=0, description="Batch tx: per authorization (≈48,400/payment at 100).")
    batch_new_recipient_extra: int = Field(17_088, ge=0, description="Extra per first payment to a new payee.")
    payees_prefunded: bool = Field(False, description="Payees already hold USDC, so no first payment is 'new'.")
    # batch-settlement (receipt gasUsed on our escrow contracts). A claim's calldata and memory grow with its
    # channels, so its gas is quadratic in them: fixed + per_channel*n + per_channel_sq*n^2 reproduces the
    # measured 72,404 (1 channel), 216,474 (10) and 1,827,930 (100) exactly; a line through them misses 10 by 7%.
    channel_deposit_new: int = Field(139_278, ge=21_000, description="Deposit that opens a channel.")
    channel_deposit_topup: int = Field(118_479, ge=21_000, description="Deposit into an open channel (a top-up).")
    channel_claim_fixed: int = Field(56_588, ge=0, description="claimWithSignature: base cost whatever its size.")
    channel_claim_per_channel: int = Field(15_797, ge=0, description="claimWithSignature: per channel claimed.")
    channel_claim_per_channel_sq: float = Field(19.1645, ge=0, description="claimWithSignature: per channel squared.")
    channel_settle: int = Field(57_285, ge=21_000, description="settle: claimed money to one receiver.")
    channel_refund: int = Field(75_000, ge=21_000, description="Cooperative refund of one channel's unclaimed rest "
                                "(an estimate, not measured: a claim of one channel plus a transfer back).")

    def channel_claim(self, channels: int) -> int:
        """Gas of one claimWithSignature covering `channels` channels."""
        n = channels
        return int(round(self.channel_claim_fixed + self.channel_claim_per_channel * n
                         + self.channel_claim_per_channel_sq * n * n))


def _default_strategies() -> dict[str, StrategyTiming]:
    ms = Dist.from_ms
    # Our facilitator: about 7 ms of CPU per payment (measured when its RPC moved to aiohttp), async,
    # one tx signed and sent under the key's lock in about a millisecond (Anvil takes ~1,000 raw txs/s).
    own = dict(verify_cpu_s=ms(2.5), verify_io_s=ms(1.5), settle_cpu_s=ms(4.5), settle_io_s=ms(1.0), submit_s=ms(1.2))
    return {
        # Measured with its threads' CPU clocks (services/facilitator/sdk_probe.py) on sim-over, 2 s
        # blocks: 13.4 ms to verify, 16.6 ms to settle up to the send, 1.9 ms per receipt poll of web3's
        # wait_for_transaction_receipt (every 0.1 s from the send, ~9 per payment), 2.6 ms in the event
        # loop (half to each call): ~50 ms per payment, so one process settles ~20/s on its own CPU.
        "sdk": StrategyTiming(threads=40, verify_cpu_s=ms(14.7), verify_io_s=ms(2.0), settle_cpu_s=ms(17.9),
                              settle_io_s=ms(4.0), submit_s=ms(2.0), receipt="poll", receipt_poll_s=0.1,
                              poll_cpu_s=ms(1.9)),
        "sync": StrategyTiming(**own),
        "pipelined": StrategyTiming(**own, answer_after="submitted"),
        "batched": StrategyTiming(**own),
    }


for _name, _timing in _default_strategies().items():
    register("strategy", "calibration", _name, _timing)
# The Gas fields each scheme's costs are drawn from (their defaults are the scheme's calibration).
register("scheme", "calibration", "exact", ("transfer_existing", "transfer_new", "batch_fixed", "batch_per_item",
                                             "batch_new_recipient_extra"))
register("scheme", "calibration", "batch-settlement",
         tuple(name for name in Gas.model_fields if name.startswith("channel_")))


class Calibration(_Strict):
    """Everything the sim takes from measurement rather than from the scenario."""

    version: Literal[1] = CALIBRATION_VERSION
    source: str = Field("defaults", description="'defaults', or the live run folder it was measured on.")
    scenario: str | None = Field(None, description="Name of the scenario it was measured with.")
    facilitator_cores: int = Field(1, ge=1, description="CPU servers of the facilitator (one process: 1, the GIL).")
    loop_round_s: float = Field(
        0.003, gt=0, le=1.0,
        description="Longest an awakened step of our facilitator's event loop waits for its turn (sim/facilitator.py "
                    "_step): a loop serves what is ready at each poll, so a step whose answer came waits for a round "
                    "of the loop, not behind every request still unread; measured as the signer lock's hand-over "
                    "time on saturated live runs (/metrics timing).")
    wakeup_s: float = Field(
        0.00075, ge=0, le=0.1,
        description="On a shared host (machine_cores), how long a process woken while every core is taken waits for "
                    "one: half the kernel's scheduling slice (EEVDF: 0.75 ms x (1 + log2 cores), 1.5 ms on 2 cores). "
                    "Only our facilitator's signer-lock steps take it (sim/facilitator.py _step), where it adds up.")
    machine_cores: int | None = Field(
        None, ge=1, description="Cores the node, facilitator, services and load generator share (a live run on one "
                                "host); null: each has its own, as in a deployment.",
    )
    machine_idle_cores: float = Field(
        0.0, ge=0, description="On a shared host: the CPU the world's processes spend whatever the load (a receipt "
                               "watcher polling, a node mining empty blocks), in cores; measured live between "
                               "Locust's launch and its first request, and left out of every CPU per request.")
    strategies: dict[Strategy, StrategyTiming] = Field(default_factory=_default_strategies)
    network: Network = Field(default_factory=Network)
    client: Client = Field(default_factory=Client)
    service: Service = Field(default_factory=Service)
    chain: Chain = Field(default_factory=Chain)
    gas: Gas = Field(default_factory=Gas)
    max_timeout_s: float = Field(300.0, gt=6, description="Authorization validity (validBefore = sign time + this).")
    t_included: Literal["block", "receipt"] = Field(
        "block", description="Record inclusion at the block's time, or when the facilitator saw the receipt (as live)."
    )
    measured: dict[str, float] = Field(
        default_factory=dict, description="Live figures it was measured against (throughput_rps, settlement p50...)."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_strategies(cls, data: object) -> object:
        """A file may give only the strategies it measured; the others keep their defaults."""
        if isinstance(data, dict) and isinstance(data.get("strategies"), dict):
            merged: dict[str, object] = dict(_default_strategies())
            merged.update(data["strategies"])
            return {**data, "strategies": merged}
        return data

    def strategy(self, name: str) -> StrategyTiming:
        return self.strategies[name]  # type: ignore[index]

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")


def default_calibration() -> Calibration:
    return Calibration()


def load_calibration(path: str | Path | None) -> Calibration:
    """Read a calibration file; None gives the defaults."""
    if path is None:
        return default_calibration()
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read the calibration file ({exc.strerror})") from None
    except ValueError as exc:
        raise CalibrationError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and data.get("version") not in (None, CALIBRATION_VERSION):
        raise CalibrationError(f"{path}: calibration version {data.get('version')!r}; this sim reads version 1")
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise CalibrationError(f"{path}: invalid calibration\n" + "\n".join(lines)) from None


def instant_calibration(**overrides: object) -> Calibration:
    """Every time the calibration owns is zero: only the scenario's own times (work, blocks) remain.

    For theory checks (queueing, block waits) and for isolating one effect in a sweep.
    """
    zero = Dist.const(0.0)
    timing = StrategyTiming(verify_cpu_s=zero, verify_io_s=zero, settle_cpu_s=zero, settle_io_s=zero, submit_s=zero)
    strategies = {name: timing.model_copy(update={"answer_after": t.answer_after})
                  for name, t in _default_strategies().items()}
    base = Calibration(
        source="instant", strategies=strategies, network=Network(rtt_s=zero, hop_s=zero),
        client=Client(sign_s=zero, cpu_s=zero),
        service=Service(cpu_s=zero, challenge_cpu_s=zero, voucher_verify_s=zero, voucher_wait_s=zero),
        chain=Chain(automine_tx_s=0.0, automine_slowdown_s_per_block=0.0),
    )
    return base.model_copy(update=overrides) if overrides else base

"""The scenario's `faults:` timeline as the model applies it.

The live fault driver breaks real processes (SIGKILL, an RPC proxy in front of the node);
the sim knows the whole timeline in advance, so each kind becomes a few windows that the
model's parts query: the facilitator asks whether it is up and when its RPC calls return,
the service whether it is up, the chain whether it may mine. A window is known before it
starts, so a stage whose end was computed ahead (the queues of sim/engine.py resolve at
arrival) can still ask "did a crash fall between my start and my end?" without an event.

What each kind does in the model (mirroring services/faults and services/facilitator):

- facilitator_crash: down for [at_s, at_s + restart_after_s) (to the end without a restart).
  Requests reaching it then are refused at once; every answer it owed dies with it (the
  service answers the client 502); its durable ledger keeps every claim, and on restart it
  re-sends the claims it had not sent while their validBefore allows (OwnEngine._recover),
  while a tx already sent lands on its own and is followed. Batched claims still waiting in
  the batch are re-batched.
- service_crash: down for its window; requests arriving fail at once (the client sees a
  refused connection, status 0) and requests it held lose their answer at the crash (status
  0); a /settle it had already sent goes on at the facilitator.
- chain_stall: no block is mined in the window, and when it ends the node's interval miner
  restarts (first block one block time later, as Anvil's FixedBlockTimeMiner); every RPC call
  of the facilitator sent in the window is held until it ends (the proxy holds, then forwards).
- rpc_latency: each RPC call sent in the window waits ms + uniform(0, jitter_ms) more.
- rpc_errors: each RPC call sent in the window fails with probability `rate`: at once for an
  HTTP error, or after RPC_TIMEOUT_S (capped at the window's end, when the proxy answers the
  calls it held with a 504) for `timeout`. What a failed call does is the facilitator's
  business (sim/facilitator.py): a chain read refuses the payment (unexpected_verify_error),
  a send refuses it (transaction_failed) and releases the claim, a receipt poll is retried at
  the next poll.

A JSON-RPC batch is one HTTP request, hence one call here, as the proxy draws once per request.
Kinds with no model here (tx_dropped, reorg, ...) are refused by name, never ignored; so are the kinds
the channel model cannot honour on batch-settlement routes (all but CHANNEL_SAFE) and agents.retry there.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from sim.dists import stream, uniform
from x402bench.scenario import Scenario, ScenarioError

#: The facilitator's JSON-RPC client gives up after this long (AsyncRpc's total timeout in
#: services/facilitator/evm.py); an `error: timeout` call fails then, or when its window ends.
RPC_TIMEOUT_S = 60.0
#: How long a retried payment waits for the claim it repeats to close (services/facilitator/engines.py):
#: a claim this process is settling is awaited up to the receipt timeout, one left by a crashed
#: process (followed on chain) up to RETRY_WAIT_S; then the answer is settlement_pending.
RECEIPT_TIMEOUT_S = 120.0
RETRY_WAIT_S = 30.0

Window = tuple[float, float]


class FaultPlan:
    """Every modelled fault of one run as windows, and the answers the model's parts ask of them.

    Random draws (RPC jitter and failures) come from their own streams, so a plan never shifts
    the numbers any other part of the model draws, and the same seed replays the same faults.
    """

    def __init__(self, seed: int) -> None:
        self.facilitator_down: list[Window] = []
        self.service_down: list[Window] = []
        self.stalls: list[Window] = []
        self.latency: list[tuple[float, float, float, float]] = []  # start, end, added s, jitter s
        self.errors: list[tuple[float, float, float, bool]] = []  # start, end, rate, is a timeout
        self.windows: list[dict[str, Any]] = []  # what was applied, for summary meta
        self.counts: dict[str, int] = {}  # what the faults did, counted by the parts (summary meta)
        self._jitter = uniform(stream(seed, "faults.rpc.jitter"))
        self._fail = uniform(stream(seed, "faults.rpc.errors"))
        self._watch: dict[int, tuple[float, bool]] = {}  # watcher poll index -> (its end, failed)

    # ---- building -------------------------------------------------------------------------

    def seal(self) -> None:
        """Merge overlapping down and stall windows (a crash while down changes nothing)."""
        self.facilitator_down = _merge(self.facilitator_down)
        self.service_down = _merge(self.service_down)
        self.stalls = _merge(self.stalls)

    @property
    def touches_rpc(self) -> bool:
        """Whether any fault changes how the facilitator's RPC calls go."""
        return bool(self.stalls or self.latency or self.errors)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def report(self) -> dict[str, Any]:
        return {"windows": self.windows, "counts": dict(sorted(self.counts.items()))}

    # ---- queries --------------------------------------------------------------------------

    def rpc(self, t: float, wait: float) -> tuple[float, bool]:
        """When one facilitator RPC call sent at t returns, normally `wait` later, and whether it failed.

        In the proxy's order: held while the node stalls, then the added latency, then the error draw;
        a call that fails is not forwarded, so its normal wait does not apply."""
        for start, end in self.stalls:
            if start <= t < end:
                t = end
                self.count("rpc_held_by_stall")
        for start, end, added, jitter in self.latency:
            if start <= t < end:
                t += added + (jitter * self._jitter() if jitter else 0.0)
        for start, end, rate, timeout in self.errors:
            if start <= t < end and self._fail() < rate:
                self.count("rpc_failed")
                return (min(t + RPC_TIMEOUT_S, end) if timeout else t), True
        return t + wait, False

    def receipt_seen(self, ready: float, phase: float, poll_s: float, shared: bool) -> float:
        """When polls on the grid phase + k*poll_s first read a receipt readable from `ready`.

        A poll is two calls (the head, then the new blocks' receipts, as ReceiptWatcher does); one
        that fails is retried poll_s after it returns. `shared`: one watcher for all txs, so each
        poll's fate is drawn once and every receipt waiting on it shares it (web3-style per-tx
        polling draws its own)."""
        k = math.ceil((ready - phase) / poll_s - 1e-9)
        while True:
            tick = phase + k * poll_s
            outcome = self._watch.get(k) if shared else None
            if outcome is None:
                done, failed = self.rpc(tick, 0.0)
                if not failed:
                    done, failed = self.rpc(done, 0.0)
                outcome = (done, failed)
                if shared and (done != tick or failed):
                    self._watch[k] = outcome
            done, failed = outcome
            if not failed:
                return done
            k = math.ceil((done + poll_s - phase) / poll_s - 1e-9)

    def stall_resume(self, last: float, now: float) -> float | None:
        """The end of a stall that began after the block at `last` or covers `now`, else None."""
        for start, end in self.stalls:
            if last < start <= now or start <= now < end:
                return end
        return None


def down_at(windows: list[Window], t: float) -> bool:
    for start, end in windows:
        if start <= t < end:
            return True
    return False


def crash_in(windows: list[Window], t0: float, t1: float) -> float | None:
    """The first crash (window start) in (t0, t1], if any: what kills work that runs from t0 to t1."""
    for start, _ in windows:
        if t0 < start <= t1:
            return start
    return None


def _merge(windows: list[Window]) -> list[Window]:
    out: list[Window] = []
    for start, end in sorted(windows):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# ---- one model per kind ---------------------------------------------------------------------

#: A fault model: `model(fault, plan)` adds one entry of the scenario's timeline to the plan.
#: An implementation must (1) express the fault only through the plan's windows and parameters,
#: which the model's parts already query (a kind needing a new query adds it to FaultPlan and to
#: the part that must ask it), (2) draw no random numbers (draws happen when an effect applies,
#: from the plan's own streams), and (3) append what it applied to `plan.windows`.
FaultModel = Callable[[Any, FaultPlan], None]


def _applied(plan: FaultPlan, fault: Any, **extra: Any) -> tuple[float, float]:
    start, end = fault.window
    plan.windows.append({"kind": fault.kind, "start_s": start, "end_s": end if math.isfinite(end) else None, **extra})
    return start, end


def _facilitator_crash(fault: Any, plan: FaultPlan) -> None:
    plan.facilitator_down.append(_applied(plan, fault))


def _service_crash(fault: Any, plan: FaultPlan) -> None:
    plan.service_down.append(_applied(plan, fault))


def _chain_stall(fault: Any, plan: FaultPlan) -> None:
    plan.stalls.append(_applied(plan, fault))


def _rpc_latency(fault: Any, plan: FaultPlan) -> None:
    start, end = _applied(plan, fault)
    plan.latency.append((start, end, fault.ms / 1000, fault.jitter_ms / 1000))


def _rpc_errors(fault: Any, plan: FaultPlan) -> None:
    start, end = _applied(plan, fault, **({"timeout_s": RPC_TIMEOUT_S} if fault.error == "timeout" else {}))
    plan.errors.append((start, end, fault.rate, fault.error == "timeout"))


MODELS: dict[str, FaultModel] = {
    "facilitator_crash": _facilitator_crash,
    "service_crash": _service_crash,
    "chain_stall": _chain_stall,
    "rpc_latency": _rpc_latency,
    "rpc_errors": _rpc_errors,
}

#: Kinds that act on the facilitator's own behaviour, modelled for our engines only: the SDK
#: facilitator's RPC calls, crash and retry handling are not modelled call by call.
OWN_ENGINE_ONLY = frozenset({"facilitator_crash", "chain_stall", "rpc_latency", "rpc_errors"})

#: Kinds the channel model (sim/channels.py) honours on batch-settlement routes: they only delay
#: blocks and the facilitator's RPC calls, which deposits, claims and settles meet like any tx.
CHANNEL_SAFE = frozenset({"chain_stall", "rpc_latency"})


def build_plan(scenario: Scenario) -> FaultPlan | None:
    """The plan of the scenario's faults, or None without any (the model then takes no fault path).

    Raises ScenarioError naming the first entry the sim cannot apply, so `x402bench sim` exits 2
    instead of simulating a run that silently lacks it."""
    strategy = scenario.facilitator.strategy
    deferred = [s.name for s in scenario.batch_settlement_services]
    if deferred and scenario.agents.retry.attempts:
        raise ScenarioError(f"{scenario.name}: agents.retry with batch-settlement services ({', '.join(deferred)}) is "
                            "live-only: the sim does not model a resent deposit or voucher (the live agents never "
                            "resend a voucher; the server's corrective 402 puts a lost one right)")
    if strategy == "sdk" and scenario.agents.retry.attempts:
        raise ScenarioError(f"{scenario.name}: agents.retry with facilitator strategy 'sdk' is live-only: the sim "
                            "does not model how the SDK facilitator answers a repeated payment")
    if not scenario.faults:
        return None
    plan = FaultPlan(scenario.seed)
    for i, fault in enumerate(scenario.faults):
        model = MODELS.get(fault.kind)
        if model is None:
            raise ScenarioError(
                f"{scenario.name}: faults.{i} ({fault.kind}) is live-only: the sim does not model it (it models "
                f"{', '.join(MODELS)}); run it with `x402bench load`, or remove it to simulate the rest")
        if deferred and fault.kind not in CHANNEL_SAFE:
            raise ScenarioError(
                f"{scenario.name}: faults.{i} ({fault.kind}) with batch-settlement services ({', '.join(deferred)}) "
                f"is live-only: the sim's channel model honours only {', '.join(sorted(CHANNEL_SAFE))} (a crash or a "
                "failed RPC call would need the services' voucher store and the deposit's recovery, which it does "
                "not model); run it with `x402bench load`, or remove it to simulate the rest")
        if strategy == "sdk" and fault.kind in OWN_ENGINE_ONLY:
            raise ScenarioError(
                f"{scenario.name}: faults.{i} ({fault.kind}) with facilitator strategy 'sdk' is live-only: the sim "
                "models it for our engines (sync, pipelined, batched)")
        model(fault, plan)
    plan.seal()
    return plan

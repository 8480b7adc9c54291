"""The scenario's fault timeline, applied to a live world while Locust drives it.

A `FaultDriver` thread waits for time zero of the run clock (the moment traffic starts, written
by the locustfile), then strikes each fault at its `at_s` and ends it after `for_s` (windows) or
`restart_after_s` (crashes). Every kind is declared in `LIVE_FAULTS` with what it needs of the
world; `check_faults` refuses, before anything starts, a kind that this world cannot apply (an
outside facilitator cannot be crashed by us), so no fault is accepted and silently skipped.

What each kind does here:
- facilitator_crash / service_crash: SIGKILL of that process; a restart on the same port (the
  facilitator keeps its ledger and recovers what it had accepted). With several services processes
  (service_processes) "the services" are all of them: each is killed by its own PID and all restart on
  the shared port.
- chain_stall, rpc_latency, rpc_errors, tx_dropped: a mode of the JSON-RPC fault proxy between
  our facilitator and the node (services.faults).
- facilitator_5xx_after_settle: a mode of the HTTP fault proxy between our services and the facilitator.
- reorg: `anvil_reorg(depth)` on the node: the last `depth` blocks are replaced by empty ones.
- signer_out_of_gas: the facilitator's signer keys are set to 0 ETH, then given their ETH back.
- client_disconnect: applied by the agents themselves (loadtest/locustfile.py); logged here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from services.chain import Rpc
from services.faults.control import FaultControl
from services.stack import SIGNER_ETH_WEI, World
from x402bench.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class LiveFault:
    """What a fault kind needs of the world to be applied: own processes, a proxy, an Anvil node, a target."""

    needs_started: tuple[str, ...] = ()  # parts x402bench must have started itself
    proxy: str | None = None  # "rpc" or "http"
    anvil: bool = False  # uses anvil_* methods on the node
    service_target: bool = False  # only meaningful when agents pay priced services


LIVE_FAULTS: dict[str, LiveFault] = {
    "facilitator_crash": LiveFault(needs_started=("facilitator",)),
    "service_crash": LiveFault(needs_started=("services",), service_target=True),
    "chain_stall": LiveFault(needs_started=("facilitator",), proxy="rpc", anvil=True),
    "rpc_latency": LiveFault(needs_started=("facilitator",), proxy="rpc"),
    "rpc_errors": LiveFault(needs_started=("facilitator",), proxy="rpc"),
    "tx_dropped": LiveFault(needs_started=("facilitator",), proxy="rpc", anvil=True),
    "reorg": LiveFault(anvil=True),
    "signer_out_of_gas": LiveFault(needs_started=("facilitator",), anvil=True),
    "facilitator_5xx_after_settle": LiveFault(needs_started=("services",), proxy="http", service_target=True),
    "client_disconnect": LiveFault(service_target=True),
}


def check_faults(scenario: Scenario, started: list[str], target: str) -> None:
    """Refuse, naming the fault, what this run could not apply."""
    for i, fault in enumerate(scenario.faults):
        need = LIVE_FAULTS.get(fault.kind)
        where = f"{scenario.name}: faults.{i} ({fault.kind})"
        if need is None:
            raise ScenarioError(f"{where}: not applied by live runs yet")
        missing = [p for p in need.needs_started if p not in started]
        if missing:
            raise ScenarioError(f"{where}: needs x402bench's own {' and '.join(missing)} (this run uses an outside one)")
        if need.service_target and target != "service":
            raise ScenarioError(f"{where}: only applies when the agents pay priced services (--target service)")
        chain = scenario.chain
        if fault.kind == "tx_dropped" and chain.mining == "auto":
            raise ScenarioError(f"{where}: an automining node mines a tx before it can be dropped; use interval mining")
        if fault.kind == "chain_stall" and chain.mining == "interval" and not float(chain.block_time_s or 0).is_integer():
            raise ScenarioError(f"{where}: Anvil cannot restore a sub-second block interval after a stall "
                                f"(chain.block_time_s {chain.block_time_s})")


@dataclass
class Applied:
    """One fault as it really happened, on the run clock (summary meta `faults_applied`)."""

    kind: str
    at_s: float
    started_s: float | None = None
    ended_s: float | None = None
    error: str = ""


@dataclass
class FaultDriver:
    """Runs the timeline in a thread; `stop()` ends every fault still on (in any case, before teardown)."""

    scenario: Scenario
    world: World
    started_file: Path
    applied: list[Applied] = field(default_factory=list)
    t0: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def start(self) -> "FaultDriver":
        if self.scenario.faults:
            self._thread = threading.Thread(target=self._run, name="fault-driver", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception:  # noqa: BLE001 - teardown must go on; the world stops every process anyway
                pass
        self._undo.clear()

    # --- the timeline ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self.started_file.exists():
            if self._stop.wait(0.05):
                return
        self.t0 = float(self.started_file.read_text() or time.time())
        events: list[tuple[float, int, Callable[[], None]]] = []
        for i, fault in enumerate(self.scenario.faults):
            record = Applied(fault.kind, fault.at_s)
            self.applied.append(record)
            begin, end = self._actions(fault)
            events.append((fault.at_s, 2 * i, self._timed(record, begin, "started_s")))
            stop_at = fault.window[1]
            if end is not None and stop_at != float("inf"):
                events.append((stop_at, 2 * i + 1, self._timed(record, end, "ended_s")))
        for at, _, action in sorted(events, key=lambda e: (e[0], e[1])):
            wait = self.t0 + at - time.time()
            if wait > 0 and self._stop.wait(wait):
                return
            action()

    def _timed(self, record: Applied, action: Callable[[], None], when: str) -> Callable[[], None]:
        def run() -> None:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a fault that fails to apply is reported, not fatal
                record.error = f"{type(exc).__name__}: {exc}"
            setattr(record, when, time.time() - (self.t0 or time.time()))
        return run

    def _actions(self, fault: Any) -> tuple[Callable[[], None], Callable[[], None] | None]:
        """(strike, end) for one fault; end None for one-shot kinds."""
        kind = fault.kind
        info = self.world.info
        if kind in ("facilitator_crash", "service_crash"):
            # a ServiceProcess, or for several services processes their ProcessGroup: kill() SIGKILLs each
            # by its own PID, start(port=...) brings every one back on the same address
            process = self.world.process("facilitator" if kind == "facilitator_crash" else "services")
            port = process.port
            restart = (lambda: process.start(port=port)) if fault.restart_after_s else None
            return process.kill, restart
        if kind == "reorg":
            return (lambda: Rpc(info.rpc_url).call("anvil_reorg", fault.depth, [])), None
        if kind == "signer_out_of_gas":
            rpc = Rpc(info.rpc_url)
            set_all = lambda wei: rpc.batch([("anvil_setBalance", [a, hex(wei)]) for a in info.signers])  # noqa: E731
            refill = lambda: set_all(SIGNER_ETH_WEI)  # noqa: E731
            self._undo.append(refill)
            return (lambda: set_all(0)), refill
        if kind == "client_disconnect":
            return (lambda: None), (lambda: None)  # the agents hang up themselves, on the same clock
        proxy, mode, params = _proxy_mode(fault)
        control = FaultControl(info.fault_proxies[proxy])
        self._undo.append(lambda: control.clear(mode))
        return (lambda: control.set(mode, **params)), (lambda: control.clear(mode))


def _proxy_mode(fault: Any) -> tuple[str, str, dict[str, Any]]:
    """The proxy, its mode and params that apply a proxied fault kind."""
    if fault.kind == "chain_stall":
        return "rpc", "stall", {}
    if fault.kind == "rpc_latency":
        return "rpc", "latency", {"ms": fault.ms, "jitter_ms": fault.jitter_ms}
    if fault.kind == "rpc_errors":
        return "rpc", "errors", {"rate": fault.rate, "error": fault.error}
    if fault.kind == "tx_dropped":
        return "rpc", "drop_sent", {}
    if fault.kind == "facilitator_5xx_after_settle":
        return "http", "5xx_after_settle", {}
    raise ValueError(f"{fault.kind} is not applied through a proxy")

"""Drive a fault proxy from Python: switch modes, read counters; start and stop one as a child.

    rpc = FaultProxyProcess("rpc", upstream=anvil.url, log_path=workdir / "rpc-proxy.log").start()
    control = FaultControl(rpc.url)
    control.set("latency", ms=200, jitter_ms=50)
    control.set("stall")            # returns once the node has stopped mining
    control.clear("stall")          # returns once its mining mode is back
    control.state()["counters"]     # services.faults.api.RpcCounters
    rpc.stop()

Plain urllib, no event loop: the caller is a fault timeline thread, a test, or a Locust
process with gevent's own loop. Every failure raises FaultControlError naming the URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.chain import terminate
from services.process import ServiceProcess
from services.faults.api import ALL, FaultChange, FaultState
from services.paths import python_module

MODULES = {"rpc": "services.faults.rpc_proxy", "http": "services.faults.http_proxy"}


class FaultControlError(RuntimeError):
    """The proxy did not answer, or refused the change (its `error` text is in the message)."""


class FaultControl:
    """The control API (POST/GET /_faults) of one proxy at `url`."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def set(self, mode: str, **params: Any) -> FaultState:
        """Switch `mode` on with `params` (replacing its params when it is on already)."""
        return self._post({"mode": mode, "on": True, "params": params})

    def clear(self, mode: str) -> FaultState:
        """Switch `mode` off (a no-op when it is off)."""
        return self._post({"mode": mode, "on": False})

    def clear_all(self) -> FaultState:
        return self._post({"mode": ALL, "on": False})

    def state(self) -> FaultState:
        return self._request(urllib.request.Request(f"{self.url}/_faults"))

    def _post(self, change: FaultChange) -> FaultState:
        return self._request(urllib.request.Request(
            f"{self.url}/_faults", data=json.dumps(change).encode(), headers={"Content-Type": "application/json"}))

    def _request(self, request: urllib.request.Request) -> Any:
        what = f"{request.get_method()} {request.full_url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            raise FaultControlError(f"{what}: HTTP {exc.code}{': ' + reason if reason else ''}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FaultControlError(f"{what}: the fault proxy did not answer ({reason})") from None


class FaultProxyProcess(ServiceProcess):
    """One proxy as a child process (`python -m services.faults.<kind>_proxy`), stopped by its own PID."""

    def __init__(self, kind: str, upstream: str, port: int | None = None, log_path: Path | str | None = None,
                 seed: int = 42, max_hold_s: float = 120.0) -> None:
        if kind not in MODULES:
            raise ValueError(f"kind {kind!r}: choose from {', '.join(MODULES)}")
        super().__init__(f"the {kind} fault proxy", MODULES[kind], None, Path(log_path) if log_path else None)
        self.kind = kind
        self.upstream = upstream
        self.port = port or 0
        self.seed = seed
        self.max_hold_s = max_hold_s

    @property
    def control(self) -> FaultControl:
        return FaultControl(self.url)

    def command(self) -> list[str]:
        return python_module(MODULES[self.kind], "--upstream", self.upstream, "--port", str(self.port),
                             "--seed", str(self.seed), "--max-hold-s", str(self.max_hold_s))

    def ready(self) -> bool:
        """GET /_faults answers: the proxy's own liveness (it asks nothing upstream)."""
        try:
            self.control.state()
        except FaultControlError:
            return False
        return True

    def start(self, timeout_s: float = 15.0, port: int | None = None) -> "FaultProxyProcess":
        super().start(timeout_s, port)
        return self

    def stop(self) -> None:
        """SIGTERM (the proxy switches every mode off, restoring a stalled node's mining), SIGKILL if it lingers."""
        process, self.process = self.process, None
        terminate(process, grace_s=10)

    def __enter__(self) -> "FaultProxyProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Anvil, the local chain: started on a free loopback port, stopped by its own PID.

The npm package `@foundry-rs/anvil` ships the native binary next to a Node
wrapper; we start the native binary so that the PID we hold (and stop) is
Anvil's own and no orphan survives a test. Which binary: services/paths.py
($X402BENCH_ANVIL, the checkout's node_modules, then PATH).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.paths import IMPORT_ROOT, AnvilNotFound, anvil_binary  # noqa: F401 - re-exported

#: The folder holding the packages: the checkout, or site-packages for an installed wheel (see services/paths.py).
REPO_ROOT = IMPORT_ROOT

#: Anvil's well-known first dev account: funded at genesis, used as deployer and minter.
DEV_PRIVATE_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


class ChainError(RuntimeError):
    """Anvil could not be started, or answered an RPC call with an error."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate(process: "subprocess.Popen[bytes] | None", grace_s: float = 10.0) -> None:
    """Stop one child by its own PID: SIGTERM, then SIGKILL if it lingers past `grace_s`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class Rpc:
    """A minimal JSON-RPC client over keep-alive-free urllib: no event loop, usable from any thread."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self._id = 0

    def _post(self, body: Any) -> Any:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def call(self, method: str, *params: Any) -> Any:
        self._id += 1
        reply = self._post({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        if "error" in reply:
            raise ChainError(f"{method} failed: {reply['error'].get('message', reply['error'])}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Send many calls in one HTTP request; results come back in call order."""
        if not calls:
            return []
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        replies = sorted(self._post(body), key=lambda r: r["id"])
        for reply in replies:
            if "error" in reply:
                method = calls[reply["id"]][0]
                raise ChainError(f"{method} failed: {reply['error'].get('message', reply['error'])}")
        return [r["result"] for r in replies]


@dataclass
class Anvil:
    """One Anvil process. Use as a context manager, or call start() and stop()."""

    chain_id: int = 31337
    mining: str = "auto"  # auto | interval | manual
    block_time_s: float | None = None
    gas_limit: int = 60_000_000
    log_path: Path | None = None
    base_fee_gwei: float = 0.0  # a free chain: money comes from the scenario's economics
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rpc(self) -> Rpc:
        return Rpc(self.url)

    def command(self) -> list[str]:
        args = [
            str(anvil_binary()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--gas-limit", str(self.gas_limit),
            "--base-fee", str(int(self.base_fee_gwei * 1e9)),
            "--gas-price", "0",
            "--accounts", "1",
            "--balance", "1000000",
            "--code-size-limit", "100000",
        ]
        if self.mining == "interval":
            args += ["--block-time", str(self.block_time_s)]
        elif self.mining == "manual":
            args += ["--no-mining"]
        return args

    def start(self, timeout_s: float = 20.0) -> "Anvil":
        if self.process is not None:
            raise ChainError("Anvil is already running")
        anvil_binary()  # a missing Anvil is said before any log file is opened or port taken
        last_error = ""
        for _ in range(3):  # a free port can be taken between probing and binding; retry on that race
            self.port = free_port()
            self._log_file = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
            self.process = subprocess.Popen(
                self.command(), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = f"Anvil exited with status {self.process.returncode}"
                    break
                try:
                    if int(self.rpc.call("eth_chainId"), 16) == self.chain_id:
                        return self
                except (OSError, ChainError):
                    time.sleep(0.02)
            else:
                last_error = f"Anvil did not answer within {timeout_s} s"
            self.stop()
        raise ChainError(f"{last_error} (log: {self.log_path or 'not kept'})")

    def stop(self) -> None:
        """Stop Anvil by its PID: SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        terminate(process, grace_s=5)
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
        self._log_file = None

    def __enter__(self) -> "Anvil":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- chain control -------------------------------------------------------------------

    def snapshot(self) -> str:
        return self.rpc.call("evm_snapshot")

    def revert(self, snapshot_id: str) -> bool:
        return bool(self.rpc.call("evm_revert", snapshot_id))

    def mine(self, blocks: int = 1) -> None:
        self.rpc.call("anvil_mine", hex(blocks))

    def set_balance(self, address: str, wei: int) -> None:
        self.rpc.call("anvil_setBalance", address, hex(wei))

    def set_balances(self, addresses: list[str], wei: int, chunk: int = 2000) -> None:
        """Give many accounts ETH in batched RPC calls (no transactions, no blocks)."""
        for start in range(0, len(addresses), chunk):
            self.rpc.batch([("anvil_setBalance", [a, hex(wei)]) for a in addresses[start : start + chunk]])

    def switch_mining(self, mining: str, block_time_s: float | None = None) -> None:
        """Change the mining mode of the running node (interval only in whole seconds, as Anvil takes it)."""
        if mining == "auto":
            self.rpc.call("evm_setAutomine", True)
        elif mining == "manual":
            self.rpc.call("evm_setAutomine", False)
        elif block_time_s is not None and float(block_time_s).is_integer():
            self.rpc.call("evm_setIntervalMining", int(block_time_s))
        else:
            raise ChainError(f"Anvil can only switch to whole-second intervals, not {block_time_s} s")
        self.mining, self.block_time_s = mining, block_time_s

    def block_number(self) -> int:
        return int(self.rpc.call("eth_blockNumber"), 16)

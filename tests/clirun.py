"""Running x402bench the way a user does: as a command in its own process, and `up` in the background."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.chain import REPO_ROOT, terminate


def x402bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", *args], capture_output=True, text=True, timeout=timeout)


def only_summary(out_root: Path) -> dict[str, Any]:
    """The summary.json of the one run written under `out_root`."""
    (path,) = out_root.glob("*/*/summary.json")
    return json.loads(path.read_text())


@contextmanager
def running_up(world_json: Path, *args: str, timeout_s: float = 90) -> Iterator[dict[str, Any]]:
    """`x402bench up SCENARIO ... --json FILE` in the background; yields the world file, then Ctrl-C and wait."""
    up = subprocess.Popen([sys.executable, "-m", "x402bench", "up", *args, "--json", str(world_json)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not world_json.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.1)
        if not world_json.exists():
            up.kill()
            raise AssertionError(f"`up` wrote no world file: {up.communicate(timeout=30)[0]}")
        yield json.loads(world_json.read_text())
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.communicate()


@contextmanager
def running(name: str, command: list[str], port: int, logdir: Path, timeout_s: float = 30.0) -> Iterator[str]:
    """Start one part, yield its base URL once GET /health answers 200, stop it by its PID after."""
    log_path = logdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} before answering /health:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not answer /health within {timeout_s} s:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        terminate(process, grace_s=5)
        assert process.poll() is not None, f"{name} (pid {process.pid}) is still running"

"""Shared pytest fixtures. Keep this small: fixtures used by one file belong in that file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.chain import Anvil

#: Mining modes a test can ask for with `@pytest.mark.parametrize("anvil", [...], indirect=True)`.
_MINING = {"auto": ("auto", None), "interval": ("interval", 0.2), "manual": ("manual", None)}


@pytest.fixture
def anvil(request: pytest.FixtureRequest) -> Iterator[Anvil]:
    """A fresh real Anvil per test (it starts in well under a second), stopped by its PID after.

    Automine by default; parametrize indirectly with "interval" (0.2 s blocks) or "manual".
    """
    mining, block_time = _MINING[getattr(request, "param", "auto")]
    chain = Anvil(mining=mining, block_time_s=block_time)
    with chain:
        yield chain
    assert chain.process is None, "Anvil was left running"


_WORLD_MARKERS = ("anvil-linux", "anvil-darwin", "services.facilitator", "services.resource", "loadtest/locustfile.py",
                  "tests/outside/", "services.faults",
                  # a Dask cluster: `dask scheduler` / `dask worker`, and the worker processes a nanny
                  # spawns, whose command lines name only multiprocessing
                  "dask scheduler", "dask worker", "distributed.cli", "multiprocessing.spawn")


#: Every process this session starts inherits this mark in its environment (nothing here passes a
#: bare environment to a child), so the leak check below counts this session's processes only: a
#: second pytest session, a benchmark or a user's own world on the same machine is none of its business.
SESSION_MARK = "X402BENCH_TEST_SESSION"


def _world_processes(mark: str) -> set[tuple[int, str]]:
    """(pid, command line) of every live Anvil, facilitator, service or Locust process carrying `mark`."""
    found = set()
    wanted = f"{SESSION_MARK}={mark}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z" or not any(marker in cmd for marker in _WORLD_MARKERS):
                continue
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        found.add((int(entry.name), cmd.strip()))
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fail the session if the tests leave any world process of theirs behind."""
    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK] = mark
    before = _world_processes(mark)  # empty unless a mark collides; kept so the check reads as a difference
    yield
    deadline = time.monotonic() + 10
    while (leaked := _world_processes(mark) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"tests left processes running: {sorted(leaked)}"


@pytest.fixture
def x402bench_here(capfd: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`x402bench ARGS...` through the command's own entry point (x402bench.cli.main, what `python -m
    x402bench` runs) in this process: the same code, its exit code and what it wrote to the real stdout
    and stderr (fd level), without the seconds a new interpreter takes to import it. An exception main()
    lets through fails the test where it is raised (a user would have seen a traceback). Only the SIGTERM
    handler main() installs is left out: it belongs to a process of its own, not to pytest's. Tests that
    prove the installed command itself still run it in a process of its own."""
    import x402bench.cli as entry

    monkeypatch.setattr(entry, "_exit_on_sigterm", lambda: None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        code: int | str | None = 0
        with monkeypatch.context() as argv:
            argv.setattr(sys, "argv", ["x402bench", *args])
            try:
                entry.main()
            except SystemExit as exc:
                code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(list(args), code if isinstance(code, int) else (0 if code is None else 1),
                                           out, err)

    return run

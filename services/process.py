"""Child processes of the world: started on a free loopback port, stopped by their own PID.

Every server the world runs (facilitator, priced services) is a `python -m` module
serving one FastAPI app from a JSON config file, so this is the one place that knows
how to start, health-check and stop them, and how to serve an app from such a module.

The priced services may run as several processes on one address (Scenario.service_processes): a
`ProcessGroup` of `SharedPortMember`s, each bound to the shared port with SO_REUSEPORT and to a port
of its own for its health check, each still a child stopped by its own PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from services.chain import free_port, terminate
from services.paths import child_env, python_module

#: How long a stopping child may take to exit after SIGTERM (its shutdown flush included) before SIGKILL.
STOP_GRACE_S = 10.0


def write_private(path: str | Path, text: str) -> None:
    """Files holding private keys (local test keys, but keys) are readable by their owner only, and appear
    whole (written aside, then renamed), so a reader polling for the file never reads half of it."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(aside, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(aside, path)


class ServiceProcess:
    """One `python -m MODULE CONFIG --port N` child, with its log in a file.

    A subclass that starts another kind of server supplies `command()` (its argv, using `self.port`)
    and `ready()` (True once it serves; False or OSError while it does not yet)."""

    def __init__(self, name: str, module: str, config_path: Path | None, log_path: Path | None) -> None:
        self.name = name
        self.module = module
        self.config_path = config_path
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return python_module(self.module, str(self.config_path), "--port", str(self.port))

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
            return response.status == 200

    def start(self, timeout_s: float = 30.0, port: int | None = None) -> "ServiceProcess":
        """Start and wait until ready; `port` reuses a known one (a restart others already point at)."""
        self.launch(port)
        self.wait_ready(timeout_s)
        return self

    def launch(self, port: int | None = None) -> None:
        """Start the child without waiting for it (a group launches all its members, then waits for each)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        self.port = port or self.port or free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**child_env(), "PYTHONUNBUFFERED": "1"}  # in our cwd: relative paths mean what they meant to us
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        if log is not subprocess.DEVNULL:
            log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll `ready()` until it says yes; a child that exits or stays unready is an error (and is stopped)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not launched")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
                self.process = None
                raise RuntimeError(f"{self.name} exited with status {status}:\n{tail}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {timeout_s} s (log: {self.log_path})")

    def stop(self) -> None:
        process, self.process = self.process, None
        terminate(process, STOP_GRACE_S)

    def kill(self) -> None:
        """SIGKILL by its own PID, and reap it: a crash (no shutdown flush, nothing cleaned up)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class SharedPortMember(ServiceProcess):
    """One of several processes serving one address: it binds `shared_port` with SO_REUSEPORT (the kernel
    spreads incoming connections over every socket bound so) and its own `port` besides.

    Why a port of its own: a request to the shared port reaches whichever member the kernel picks, so a
    health check there cannot tell that *this* member is up. `url` is the member's own address; its
    /health must answer with this member's PID."""

    def __init__(self, name: str, module: str, config_path: Path | None, log_path: Path | None,
                 shared_port: int) -> None:
        super().__init__(name, module, config_path, log_path)
        self.shared_port = shared_port

    def command(self) -> list[str]:
        return [*super().command(), "--reuse-port", str(self.shared_port)]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
            return response.status == 200 and json.loads(response.read()).get("pid") == self.pid


class ProcessGroup:
    """Several ServiceProcess children serving one address, looked up, crashed and restarted as one part.

    Every member is its own child, started, health-checked and stopped by its own PID; the group only
    does it for all of them (`port` and `url` are the shared address clients use)."""

    def __init__(self, name: str, members: list[SharedPortMember], port: int) -> None:
        self.name = name
        self.members = members
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.members[0].pid if self.members else None

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid]

    def start(self, timeout_s: float = 30.0, port: int | None = None) -> "ProcessGroup":
        """Launch every member, then wait for each (in parallel: a member's imports take ~2 s); if one fails,
        stop them all. `port` must be the group's own (a restart keeps the address)."""
        if port is not None and port != self.port:
            raise ValueError(f"{self.name} serves port {self.port}; it cannot move to {port}")
        try:
            for member in self.members:
                member.launch()
            for member in self.members:
                member.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every member by its PID at once, then wait for each (SIGKILL past the grace): their shutdown
        flushes run side by side, serialised by the channel claim lock (services.resource.channels)."""
        running = [(m, m.process) for m in self.members if m.process is not None and m.process.poll() is None]
        for member, process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for member, process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for member in self.members:
            member.stop()  # forgets the reaped children; stops any that was not running when we looked

    def kill(self) -> None:
        """SIGKILL every member, each by its own PID (a crash of "the services")."""
        for member in self.members:
            member.kill()


def freeze_startup_heap() -> None:
    """Keep what the imports and the app's construction made out of every later full garbage collection.

    A server imports web3, the x402 SDK, pydantic and FastAPI: a few hundred thousand objects that live as long
    as the process. CPython's full (generation 2) collection walks all of them every time and finds nothing to
    free, and the event loop stands still meanwhile: measured on a saturated world (0.2 s blocks, 240 paid
    req/s), the facilitator paused 100-254 ms every 5-10 s and the services process 260-363 ms every 7-15 s,
    collecting 0 objects, and those pauses were most of the run's latency tail. Frozen (`gc.freeze`), they
    are no longer walked; what the process allocates afterwards is collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


def frozen_after_startup(app: Any) -> Any:
    """The FastAPI `app`, with freeze_startup_heap run once its lifespan has started (its RPC clients, SDK
    servers and stores made: another ~30,000-45,000 objects that live as long as the process)."""
    from contextlib import asynccontextmanager

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(target: Any) -> Any:
        async with inner(target) as state:
            freeze_startup_heap()
            yield state

    app.router.lifespan_context = lifespan
    return app


def serve_main(doc: str, load: Callable[[str], Any], create_app: Callable[[Any], Any]) -> None:
    """The body of a server module's `__main__`: load its config, serve on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("config")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = frozen_after_startup(create_app(load(args.config)))
    freeze_startup_heap()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)

"""Child processes of the world: started on a free loopback port, stopped by their own PID.

Every server the world runs (facilitator, priced services) is a `python -m` module
serving one FastAPI app from a JSON config file, so this is the one place that knows
how to start, health-check and stop them, and how to serve an app from such a module.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from services.chain import REPO_ROOT, free_port, terminate


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
        return [sys.executable, "-m", self.module, str(self.config_path), "--port", str(self.port)]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
            return response.status == 200

    def start(self, timeout_s: float = 30.0, port: int | None = None) -> "ServiceProcess":
        """Start and wait until ready; `port` reuses a known one (a restart others already point at)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        self.port = port or self.port or free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                        start_new_session=True, env=env)
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
                self.process = None
                raise RuntimeError(f"{self.name} exited with status {status}:\n{tail}")
            try:
                if self.ready():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {timeout_s} s (log: {self.log_path})")

    def stop(self) -> None:
        process, self.process = self.process, None
        terminate(process)


def serve_main(doc: str, load: Callable[[str], Any], create_app: Callable[[Any], Any]) -> None:
    """The body of a server module's `__main__`: load its config, serve on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("config")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(load(args.config)), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, backlog=4096)

"""`python -m services.resource CONFIG.json --port N [--reuse-port SHARED]`: one priced-service process.

Served as services.process.serve_main serves, with uvicorn's fast parts asked for by name (httptools,
uvloop: `auto` falls back to the pure-Python ones without a word when a package is missing) and the
per-request extras off (proxy headers, Server and Date headers, access log): on a batch-settlement route
the services process is the run's bottleneck, and these are CPU on every request.

With `--reuse-port SHARED` the process is one of several serving the same address (Scenario.service_processes):
it binds SHARED with SO_REUSEPORT, as every other member does, so the kernel spreads connections over the
members, and it serves `--port` too, an address of its own that its health check (and a test wanting this very
process) can reach.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
from typing import Any

import uvicorn

from services.process import freeze_startup_heap, frozen_after_startup
from services.resource.app import ResourceConfig, create_app

BACKLOG = 4096


def listening_socket(port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket listening on 127.0.0.1:port, bound with SO_REUSEPORT when several processes share it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", type=int, default=None,
                        help="also serve this port, shared with the other services processes (SO_REUSEPORT)")
    args = parser.parse_args()
    options: dict[str, Any] = dict(
        log_level="warning", access_log=False, backlog=BACKLOG, proxy_headers=False, server_header=False,
        date_header=False, http="httptools" if importlib.util.find_spec("httptools") else "auto",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "auto")
    app = frozen_after_startup(create_app(ResourceConfig.load(args.config)))
    freeze_startup_heap()
    if args.reuse_port is None:
        uvicorn.run(app, host="127.0.0.1", port=args.port, **options)
        return
    sockets = [listening_socket(args.reuse_port, reuse_port=True), listening_socket(args.port, reuse_port=False)]
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, **options)).run(sockets=sockets)


if __name__ == "__main__":
    main()

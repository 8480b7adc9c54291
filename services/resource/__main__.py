"""`python -m services.resource CONFIG.json --port N`: one priced-service process.

Served as services.process.serve_main serves, with uvicorn's fast parts asked for by name (httptools,
uvloop: `auto` falls back to the pure-Python ones without a word when a package is missing) and the
per-request extras off (proxy headers, Server and Date headers, access log): on a batch-settlement route
the services process is the run's bottleneck, and these are CPU on every request.
"""

import argparse
import importlib.util

import uvicorn

from services.resource.app import ResourceConfig, create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(ResourceConfig.load(args.config)), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, backlog=4096, proxy_headers=False, server_header=False, date_header=False,
                http="httptools" if importlib.util.find_spec("httptools") else "auto",
                loop="uvloop" if importlib.util.find_spec("uvloop") else "auto")


if __name__ == "__main__":
    main()

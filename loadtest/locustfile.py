"""Locust users that are paying x402 agents.

Run by `x402bench load` (which sets the X402BENCH_* variables below), or by hand against
a world brought up with `x402bench up --json world.json`, e.g. across machines:

    X402BENCH_SCENARIO=scenarios/base-like.yaml X402BENCH_WORLD=world.json \\
        locust -f loadtest/locustfile.py --master --headless -u 200 -r 50 -t 60s --expect-workers 2
    X402BENCH_SCENARIO=... X402BENCH_WORLD=... X402BENCH_WORKERS=2 \\
        locust -f loadtest/locustfile.py --worker --master-host <master>

Each process writes its own per-request records to X402BENCH_PARTS at the end of the test;
the runner merges them, so nothing but Locust's own stats crosses the master/worker wire.

Locust's statistics hold one entry per payment, named by route (request type PAY); the HTTP round trips inside
it and the settlement latency are in a table of their own, the web UI's "x402" tab (loadtest.round_trips).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import gevent
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.runners import STATE_RUNNING, LocalRunner, MasterRunner, WorkerRunner

from loadtest import cpu, round_trips
from loadtest.paying import (
    BATCH_SETTLEMENT, BROKE_REASONS, AgentWallet, Manners, facilitator_requirement, pay, pay_channel, settle_direct,
)
from services.payer.payload import Quote
from x402bench.behaviour import Pacer, RouteChooser, agents_of_user, request_rng
from x402bench.results.records import RequestRecord, write_csv
from x402bench.scenario import load_scenario

SCENARIO = load_scenario(os.environ["X402BENCH_SCENARIO"])
WORLD = json.loads(Path(os.environ["X402BENCH_WORLD"]).read_text())
PARTS = Path(os.environ.get("X402BENCH_PARTS", "."))
WORKERS = max(1, int(os.environ.get("X402BENCH_WORKERS", "1")))
PROGRESS = os.environ.get("X402BENCH_PROGRESS")
#: Written once, when traffic starts: time zero of the run clock, which the fault timeline runs on.
STARTED = os.environ.get("X402BENCH_STARTED")
#: Written once the test has stopped and this process's records are written (the master's, or the only one's):
#: with the web UI up, Locust keeps running after the test, and the runner goes on when this appears.
STOPPED = os.environ.get("X402BENCH_STOPPED")
#: How long a client_disconnect agent waits after sending its payment before hanging up.
DISCONNECT_AFTER_S = 0.05
RETRY = SCENARIO.agents.retry
DISCONNECTS = [(f.window, f.rate) for f in SCENARIO.faults if f.kind == "client_disconnect"]
_t0: list[float] = []
MAX_REQUESTS = int(os.environ.get("X402BENCH_MAX_REQUESTS", "0")) or None
#: "service": pay the priced routes; "facilitator": sign and call /verify + /settle, no service between.
TARGET = os.environ.get("X402BENCH_TARGET", "service")

if TARGET == "facilitator":
    PRICES = {v.name: SCENARIO.price_atomic(v) for v in SCENARIO.services}
    QUOTES = {name: Quote.from_requirement(facilitator_requirement(WORLD["network"], WORLD["token"],
                                                                   WORLD["payees"][0], price))
              for name, price in PRICES.items()}
    HOST = WORLD["facilitator_url"].rstrip("/")
else:
    PRICES = {name: int(price) for name, price in WORLD["prices"].items()}
    HOST = "/".join(next(iter(WORLD["service_urls"].values())).split("/", 3)[:3])
ROUTES = RouteChooser.for_routes(SCENARIO, list(PRICES))
#: Each route's x402 scheme, from the scenario (routes it does not name, outside services, are exact).
SCHEMES = {v.name: v.scheme for v in SCENARIO.services}
RECORDS: list[RequestRecord] = []
BROKE: set[int] = set()
_local_users = itertools.count()
_written = False


def _worker_index(environment) -> int:  # noqa: ANN001
    runner = environment.runner
    return max(0, runner.worker_index) if isinstance(runner, WorkerRunner) else 0


class PayingAgent(FastHttpUser):
    """One Locust user speaking for every agent index congruent to it modulo the user count."""

    host = HOST
    connection_timeout = 30.0
    network_timeout = 300.0

    def on_start(self) -> None:
        self.client.request_event = round_trips.EVENT  # round trips to the x402 table: one PAY entry per payment
        users = max(1, self.environment.parsed_options.num_users if self.environment.parsed_options else SCENARIO.run.users)
        index = next(_local_users) * WORKERS + _worker_index(self.environment)
        agents = WORLD["agents"]
        mine = agents_of_user(index, users, len(agents))
        self.wallets = [
            AgentWallet(i, agents[i]["private_key"], WORLD["network"], SCENARIO.agents.cache_requirements,
                        SCENARIO.spend_cap_atomic())
            for i in mine
        ]
        self.turn = itertools.cycle(range(len(self.wallets))) if self.wallets else None
        self.pacer = Pacer.for_user(SCENARIO, index, len(self.wallets))
        self.started = time.monotonic()
        if not self.wallets:
            self.stop()

    def wait_time(self) -> float:
        return self.pacer.wait(time.monotonic() - self.started)

    def _next_wallet(self) -> AgentWallet | None:
        for _ in range(len(self.wallets)):
            wallet = self.wallets[next(self.turn)]
            if wallet.index not in BROKE:
                return wallet
        return None

    def _route_price(self, route: str) -> int:
        return PRICES[route]

    @task
    def pay_once(self) -> None:
        if MAX_REQUESTS and len(RECORDS) >= MAX_REQUESTS // WORKERS:
            self.stop()
            return
        wallet = self._next_wallet()
        if wallet is None:
            self.stop()  # every agent this user speaks for is out of funds or budget
            return
        rng = request_rng(SCENARIO.seed, wallet.index, wallet.sent)
        route = ROUTES.choose(rng)
        channel = TARGET != "facilitator" and SCHEMES.get(route) == BATCH_SETTLEMENT
        url = WORLD["service_urls"].get(route, "")
        headroom = wallet.channels.headroom("GET", url) if channel else None
        if not wallet.can_afford(self._route_price(route), headroom):
            BROKE.add(wallet.index)
            return
        if TARGET == "facilitator":
            record = settle_direct(self.client, wallet, route, QUOTES[route])
        elif channel:
            record = pay_channel(self.client, wallet, route, url, self._manners(rng))
        else:
            record = pay(self.client, wallet, route, url, self._manners(rng))
        RECORDS.append(record)
        if record.error in BROKE_REASONS:
            BROKE.add(wallet.index)


    def _manners(self, rng) -> Manners:  # noqa: ANN001
        """The scenario's retry policy, and a hang-up when a client_disconnect window says so."""
        drop = None
        if DISCONNECTS and _t0:
            now = time.time() - _t0[0]
            if any(start <= now < end and rng.random() < rate for (start, end), rate in DISCONNECTS):
                drop = DISCONNECT_AFTER_S
        return Manners(RETRY.attempts, RETRY.backoff_s, RETRY.timeout_s if RETRY.attempts else None, drop)


@events.test_start.add_listener
def _mark_start(environment, **_: object) -> None:  # noqa: ANN001
    """Time zero of the run clock, for this process's own windows and (from the master) for the runner."""
    _t0[:] = [time.time()]
    if STARTED and not isinstance(environment.runner, WorkerRunner):
        # the world's and this process's CPU as traffic begins: what came before (Locust's own start, the world
        # waiting for it) is not CPU per paid request (loadtest/cpu.py traffic_window)
        Path(STARTED + ".cpu.json").write_text(json.dumps(cpu.at_traffic_start(WORLD.get("pids") or {}, _t0[0])))
        Path(STARTED).write_text(repr(_t0[0]))


def _write_records(**_: object) -> None:
    global _written
    if _written or not RECORDS:
        return
    _written = True
    PARTS.mkdir(parents=True, exist_ok=True)
    write_csv(PARTS / f"requests-{os.getpid()}.csv", RECORDS, RequestRecord)
    (PARTS / f"agents-{os.getpid()}.json").write_text(json.dumps({"broke": sorted(BROKE)}))


events.test_stop.add_listener(_write_records)
events.quitting.add_listener(_write_records)


@events.test_stop.add_listener
def _mark_stopped(environment, **_: object) -> None:  # noqa: ANN001
    if STOPPED and not isinstance(environment.runner, WorkerRunner):
        Path(STOPPED).write_text(repr(time.time()))


@events.init.add_listener
def _round_trips(environment, **_: object) -> None:  # noqa: ANN001
    round_trips.setup(environment, WORLD.get("ledger_path") or "")


@events.init.add_listener
def _progress(environment, **_: object) -> None:  # noqa: ANN001
    """The master (or the only process) writes a one-line progress file each second."""
    if not PROGRESS or isinstance(environment.runner, WorkerRunner):
        return

    def loop() -> None:
        start = time.monotonic()
        while True:
            gevent.sleep(1.0)
            paid = total = environment.stats.total  # one entry per payment
            Path(PROGRESS).write_text(json.dumps({
                "elapsed": time.monotonic() - start,
                "paid": paid.num_requests - paid.num_failures,
                "rps": paid.current_rps - paid.current_fail_per_sec,
                "p95": (paid.get_current_response_time_percentile(0.95) or 0) / 1000,
                "errors": total.num_failures,
                "users": environment.runner.user_count,
                "workers": len(environment.runner.clients) if isinstance(environment.runner, MasterRunner) else 1,
            }))

    gevent.spawn(loop)


@events.init.add_listener
def _quit_when_every_user_stopped(environment, **_: object) -> None:  # noqa: ANN001
    """End the run once every user has stopped itself (all its agents broke, or run.max_requests reached):
    Locust would otherwise idle to its time limit, and a budgeted run would take as long as an unbudgeted
    one. Only for a single process: a worker must not quit under its master."""
    runner = environment.runner
    if not isinstance(runner, LocalRunner):
        return

    def watch() -> None:
        seen_users = False
        while True:
            gevent.sleep(0.5)
            if runner.state == STATE_RUNNING and runner.user_count > 0:
                seen_users = True
            elif seen_users and runner.state == STATE_RUNNING and runner.user_count == 0:
                runner.quit()
                return

    gevent.spawn(watch)

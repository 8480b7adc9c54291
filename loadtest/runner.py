"""A live load run from start to finish: world up, Locust, drain, reconcile, run folder.

Locust runs as a child process (its gevent monkey-patching stays out of this process),
headless by default, with its own `--processes` workers when asked. This process only
watches a progress file, measures CPU per role, and afterwards reads the three sources
of truth (client records, ledger, chain) to build the summary. With `web`, Locust's process outlives the
test: the runner goes on once the locustfile marks the test stopped, and the UI keeps showing the run's
statistics until the caller's WebUI.wait() ends it (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable

from loadtest import cpu
from loadtest.faults import FaultDriver, check_faults
from loadtest.reconcile import (books_from_chain, chain_settlements, exact_chain_view, read_chain, read_channels,
                               reconcile, settlement_records)
from services.chain import REPO_ROOT, Rpc, free_port
from services.paths import child_env, python_module
from services.escrow import ESCROW_ADDRESS
from services.facilitator.ledger import read_payments
from services.process import write_private
from services.stack import PARTS, Outside, World, read_world_file
from services.token import balances_of
from x402bench.results.records import RequestRecord, read_csv
from x402bench.results.rundir import new_run_id, write_run
from x402bench.results.summary import build_summary
from x402bench.scenario import Scenario, ScenarioError

LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"


#: What the agents send their payments to.
TARGETS = ("service", "facilitator")


@dataclass
class LoadOptions:
    """How to run one load test; the `*_url` and `world_file` fields name parts x402bench does not start."""

    users: int | None = None
    spawn_rate: float | None = None
    duration_s: float | None = None
    processes: int = 1
    web: bool = False
    out_root: Path = Path("results")
    max_requests: int | None = None
    drain_timeout_s: float = 60.0
    target: str = "service"  # "facilitator": sign, then POST /verify and /settle, no priced service between
    world_file: Path | None = None  # attach to the running world this file describes
    service_urls: tuple[str, ...] = ()
    facilitator_url: str | None = None
    rpc_url: str | None = None


@dataclass
class WebUI:
    """Locust's web UI once the run is over: its process still serves the run's statistics."""

    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def wait(self) -> None:
        """Serve until Ctrl-C (SIGINT), or until Locust ends by itself, then stop it.

        The handler is set here, as `x402bench up` sets its own: a process started by a non-interactive shell's
        background job inherits SIGINT ignored, and the UI would then outlive every Ctrl-C."""
        import threading

        asked = threading.Event()
        own = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: asked.set()) if own else None
        try:
            while self.process.poll() is None and not asked.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if own:
                signal.signal(signal.SIGINT, previous)
            self.stop()

    def stop(self) -> None:
        """SIGTERM to Locust's process group (it holds the --processes workers too), SIGKILL if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@dataclass
class LoadResult:
    run_dir: Path
    summary: dict[str, Any]
    web: WebUI | None = None  # with --web: the UI, still up until web.wait() returns

    @property
    def passed(self) -> bool:
        return bool(self.summary["slo"]["passed"])


Progress = Callable[[dict[str, Any]], None]


def effective_scenario(scenario: Scenario, options: LoadOptions) -> Scenario:
    """The scenario with command-line overrides applied, so the summary records what really ran."""
    run: dict[str, Any] = {}
    if options.users is not None:
        run["users"] = options.users
    if options.spawn_rate is not None:
        run["spawn_rate"] = options.spawn_rate
    if options.duration_s is not None:
        run["duration_s"] = options.duration_s
    if options.max_requests is not None:
        run["max_requests"] = options.max_requests
    return scenario.with_overrides(run=run) if run else scenario


def check_live_duration(scenario: Scenario) -> None:
    """A live run lasts whole seconds (Locust's --run-time takes no fraction): refuse another length rather
    than run a rounded one the summary would not record."""
    d = scenario.run.duration_s
    if d != int(d) or d < 1:
        raise ScenarioError(f"run.duration_s {d:g}: a live run lasts a whole number of seconds, at least 1 "
                            f"(Locust's --run-time); use {max(1, int(d))} or {max(1, int(d)) + 1}")


def locust_command(scenario: Scenario, options: LoadOptions, web_port: int | None) -> list[str]:
    r = scenario.run
    cmd = [*python_module("locust"), "-f", str(LOCUSTFILE), "-u", str(r.users), "-r", str(r.spawn_rate),
           "-t", f"{int(r.duration_s)}s", "--stop-timeout", "30", "--loglevel", "WARNING", "--only-summary"]
    if options.processes > 1:
        cmd += ["--processes", str(options.processes)]
    if web_port is None:
        cmd += ["--headless"]
    else:
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(web_port), "--autostart"]  # no --autoquit: WebUI.wait
    return cmd


def run_locust(scenario: Scenario, options: LoadOptions, world: World, run_dir: Path,
               on_progress: Progress | None) -> tuple[Path, dict[str, float], WebUI | None]:
    """Run Locust against the world; returns the parts folder, loadgen CPU seconds and, with --web, the UI
    (Locust still running, its test over and its records written)."""
    work = run_dir / "world"
    parts = work / "parts"
    progress_file = work / "progress.json"
    stopped = work / "stopped"
    write_private(work / "world.json", world.info.to_json())
    (work / "scenario.json").write_text(scenario.model_dump_json())
    env = {
        **child_env(),
        "X402BENCH_SCENARIO": str(work / "scenario.json"),
        "X402BENCH_WORLD": str(work / "world.json"),
        "X402BENCH_PARTS": str(parts),
        "X402BENCH_WORKERS": str(options.processes),
        "X402BENCH_PROGRESS": str(progress_file),
        "X402BENCH_MAX_REQUESTS": str(scenario.run.max_requests or 0),
        "X402BENCH_TARGET": options.target,
        "X402BENCH_STARTED": str(work / "started"),
        "X402BENCH_STOPPED": str(stopped),
    }
    web_port = free_port() if options.web else None
    web_url = f"http://127.0.0.1:{web_port}" if web_port else None
    if web_url and on_progress:
        on_progress({"web": web_url})
    web: WebUI | None = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = open(work / "locust.log", "ab")
    process = subprocess.Popen(locust_command(scenario, options, web_port), env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + scenario.run.duration_s + 120 + (3600 if options.web else 0)
    try:
        while process.poll() is None:
            if web_url and stopped.exists():  # the test is over, its records written: the UI stays up
                web = WebUI(web_url, process, log)
                break
            if time.monotonic() > deadline:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
                break
            time.sleep(0.5)
            if on_progress and progress_file.exists():
                try:
                    progress = json.loads(progress_file.read_text())
                except ValueError:
                    continue
                on_progress({**progress, "web": web_url} if web_url else progress)
    finally:
        if web is None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # the group: --processes workers too
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
    if web is not None:  # still running, so not in RUSAGE_CHILDREN: its process tree's CPU from /proc
        return parts, {"loadgen": sum(cpu.cpu_seconds(pid) or 0.0 for pid in _tree(process.pid))}, web
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    loadgen = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode not in (0, 1):  # Locust exits 1 when any request failed: that is data, not a crash
        tail = (work / "locust.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"Locust exited with status {process.returncode}:\n{tail}")
    return parts, {"loadgen": loadgen}, None


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Locust's --processes workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError, ValueError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def merge_parts(parts: Path) -> tuple[list[RequestRecord], int]:
    records: list[RequestRecord] = []
    broke: set[int] = set()
    for path in sorted(parts.glob("requests-*.csv")):
        records.extend(read_csv(path, RequestRecord))
    for path in sorted(parts.glob("agents-*.json")):
        broke.update(json.loads(path.read_text())["broke"])
    records.sort(key=lambda r: (r.t_start, r.agent))
    return records, len(broke)


def drain(ledger_path: str, timeout_s: float) -> None:
    """Wait for the facilitator to close what it accepted (pipelined/batched settle after answering)."""
    if not ledger_path or not Path(ledger_path).exists():
        return  # an outside facilitator: its ledger is its own, the chain is read instead
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(row["state"] in ("accepted", "submitted") for row in read_payments(ledger_path)):
            return
        time.sleep(0.25)


def claim_and_settle_channels(scenario: Scenario, service_urls: dict[str, str], timeout_s: float) -> list[dict[str, Any]]:
    """Ask every service with batch-settlement routes to claim all the vouchers it holds and settle them to the payee
    (its local harness route POST <base>/_channels/claim_settle), and wait for the answers: vouchers are money only
    once claimed, so the chain read after this shows everything the agents were charged. One call per service
    base URL (one SDK channel manager serves all its routes); each answer comes back with its `service` URL, or
    an `error` when the service could not be asked."""
    import urllib.error
    import urllib.request

    deferred = {v.name for v in scenario.batch_settlement_services}
    bases = sorted({"/".join(url.split("/", 3)[:3]) for name, url in service_urls.items() if name in deferred})
    answers = []
    for base in bases:
        request = urllib.request.Request(base + "/_channels/claim_settle", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=max(30.0, timeout_s)) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError, urllib.error.HTTPError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.append({"service": base, **(answer if isinstance(answer, dict) else {"answer": answer})})
    return answers


def world_for(scenario: Scenario, options: LoadOptions, workdir: Path) -> World:
    """The world a run needs for its target, from outside parts where the options name them."""
    if options.target not in TARGETS:
        raise ScenarioError(f"--target {options.target!r}: choose one of {', '.join(TARGETS)}")
    if options.target == "facilitator" and (options.service_urls or scenario.service_urls):
        raise ScenarioError("--target facilitator pays the facilitator directly: drop --service-url / "
                            "external_service_url")
    deferred = [v.name for v in scenario.batch_settlement_services if scenario.mix_weights()[v.name] > 0]
    if options.target == "facilitator" and deferred:
        raise ScenarioError(f"{scenario.name}: services {', '.join(deferred)} use scheme 'batch-settlement', whose "
                            "vouchers are checked by the priced service, not sent to a facilitator: --target facilitator "
                            "pays exact only (give them weight 0 in agents.mix)")
    attached = read_world_file(options.world_file) if options.world_file else None
    outside = Outside.of(scenario, rpc_url=options.rpc_url, facilitator_url=options.facilitator_url,
                         service_urls=options.service_urls, world=attached)
    parts = ("chain", "facilitator") if options.target == "facilitator" else PARTS
    return World(scenario, workdir=workdir, parts=parts, outside=outside)


def run_load(scenario: Scenario, options: LoadOptions, on_progress: Progress | None = None) -> LoadResult:
    """One live run; with --web, the result's `web` is Locust's UI still up, for the caller to wait on. A run
    that fails after Locust's test ended stops the UI first."""
    webs: list[WebUI] = []
    try:
        return _run_load(scenario, options, on_progress, webs)
    except BaseException:
        for web in webs:
            web.stop()
        raise


def _run_load(scenario: Scenario, options: LoadOptions, on_progress: Progress | None, webs: list[WebUI]) -> LoadResult:
    scenario = effective_scenario(scenario, options)
    check_live_duration(scenario)
    run_id = new_run_id()
    run_dir = options.out_root / scenario.name / run_id
    world = world_for(scenario, options, run_dir / "world")
    started_at = time.time()
    try:
        world.__enter__()
        try:
            check_faults(scenario, world.info.parts.get("started", []), options.target)
        except ScenarioError:
            world.stop()
            raise
    except ScenarioError:  # a bad target is refused before any traffic: leave no half-made run folder behind
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.is_dir() and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
        raise
    try:
        info = world.info
        rpc = Rpc(info.rpc_url)
        first_block = int(rpc.call("eth_blockNumber"), 16) + 1
        payee_before = balances_of(info.rpc_url, info.token["address"], info.payees)
        pids = {role: [pid] for role, pid in info.pids.items() if pid}
        cpu_before, t_cpu_before = cpu.sample(pids), time.time()
        driver = FaultDriver(scenario, world, run_dir / "world" / "started").start()
        try:
            parts, loadgen_cpu, web = run_locust(scenario, options, world, run_dir, on_progress)
            webs.extend([web] if web else [])
        finally:
            driver.stop()
        cpu_after, t_cpu_after = cpu.sample(pids), time.time()
        drain(info.ledger_path, options.drain_timeout_s)
        channel_claims = claim_and_settle_channels(scenario, info.service_urls, options.drain_timeout_s)
        last_block = int(rpc.call("eth_blockNumber"), 16)
        payee_after = balances_of(info.rpc_url, info.token["address"], info.payees)
        chain = read_chain(rpc, info.token["address"], info.payees, first_block, last_block)
        # the escrow's side is read while the chain is up and judged once the records are in
        channel_chain = (read_channels(rpc, ESCROW_ADDRESS, info.token["address"], info.payees, first_block,
                                       last_block) if scenario.batch_settlement_services else None)
        has_ledger = bool(info.ledger_path) and Path(info.ledger_path).exists()
        ledger_rows = read_payments(info.ledger_path) if has_ledger else []
        facilitator_metrics = _get_json(info.facilitator_url + "/metrics") if info.facilitator_url else {}
        proxy_counters = {kind: _get_json(url + "/_faults").get("counters", {}) for kind, url in info.fault_proxies.items()}
    finally:
        world.stop()
    records, agents_broke = merge_parts(parts)
    started_file = run_dir / "world" / "started"
    t0 = (float(started_file.read_text()) if started_file.exists()  # the clock the fault timeline ran on
          else min((r.t_start for r in records), default=started_at))
    for r in records:
        r.t_start -= t0
        r.t_end -= t0
    payee_delta = sum(payee_after) - sum(payee_before)
    # Two books: exact payments against EIP-3009 authorizations used on chain, voucher-paid requests against
    # the escrow's channels. A deposit redeems an ERC-3009 authorization no exact 200 stands for, and the
    # escrow's settle pays the payees money no exact payment explains: the exact books see neither.
    books = books_from_chain(channel_chain, records, t0, payee_delta) if channel_chain is not None else None
    exact_records = [r for r in records if r.scheme == "exact"]
    exact_chain = exact_chain_view(chain, books) if books else chain
    settlements = (settlement_records(ledger_rows, exact_chain, t0) if has_ledger
                   else chain_settlements(exact_records, exact_chain, t0))
    reconciliation, money_events = reconcile(exact_records, ledger_rows, exact_chain,
                                             payee_delta - (books.settled if books else 0),
                                             ledger=has_ledger, t0=t0)
    paid = sum(1 for r in records if r.paid)
    cpu_after = {**cpu_after, **loadgen_cpu}
    cpu_start_file = run_dir / "world" / "started.cpu.json"
    cpu_before, cpu_window = cpu.traffic_window(
        cpu_before, t_cpu_before, json.loads(cpu_start_file.read_text()) if cpu_start_file.exists() else None,
        cpu_after, t_cpu_after)
    meta = {
        "run_id": run_id,
        "started_at": started_at,
        "cpu": {**cpu.usage(cpu_before, cpu_after, paid), **cpu_window},
        "agents_broke": agents_broke,
        "processes": options.processes,
        "facilitator": facilitator_metrics,
        "machine": {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()},
        "blocks": {"first": first_block, "last": last_block},
        "world": {"rpc_url": info.rpc_url, "token": info.token, "pay_to": info.pay_to, "payees": info.payees,
                  "signers": info.signers, "facilitator_url": info.facilitator_url,
                  "service_urls": info.service_urls},
        "target": options.target,
        "attached": options.world_file is not None,
        "world_file": str(options.world_file) if options.world_file else None,
        "parts": info.parts,
        "faults_applied": [asdict(a) for a in driver.applied],
        "fault_proxies": proxy_counters,
        "channel_claims": channel_claims,
    }
    summary = build_summary(scenario, records, settlements, reconciliation, "load", meta,
                            [*money_events, *(books.events if books else ())],
                            channels=books.channels if books else (), channel_txs=books.txs if books else (),
                            channel_reconciliation=books.reconciliation if books else None)
    out = write_run(options.out_root, scenario.name, run_id, summary, records, settlements,
                    channels=books.channels if books else (), channel_txs=books.txs if books else ())
    return LoadResult(out, summary, web)


def _get_json(url: str) -> dict[str, Any]:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.loads(response.read())
    except (OSError, ValueError):  # an outside facilitator may have no /metrics: that is no error
        return {}
    return data if isinstance(data, dict) else {}

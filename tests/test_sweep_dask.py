"""`x402bench sweep --scheduler`: a sweep's points on a real Dask cluster, started the way a user would.

The cluster is `dask scheduler` and `dask worker ... --nworkers 2` from the venv, as separate
processes on free ports, stopped by their PIDs at the end; the sweep runs as a command in its own
process. What is checked: the cluster gives the rows a local run gives for the same seed, its
workers (not the command's own process) computed them, a point that kills its worker is a failed
row while the others survive, and a scheduler that is not there, or a missing `distributed`,
is an exit 2 with a sentence rather than a traceback or a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.chain import REPO_ROOT, free_port, terminate
from sim.executors import Outcome
from clirun import x402bench

distributed = pytest.importorskip("distributed")

BIN = Path(sys.executable).parent
SMOKE = str(REPO_ROOT / "scenarios" / "smoke.yaml")
GRID = ["--grid", "agents=5,20", "--grid", "duration_s=4"]


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (the nanny's worker processes are not in its command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two single-threaded worker processes; yields the scheduler's address."""
    work = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [open(work / "scheduler.log", "wb"), open(work / "worker.log", "wb")]
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT)
    worker = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
                               "--no-dashboard", "--local-directory", str(work / "scratch")],
                              stdout=logs[1], stderr=subprocess.STDOUT)
    below: set[int] = set()
    try:
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        below = _descendants(worker.pid) | _descendants(scheduler.pid)
        terminate(worker)
        terminate(scheduler)
        for log in logs:
            log.close()
    deadline = time.monotonic() + 10
    while (left := {pid for pid in below if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Dask processes left running: {sorted(left)}"


def _sweep_json(out_root: Path) -> dict:
    (path,) = out_root.glob("smoke/sweep-*/sweep.json")
    return json.loads(path.read_text())


def test_sweep_on_the_cluster_gives_the_local_rows_and_its_workers_ran_them(cluster: str, tmp_path: Path) -> None:
    started = time.monotonic()
    local = x402bench("sweep", SMOKE, *GRID, "--jobs", "2", "--out", str(tmp_path / "local"), timeout=120)
    local_s = time.monotonic() - started
    assert local.returncode == 0, local.stdout + local.stderr
    started = time.monotonic()
    remote = x402bench("sweep", SMOKE, *GRID, "--scheduler", cluster, "--out", str(tmp_path / "dask"), timeout=120)
    remote_s = time.monotonic() - started
    assert remote.returncode == 0, remote.stdout + remote.stderr
    print(f"sweep wall time: local {local_s:.2f} s, on the cluster {remote_s:.2f} s")

    here, there = _sweep_json(tmp_path / "local"), _sweep_json(tmp_path / "dask")
    assert len(here["rows"]) == 2 and here["rows"] == there["rows"]
    assert here["rows"][0]["paid"] > 0 and here["rows"][0]["paid"] != here["rows"][1]["paid"]
    assert (here["scheduler"], here["workers"]) == ("local", ["local", "local"])
    assert there["scheduler"] == cluster and f"Dask cluster at {cluster}" in remote.stdout.replace("\n", " ")
    with distributed.Client(cluster, timeout=10, set_as_default=False) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        # The scheduler's own record of the tasks: every sweep point ended in memory on one of its workers.
        story = client.run_on_scheduler(
            lambda dask_scheduler: [(t[0], t[2]) for t in dask_scheduler.transition_log
                                    if str(t[0]).startswith("sweep-point-")])
    assert len(there["workers"]) == 2 and set(there["workers"]) <= workers
    assert len({key for key, finish in story if finish == "memory"}) >= 2, story


def test_a_point_that_kills_its_worker_is_a_failed_row_and_the_others_survive(cluster: str) -> None:
    from sim.executors import DaskExecutor, LocalExecutor

    tasks = ["6 * 7", "__import__('os')._exit(3)", "1 + 1"]  # eval: a builtin, so any worker can unpickle it
    for executor in (LocalExecutor(jobs=2), DaskExecutor(cluster)):
        with executor:
            outcomes = executor.run(eval, tasks)
        assert [o.value for o in outcomes] == [42, None, 2], executor.where
        assert outcomes[0].error is None and "died" in (outcomes[1].error or ""), outcomes


def test_an_unreachable_scheduler_exits_2_naming_it_within_seconds(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = x402bench("sweep", SMOKE, *GRID, "--scheduler", address, "--out", str(tmp_path), timeout=60)
    assert done.returncode == 2 and address in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 15
    assert not list(tmp_path.iterdir())


def test_without_distributed_the_scheduler_option_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named distributed (test stand-in)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO_ROOT)])}
    done = subprocess.run([sys.executable, "-m", "x402bench", "sweep", SMOKE, *GRID, "--scheduler",
                           "tcp://127.0.0.1:8786", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "x402bench[dask]" in done.stderr and "Traceback" not in done.stderr, done.stderr


class _OnePointDies:
    """An executor whose second point's worker died: what run_sweep makes of a failed Outcome."""

    where = "tcp://nowhere:1"

    def __enter__(self) -> "_OnePointDies":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Outcome]:
        return [Outcome(fn(tasks[0]), worker="tcp://w:1"), Outcome(error="its Dask worker died", worker="unknown")]


def test_a_failed_point_is_a_row_with_its_error_and_the_table_and_plots_are_still_written(tmp_path: Path) -> None:
    from sim.overrides import parse_grid
    from sim.sweep import COLUMNS, run_sweep
    from x402bench.scenario import load_scenario

    result = run_sweep(load_scenario(SMOKE), parse_grid(["agents=5,20", "duration_s=2"]), tmp_path,
                       executor=_OnePointDies())
    good, bad = result.rows
    assert good["paid"] > 0 and "error" not in good
    assert bad["agents"] == 20 and bad["error"] == "its Dask worker died" and all(bad[c] is None for c in COLUMNS)
    assert result.failed == [bad] and len(result.plots) == 3
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert (table["scheduler"], table["workers"]) == ("tcp://nowhere:1", ["tcp://w:1", "unknown"])
    assert table["rows"][1]["error"] == "its Dask worker died"
    assert (tmp_path / "sweep.csv").read_text().splitlines()[2].endswith(",its Dask worker died")

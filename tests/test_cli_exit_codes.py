"""The CLI's exit codes (issue 12): 0 every SLO passed, 1 an SLO failed, 2 bad input or usage, 3 anything
else, with the traceback in a log file and one line on stderr. Sim runs only (no Anvil), through the entry
point in this process (conftest's x402bench_here)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

SMOKE = Path("scenarios/smoke.yaml")


def _scenario(tmp_path: Path, **slo: float) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["slo"].update(slo)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short sim run of smoke (its SLOs pass), shared by the tests that only read it."""
    from sim.run import SimOptions, simulate
    from x402bench.scenario import load_scenario

    root = tmp_path_factory.mktemp("runs")
    run_dir, summary, _ = simulate(load_scenario(SMOKE), None, SimOptions(duration_s=3), root, "a")
    assert summary["slo"]["passed"]
    return run_dir


def test_exit_0_when_every_slo_passes(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", str(SMOKE), "--duration", "3", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_exit_1_when_an_slo_fails(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", str(_scenario(tmp_path, min_throughput_rps=1e9)), "--duration", "3",
                          "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLO failed" in done.stdout and "Traceback" not in done.stderr


def test_exit_2_for_a_bad_scenario_field(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    path = tmp_path / "bad.yaml"
    path.write_text(SMOKE.read_text().replace("work_ms: 5", "wrok_ms: 5"))
    done = x402bench_here("sim", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "wrok_ms" in done.stderr and "Traceback" not in done.stderr


def test_exit_2_for_a_live_run_of_a_fractional_second(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    """Locust runs whole seconds: a scenario asking for 2.5 s is refused before anything starts, not rounded."""
    data = yaml.safe_load(SMOKE.read_text())
    data["run"]["duration_s"] = 2.5
    path = tmp_path / "frac.yaml"
    path.write_text(yaml.safe_dump(data))
    done = x402bench_here("load", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "run.duration_s 2.5" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["sim", str(SMOKE)], ["sweep", str(SMOKE), "--grid", "agents=2"],
                                     ["capacity", "scenarios/x402-ecosystem-2025.yaml"]])
def test_exit_2_before_any_work_when_out_is_an_existing_file(tmp_path: Path, command: list[str],
                                                             x402bench_here) -> None:  # noqa: ANN001
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for out in (afile, afile / "below"):
        done = x402bench_here(*command, "--out", str(out))
        assert done.returncode == 2, done.stdout + done.stderr
        assert str(afile) in done.stderr and "not a folder" in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""  # nothing ran: no result, no progress
    assert afile.read_text() == "mine\n"


def test_exit_2_when_a_file_option_is_a_folder(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("calibrate", str(SMOKE), "--defaults", "--out", str(tmp_path))
    assert done.returncode == 2 and "is a folder" in done.stderr


def test_exit_3_for_an_internal_error_traceback_in_a_log_not_on_screen(
        tmp_path: Path, smoke_run: Path, monkeypatch: pytest.MonkeyPatch, x402bench_here) -> None:  # noqa: ANN001
    """A real bug, no mock: a run folder whose summary.json holds an integer no float can hold makes
    `compare` overflow computing B/A. With no run folder being written, the log goes to the temp dir."""
    broken = tmp_path / "smoke" / "b"
    shutil.copytree(smoke_run, broken)
    summary = json.loads((broken / "summary.json").read_text())
    summary["metrics"]["requests"] = 10 ** 400
    (broken / "summary.json").write_text(json.dumps(summary))
    logs = tmp_path / "tmp"
    logs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(logs))  # where the temp dir is, nothing else

    done = x402bench_here("compare", str(smoke_run), str(broken))

    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    (log,) = logs.glob("x402bench-error-*.log")
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
    assert "OverflowError" in done.stderr and str(log) in done.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "OverflowError" in text and "compare" in text


def test_exit_3_log_goes_to_the_run_folder_when_the_run_had_one(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    """No mock: a folder where the run's summary.json goes makes writing the run folder fail midway."""
    run_dir = tmp_path / "smoke" / "r1"
    (run_dir / "summary.json").mkdir(parents=True)
    done = x402bench_here("sim", str(SMOKE), "--duration", "3", "--out", str(tmp_path), "--run-id", "r1")
    assert done.returncode == 3, done.stdout + done.stderr
    log = run_dir / "x402bench-error.log"
    assert "IsADirectoryError" in done.stderr and str(log) in done.stderr and "Traceback" not in done.stderr
    assert "IsADirectoryError" in log.read_text() and "write_run" in log.read_text()


def test_h_is_help_on_every_command(x402bench_here) -> None:  # noqa: ANN001
    import x402bench.cli as entry

    entry._register()
    names = [info.name or info.callback.__name__.replace("_", "-") for info in entry.app.registered_commands]
    assert {"sim", "sweep", "compare", "check", "load", "calibrate", "validate", "schema"} <= set(names)
    for command in [[], *([name] for name in names)]:
        short, long = x402bench_here(*command, "-h"), x402bench_here(*command, "--help")
        assert short.returncode == long.returncode == 0 and "Usage" in short.stdout, (command, short.stderr)
        assert short.stdout == long.stdout


def test_version(x402bench_here) -> None:  # noqa: ANN001
    from importlib import metadata

    done = x402bench_here("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"x402bench {metadata.version('x402bench')}"


def test_piped_sweep_table_keeps_every_digit(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    """Rich cuts cells to fit 80 columns when stdout is no terminal; a piped table is printed whole."""
    import csv

    from x402bench.commands.sim_cmds import _cell

    done = x402bench_here("sweep", str(SMOKE), "--grid", "agents=2,4", "--grid", "duration_s=2",
                          "--grid", "block_time_s=0.2", "--grid", "gas_price_gwei=0.0123456", "--jobs", "1",
                          "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "…" not in done.stdout
    (table,) = tmp_path.glob("smoke/sweep-*/sweep.csv")
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 2
    lines = done.stdout.splitlines()
    for row in rows:
        cells = [_cell(float(row[k])) for k in ("agents", "offered_rps", "throughput_rps", "request_p95_s",
                                                 "settlement_p95_s", "gas_per_payment", "cost_per_payment_usd")]
        assert any(all(f" {cell} " in line for cell in cells) for line in lines), (cells, done.stdout)
    for header in ("gas_price_gwei", "settle p95 s", "$/pay", "errors"):
        assert header in done.stdout


def test_piped_compare_keeps_run_ids_and_digits(tmp_path: Path, smoke_run: Path) -> None:
    """The one process of its own here: its stdout is a pipe, as in `x402bench compare A B | less`."""
    import os
    import subprocess
    import sys

    from x402bench.results.report import fmt

    other = tmp_path / "smoke" / "a-much-longer-run-id-than-any-eighty-column-table-leaves-room-for"
    shutil.copytree(smoke_run, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["run_id"] = other.name
    summary["metrics"]["throughput_rps"] = 123.456789
    (other / "summary.json").write_text(json.dumps(summary))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    done = subprocess.run([sys.executable, "-m", "x402bench", "compare", str(smoke_run), str(other)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "…" not in done.stdout and other.name in done.stdout
    a = json.loads((smoke_run / "summary.json").read_text())["metrics"]
    assert fmt(a["throughput_rps"]) in done.stdout and "123.5" in done.stdout
    for key in ("requests", "paid", "gas_per_payment", "cost_per_payment_usd"):
        assert fmt(a[key]) in done.stdout, (key, done.stdout)
    assert max(map(len, done.stdout.splitlines())) > 80  # printed whole, not fitted to 80 columns

"""Issue 12's CLI conventions: Locust's -u/-r/-t with durations in units, --json (summary.json alone on
stdout), --slo overrides and --junit XML. Sim runs through the command's entry point in this process
(conftest's x402bench_here): a second each, the real sim and the real run folder."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from x402bench.durations import parse_duration
from x402bench.scenario import ScenarioError, validate_scenario

SMOKE = "scenarios/smoke.yaml"


def _only(out_root: Path, name: str) -> Path:
    (path,) = out_root.glob(f"*/*/{name}")
    return path


# ---- durations ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), ("90", 90), ("2.5", 2.5), ("1m30s", 90),
    ("1.5s", 1.5), ("1h2m3s4ms", 3723.004), (" 45s ", 45), (7, 7), (0.25, 0.25)])
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "ms", "2x", "30m1h", "1ms2s", "-5s", "-1", "1 h", "inf", "nan", "1e3",
                                  "1.2.3s", "2mm", True, -1, float("inf")])
def test_bad_durations_are_refused_by_name(text: str | float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_the_scenario_run_time_takes_the_same_units() -> None:
    base = {"name": "t", "services": [{"name": "a", "path": "/a", "price": "$0.001"}]}
    run = validate_scenario({**base, "run": {"duration_s": "2m", "warmup_s": "500ms"}}).run
    assert (run.duration_s, run.warmup_s) == (120.0, 0.5)
    for bad in ("2x", "0s", True):
        with pytest.raises(ScenarioError, match="run.duration_s"):
            validate_scenario({**base, "run": {"duration_s": bad}})


def test_bad_durations_exit_2_before_any_work(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", SMOKE, "-t", "2x", "--out", str(tmp_path))
    assert done.returncode == 2 and "'2x' is not a duration" in done.stderr and "90s, 2m" in done.stderr
    # Locust runs whole seconds: a fraction would be recorded but not run
    done = x402bench_here("load", SMOKE, "--run-time", "1500ms", "--out", str(tmp_path))
    assert done.returncode == 2 and "whole seconds" in done.stderr, done.stderr
    assert done.stdout == "" and not list(tmp_path.iterdir())


# ---- -u/-r/-t reach the run, --json --------------------------------------------------------------------------

def test_users_spawn_rate_and_run_time_reach_the_run_and_json_is_summary_json(tmp_path: Path,
                                                                              x402bench_here) -> None:  # noqa: ANN001
    """The sim's locust driver runs `-u` users started at `-r` per second for `-t`: the run folder's records
    show it (never more requests in flight than users spawned by then), not only its echo of the flags."""
    done = x402bench_here("sim", SMOKE, "--driver", "locust", "-u", "2", "-r", "0.5", "-t", "6s", "--json",
                          "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    summary_text = _only(tmp_path, "summary.json").read_text()
    assert done.stdout == summary_text and json.loads(done.stdout)["mode"] == "sim"  # stdout: the JSON, only
    assert "paid throughput" in done.stderr  # the table went to stderr
    run = yaml.safe_load(_only(tmp_path, "scenario.yaml").read_text())["run"]
    assert (run["users"], run["spawn_rate"], run["duration_s"]) == (2, 0.5, 6.0)
    assert json.loads(summary_text)["metrics"]["window"]["duration_s"] == 6.0
    rows = list(csv.DictReader(_only(tmp_path, "requests.csv").open()))
    spans = [(float(r["t_start"]), float(r["t_end"])) for r in rows]
    assert spans and max(end for _, end in spans) > 5

    def in_flight(t: float) -> int:
        return sum(1 for start, end in spans if start <= t < end)

    starts = [start for start, _ in spans]
    assert max(in_flight(t) for t in starts if t < 2.0) == 1  # the second user starts at 1 / 0.5 = 2 s
    assert max(in_flight(t) for t in starts) == 2


def test_users_without_the_locust_driver_are_refused(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", SMOKE, "-u", "3", "--out", str(tmp_path))
    assert done.returncode == 2 and "--users" in done.stderr and "--driver locust" in done.stderr


def test_load_flags_become_locust_flags(tmp_path: Path, x402bench_here, monkeypatch) -> None:  # noqa: ANN001
    """`load -u 3 -r 2 -t 2m` up to the Locust command line the runner starts (the live run itself is
    tests/test_load.py's, through the same option as --duration/--users)."""
    import loadtest.runner as runner

    seen = {}

    def stop_here(scenario, options, on_progress=None):  # noqa: ANN001, ANN202
        seen["cmd"] = runner.locust_command(runner.effective_scenario(scenario, options), options, None)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_load", stop_here)
    done = x402bench_here("load", SMOKE, "-u", "3", "-r", "2", "-t", "2m", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    cmd = " ".join(seen["cmd"])
    assert " -u 3 " in cmd and " -r 2.0 " in cmd and " -t 120s " in cmd
    x402bench_here("load", SMOKE, "--users", "4", "--duration", "90", "--out", str(tmp_path))
    assert " -u 4 " in " ".join(seen["cmd"]) and " -t 90s " in " ".join(seen["cmd"])


# ---- --slo and --junit ---------------------------------------------------------------------------------------

def test_slo_override_flips_the_verdict_and_is_recorded(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    junit = tmp_path / "ci" / "slo.xml"
    done = x402bench_here("sim", SMOKE, "-t", "2", "--slo", "min_throughput_rps=1e6", "--slo",
                          "max_p95_settlement_s=2", "--junit", str(junit), "--out", str(tmp_path / "fail"))
    assert done.returncode == 1, done.stderr
    assert "SLO failed: min_throughput_rps" in done.stdout
    slo = yaml.safe_load(_only(tmp_path / "fail", "scenario.yaml").read_text())["slo"]
    assert slo["min_throughput_rps"] == 1e6 and slo["max_p95_settlement_s"] == 2.0
    checks = json.loads(_only(tmp_path / "fail", "summary.json").read_text())["slo"]["checks"]

    root = ET.parse(junit).getroot()  # valid XML, or this raises
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["name"] for c in checks]
    assert suite.get("tests") == str(len(checks)) and suite.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["min_throughput_rps"]
    throughput = next(c for c in checks if c["name"] == "min_throughput_rps")["measured"]
    message = failed[0].find("failure").get("message")
    assert f"measured {throughput:g}" in message and "required >= 1e+06" in message

    # the same scenario, its bound dropped: the run passes and says so in the JUnit file
    done = x402bench_here("sim", SMOKE, "-t", "2", "--slo", "min_throughput_rps=none", "--junit", str(junit),
                          "--out", str(tmp_path / "pass"))
    assert done.returncode == 0, done.stderr
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")
    assert "min_throughput_rps" not in [c.get("name") for c in cases] and cases
    assert all(c.find("failure") is None for c in cases)


@pytest.mark.parametrize(("spec", "says"), [("max_p95_latency_s=2", "unknown SLO 'max_p95_latency_s'"),
                                            ("max_error_rate=2", "less than or equal to 1"),
                                            ("max_error_rate=lots", "not a number"),
                                            ("min_throughput_rps", "NAME=VALUE")])
def test_bad_slo_overrides_exit_2_naming_every_slo(spec: str, says: str, tmp_path: Path,
                                                   x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", SMOKE, "--slo", spec, "--out", str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "max_p95_settlement_s" in done.stderr and "max_cost_per_payment_usd" in done.stderr
    assert done.stdout == "" and not list(tmp_path.iterdir())


def test_junit_path_that_is_a_folder_exits_2_before_any_work(tmp_path: Path, x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("sim", SMOKE, "--junit", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "is a folder" in done.stderr and not (tmp_path / "out").exists()


def test_junit_xml_escapes_what_it_carries() -> None:
    from x402bench.results.junit import junit_tree

    summary = {"scenario": {"name": "a<b&\"c\""}, "mode": "sim", "slo": {"checks": [
        {"name": "x<y", "measured": None, "op": "<=", "bound": 1, "passed": False, "message": "no data: <none> & \"q\""}]}}
    text = ET.tostring(junit_tree(summary).getroot(), encoding="unicode")
    case = ET.fromstring(text).find("testsuite/testcase")
    assert case.get("name") == "x<y" and case.find("failure").text == "no data: <none> & \"q\""
    assert "measured n/a, required <= 1" in case.find("failure").get("message")

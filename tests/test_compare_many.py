"""`compare` over three run folders as a CI regression gate (issue 12): the first run is the baseline, the
table and the HTML page hold every run's ratio to it, `--fail-if` exits 1 when a later run crosses a bound.
Three real sim runs of smoke (a second each): two alike, one on a chain with 1 s blocks, whose settlement
latency is many times the automining baseline's."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from x402bench.results.compare import compare_many, gate_ratio, judge, parse_gate


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from sim.run import SimOptions, simulate
    from x402bench.scenario import load_scenario

    root = tmp_path_factory.mktemp("runs")
    smoke = load_scenario("scenarios/smoke.yaml")
    slow = smoke.with_overrides(chain={"mining": "interval", "block_time_s": 1.0})
    dirs = []
    for scenario, seed, run_id in ((smoke, 1, "base"), (smoke, 2, "same"), (slow, 1, "slow-blocks")):
        run_dir, _, _ = simulate(scenario, None, SimOptions(duration_s=2, seed=seed), root, run_id)
        dirs.append(run_dir)
    return dirs


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs += [v or "" for k, v in attrs if k in ("href", "src")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_three_runs_table_html_and_a_passing_gate(runs: list[Path], tmp_path: Path,
                                                  x402bench_here) -> None:  # noqa: ANN001
    base, same, slow = runs
    done = x402bench_here("compare", *map(str, runs), "--fail-if", "gas_per_payment>1.5")
    assert done.returncode == 0, done.stdout + done.stderr
    for header in ("A: smoke (sim) base", "B: smoke (sim) same", "B/A", "C: smoke (sim) slow-blocks", "C/A"):
        assert header in done.stdout
    assert "…" not in done.stdout  # piped: the wide table is printed whole
    (page,) = base.parent.glob("compare-base-*.html")  # the default: next to the baseline run
    assert f"html: {page}" in done.stdout

    x402bench_here("compare", *map(str, runs), "--html", str(tmp_path / "ci" / "cmp.html"))
    parsed = _Page()
    parsed.feed((tmp_path / "ci" / "cmp.html").read_text())
    text = " ".join(parsed.text)
    assert "settlement_latency_s.p95" in text and "slow-blocks" in text and "C/A" in text
    assert not {"script", "link", "img", "iframe"} & set(parsed.tags)  # self-contained: nothing to fetch
    assert len(parsed.hrefs) == 3 and all(not re.match(r"^[a-z]+:", h) for h in parsed.hrefs)  # relative links
    for href, run in zip(parsed.hrefs, runs):
        assert ((tmp_path / "ci") / href).resolve() == (run / "report.html").resolve()


def test_fail_if_exits_1_on_the_regressed_run_only(runs: list[Path], tmp_path: Path,
                                                   x402bench_here) -> None:  # noqa: ANN001
    base, same, slow = runs
    html = tmp_path / "gate.html"
    done = x402bench_here("compare", *map(str, runs), "--fail-if", "settlement_latency_s.p95>1.2",
                          "--html", str(html))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("regression:")]
    assert len(lines) == 1 and "slow-blocks" in lines[0] and "(> 1.2)" in lines[0], done.stdout
    assert "1 gate failure(s)" in html.read_text()
    # the same gate on the two alike runs: no regression
    done = x402bench_here("compare", str(base), str(same), "--fail-if", "settlement_latency_s.p95>1.2",
                          "--fail-if", "metrics.throughput_rps<0.9", "--html", str(html))
    assert done.returncode == 0, done.stdout
    assert "gates passed" in done.stdout and "every gate passed" in html.read_text()


@pytest.mark.parametrize(("gate", "says"), [("settlement_p95>1.2", "unknown metric 'settlement_p95'"),
                                            ("throughput_rps=0.9", "expected METRIC>RATIO"),
                                            ("throughput_rps<", "expected METRIC>RATIO"),
                                            ("slo.passed<1", "unknown metric")])
def test_bad_gates_exit_2_listing_the_metrics(gate: str, says: str, runs: list[Path], tmp_path: Path,
                                              x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("compare", str(runs[0]), str(runs[1]), "--fail-if", gate, "--html", str(tmp_path / "x.html"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "settlement_latency_s.p95" in done.stderr and "throughput_rps" in done.stderr
    assert done.stdout == "" and not (tmp_path / "x.html").exists()


def test_one_run_is_no_comparison(runs: list[Path], x402bench_here) -> None:  # noqa: ANN001
    done = x402bench_here("compare", str(runs[0]))
    assert done.returncode == 2 and "two or more run folders" in done.stderr


def test_gate_ratios_never_pass_on_no_data(runs: list[Path]) -> None:
    assert gate_ratio(0, 0) == 1.0 and math.isinf(gate_ratio(0, 3)) and gate_ratio(2, 3) == 1.5
    assert gate_ratio(None, 1) is None and gate_ratio(1, None) is None and gate_ratio(True, 1) is None
    comparison = compare_many(runs)
    # an exact-only run has no channel figures: a gate on them cannot judge, so it fails
    breaches = judge(comparison, [parse_gate("channels.economics.gas_per_payment>1.1"),
                                  parse_gate("reconciliation.served_unpaid>1")])
    assert [(b.gate.key, b.run, b.ratio) for b in breaches] == [("channels.economics.gas_per_payment", 1, None),
                                                                 ("channels.economics.gas_per_payment", 2, None)]
    assert "cannot judge" in breaches[0].message

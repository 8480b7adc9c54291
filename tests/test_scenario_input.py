"""Scenario paths that are not scenario files, as a user meets them: `x402bench check FILE` in its
own process must exit 2 with one line naming the file and what is wrong with it, never a traceback.
Also: `check` refuses what `load` would refuse before starting anything (the live checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from x402bench.scenario import validate_scenario


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x402bench", "check", *args], capture_output=True, text=True,
                          timeout=120)


def assert_refused(done: subprocess.CompletedProcess[str], path: Path, *words: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    assert str(path) in done.stderr, output
    for word in words:
        assert word in done.stderr, output


VALID = b"name: x\nservices: [{name: a, path: /a, price: 1}]\n"


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe name: x", ["not UTF-8 text", "byte 0xff at offset 0", "UTF-16"]),
    ("name: x\nservices: [{name: a, path: /a, price: 1}]\n".encode("utf-16"), ["not UTF-8 text", "UTF-16"]),
    (VALID + "# café, saved as Latin-1\n".encode("latin-1"), ["not UTF-8 text", f"byte 0xe9 at offset {len(VALID) + 5}"]),
    (b"name: x\x00\nservices: []\n", ["not a text file", "NUL byte at offset 7"]),
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), ["not UTF-8 text"]),
    (b"", ["holds no YAML document"]),
    (b"services: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested too deeply"]),
], ids=["utf-16 bom and text", "utf-16 file", "latin-1", "nul byte", "binary", "empty", "deep nesting"])
def test_a_file_that_is_not_a_scenario_exits_2_naming_it(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    assert_refused(check(str(path)), path, *words)


def test_a_directory_exits_2_naming_it(tmp_path: Path) -> None:
    assert_refused(check(str(tmp_path)), tmp_path, "is a directory")


def test_a_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert_refused(check(str(path)), path, "cannot read", "No such file")


def test_utf8_with_a_byte_order_mark_is_a_scenario(tmp_path: Path) -> None:
    """Some editors write a UTF-8 byte order mark; the text is still UTF-8 and must load."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID)
    done = check(str(path))
    assert done.returncode == 0, done.stderr


# --- check validates for live runs: what `load` refuses before starting, `check` refuses too ----


def scenario_file(tmp_path: Path, name: str, sections: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{sections}services: [{{name: a, path: /a, price: 1000}}]\n")
    return path


def test_batch_too_big_for_the_block_fails_check_as_load_would(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, "big-batch",
                         "chain: {gas_limit: 30000000}\nfacilitator: {strategy: batched, batch: {max_size: 1000}}\n")
    assert_refused(check(str(path)), path, "not runnable live", "facilitator.batch.max_size 1000",
                   "chain.gas_limit 30,000,000", "`x402bench sim` refuses it too")
    assert_refused(check(str(path), "--sim"), path, "not runnable in the sim", "block gas limit 30000000")


def test_a_batch_only_the_sim_fits_fails_check_but_passes_check_sim(tmp_path: Path) -> None:
    """350 authorizations need 31.56 M gas as our facilitator sends them (90,000 each, never short) but
    about 23 M in the sim's gas model: load refuses it, so check does, and says the sim runs it."""
    path = scenario_file(tmp_path, "mid-batch",
                         "chain: {gas_limit: 30000000}\nfacilitator: {strategy: batched, batch: {max_size: 350}}\n")
    assert_refused(check(str(path)), path, "not runnable live", "facilitator.batch.max_size 350",
                   "valid for `x402bench sim`", "check --sim")
    sim_only = check(str(path), "--sim")
    assert sim_only.returncode == 0, sim_only.stderr
    assert "valid for `x402bench sim` (live checks skipped)" in sim_only.stdout


def test_manual_mining_is_valid_live_and_check_notes_the_sim_refuses_it(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, "manual", "chain: {mining: manual}\n")
    done = check(str(path))
    assert done.returncode == 0, done.stderr
    assert "valid for live runs" in done.stdout and "`x402bench sim` refuses it" in done.stdout
    assert_refused(check(str(path), "--sim"), path, "not runnable in the sim", "manual")


def test_a_batch_that_fits_passes_check_for_live_runs(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, "fits",
                         "chain: {gas_limit: 30000000}\nfacilitator: {strategy: batched, batch: {max_size: 20}}\n")
    done = check(str(path))
    assert done.returncode == 0, done.stderr
    assert "valid for live runs" in done.stdout


def test_an_outside_facilitator_is_not_held_to_our_facilitator_limits(tmp_path: Path) -> None:
    """`load` checks our facilitator's limits only when it starts ours: a scenario settling through a
    facilitator at a URL is runnable whatever its batch size says, so `check` passes it (and says why)."""
    path = scenario_file(tmp_path, "outside", "chain: {gas_limit: 30000000}\nfacilitator: {strategy: batched, "
                         "batch: {max_size: 1000}, external_url: 'http://127.0.0.1:9'}\n")
    done = check(str(path))
    assert done.returncode == 0, done.stderr
    assert "through the facilitator at http://127.0.0.1:9 (checked when `load` starts)" in done.stdout


def test_one_spend_cap_and_funding_in_atomic_units() -> None:
    """The agents' funding and spend cap, as live agents, the world's minting and the sim all read them."""
    base = {"name": "caps", "services": [{"name": "a", "path": "/a", "price": 1}]}
    funded = validate_scenario({**base, "agents": {"funding_usdc": 0.3}})
    assert funded.funding_atomic() == funded.spend_cap_atomic() == 300_000  # float arithmetic gives 299,999
    assert validate_scenario({**base, "agents": {"funding_usdc": 20, "budget_usdc": 50}}).spend_cap_atomic() == 20_000_000
    assert validate_scenario({**base, "agents": {"funding_usdc": 20, "budget_usdc": 0.07}}).spend_cap_atomic() == 70_000

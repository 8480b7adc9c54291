"""Which Anvil x402bench runs ($X402BENCH_ANVIL, the checkout's node_modules, PATH), on real files in a temp
folder: the order, a bad variable refused rather than skipped, npm's Node wrapper traded for its native binary.
The CLI's exit 2 when none is found is tested on the installed wheel (tests/test_wheel_outside.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import services.paths as paths
from services.paths import ANVIL_ENV, anvil_binary


@pytest.fixture
def lookup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No $X402BENCH_ANVIL, no checkout, PATH holding only an empty folder the test may fill."""
    monkeypatch.delenv(ANVIL_ENV, raising=False)
    monkeypatch.setattr(paths, "checkout", lambda: None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    yield bin_dir


def test_npm_s_anvil_command_on_path_runs_the_native_binary_beside_it(lookup_env: Path, tmp_path: Path) -> None:
    """`npm install -g @foundry-rs/anvil` puts a Node wrapper on PATH; its PID is not Anvil's."""
    modules = tmp_path / "lib" / "node_modules" / "@foundry-rs"
    wrapper = modules / "anvil" / "bin.mjs"
    native = modules / f"{paths._native_package()}" / "bin" / "anvil"
    for path in (wrapper, native):
        path.parent.mkdir(parents=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (lookup_env / "anvil").symlink_to(wrapper)
    assert anvil_binary() == native
    native.unlink()  # no native package beside it: the wrapper is still an Anvil, better than none
    assert anvil_binary() == lookup_env / "anvil"


def test_the_variable_wins_and_a_bad_one_is_refused_not_skipped(lookup_env: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = lookup_env / "anvil"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert anvil_binary() == on_path
    chosen = tmp_path / "my-anvil"
    chosen.write_text("#!/bin/sh\n")
    chosen.chmod(0o755)
    monkeypatch.setenv(ANVIL_ENV, str(chosen))
    assert anvil_binary() == chosen
    chosen.chmod(0o644)
    with pytest.raises(paths.AnvilNotFound, match="not an executable file"):
        anvil_binary()


def test_a_checkout_s_node_modules_comes_before_path(lookup_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = lookup_env / "anvil"
    installed = tmp_path / "checkout" / "node_modules" / "@foundry-rs" / f"{paths._native_package()}" / "bin" / "anvil"
    for path in (on_path, installed):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    monkeypatch.setattr(paths, "checkout", lambda: tmp_path / "checkout")
    assert anvil_binary() == installed
    installed.unlink()  # a checkout before `make setup`: PATH's
    assert anvil_binary() == on_path
    on_path.unlink()
    with pytest.raises(paths.AnvilNotFound, match=f"{ANVIL_ENV}=.*`make setup`.*on PATH"):
        anvil_binary()

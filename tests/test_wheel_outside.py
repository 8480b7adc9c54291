"""The wheel, installed into a fresh venv, runs `check`, `sim` and `load` away from the checkout.

What a user gets from `pip install x402bench-*.whl` must not lean on the checkout: every file read at run
time is in the wheel, child processes find the packages in the venv, a relative `--out` means the user's
folder, and Anvil comes from $X402BENCH_ANVIL or PATH. The venv borrows the project venv's dependencies
through a .pth line (no download, no index) but gets x402bench itself only from the wheel; the first test
holds that to be so, or every other test here would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.paths import ANVIL_ENV, IMPORT_ROOT, anvil_binary

CHECKOUT = IMPORT_ROOT
PACKAGES = ("x402bench", "services", "loadtest", "sim")
#: Not part of a build: copying them would only make the build slower (or, for build/, staler).
NOT_SOURCE_TOP = {".git", ".venv", "node_modules", "results", "build", "dist", ".pytest_cache"}
NOT_SOURCE = shutil.ignore_patterns("node_modules", "*.egg-info", "__pycache__", "*.pyc")


def _not_source(folder: str, names: list[str]) -> set[str]:
    """Top-level only for names a package may hold too (x402bench/results is code, results/ is runs)."""
    skipped = set(NOT_SOURCE(folder, names))
    return skipped | (NOT_SOURCE_TOP & set(names) if Path(folder) == CHECKOUT else set())


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    mark: str  # in every child's environment: what is still running with it at the end leaked

    @property
    def cli(self) -> Path:
        return self.venv / "bin" / "x402bench"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _venv_site(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy, so the build neither writes build/ into the checkout nor reuses it
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=_not_source)
    dist, venv = base / "dist", base / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(source), "-w", str(dist)], check=True, capture_output=True, timeout=120)
    (wheel,) = dist.glob("x402bench-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # the dependencies, not x402bench: a path line in a .pth adds the folder but runs none of the .pth
    # files in it, so the project venv's editable-install finder (which maps x402bench to the checkout) stays off
    deps = dict.fromkeys(sysconfig.get_paths()[kind] for kind in ("purelib", "platlib"))
    (_venv_site(venv) / "x402bench-test-deps.pth").write_text("".join(f"{path}\n" for path in deps))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=120)
    return Installed(wheel=wheel, venv=venv, mark=uuid.uuid4().hex)


def _env(installed: Installed, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", ANVIL_ENV, "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(installed.venv / "bin"), "/usr/bin", "/bin"])  # no anvil, no checkout venv
    env["X402BENCH_WHEEL_TEST"] = installed.mark
    env.update(extra)
    return env


def _start(installed: Installed, cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(installed.cli), *args], cwd=cwd, env=_env(installed, **env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[str], timeout: float = 150) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out + err


def _left_running(mark: str) -> list[str]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"X402BENCH_WHEEL_TEST={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_the_wheel_holds_every_module_and_file_and_the_venv_imports_them_from_it(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    needed = {p.relative_to(CHECKOUT).as_posix() for package in PACKAGES for p in (CHECKOUT / package).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    needed |= {f"x402bench/scenarios/{p.name}" for p in (CHECKOUT / "scenarios").glob("*.yaml")}
    assert needed - names == set()
    assert {"services/contracts/artifacts/MockUSDC.json", "loadtest/locustfile.py",
            "x402bench/scenarios/smoke.yaml"} <= names
    where = subprocess.run([str(installed.python), "-c", "import json, x402bench, services, loadtest, sim; "
                            "print(json.dumps([m.__file__ for m in (x402bench, services, loadtest, sim)]))"],
                           cwd=installed.venv.parent, env=_env(installed), capture_output=True, text=True, check=True)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(_venv_site(installed.venv)), path


def test_check_sim_and_load_run_outside_the_checkout(installed: Installed, tmp_path: Path) -> None:
    """One live load (Anvil found on PATH, the default relative --out), one sim of the user's own file,
    one check by the README's path, and the missing-Anvil refusal, all at once: each mostly waits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "anvil").symlink_to(anvil_binary())  # the one the checkout uses, now found as `anvil` on PATH
    on_path = os.pathsep.join([str(bin_dir), _env(installed)["PATH"]])
    mine = tmp_path / "sim" / "my-smoke.yaml"
    mine.parent.mkdir()
    mine.write_text((CHECKOUT / "scenarios" / "smoke.yaml").read_text().replace("name: smoke", "name: my-smoke"))
    runs = {
        "load": _start(installed, tmp_path / "load", "load", "scenarios/smoke.yaml", "--duration", "2", "--users", "2",
                       PATH=on_path),
        "sim": _start(installed, tmp_path / "sim", "sim", "my-smoke.yaml", "--duration", "5"),
        "check": _start(installed, tmp_path / "check", "check", "scenarios/smoke.yaml"),
        "no anvil": _start(installed, tmp_path / "none", "load", "scenarios/smoke.yaml", "--duration", "1"),
    }
    done = {name: _finish(process) for name, process in runs.items()}

    code, out = done["check"]
    assert code == 0 and "ok" in out, out
    code, out = done["sim"]
    assert code == 0, out
    (sim_summary,) = (tmp_path / "sim" / "results" / "my-smoke").glob("*/summary.json")
    assert json.loads(sim_summary.read_text())["mode"] == "sim"
    assert (sim_summary.parent / "report.html").is_file()

    code, out = done["load"]
    assert code == 0, out
    (summary_path,) = (tmp_path / "load" / "results" / "smoke").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    books = summary["reconciliation"]
    assert summary["mode"] == "load" and summary["slo"]["passed"]
    assert books["settled"] == books["paid_responses"] > 0 and books["served_unpaid"] == books["paid_unserved"] == 0
    assert (summary_path.parent / "report.html").is_file() and (summary_path.parent / "requests.csv").is_file()
    assert not (_venv_site(installed.venv) / "results").exists()  # nothing written beside the code

    code, out = done["no anvil"]
    assert code == 2, out
    assert "Anvil not found" in out and ANVIL_ENV in out and "make setup" in out and "PATH" in out, out
    assert "Traceback" not in out and not (tmp_path / "none" / "results" / "smoke").exists()
    assert _left_running(installed.mark) == []

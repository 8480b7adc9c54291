"""Where x402bench's code and its one outside tool (Anvil) are, from a checkout or from an installed wheel.

A wheel puts the packages in site-packages, with no node_modules and no checkout around them, so nothing
may assume one: Anvil is looked up in an order the user can steer, and child processes import the
packages from wherever this process did while running in the user's working directory, so a relative
path (the default `--out results`, a `--world` file) means the same to every process of a run.
"""

from __future__ import annotations

import os
import platform
import shutil
import site
import sys
from pathlib import Path

from x402bench.scenario import ScenarioError

#: The folder holding the packages (services/, x402bench/, loadtest/, sim/): the checkout, or site-packages.
IMPORT_ROOT = Path(__file__).resolve().parent.parent

#: The environment variable naming the Anvil binary to run; it wins over every other place.
ANVIL_ENV = "X402BENCH_ANVIL"

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_SYSTEM = {"linux": "linux", "darwin": "darwin"}


class AnvilNotFound(ScenarioError):
    """No usable Anvil: a setup problem the user fixes (exit 2, like any other unusable input), not a bug."""


def checkout() -> Path | None:
    """The source checkout this code runs from (editable install or plain clone), None for a wheel."""
    return IMPORT_ROOT if (IMPORT_ROOT / "pyproject.toml").is_file() and (IMPORT_ROOT / "services").is_dir() else None


def _native_package() -> str | None:
    """The npm package holding this platform's native Anvil (`anvil-linux-amd64`, ...), None if npm ships none."""
    arch, system = _ARCH.get(platform.machine().lower()), _SYSTEM.get(platform.system().lower())
    return f"anvil-{system}-{arch}" if arch and system else None


def _native_beside_wrapper(found: Path) -> Path:
    """npm's `anvil` command is a Node wrapper (`@foundry-rs/anvil/bin.mjs`) that spawns the native binary;
    its PID is not Anvil's, so stopping it could orphan the node. Take the native binary beside it instead."""
    real = found.resolve()
    package = _native_package()
    if real.name.endswith((".mjs", ".js")) and real.parent.name == "anvil" and package:
        native = real.parent.parent / package / "bin" / "anvil"
        if native.is_file():
            return native
    return found


def anvil_binary() -> Path:
    """The Anvil to run: $X402BENCH_ANVIL, else the checkout's node_modules (`npm ci`), else `anvil` on PATH."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise AnvilNotFound(f"{ANVIL_ENV}={override}: not an executable file (point it at the Anvil binary)")
        return path
    root, package = checkout(), _native_package()
    if root is not None and package is not None:
        path = root / "node_modules" / "@foundry-rs" / package / "bin" / "anvil"
        if path.is_file():
            return path
    found = shutil.which("anvil")
    if found:
        return _native_beside_wrapper(Path(found))
    where = f"in {root}/node_modules (run `make setup` there: `npm ci` installs it)" if root else \
        "in a checkout's node_modules (this x402bench is installed, not run from a checkout)"
    raise AnvilNotFound(
        f"Anvil not found: not in ${ANVIL_ENV}, not {where}, not on PATH. Provide it one of three ways: "
        f"set {ANVIL_ENV}=/path/to/anvil; run from a checkout after `make setup`; or put `anvil` on PATH "
        "(Foundry's `foundryup`, or `npm install -g @foundry-rs/anvil`)."
    )


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with PYTHONPATH leading to IMPORT_ROOT when the interpreter would not
    find the packages there by itself (a checkout run without installing). A site-packages folder is never
    put on PYTHONPATH: that would place it ahead of the standard library."""
    env = dict(os.environ if env is None else env)
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()] if p}
    if IMPORT_ROOT not in sites:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def python_module(module: str, *args: str) -> list[str]:
    """`python -P -m MODULE ARGS`: -P keeps the working directory off sys.path, so a user's own `services/`
    or `locust.py` in it cannot shadow ours."""
    return [sys.executable, "-P", "-m", module, *args]

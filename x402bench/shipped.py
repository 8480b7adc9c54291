"""The scenarios shipped inside the package, so the README's commands (`x402bench demo`, `x402bench load
scenarios/smoke.yaml`) work after a plain `pip install`, away from any checkout.

In a checkout, x402bench/scenarios is a link to scenarios/; a wheel holds them as package data. A path
that exists is always read as given: a shipped file only stands in for `scenarios/NAME.yaml` or
`NAME.yaml` when no such file exists where the user is.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "scenarios"


def names() -> list[str]:
    """The shipped scenario files, e.g. ["base-like.yaml", ..., "smoke.yaml"]."""
    return sorted(p.name for p in SHIPPED_DIR.glob("*.yaml")) if SHIPPED_DIR.is_dir() else []


def resolve(path: str | Path) -> Path:
    """`path` itself when it exists (or is not a shipped scenario's name); else the shipped file of that name."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    if path.parts in ((path.name,), ("scenarios", path.name)) and path.name in names():
        return SHIPPED_DIR / path.name
    return path

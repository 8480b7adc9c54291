"""Grid keys for sweeps: short names (agents, price, block_time_s, ...) or any dotted scenario path.

A sweep point is the base scenario with some fields replaced and validated again, so a
typo in a grid key fails before any process starts, naming the key and the scenario field.
"""

from __future__ import annotations

import copy
from typing import Any

from x402bench.scenario import Scenario, ScenarioError, validate_scenario

#: Short names -> what they set. Each documents itself in `x402bench sweep --help`.
ALIASES: dict[str, str] = {
    "agents": "agents.count",
    "rate": "agents.arrivals.rate_per_agent_s",
    "arrivals": "agents.arrivals.kind",
    "strategy": "facilitator.strategy",
    "signer_keys": "facilitator.signer_keys",
    "keys": "facilitator.signer_keys",
    "batch_size": "facilitator.batch.max_size",
    "batch_age_s": "facilitator.batch.max_age_s",
    "gas_limit": "chain.gas_limit",
    "gas_price_gwei": "economics.gas_price_gwei",
    "eth_usd": "economics.eth_usd",
    "duration_s": "run.duration_s",
    "duration": "run.duration_s",
    "users": "run.users",
    "seed": "seed",
}
#: Keys with their own rule (not a single field).
SPECIAL = {
    "block_time_s": "chain.block_time_s; 0 or 'auto' = automine",
    "price": "every service's price, in dollars ('0.001') or atomic units ('1000')",
    "workers": "every service's worker limit ('none' = unlimited)",
}


def _coerce(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['agents=1000,10000', 'block_time_s=2,0.2'] -> {'agents': [1000, 10000], 'block_time_s': [2, 0.2]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ScenarioError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. agents=1000,10000)")
        if key in grid:
            raise ScenarioError(f"--grid {key} is given twice")
        grid[key] = [_coerce(v) for v in values.split(",") if v.strip()]
    return grid


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ScenarioError(f"grid key {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    if key == "block_time_s":
        if value in (0, "auto", None):
            data["chain"].update(mining="auto", block_time_s=None)
        else:
            data["chain"].update(mining="interval", block_time_s=value)
    elif key == "price":
        price = value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else f"${value}"
        for service in data["services"]:
            service["price"] = price
    elif key == "workers":
        for service in data["services"]:
            service["workers"] = value
    elif ALIASES.get(key, key).startswith("facilitator.batch."):
        data["facilitator"]["batch"] = data["facilitator"].get("batch") or {}
        _set(data, ALIASES.get(key, key), value)
    else:
        _set(data, ALIASES.get(key, key), value)


def apply_overrides(scenario: Scenario, point: dict[str, Any]) -> Scenario:
    """The scenario with every (key, value) of a grid point applied, validated."""
    data = copy.deepcopy(scenario.model_dump(mode="python"))
    for key, value in point.items():
        _apply(data, key, value)
    label = ", ".join(f"{k}={v}" for k, v in point.items())
    return validate_scenario(data, source=f"{scenario.name} [{label}]")

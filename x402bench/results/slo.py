"""Service-level objectives: turn a run into pass/fail for CI.

Every bound set in the scenario's `slo` becomes one check; when reconciliation is given,
no lost payment, no double settlement and a payee balance that moved by exactly what was
served are checked too. A check whose figure is missing (no data) fails with a message
saying so: an SLO must never pass because nothing was measured.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from x402bench.results.money import LOSS_KEYS
from x402bench.scenario import Slo

#: slo field -> (dotted metric path, operator, what "no data" means)
SLO_METRICS: dict[str, tuple[str, str, str]] = {
    "min_throughput_rps": ("throughput_rps", ">=", "empty steady window (warmup_s >= duration?)"),
    "max_p95_request_s": ("request_latency_s.p95", "<=", "no paid request in the steady window"),
    "max_p95_settlement_s": ("settlement_latency_s.p95", "<=", "no settlement included on chain in the steady window"),
    "max_error_rate": ("error_rate", "<=", "no requests"),
    "max_gas_per_payment": ("gas_per_payment", "<=", "no settled payment with a receipt"),
    "max_cost_per_payment_usd": ("cost_per_payment_usd", "<=", "no settled payment with a receipt"),
}

_OPS = {
    ">=": lambda m, b: m >= b,
    "<=": lambda m, b: m <= b,
    "==": lambda m, b: m == b,
}


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def check(name: str, measured: Any, op: str, bound: Any, no_data: str) -> dict[str, Any]:
    """One check; `measured` None means no data, which fails."""
    if measured is None:
        return {"name": name, "measured": None, "op": op, "bound": bound, "passed": False,
                "message": f"no data: {no_data}"}
    passed = bool(_OPS[op](measured, bound))
    verdict = "ok" if passed else "violated"
    return {"name": name, "measured": measured, "op": op, "bound": bound, "passed": passed,
            "message": f"{verdict}: measured {measured:g}, required {op} {bound:g}"}


def evaluate_slo(slo: Slo, metrics: dict[str, Any], reconciliation: dict[str, Any] | None = None,
                 channels: dict[str, Any] | None = None) -> dict[str, Any]:
    """{passed, checks: [{name, measured, op, bound, passed, message}]}, checks in a fixed order.
    `channels`: the batch-settlement books' verdict (summary channels.reconciliation); its losses and
    each of its checks fail the run like the exact books' do."""
    checks = []
    for name, (path, op, no_data) in SLO_METRICS.items():
        bound = getattr(slo, name)
        if bound is not None:
            checks.append(check(name, _dig(metrics, path), op, bound, no_data))
    if reconciliation:
        missing = "reconciliation did not report it"
        for key in LOSS_KEYS:  # money gone astray is a failed run whatever the scenario's slo says
            checks.append(check(key, reconciliation.get(key), "==", 0, missing))
        actual, expected = reconciliation.get("payee_balance_delta"), reconciliation.get("expected_payee_delta")
        if actual is not None and expected is not None:
            checks.append(check("payee_delta_matches", actual - expected, "==", 0, missing))
    if channels:
        missing = "the channel books did not report it"
        for key in (*LOSS_KEYS, "pending"):
            checks.append(check(f"channels_{key}", channels.get(key), "==", 0, missing))
        for name, ok in sorted((channels.get("checks") or {}).items()):
            checks.append(check(f"channels_{name}", int(not ok), "==", 0, missing))
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def failures(slo_result: dict[str, Any]) -> list[str]:
    """One line per failed check, naming the check, the measured value and the bound (for CLI output)."""
    return [f"{c['name']}: {c['message']}" for c in slo_result.get("checks", []) if not c["passed"]]


#: What `--slo NAME=none` sets: the bound is removed, its check not made.
UNSET = ("none", "off", "null")


def slo_names() -> list[str]:
    """The SLO bounds a scenario (and `--slo`) may set, in the checks' order."""
    return list(Slo.model_fields)


def override_slo(slo: Slo, specs: list[str] | tuple[str, ...]) -> Slo:
    """`slo` with `--slo NAME=VALUE` overrides applied (later ones win), validated by the Slo model itself,
    so a bound the scenario file could not hold cannot come in from the command line either.
    Raises ValueError naming the bad spec and every SLO name: the CLI turns it into exit 2."""
    names = slo_names()
    listed = f"the SLOs are {', '.join(names)}"
    updates: dict[str, float | None] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ValueError(f"--slo {spec!r}: expected NAME=VALUE (e.g. max_p95_settlement_s=2); {listed}")
        if name not in names:
            raise ValueError(f"--slo {spec!r}: unknown SLO {name!r}; {listed}")
        if text.lower() in UNSET:
            updates[name] = None
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--slo {spec!r}: {text!r} is not a number (or 'none' to drop the bound); {listed}") from None
        if not math.isfinite(value):
            raise ValueError(f"--slo {spec!r}: the bound must be a finite number; {listed}")
        updates[name] = value
    try:
        return Slo.model_validate({**slo.model_dump(), **updates})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={updates.get(str(e['loc'][0]))!r}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"--slo: {problems}; {listed}") from None

"""The JSON Schema `x402bench schema` prints agrees with the pydantic models, case by case.

Editors and outside tools check scenario files against the schema, x402bench against the models;
a file one passes and the other refuses is a trap either way. So: every shipped scenario is valid
under the schema; each bad input below is refused by both; each shorthand below is accepted by both.
What the schema cannot say (cross-field rules: p99 below the median, a mix naming an unknown
service, a price finer than token.decimals, ...) is only refused by the models, and is not tested here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from x402bench.scenario import PRICE_PATTERN, ScenarioError, json_schema, parse_price, validate_scenario

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))
SCHEMA = json.loads(json_schema())
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)

BASE: dict[str, Any] = {"name": "t", "services": [{"name": "a", "path": "/a", "price": "$0.001"}]}


def _with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the dotted `path` set to `value` (numeric parts index lists)."""
    data = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[last] = value
    return data


def _schema_accepts(data: Any) -> bool:
    return VALIDATOR.is_valid(data)


def _models_accept(data: Any) -> bool:
    try:
        validate_scenario(data)
    except ScenarioError:
        return False
    return True


def test_the_schema_is_a_valid_schema_of_the_draft_it_declares() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert isinstance(VALIDATOR, jsonschema.Draft202012Validator)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_cli_prints_this_schema() -> None:
    import x402bench.commands.scenario_cmds  # noqa: F401  (registers `schema` on the app)
    from x402bench.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == json_schema()


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_is_valid_under_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert not errors, errors
    assert _models_accept(data)


REFUSED = {
    "price $abc": _with("services.0.price", "$abc"),
    "price -1": _with("services.0.price", -1),
    "price 0": _with("services.0.price", 0),
    "price '$0'": _with("services.0.price", "$0"),
    "price '0'": _with("services.0.price", "0"),
    "price 1.5 atomic": _with("services.0.price", 1.5),
    "price '1.5' atomic": _with("services.0.price", "1.5"),
    "price finer than 6 decimals": _with("services.0.price", "$0.0000001"),
    "price empty": _with("services.0.price", ""),
    "price $": _with("services.0.price", "$"),
    "price list": _with("services.0.price", [1]),
    "price null": _with("services.0.price", None),
    "work_ms fast": _with("services.0.work_ms", "fast"),
    "work_ms '5'": _with("services.0.work_ms", "5"),
    "work_ms -1": _with("services.0.work_ms", -1),
    "work_ms true": _with("services.0.work_ms", True),
    "work_ms unknown key": _with("services.0.work_ms", {"median": 1, "p95": 2}),
    "sign_ms fast": _with("agents.sign_ms", "fast"),
    "rtt_ms -0.5": _with("agents.rtt_ms", -0.5),
    "unknown top-level field": _with("nmae", "x"),
    "unknown service field": _with("services.0.prize", "$1"),
    "wrong enum: mining": _with("chain.mining", "sometimes"),
    "wrong enum: strategy": _with("facilitator.strategy", "eventual"),
    "wrong enum: scheme": _with("services.0.scheme", "upto"),
    "wrong enum: arrivals": _with("agents.arrivals.kind", "random"),
    "unknown fault kind": _with("faults", [{"kind": "meteor", "at_s": 1}]),
    "fault missing for_s": _with("faults", [{"kind": "chain_stall", "at_s": 1}]),
    "no services": _with("services", []),
    "service name pattern": _with("services.0.name", "Weather"),
    "external_service_url ftp": _with("external_service_url", "ftp://x"),
    "external_service_url list with ftp": _with("external_service_url", ["http://a", "ftp://x"]),
    "external_service_url number": _with("external_service_url", 5),
    "mix negative weight": _with("agents.mix", {"a": -1}),
    "mix all zero": _with("agents.mix", {"a": 0}),
    "agents.count 0": _with("agents.count", 0),
}

ACCEPTED = {
    "base": BASE,
    "price $0.001": _with("services.0.price", "$0.001"),
    "price atomic int": _with("services.0.price", 1000),
    "price atomic int as float": _with("services.0.price", 1000.0),
    "price atomic string": _with("services.0.price", "1000"),
    "price 0.001 USDC": _with("services.0.price", "0.001 USDC"),
    "price 0.001usdc": _with("services.0.price", "0.001usdc"),
    "price $1 USDC": _with("services.0.price", "$1 USDC"),
    "price $.5": _with("services.0.price", "$.5"),
    "price $1.": _with("services.0.price", "$1."),
    "price trailing zeros past 6 decimals": _with("services.0.price", "$0.0010000"),
    "price 6 decimals": _with("services.0.price", "$0.000001"),
    "work_ms bare int": _with("services.0.work_ms", 5),
    "work_ms bare float": _with("services.0.work_ms", 0.5),
    "work_ms bare 0": _with("services.0.work_ms", 0),
    "work_ms mapping": _with("services.0.work_ms", {"median": 5, "p99": 20}),
    "work_ms median only": _with("services.0.work_ms", {"median": 5}),
    "sign_ms bare number": _with("agents.sign_ms", 0.4),
    "rtt_ms bare number": _with("agents.rtt_ms", 3),
    "external_service_url string": _with("external_service_url", "http://127.0.0.1:4021"),
    "external_service_url list": _with("external_service_url", ["http://a:1", "https://b:2"]),
    "external_service_url null": _with("external_service_url", None),
    "batched without batch": _with("facilitator", {"strategy": "batched"}),
    "batched with batch null": _with("facilitator", {"strategy": "batched", "batch": None}),
    "mix with a zero weight": _with("agents.mix", {"a": 0, "b": 1}) | {"services": [
        {"name": "a", "path": "/a", "price": 1}, {"name": "b", "path": "/b", "price": 1}]},
    "mix empty": _with("agents.mix", {}),
    "fault": _with("faults", [{"kind": "rpc_latency", "at_s": 1, "for_s": 2, "ms": 300}]),
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_both_refuse(data: dict[str, Any]) -> None:
    assert (_schema_accepts(data), _models_accept(data)) == (False, False)


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_both_accept(data: dict[str, Any]) -> None:
    assert (_schema_accepts(data), _models_accept(data)) == (True, True)


def test_the_price_pattern_is_narrower_than_the_parser_never_wider() -> None:
    """Every string the schema's pattern offers, the parser reads (at 6 decimals); the spellings the
    parser also reads but the schema does not advertise are listed in PRICE_PATTERN's comment."""
    import re

    offered = ["$1", "$0.5", "$.5", "$1.", "$0.000001", "$0.0010000", "1 USDC", "1USDC", "$2.5 usdc", "1000", "1000.",
               "1000.000", "0.000001 USDC"]
    for price in offered:
        assert re.search(PRICE_PATTERN, price), price
        assert parse_price(price, 6) > 0
    for price in ["$abc", "$0", "0", "$0.0000001", "1.5", "-1", "$-1", "abc", "USDC", "$ USDC", "1 EUR"]:
        assert not re.search(PRICE_PATTERN, price), price


@pytest.mark.parametrize("price", ["Infinity", "$Infinity", "NaN", "sNaN", True, False])
def test_prices_that_are_no_amount_of_money_are_refused_as_bad_input(price: object) -> None:
    """Not a traceback: a ScenarioError naming the price, as any bad field gets (the CLI's exit 2); the schema
    refuses them too."""
    data = _with("services.0.price", price)
    with pytest.raises(ScenarioError, match="price"):
        validate_scenario(data)
    assert not _schema_accepts(data)

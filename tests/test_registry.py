"""Every strategy and scheme is declared once (x402bench.registry) and implemented by every layer that
needs it: the scenario schema offers exactly the declared names, and a name some layer lacks fails here
before it fails a user an hour into a sweep."""

from __future__ import annotations

import importlib
import json

import pytest

from x402bench import registry
from x402bench.scenario import json_schema

#: The modules that register each layer's implementations (imported as a run would import them).
LAYER_MODULES = (
    "services.facilitator.engines",  # engine
    "services.resource.app",  # service
    "services.payer.client", "services.payer.channel",  # payer
    "sim.run", "sim.channels",  # sim
    "sim.calibration",  # calibration
)


@pytest.fixture(scope="module", autouse=True)
def layers() -> None:
    for name in LAYER_MODULES:
        importlib.import_module(name)


def test_every_declared_name_is_implemented_by_every_layer_it_needs() -> None:
    assert registry.missing() == []


def test_the_schema_offers_exactly_the_declared_names() -> None:
    defs = json.loads(json_schema())["$defs"]
    assert defs["Facilitator"]["properties"]["strategy"]["enum"] == list(registry.STRATEGIES)
    assert defs["Service"]["properties"]["scheme"]["enum"] == list(registry.SCHEMES)
    for name, kind in registry.STRATEGIES.items():
        assert f"{name}: {kind.description}" in defs["Facilitator"]["properties"]["strategy"]["description"]


def test_the_live_and_sim_strategy_lists_are_the_registry_s() -> None:
    from services.facilitator.engines import ENGINES
    from sim.calibration import default_calibration
    from sim.ecosystem import STRATEGIES

    assert list(ENGINES) == list(registry.STRATEGIES) == list(STRATEGIES)
    assert list(default_calibration().strategies) == list(registry.STRATEGIES)


def test_a_name_declared_without_implementations_is_reported_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = registry.Kind("novel", "a strategy nobody wrote yet", ("engine", "sim", "calibration"))
    monkeypatch.setitem(registry.STRATEGIES, "novel", kind)
    monkeypatch.setattr(registry, "_implementations", dict(registry._implementations))
    assert registry.missing() == [("strategy", "engine", "novel"), ("strategy", "sim", "novel"),
                                  ("strategy", "calibration", "novel")]
    registry.register("strategy", "engine", "novel", object)
    assert ("strategy", "engine", "novel") not in registry.missing()


def test_registering_an_undeclared_name_or_a_foreign_layer_is_refused() -> None:
    with pytest.raises(KeyError, match="not declared"):
        registry.register("scheme", "sim", "upto", object)
    with pytest.raises(KeyError, match="does not implement"):
        registry.register("strategy", "payer", "sync", object)

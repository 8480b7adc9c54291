"""Settlement strategies and payment schemes, each declared once and implemented once per layer.

A strategy (how the facilitator settles exact payments) or a scheme (how a route is paid) is a
name that several layers must each understand: the scenario schema offers it, the live world runs
it, the sim models it, the calibration holds its default figures. Written as five separate lists
they drift (a name the schema accepts and the sim has never heard of is a crash an hour into a
sweep), so the names and their one-line meanings live here, and each layer announces what it
implements with one `register(layer, name, implementation)` call beside the implementation.
`missing()` lists every (layer, name) left without one; tests/test_registry.py imports every
layer and fails on any.

What each layer must supply, per name:

=================  ============================================================================
layer              for a strategy                         for a scheme
=================  ============================================================================
``engine``         the live facilitator's Engine class    the live facilitator's handler for it
``service``        (not applicable)                       the services' way to price a route with it
``payer``          (not applicable)                       the agents' payer for it
``sim``            the sim facilitator's model            the sim's model of paying with it
``calibration``    default timings (StrategyTiming)       default gas figures
=================  ============================================================================

The registry only stores; it imports no layer, so every layer may import it (the dependency
points from the layers to this module, never back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Layer = Literal["engine", "service", "payer", "sim", "calibration"]


@dataclass(frozen=True)
class Kind:
    """A name a scenario may pick, what it means, and the layers that must implement it."""

    name: str
    description: str
    layers: tuple[Layer, ...]


_STRATEGY_LAYERS: tuple[Layer, ...] = ("engine", "sim", "calibration")
_SCHEME_LAYERS: tuple[Layer, ...] = ("engine", "service", "payer", "sim", "calibration")

STRATEGIES: dict[str, Kind] = {k.name: k for k in (
    Kind("sdk", "the official x402 facilitator, unchanged, on the thread pool FastAPI gives plain `def` handlers",
         _STRATEGY_LAYERS),
    Kind("sync", "ours: one tx per payment, answered after its receipt", _STRATEGY_LAYERS),
    Kind("pipelined", "ours: the same txs, answered once sent (inclusion still tracked per payment)",
         _STRATEGY_LAYERS),
    Kind("batched", "ours: many authorizations per tx through a settler contract, flushed at batch.max_size "
                    "or batch.max_age_s", _STRATEGY_LAYERS),
)}

SCHEMES: dict[str, Kind] = {k.name: k for k in (
    Kind("exact", "one EIP-3009 transfer per request, settled by the facilitator's strategy", _SCHEME_LAYERS),
    Kind("batch-settlement", "a deposit into an escrow channel, then a signed cumulative voucher per request, "
                             "claimed and settled later (terms in the top-level `channel` section)", _SCHEME_LAYERS),
)}

_implementations: dict[tuple[str, Layer, str], Any] = {}


def _kinds(family: Literal["strategy", "scheme"]) -> dict[str, Kind]:
    return STRATEGIES if family == "strategy" else SCHEMES


def register(family: Literal["strategy", "scheme"], layer: Layer, name: str, implementation: Any) -> Any:
    """Record that `layer` implements strategy or scheme `name`; returns the implementation, so it can
    sit at its definition. An undeclared name, or a layer the kind does not need, is a programming error."""
    kind = _kinds(family).get(name)
    if kind is None:
        raise KeyError(f"{family} {name!r} is not declared in x402bench.registry (declared: {sorted(_kinds(family))})")
    if layer not in kind.layers:
        raise KeyError(f"layer {layer!r} does not implement {family}s (it implements: {kind.layers})")
    _implementations[(family, layer, name)] = implementation
    return implementation


def implementation(family: Literal["strategy", "scheme"], layer: Layer, name: str) -> Any:
    """What `layer` registered for `name`; KeyError naming the gap when nothing was."""
    try:
        return _implementations[(family, layer, name)]
    except KeyError:
        raise KeyError(f"the {layer} layer implements no {family} {name!r}") from None


def implementations(family: Literal["strategy", "scheme"], layer: Layer) -> dict[str, Any]:
    """Every name `layer` implements, in declaration order."""
    return {name: _implementations[(family, layer, name)] for name in _kinds(family)
            if (family, layer, name) in _implementations}


def missing() -> list[tuple[str, Layer, str]]:
    """(family, layer, name) for every declared name a layer that must implement it has not registered."""
    gaps = []
    for family in ("strategy", "scheme"):
        for name, kind in _kinds(family).items():  # type: ignore[arg-type]
            gaps += [(family, layer, name) for layer in kind.layers if (family, layer, name) not in _implementations]
    return gaps


def schema_help(family: Literal["strategy", "scheme"]) -> str:
    """The scenario field's description: every name and its meaning."""
    return "; ".join(f"{k.name}: {k.description}" for k in _kinds(family).values()) + "."

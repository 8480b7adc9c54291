"""The control API of the fault proxies: every JSON key, in one place.

The proxies (services.faults.rpc_proxy, services.faults.http_proxy), their Python client
(services.faults.control) and whatever drives a fault timeline meet only through these
JSON documents, over HTTP, across processes. Nothing imports a proxy's internals, so the
keys below are the contract: change one here and you change it for every side.

    POST /_faults   body: FaultChange        answer: FaultState (200), or ControlError (400, 409, 502)
    GET  /_faults                            answer: FaultState (also the proxy's own liveness check)

A `FaultChange` switches one mode on (with its params; switching on a mode that is on replaces
its params) or off; `{"mode": "all", "on": false}` switches every mode off. Modes are
independent and combine: on the RPC proxy a call passes stall, then latency, then errors, then
is forwarded (and its sends dropped under drop_sent).

Params per mode (absent keys take the defaults shown; unknown keys are refused with a 400):

| proxy | mode | params |
| --- | --- | --- |
| rpc | `latency` | `ms` (required, 0 < ms <= 60000), `jitter_ms` (0): each call waits ms + uniform(0, jitter_ms) |
| rpc | `errors` | `rate` (required, 0 < rate <= 1), `error` ("503"; or "429", "500", "timeout"), `seed` (the proxy's `--seed`): a fraction `rate` of HTTP requests fail |
| rpc | `stall` | `mining` ("stop"; or "keep"): hold every call until off; "stop" also stops the node's mining and restores it on off |
| rpc | `drop_sent` | none: every sent transaction's hash is dropped from the node's pool once the node returned it (409 on an automining node) |
| http | `5xx_after_settle` | `status` (502, any 500..599): POST /settle is forwarded and answered upstream, then the client gets `status` |
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

#: Switches every mode off when used as `mode` with `"on": false`.
ALL = "all"

RPC_MODES = ("latency", "errors", "stall", "drop_sent")
HTTP_MODES = ("5xx_after_settle",)
ERROR_KINDS = ("429", "500", "503", "timeout")


# --- params, one TypedDict per mode -------------------------------------------------------------------


class LatencyParams(TypedDict, total=False):
    ms: float  # required; added to every call
    jitter_ms: float  # plus uniform(0, jitter_ms); default 0


class ErrorsParams(TypedDict, total=False):
    rate: float  # required; the fraction of HTTP requests (a batch is one request) that fail
    error: Literal["429", "500", "503", "timeout"]  # default "503"; "timeout": held unanswered (504 on release)
    seed: int  # the per-request draw restarts from this seed each time the mode is switched on


class StallParams(TypedDict, total=False):
    mining: Literal["stop", "keep"]  # default "stop": the node mines nothing while stalled


class DropSentParams(TypedDict, total=False):
    pass  # no params


class Settle5xxParams(TypedDict, total=False):
    status: int  # default 502; what the client of POST /settle gets instead of the real answer


# --- the documents ------------------------------------------------------------------------------------


class FaultChange(TypedDict, total=False):
    """Body of POST /_faults."""

    mode: str  # one of the proxy's modes, or "all" (with on: false only)
    on: bool  # default true
    params: dict[str, Any]  # the mode's params (above); ignored when switching off


class RpcCounters(TypedDict):
    """Counters of the RPC proxy since it started (never reset; read deltas)."""

    requests: int  # HTTP requests received on the forwarding path (control and health excluded)
    forwarded: int  # HTTP requests forwarded upstream (a batch counts once)
    batches: int  # ... of which JSON-RPC batches
    delayed: int  # requests delayed by `latency`
    failed: dict[str, int]  # requests failed by `errors`, by kind: "429", "500", "503", "timeout"
    held: dict[str, int]  # requests held so far, by cause: "stall", "timeout"
    holding: int  # requests held right now
    dropped: int  # sent transactions removed from the node's pool by `drop_sent`
    dropped_hashes: list[str]  # ... their hashes, in order
    drop_missed_hashes: list[str]  # sends whose tx was already mined when the drop came: not dropped
    resent: int  # other pool txs of a dropped tx's sender put back after a removal by sender (see rpc_proxy)
    upstream_errors: int  # requests answered 502 because the upstream could not be reached


class HttpCounters(TypedDict):
    """Counters of the HTTP proxy since it started (never reset; read deltas)."""

    requests: int  # requests received on the forwarding path (control excluded; /health included)
    forwarded: int  # requests forwarded upstream
    settle_answers_lost: int  # POST /settle answers replaced by `5xx_after_settle`
    lost_transactions: list[str]  # the `transaction` field of each lost answer that had one, in order
    upstream_errors: int  # requests answered 502 because the upstream could not be reached


class FaultState(TypedDict):
    """Answer of GET /_faults and of every successful POST /_faults."""

    proxy: Literal["rpc", "http"]
    upstream: str  # the URL everything is forwarded to
    seed: int  # the proxy's --seed
    modes: list[str]  # every mode this proxy knows
    active: dict[str, dict[str, Any]]  # mode -> its params (defaults filled in), for the modes that are on
    counters: RpcCounters | HttpCounters
    mining_saved: NotRequired[str | None]  # rpc only: the node's mining mode a stall will restore ("auto", "manual", "interval:N")


class ControlError(TypedDict):
    """Answer of a refused POST /_faults (400: malformed; 409: cannot apply here; 502: upstream failed)."""

    error: str


class ChangeRefused(ValueError):
    """A FaultChange that is malformed (status 400) or cannot be applied (409, 502)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- validation ---------------------------------------------------------------------------------------

_Number = (int, float)

#: mode -> {key: (types, default or REQUIRED, check, what the check says)}
_REQUIRED = object()
_SPECS: dict[str, dict[str, tuple[tuple[type, ...], Any, Any, str]]] = {
    "latency": {
        "ms": (_Number, _REQUIRED, lambda v: 0 < v <= 60_000, "0 < ms <= 60000"),
        "jitter_ms": (_Number, 0.0, lambda v: 0 <= v <= 60_000, "0 <= jitter_ms <= 60000"),
    },
    "errors": {
        "rate": (_Number, _REQUIRED, lambda v: 0 < v <= 1, "0 < rate <= 1"),
        "error": ((str,), "503", lambda v: v in ERROR_KINDS, f"one of {', '.join(ERROR_KINDS)}"),
        "seed": ((int,), None, lambda v: True, "an integer"),
    },
    "stall": {"mining": ((str,), "stop", lambda v: v in ("stop", "keep"), "stop or keep")},
    "drop_sent": {},
    "5xx_after_settle": {"status": ((int,), 502, lambda v: 500 <= v <= 599, "500 <= status <= 599")},
}


def parse_change(body: Any, modes: tuple[str, ...]) -> tuple[str, bool, dict[str, Any]]:
    """(mode, on, params with defaults) from a POST /_faults body; ChangeRefused (400) names what is wrong."""
    if not isinstance(body, dict):
        raise ChangeRefused("the body must be a JSON object: {\"mode\": ..., \"on\": true|false, \"params\": {...}}")
    unknown = sorted(set(body) - {"mode", "on", "params"})
    if unknown:
        raise ChangeRefused(f"unknown key(s) {', '.join(unknown)}; a change has mode, on, params")
    mode, on, params = body.get("mode"), body.get("on", True), body.get("params") or {}
    if not isinstance(on, bool):
        raise ChangeRefused("on must be true or false")
    if mode == ALL:
        if on:
            raise ChangeRefused(f"mode {ALL!r} can only be switched off")
        return mode, False, {}
    if mode not in modes:
        raise ChangeRefused(f"unknown mode {mode!r}; this proxy has {', '.join(modes)} (and {ALL!r} to switch all off)")
    if not on:
        return mode, False, {}
    if not isinstance(params, dict):
        raise ChangeRefused("params must be a JSON object")
    spec = _SPECS[mode]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        known = ", ".join(spec) or "none"
        raise ChangeRefused(f"{mode}: unknown param(s) {', '.join(unknown)}; its params: {known}")
    out: dict[str, Any] = {}
    for key, (types, default, check, says) in spec.items():
        if key not in params:
            if default is _REQUIRED:
                raise ChangeRefused(f"{mode}: {key} is required ({says})")
            out[key] = default
            continue
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise ChangeRefused(f"{mode}: {key}={value!r} is not valid ({says})")
        out[key] = float(value) if types is _Number else value
    return mode, True, out

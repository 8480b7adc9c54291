"""Bad input, generated: hypothesis throws arbitrary and almost-right payments at a real world
(Anvil, our facilitator in its own process, the priced service behind the SDK middleware, real
HTTP) and every answer must be a refusal with a reason code, or a payment that really was valid.

The hand-written cases in test_hostile.py say what each known attack gets; these say what
*any* input gets: never a 5xx, never a hang (every request has a 10 s timeout), always a reason,
and never a settlement of a payment a mutation altered. The most useful inputs are structured
mutations of a real signed payment: at any depth, a field replaced by arbitrary JSON or by a
near miss of its own value (case, padding, a digit more, another number spelling), dropped, or
joined by a new one; and payments re-signed over unusual terms (uint256 extremes, a time window
at the edges, another payee or signer), which reach past the signature check into the ledger and
the chain. Examples are derandomized and no hypothesis database is written, so CI sees the same
inputs every run; inputs that once broke x402bench stay as explicit examples.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from eth_account import Account
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from services.facilitator.ledger import read_payments
from services.stack import World
from x402bench.scenario import load_scenario

from payments import build_payment, encode, requirements

# Hypothesis keeps caches (source constants, unicode tables) under ./.hypothesis even without a database:
# kept out of the working tree, so a test run leaves the repository as it found it.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "x402bench-hypothesis")

#: Every request's timeout: a hang fails the example instead of the whole run.
TIMEOUT_S = 10.0
BOUNDED = settings(max_examples=150, deadline=None, derandomize=True, database=None, print_blob=False,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Refusals that mean something inside broke rather than that the payment is bad: never right in a healthy world.
INTERNAL = {"unexpected_verify_error", "unexpected_settle_error"}
#: How the SDK middleware reports a facilitator's non-200 inside its 402 (the facilitator's answer follows).
UPSTREAM = re.compile(r"^Facilitator (verify|settle) failed \((\d{3})\): (.*)$", re.DOTALL)
INT64_MAX = 2**63 - 1
UINT256_MAX = 2**256 - 1


# --- the world, and what was sent on purpose -----------------------------------------------------


class Lab:
    """The running world, its quote, and every payment this module signed that ought to settle.

    A plain class with a short repr: hypothesis prints a failing example's arguments, this one included."""

    def __init__(self, world: World, quote: dict[str, Any]) -> None:
        self.world = world
        self.quote = quote
        #: (payer, payee, amount, valid_after, valid_before, nonce) of payments signed valid on purpose
        self.valid: set[tuple[Any, ...]] = set()
        #: nonces whose request was answered as paid (service 200, /settle success)
        self.paid: set[str] = set()
        self.turn = 0

    def __repr__(self) -> str:
        return f"Lab({self.world.info.service_urls['weather']}, {len(self.valid)} valid, {len(self.paid)} paid)"

    @property
    def accepts(self) -> dict[str, Any]:
        return self.quote["accepts"][0]

    def next_agent(self) -> int:
        """Round-robin over the agents, so no one wallet runs dry."""
        self.turn += 1
        return self.turn % len(self.world.agents)

    def settled(self) -> list[dict[str, Any]]:
        return [row for row in read_payments(self.world.info.ledger_path) if row["state"] == "settled"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    scenario = load_scenario("scenarios/smoke.yaml").with_overrides(agents={"count": 10, "funding_usdc": 1})
    with World(scenario, workdir=tmp_path_factory.mktemp("bad-input")) as world:
        yield Lab(world, requirements(world))


def ledger_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["payer"].lower(), row["payee"].lower(), int(row["amount"]), int(row["valid_after"]),
            int(row["valid_before"]), row["nonce"].lower())


def assert_ledger_holds_only_deliberate_payments(lab: Lab) -> None:
    """Every settled row is a payment signed valid on purpose, answered as paid; nothing else moved money."""
    for row in lab.settled():
        assert ledger_tuple(row) in lab.valid, f"settled a payment no valid signature of ours covers: {row}"
        assert row["nonce"].lower() in lab.paid, f"settled behind a refusal: {row}"


# --- JSON, text and bytes -------------------------------------------------------------------------

#: Characters a header value may carry on the wire (h11 refuses the rest before anything is sent).
HEADER_CHARS = "\t" + "".join(chr(c) for c in range(0x20, 0x7F)) + "".join(chr(c) for c in range(0x80, 0x100))
numbers = (st.integers(-(2**64), 2**64) | st.integers(-(10**80), 10**80)
           | st.sampled_from([0, -1, 1, INT64_MAX, INT64_MAX + 1, UINT256_MAX, UINT256_MAX + 1, 10**400]))
scalars = (st.none() | st.booleans() | numbers | st.floats() | st.text(max_size=40)
           | st.sampled_from(["", "0x", "0x" + "00" * 20, "0x" + "ff" * 32, "2", "1000", "eip155:31337", "exact"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)


def dumps(value: Any) -> bytes:
    """JSON as a lenient client writes it (NaN and Infinity included: Python's parser takes them)."""
    return json.dumps(value).encode()


# --- mutations of a real payment ------------------------------------------------------------------

# Leaves of the shapes name the kind of value found there, so each gets the near misses that fit it.
ADDRESS, DIGITS, HEX, TEXT, NUMBER = "address", "digits", "hex", "text", "number"
AUTH_SHAPE = {"from": ADDRESS, "to": ADDRESS, "value": DIGITS, "validAfter": DIGITS, "validBefore": DIGITS,
              "nonce": HEX}
ACCEPTED_SHAPE = {"scheme": TEXT, "network": TEXT, "asset": ADDRESS, "amount": DIGITS, "payTo": ADDRESS,
                  "maxTimeoutSeconds": NUMBER, "extra": {"name": TEXT, "version": TEXT}}
#: The keys of what tests/payments.build_payment returns (checked against a real one below): mutation paths are
#: drawn from it before the payment they apply to exists, since every example signs a fresh one.
PAYLOAD_SHAPE = {"x402Version": NUMBER, "payload": {"signature": HEX, "authorization": AUTH_SHAPE},
                 "accepted": ACCEPTED_SHAPE, "resource": {"url": TEXT, "description": TEXT, "mimeType": TEXT}}
BODY_SHAPE = {"x402Version": NUMBER, "paymentPayload": PAYLOAD_SHAPE, "paymentRequirements": ACCEPTED_SHAPE}
KNOWN_KEYS = sorted({"x402Version", "paymentPayload", "paymentRequirements", "payload", "permit2Authorization",
                     "extensions", *PAYLOAD_SHAPE, *PAYLOAD_SHAPE["payload"], *AUTH_SHAPE, *ACCEPTED_SHAPE})

_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _digits(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _hexstr(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("0x") and re.fullmatch(r"[0-9a-fA-F]*", value[2:]) is not None


#: Near misses of a value, applied to the real value when the example runs.
TWEAKS: dict[str, Callable[[Any], Any]] = {
    "upper": lambda v: v.upper(),
    "lower": lambda v: v.lower(),
    "emptied": lambda v: type(v)(),
    "shortened": lambda v: v[:-1] if isinstance(v, str) else dict(list(v.items())[:-1]),
    "lengthened": lambda v: v + "0",
    "padded": lambda v: f" {v} ",
    "unprefixed": lambda v: v.removeprefix("0x"),
    "as number": lambda v: int(v) if _digits(v) else int(v, 16),
    "as float": lambda v: float(v),
    "as string": lambda v: json.dumps(v),
    "plus one": lambda v: str(int(v) + 1) if isinstance(v, str) else v + 1,
    "minus one": lambda v: str(int(v) - 1) if isinstance(v, str) else v - 1,
    "negated": lambda v: "-" + v if isinstance(v, str) else -v,
    "plus sign": lambda v: "+" + v,
    "underscored": lambda v: v[0] + "_" + v[1:],
    "fullwidth digits": lambda v: v.translate(_FULLWIDTH),
    "leading zeros": lambda v: "000" + v if _digits(v) else "0x000" + v[2:],
    "huge": lambda v: "9" * 100 if isinstance(v, str) else 2**256,
    "in a list": lambda v: [v],
    "in an object": lambda v: {"value": v},
    "null": lambda v: None,
    "true": lambda v: True,
}
_ANY = ["in a list", "in an object", "null", "true", "emptied"]
#: Which near misses fit which kind of leaf ("object" for the objects themselves).
FITTING = {
    DIGITS: ["lengthened", "padded", "as number", "as float", "plus one", "minus one", "negated", "plus sign",
             "underscored", "fullwidth digits", "leading zeros", "huge", *_ANY],
    ADDRESS: ["upper", "lower", "shortened", "lengthened", "padded", "unprefixed", "as number", "leading zeros",
              *_ANY],
    HEX: ["upper", "lower", "shortened", "lengthened", "padded", "unprefixed", "as number", "leading zeros", *_ANY],
    TEXT: ["upper", "lower", "shortened", "lengthened", "padded", "fullwidth digits", *_ANY],
    NUMBER: ["as string", "as float", "plus one", "minus one", "negated", "huge", "in a list", "null", "true"],
    "object": ["shortened", *_ANY],
}


def _nodes(shape: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(path, kind) of every node of a shape, the root included."""
    if not isinstance(shape, dict):
        return [(path, shape)]
    return [(path, "object"), *(n for key, child in shape.items() for n in _nodes(child, (*path, key)))]


@dataclass(frozen=True)
class Op:
    """One edit at `path`: replace with `value`, tweak by name, delete, or add `key` = `value` inside."""

    kind: str
    path: tuple[str, ...]
    value: Any = None
    key: str = ""

    def apply(self, doc: Any) -> Any:
        if not self.path:
            return self._edit(doc)
        parent = doc
        for step in self.path[:-1]:
            if not isinstance(parent, dict) or step not in parent:
                return doc  # an earlier edit removed the way here
            parent = parent[step]
        last = self.path[-1]
        if not isinstance(parent, dict) or last not in parent:
            return doc
        if self.kind == "delete":
            del parent[last]
        else:
            parent[last] = self._edit(parent[last])
        return doc

    def _edit(self, value: Any) -> Any:
        if self.kind == "replace":
            return copy.deepcopy(self.value)
        if self.kind == "add":
            return {**value, self.key: copy.deepcopy(self.value)} if isinstance(value, dict) else value
        try:
            return TWEAKS[self.value](value)
        except (TypeError, ValueError, AttributeError, IndexError):
            return value  # an earlier edit changed what is here: this one does not apply


@st.composite
def ops(draw: st.DrawFn, shape: dict[str, Any]) -> list[Op]:
    """Up to three edits, each at a node of `shape` drawn uniformly (a leaf as likely as a whole section)."""
    nodes = _nodes(shape)
    edits = []
    for _ in range(draw(st.integers(0, 3))):
        path, kind = draw(st.sampled_from(nodes))
        edit = draw(st.sampled_from(["replace", "tweak"] + (["delete"] if path else [])
                                    + (["add"] if kind == "object" else [])))
        if edit == "replace":
            edits.append(Op(edit, path, draw(json_values)))
        elif edit == "tweak":
            edits.append(Op(edit, path, draw(st.sampled_from(FITTING[kind]))))
        elif edit == "add":
            edits.append(Op(edit, path, draw(json_values), draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=10))))
        else:
            edits.append(Op(edit, path))
    return edits


#: Signed terms, named relative to the quote and to the clock: resolved when the example runs.
TIME_POINTS = ["zero", "past", "now+2", "now+300", "far", "int64 max", "int64 max+1", "uint256 max"]
terms = st.fixed_dictionaries({}, optional={
    "value": st.sampled_from(["price", "price-1", "price+1", "zero", "uint256 max"]) | st.integers(0, UINT256_MAX),
    "validAfter": st.sampled_from(TIME_POINTS) | st.integers(0, UINT256_MAX),
    "validBefore": st.sampled_from(TIME_POINTS) | st.integers(0, UINT256_MAX),
    "to": st.sampled_from(["payee", "stranger"]),
    "from": st.sampled_from(["payer", "other agent"]),
    "signer": st.sampled_from(["payer", "other agent", "stranger"]),
})


@dataclass(frozen=True)
class Case:
    """A payment signed over `signed` terms (empty: the quote's), then edited by `edits` after signing."""

    signed: dict[str, Any]
    edits: tuple[Op, ...]


def cases(shape: dict[str, Any]) -> st.SearchStrategy[Case]:
    return st.builds(Case, terms | st.just({}), ops(shape).map(tuple))


@dataclass
class Built:
    """A signed payment and whether, as signed, it ought to settle (None: too close to the clock to say)."""

    payload: dict[str, Any]
    should_pay: bool | None

    @property
    def authorization(self) -> dict[str, Any]:
        return self.payload["payload"]["authorization"]

    def key(self) -> tuple[Any, ...]:
        a = self.authorization
        return (a["from"].lower(), a["to"].lower(), int(a["value"]), int(a["validAfter"]), int(a["validBefore"]),
                a["nonce"].lower())


def sign(lab: Lab, signed: dict[str, Any]) -> Built:
    """Sign the terms with eth_account (tests/payments), and say independently whether they ought to settle."""
    world, accepts = lab.world, lab.accepts
    price, now = int(accepts["amount"]), int(time.time())
    agent, other = lab.next_agent(), lab.next_agent()
    stranger = Account.create()
    points = {"zero": 0, "past": now - 3600, "now+2": now + 2, "now+300": now + 300, "far": now + 10**9,
              "int64 max": INT64_MAX, "int64 max+1": INT64_MAX + 1, "uint256 max": UINT256_MAX}
    values = {"price": price, "price-1": price - 1, "price+1": price + 1, "zero": 0, "uint256 max": UINT256_MAX}
    auth: dict[str, Any] = {"validAfter": 0, "validBefore": now + 300}
    for name in ("validAfter", "validBefore"):
        if name in signed:
            auth[name] = points.get(signed[name], signed[name])
    if "value" in signed:
        auth["value"] = values.get(signed["value"], signed["value"])
    if signed.get("to") == "stranger":
        auth["to"] = stranger.address
    payer = world.agents[other if signed.get("from") == "other agent" else agent]
    auth["from"] = payer.address
    key = {"payer": payer.key_hex, "other agent": world.agents[(other + 1) % len(world.agents)].key_hex,
           "stranger": stranger.key.hex()}[signed.get("signer", "payer")]
    payload = build_payment(world, agent, lab.quote, key=key, auth=auth)
    a = payload["payload"]["authorization"]
    after, before = int(a["validAfter"]), int(a["validBefore"])
    should_pay: bool | None = (
        int(a["value"]) == price and a["to"].lower() == accepts["payTo"].lower() and key == payer.key_hex
        and after <= now and before >= now + 6 and before <= INT64_MAX)  # the ledger's seconds are int64
    if should_pay is not False and (now < after <= now + 30 or now + 6 <= before < now + 36):
        should_pay = None  # the clock may cross the window's edge while the request travels
    return Built(payload, should_pay)


def spec_reading(payload: Any) -> tuple[Any, ...] | None:
    """What a payment authorizes, read strictly as the x402 exact EVM scheme writes it (None: it does not)."""
    try:
        a, signature = payload["payload"]["authorization"], payload["payload"]["signature"]
        if type(payload["x402Version"]) is not int or payload["x402Version"] != 2:
            return None
        amounts = [a[k] for k in ("value", "validAfter", "validBefore")]
        if not all(_digits(n) for n in amounts) or not all(
                _hexstr(a[k]) and len(a[k]) == n for k, n in (("from", 42), ("to", 42), ("nonce", 66))):
            return None
        if not (_hexstr(signature) and len(signature) == 132):
            return None
        return (a["from"].lower(), a["to"].lower(), *map(int, amounts), a["nonce"].lower(), signature.lower())
    except (KeyError, TypeError):
        return None


def terms_reading(requirements: Any) -> tuple[Any, ...] | None:
    """What settlement depends on in payment requirements, read strictly (keys it does not read may be added)."""
    try:
        extra = requirements["extra"]
        fields = [requirements[k] for k in ("scheme", "network", "asset", "payTo")] + [extra["name"], extra["version"]]
        if not all(isinstance(f, str) for f in fields) or not _digits(requirements["amount"]):
            return None
        return (*fields[:2], fields[2].lower(), fields[3].lower(), *fields[4:], int(requirements["amount"]))
    except (KeyError, TypeError):
        return None


# --- what an answer must be ----------------------------------------------------------------------


def service_get(lab: Lab, header: str | bytes) -> httpx.Response:
    try:
        return httpx.get(lab.world.info.service_urls["weather"], headers={"PAYMENT-SIGNATURE": header},
                         timeout=TIMEOUT_S)
    except httpx.TimeoutException:
        pytest.fail(f"the service gave no answer within {TIMEOUT_S} s to PAYMENT-SIGNATURE {header[:200]!r}")


def _header_json(response: httpx.Response, name: str) -> dict[str, Any]:
    value = json.loads(base64.b64decode(response.headers[name]))
    assert isinstance(value, dict), (name, value)
    return value


def service_verdict(response: httpx.Response) -> str:
    """'paid', or the reason code of a proper refusal; anything else fails the example."""
    status = response.status_code
    assert status < 500, f"{status} from the service: {response.text[:500]}"
    if status == 200:
        return "paid"
    if status == 400:
        assert response.json().get("error") == "invalid_payload", response.text[:500]
        return "invalid_payload"
    assert status == 402, f"{status}: {response.text[:500]}"
    if "PAYMENT-RESPONSE" in response.headers:
        reason = _header_json(response, "PAYMENT-RESPONSE").get("errorReason")
    else:
        reason = _header_json(response, "PAYMENT-REQUIRED").get("error")
    assert isinstance(reason, str) and reason, f"402 without a reason: {dict(response.headers)}"
    assert reason not in INTERNAL, f"402 {reason}: something inside broke ({response.headers})"
    upstream = UPSTREAM.match(reason)
    if upstream:  # the facilitator's own answer, passed on by the SDK: it too must be a reasoned refusal
        assert int(upstream[2]) < 500, f"the facilitator answered the service {upstream[2]}: {reason[:500]}"
        inner = json.loads(upstream[3])
        reason = inner.get("invalidReason") or inner.get("errorReason")
        assert isinstance(reason, str) and reason and reason not in INTERNAL, upstream[3]
    return reason


def facilitator_post(lab: Lab, path: str, body: bytes) -> httpx.Response:
    try:
        return httpx.post(lab.world.info.facilitator_url + path, content=body,
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)
    except httpx.TimeoutException:
        pytest.fail(f"the facilitator gave no answer within {TIMEOUT_S} s to POST {path} {body[:200]!r}")


def facilitator_verdict(path: str, response: httpx.Response) -> str:
    """'valid' (/verify) or 'settled' (/settle), or the reason code of a proper refusal."""
    assert response.status_code in (200, 400), f"{response.status_code} from {path}: {response.text[:500]}"
    body = response.json()
    assert isinstance(body, dict), body
    if path == "/verify" and body.get("isValid") is True:
        assert response.status_code == 200
        return "valid"
    if path == "/settle" and body.get("success") is True:
        assert response.status_code == 200 and str(body.get("transaction", "")).startswith("0x"), body
        return "settled"
    reason = body.get("invalidReason" if path == "/verify" else "errorReason")
    assert isinstance(reason, str) and reason, f"{path} refused without a reason: {body}"
    assert reason not in INTERNAL, f"{path} {reason}: something inside broke ({body})"
    return reason


def settled_as(lab: Lab, built: Built, paid: bool) -> None:
    """The ledger agrees with the answer: a payment answered as paid is settled once, exactly as signed;
    a refused one is not settled at all (sync settles before it answers, so there is nothing to wait for)."""
    nonce = built.authorization["nonce"].lower()
    if paid:
        lab.paid.add(nonce)
    rows = [ledger_tuple(r) for r in lab.settled() if r["nonce"].lower() == nonce]
    assert rows == ([built.key()] if paid else []), f"answered {'paid' if paid else 'refused'}, ledger: {rows}"


# --- the priced service's PAYMENT-SIGNATURE ------------------------------------------------------


#: Around the guard's 8 KB limit, as a repeated piece: hypothesis drawing 10,000 characters one by one is slow.
long_text = st.tuples(st.text(alphabet=HEADER_CHARS, min_size=1, max_size=16), st.integers(7_000, 12_000)).map(
    lambda piece_and_size: (piece_and_size[0] * piece_and_size[1])[:piece_and_size[1]])


@BOUNDED
@given(text=st.text(alphabet=HEADER_CHARS, max_size=300) | long_text)
def test_service_refuses_arbitrary_header_text(lab: Lab, text: str) -> None:
    header = text.strip(" \t")
    assert service_verdict(service_get(lab, header.encode("latin-1"))) != "paid"


@BOUNDED
@given(raw=st.binary(max_size=800), alphabet=st.sampled_from(["standard", "urlsafe", "unpadded"]))
def test_service_refuses_base64_of_arbitrary_bytes(lab: Lab, raw: bytes, alphabet: str) -> None:
    header = (base64.urlsafe_b64encode(raw) if alphabet == "urlsafe" else base64.b64encode(raw)).decode()
    if alphabet == "unpadded":
        header = header.rstrip("=")
    assert service_verdict(service_get(lab, header)) != "paid"


@BOUNDED
@given(value=json_values)
def test_service_refuses_base64_of_arbitrary_json(lab: Lab, value: Any) -> None:
    assert service_verdict(service_get(lab, base64.b64encode(dumps(value)).decode())) != "paid"


def test_payment_shape_is_what_mutations_are_drawn_from(lab: Lab) -> None:
    """The mutation paths come from PAYLOAD_SHAPE: it must be the shape of a real payment, or they miss."""
    def keys(node: Any) -> Any:
        return {k: keys(v) for k, v in node.items()} if isinstance(node, dict) else None

    real = build_payment(lab.world, 0, lab.quote)
    assert keys(real) == keys(PAYLOAD_SHAPE)
    assert keys({"x402Version": 2, "paymentPayload": real, "paymentRequirements": lab.accepts}) == keys(BODY_SHAPE)


@BOUNDED
@given(case=cases(PAYLOAD_SHAPE))
@example(case=Case({}, ()))  # the unchanged payment: paid, or the oracle below is wrong
# Found by hypothesis, kept: each was paid (or broke inside) before the fix named.
@example(case=Case({}, (Op("delete", ("x402Version",)),)))  # the SDK model defaulted it to 2: the guard requires it
@example(case=Case({}, (Op("tweak", ("payload", "authorization", "value"), "padded"),)))  # " 1000 " took int()
@example(case=Case({"validBefore": "int64 max+1"}, ()))  # ledger overflow at settle: 500 under a 402
def test_service_answers_mutated_payments_with_a_reason_and_pays_only_valid_ones(lab: Lab, case: Case) -> None:
    built = sign(lab, case.signed)
    if built.should_pay is not False:
        lab.valid.add(built.key())
    payload = copy.deepcopy(built.payload)
    for op in case.edits:
        payload = op.apply(payload)
    verdict = service_verdict(service_get(lab, encode(payload)))
    event(f"service: {verdict[:60]}")  # `pytest --hypothesis-show-statistics` shows how deep the inputs reached
    settled_as(lab, built, verdict == "paid")
    if verdict == "paid":
        assert built.should_pay is not False, f"paid for terms that ought to be refused: {case.signed}"
        assert spec_reading(payload) == spec_reading(built.payload), f"paid for an altered payment: {payload}"
    elif not case.edits and built.should_pay:
        pytest.fail(f"a valid payment was refused: {verdict} ({case.signed})")


# --- the facilitator's /verify and /settle bodies -----------------------------------------------

paths = st.sampled_from(["/verify", "/settle"])


@BOUNDED
@given(path=paths, body=st.binary(max_size=2000))
@example(path="/verify", body=b"{" * 70_000)  # over the body limit
@example(path="/settle", body=b'{"x402Version": ' + b"9" * 5000 + b"}")  # past Python's int-parsing digit limit
@example(path="/verify", body=b"[" * 30_000 + b"]" * 30_000)  # nested past the recursion limit
def test_facilitator_refuses_arbitrary_bytes(lab: Lab, path: str, body: bytes) -> None:
    assert facilitator_verdict(path, facilitator_post(lab, path, body)) not in ("valid", "settled")


@BOUNDED
@given(path=paths, value=json_values)
def test_facilitator_refuses_arbitrary_json(lab: Lab, path: str, value: Any) -> None:
    assert facilitator_verdict(path, facilitator_post(lab, path, dumps(value))) not in ("valid", "settled")


@BOUNDED
@given(path=paths, case=cases(BODY_SHAPE))
@example(path="/settle", case=Case({}, ()))
@example(path="/verify", case=Case({}, ()))
# Found by hypothesis, kept: each was a 500 or verified/settled an altered payment before the fix in checks.py.
@example(path="/settle", case=Case({"validBefore": "int64 max+1"}, ()))  # the ledger's INSERT overflowed: 500
@example(path="/verify", case=Case({"validBefore": "uint256 max"}, ()))  # verified what settle cannot record
@example(path="/settle", case=Case({}, (Op("tweak", ("paymentPayload", "payload", "authorization", "value"),
                                           "padded"),)))  # " 1000 ": int() strips spaces
@example(path="/settle", case=Case({}, (Op("tweak", ("paymentPayload", "payload", "authorization", "validBefore"),
                                           "as number"),)))  # a JSON number where the scheme writes a string
@example(path="/settle", case=Case({}, (Op("tweak", ("paymentRequirements", "amount"), "underscored"),)))  # "1_000"
@example(path="/settle", case=Case({}, (Op("delete", ("paymentPayload", "x402Version")),)))  # defaulted to 2
def test_facilitator_answers_mutated_bodies_with_a_reason_and_settles_only_valid_ones(
        lab: Lab, path: str, case: Case) -> None:
    built = sign(lab, case.signed)
    if built.should_pay is not False:
        lab.valid.add(built.key())
    body: Any = {"x402Version": 2, "paymentPayload": copy.deepcopy(built.payload),
                 "paymentRequirements": copy.deepcopy(lab.accepts)}
    for op in case.edits:
        body = op.apply(body)
    verdict = facilitator_verdict(path, facilitator_post(lab, path, dumps(body)))
    event(f"{path}: {verdict[:60]}")
    settled_as(lab, built, verdict == "settled")
    if verdict in ("valid", "settled"):
        assert built.should_pay is not False, f"{verdict} terms that ought to be refused: {case.signed}"
        mutated = body.get("paymentPayload") if isinstance(body, dict) else None
        assert spec_reading(mutated) == spec_reading(built.payload), f"{verdict} an altered payment: {body}"
        assert terms_reading(body.get("paymentRequirements")) == terms_reading(lab.accepts), \
            f"{verdict} against altered requirements: {body}"
    elif not case.edits and built.should_pay:
        pytest.fail(f"a valid payment was refused at {path}: {verdict} ({case.signed})")


def test_every_settled_payment_was_sent_valid_on_purpose(lab: Lab) -> None:
    """After everything above: the ledger holds only the valid payments this module signed and was paid for."""
    assert lab.paid, "no valid payment was ever paid: the properties above proved nothing"
    assert_ledger_holds_only_deliberate_payments(lab)

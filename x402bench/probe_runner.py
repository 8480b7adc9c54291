"""Run `x402bench.probe.CASES` against one endpoint and judge each answer, then ask the chain.

An answer alone cannot prove a case holds: a service can answer 402 after its facilitator
settled, or 200 without settling anything. So every payment's (from, nonce) is looked up in
the token's authorizationState once all cases ran, and the payee's balance is compared with
what the accepted payments (and nothing else) should have paid.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.chain import ChainError, Rpc
from services.payer.hashing import keccak256
from services.payer.payload import Quote, WireError, decode_header, decode_payment_required
from services.payer.signing import SECP256K1_N, AuthorizationSigner
from x402bench.probe import CASES, Attempt, Case, Ctx, Expect, ProbeInputError, Target, r

#: "Facilitator verify failed (400): {...}": how the SDK middleware reports a facilitator's non-200 in its 402
_UPSTREAM = re.compile(r"^Facilitator (verify|settle) failed \((\d{3})\): (.*)$", re.DOTALL)


# --- the world file ------------------------------------------------------------------------------


def load_world(path: Path) -> dict[str, Any]:
    """The world file written by `x402bench up --json` (read and checked by the world's own reader)."""
    from services.stack import read_world_file
    from x402bench.scenario import ScenarioError

    try:
        return read_world_file(path)
    except ScenarioError as exc:
        raise ProbeInputError(str(exc)) from None


def _payees(world: dict[str, Any]) -> list[str]:
    return list(world.get("payees") or ([world["pay_to"]] if world.get("pay_to") else []))


def _call_data(signature: bytes, *words: str) -> str:
    """eth_call data for a function of static words (addresses, bytes32), as the token's ABI wants."""
    return "0x" + keccak256(signature)[:4].hex() + "".join(w.lower().removeprefix("0x").rjust(64, "0") for w in words)


class Chain:
    """The reads the probe needs, on the world's token: balances, used nonces, receipts."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.url = world["rpc_url"]
        self.token = world["token"]["address"]
        self.rpc = Rpc(self.url, timeout=10)
        try:
            chain_id = int(self.rpc.call("eth_chainId"), 16)
        except (OSError, ChainError, ValueError) as exc:
            raise ProbeInputError(f"the world's chain at {self.url} does not answer ({_why(exc)})") from None
        if chain_id != int(world["chain_id"]):
            raise ProbeInputError(f"the chain at {self.url} is chain {chain_id}, the world file says {world['chain_id']}")
        if self.rpc.call("eth_getCode", self.token, "latest") in ("0x", "0x0", None):
            raise ProbeInputError(f"no token contract at {self.token} on the chain at {self.url}")

    def _calls(self, calls: list[str]) -> list[int]:
        replies = self.rpc.batch([("eth_call", [{"to": self.token, "data": data}, "latest"]) for data in calls])
        return [int(reply, 16) for reply in replies]

    def balances(self, addresses: list[str]) -> list[int]:
        return self._calls([_call_data(b"balanceOf(address)", a) for a in addresses])

    def used(self, ids: list[tuple[str, str]]) -> list[bool]:
        return [bool(v) for v in self._calls([_call_data(b"authorizationState(address,bytes32)", p, n) for p, n in ids])]

    def wait_for(self, hashes: list[str], timeout_s: float) -> list[str]:
        """Wait for receipts (an answer may come before its block); the hashes never seen."""
        pending, deadline = list(dict.fromkeys(hashes)), time.monotonic() + timeout_s
        while pending:
            receipts = self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in pending])
            pending = [h for h, receipt in zip(pending, receipts) if receipt is None]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return pending


def _why(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", "") or exc)
    return "connection refused" if "refused" in text.lower() else text


# --- answers ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer, reduced to what the judgement needs."""

    step: str  # the route's method (service), "verify" or "settle" (facilitator)
    status: int  # 0: no answer
    reason: str | None = None
    ok: bool = False  # served and reported settled / isValid true / success true
    refusal: bool = False  # a well-formed refusal (402/400 from a service; isValid/success false)
    transaction: str = ""
    upstream: int | None = None  # the status a service's facilitator gave, when its 402 says so
    note: str = ""

    def text(self) -> str:
        if self.status == 0:
            return f"{self.step}: {self.note}"
        head = f"{self.step} {self.status}" if self.step in ("verify", "settle") else str(self.status)
        if self.ok:
            return f"{head} {'valid' if self.step == 'verify' else 'settled'} {self.transaction[:10]}".rstrip()
        parts = [head, self.reason or ""]
        if self.upstream is not None:
            parts.append(f"(facilitator {self.upstream})")
        if self.note:
            parts.append(f"({self.note})")
        return " ".join(p for p in parts if p)


def _transport_failure(step: str, exc: httpx.HTTPError, timeout_s: float) -> Answer:
    if isinstance(exc, httpx.TimeoutException):
        return Answer(step, 0, note=f"no answer within {timeout_s:g} s")
    return Answer(step, 0, note=f"{type(exc).__name__}: {exc}")


def _decoded(value: str | None, what: str) -> dict[str, Any] | None:
    try:
        return decode_header(value, what) if value else None
    except WireError:
        return None


def service_answer(method: str, reply: httpx.Response) -> Answer:
    """A priced route's answer: the reason in PAYMENT-RESPONSE (settle), PAYMENT-REQUIRED (verify) or the body."""
    answer = Answer(method, reply.status_code, refusal=reply.status_code in (400, 402))
    settled = _decoded(reply.headers.get("payment-response"), "PAYMENT-RESPONSE")
    required = _decoded(reply.headers.get("payment-required"), "PAYMENT-REQUIRED")
    if settled is not None:
        answer.transaction = str(settled.get("transaction") or "")
        answer.ok = reply.status_code == 200 and settled.get("success") is True
        if settled.get("success") is False:
            answer.reason = settled.get("errorReason")
    if answer.reason is None and required is not None:
        answer.reason = required.get("error")
    if answer.reason is None and reply.status_code != 200:
        try:
            body = reply.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            answer.reason = body.get("error") or body.get("errorReason")
    if reply.status_code == 200 and not answer.ok:
        answer.note = "no PAYMENT-RESPONSE success" if settled is None else "PAYMENT-RESPONSE success false"
    match = _UPSTREAM.match(str(answer.reason or ""))
    if match:  # unwrap the facilitator's own reason code
        answer.upstream = int(match.group(2))
        try:
            inner = json.loads(match.group(3))
        except ValueError:
            inner = None
        code = inner.get("invalidReason") or inner.get("errorReason") if isinstance(inner, dict) else None
        answer.reason = str(code) if code else match.group(3)[:60]
    return answer


def facilitator_answer(step: str, reply: httpx.Response) -> Answer:
    """A facilitator's /verify or /settle answer: isValid/invalidReason or success/errorReason."""
    answer = Answer(step, reply.status_code)
    try:
        body = reply.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if reply.status_code < 500:
            answer.note = "answer is not a JSON object"
        return answer
    flag, why = ("isValid", "invalidReason") if step == "verify" else ("success", "errorReason")
    answer.ok = body.get(flag) is True
    answer.refusal = body.get(flag) is False
    answer.reason = body.get(why)
    answer.transaction = str(body.get("transaction") or "")
    if step == "settle" and answer.ok and not answer.transaction:
        answer.ok, answer.note = False, "success without a transaction"
    return answer


# --- endpoints -------------------------------------------------------------------------------------


class Endpoint:
    """Where the cases go; `service` or `facilitator` decides how a case's attempts are sent."""

    target: Target

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=64))

    def close(self) -> None:
        self.http.close()

    def once(self, attempt: Attempt, ctx: Ctx) -> list[Answer]:
        """Everything a single payment goes through at this endpoint."""
        raise NotImplementedError

    def pay(self, attempt: Attempt, ctx: Ctx) -> Answer:
        """The one step that serves or settles a payment."""
        raise NotImplementedError

    def again(self, attempt: Attempt, ctx: Ctx) -> list[Answer]:
        """A payment sent after it was already paid."""
        raise NotImplementedError

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, sent again once if a kept-alive connection turns out dropped.

        A server that crashed on the previous request (a 500) may close that connection just as
        the next request goes out on it; the reset then belongs to the last case, not to this one.
        Timeouts are never retried: a hang is an answer.
        """
        try:
            return self.http.request(method, url, **kwargs)
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            return self.http.request(method, url, **kwargs)

    def reach(self, method: str, url: str) -> httpx.Response:
        """The first request: an endpoint that cannot be reached is bad input, not a failing case."""
        try:
            return self.request(method, url)
        except httpx.ConnectError as exc:
            detail = "connection refused" if "refused" in str(exc).lower() or "errno 111" in str(exc).lower() else str(exc)
            raise ProbeInputError(f"{detail}: {url}") from None
        except httpx.TimeoutException:
            raise ProbeInputError(f"no answer within {self.timeout_s:g} s: {url}") from None
        except httpx.HTTPError as exc:
            raise ProbeInputError(f"cannot reach {url}: {exc}") from None


class ServiceEndpoint(Endpoint):
    """A priced route: unpaid it must answer 402; each attempt is one request with PAYMENT-SIGNATURE."""

    target: Target = "service"

    def __init__(self, url: str, timeout_s: float, method: str = "GET") -> None:
        super().__init__(url, timeout_s)
        self.method = method.upper()

    def learn_terms(self, world: dict[str, Any]) -> Quote:
        reply = self.reach(self.method, self.url)
        if reply.status_code != 402:
            raise ProbeInputError(f"not x402: {self.method} {self.url} answered {reply.status_code}, "
                                  f"there is no 402 on the route")
        try:
            required = decode_payment_required(reply.headers.get("payment-required"))
            return Quote.from_payment_required(required, world["network"], asset=world["token"]["address"])
        except WireError as exc:
            raise ProbeInputError(f"{self.url} answers 402, but nothing this world can pay: {exc}") from None

    def pay(self, attempt: Attempt, ctx: Ctx) -> Answer:
        try:
            reply = self.request(self.method, self.url, headers={"PAYMENT-SIGNATURE": attempt.header_value()})
        except httpx.HTTPError as exc:
            return _transport_failure(self.method, exc, self.timeout_s)
        return service_answer(self.method, reply)

    def once(self, attempt: Attempt, ctx: Ctx) -> list[Answer]:
        return [self.pay(attempt, ctx)]

    again = once


class FacilitatorEndpoint(Endpoint):
    """A facilitator: each attempt goes to /verify and /settle with the world's requirements."""

    target: Target = "facilitator"

    def check(self, network: str) -> None:
        reply = self.reach("GET", self.url.rstrip("/") + "/supported")
        try:
            kinds = reply.json().get("kinds") if reply.status_code == 200 else None
        except (ValueError, AttributeError):
            kinds = None
        if not isinstance(kinds, list):
            raise ProbeInputError(f"no x402 facilitator at {self.url}: GET /supported answered {reply.status_code} "
                                  f"without a list of kinds")
        if not any(isinstance(k, dict) and k.get("scheme") == "exact" and k.get("network") in (network, "eip155:*")
                   for k in kinds):
            raise ProbeInputError(f"the facilitator at {self.url} does not list scheme exact on {network} in /supported")

    def post(self, step: str, attempt: Attempt, ctx: Ctx) -> Answer:
        try:
            reply = self.request("POST", self.url.rstrip("/") + "/" + step, content=attempt.request_body(ctx),
                                 headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return _transport_failure(step, exc, self.timeout_s)
        return facilitator_answer(step, reply)

    def pay(self, attempt: Attempt, ctx: Ctx) -> Answer:
        return self.post("settle", attempt, ctx)

    def once(self, attempt: Attempt, ctx: Ctx) -> list[Answer]:
        return [self.post("verify", attempt, ctx), self.post("settle", attempt, ctx)]

    def again(self, attempt: Attempt, ctx: Ctx) -> list[Answer]:
        """Settle the used payment again, then ask /verify about it: both must say it is used."""
        return [self.post("settle", attempt, ctx), self.post("verify", attempt, ctx)]


def facilitator_terms(world: dict[str, Any], amount: int | None) -> Quote:
    """Requirements a service of this world would quote: first payee, the token, an amount."""
    payees = _payees(world)
    if not payees:
        raise ProbeInputError("the world file has no payees to build requirements for --facilitator")
    if amount is None:
        prices = list((world.get("prices") or {}).values())
        if not prices:
            raise ProbeInputError("the world file has no prices: give --amount")
        amount = int(prices[0])
    token = world["token"]
    requirement = {"scheme": "exact", "network": world["network"], "asset": token["address"], "amount": str(amount),
                   "payTo": payees[0], "maxTimeoutSeconds": 300,
                   "extra": {"name": token["name"], "version": token["version"]}}
    resource_url = next(iter((world.get("service_urls") or {}).values()), world.get("facilitator_url") or "probe")
    try:
        return Quote.from_requirement(requirement, {"url": resource_url, "description": "x402bench probe",
                                                    "mimeType": "application/json"})
    except WireError as exc:
        raise ProbeInputError(f"cannot build requirements from the world file: {exc}") from None


# --- judging ---------------------------------------------------------------------------------------


def refusal_problems(answer: Answer, expect: Expect, target: Target) -> list[str]:
    """Why this answer is not the refusal `expect` describes ([] when it is)."""
    if answer.status == 0:
        return [answer.text()]
    if answer.status >= 500:
        return [f"{answer.step} answered {answer.status}"]
    if answer.ok:
        return ["served a hostile payment" if target == "service" else f"{answer.step} accepted a hostile payment"]
    statuses = expect.service_statuses if target == "service" else expect.facilitator_statuses
    if target == "service" and answer.status == 200:
        return ["served a hostile payment (200)"]
    if answer.status not in statuses:
        return [f"{answer.step} answered {answer.status}, expected {'/'.join(map(str, sorted(statuses)))}"]
    if answer.status in (413, 431):
        return []  # refused by a size limit before anything was read: no reason to give
    problems = []
    if answer.upstream is not None and answer.upstream >= 500:
        problems.append(f"its facilitator answered {answer.upstream} behind the {answer.status}")
    if not answer.refusal:
        problems.append(f"{answer.step} {answer.status} is not a refusal ({answer.note or 'no reason'})")
    allowed = expect.reasons_for(answer.step)
    if target == "service" and answer.status == 400:
        allowed = frozenset({r.INVALID_PAYLOAD})  # a service's 400 means exactly this
    if allowed is not None and answer.refusal and answer.reason not in allowed:
        problems.append(f"{answer.step} reason {answer.reason!r}, expected {' or '.join(sorted(allowed))}")
    return problems


def paid_problems(answer: Answer, target: Target) -> list[str]:
    """Why this answer is not a valid payment served and settled ([] when it is)."""
    if answer.ok:
        return []
    if target == "service" and answer.status == 200:
        return [f"served, but {answer.note}: not settled"]
    return [f"{answer.step} refused a valid payment: {answer.text()}"]


def expected_text(case: Case, target: Target) -> str:
    refusal = refusal_text(case.expect_for(target), target)
    first = "200 settled" if target == "service" else "settle success"
    if case.kind == "paid":
        return first if target == "service" else "verify valid, settle success"
    same = " or the same settlement" if case.same_answer_ok else ""
    if case.kind == "replay":
        return f"1st {first}; then {refusal}{same}" + ("" if target == "service" else " (settle and verify)")
    if case.kind == "concurrent":
        return f"exactly 1 settlement; others {refusal}{same}"
    return refusal


def refusal_text(expect: Expect, target: Target) -> str:
    def names(codes: frozenset[str] | None) -> str:
        return "any reason" if codes is None else " | ".join(sorted(codes))

    if target == "service":
        statuses = sorted(expect.service_statuses)
        if statuses[:2] == [400, 402] and expect.reasons is None:
            return "400 invalid_payload or 402 any reason"
        return f"{'/'.join(map(str, statuses))} {names(expect.reasons)}"
    text = f"false: {names(expect.reasons)}"
    if expect.settle is not None:
        text += f" (settle: {names(expect.settle)})"
    return text


@dataclass
class CaseResult:
    """A case's answers and every reason it does not hold."""

    case: Case
    expected: str
    answers: list[Answer]
    problems: list[str] = field(default_factory=list)
    ids: list[tuple[str, str]] = field(default_factory=list)  # (from, nonce) of the payments sent

    @property
    def holds(self) -> bool:
        return not self.problems

    def observed(self) -> str:
        if self.case.kind == "concurrent":
            counts = Counter(a.text() if not a.ok else a.text().rsplit(" ", 1)[0] for a in self.answers)
            return "; ".join(f"{n}x {text}" for text, n in counts.items())
        return "; ".join(a.text() for a in self.answers)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.case.name, "what": self.case.what, "kind": self.case.kind, "expected": self.expected,
                "observed": self.observed(), "holds": self.holds, "problems": self.problems,
                "answers": [asdict(a) for a in self.answers]}


def _add(problems: list[str], found: list[str]) -> None:
    problems.extend(p for p in found if p not in problems)


def _same_settlement(answer: Answer, first_tx: str) -> bool:
    """A repeat answered with the first payment's own settlement (an idempotent retry answer); a /verify
    of such a retry may say valid, since its /settle answers with that settlement."""
    if answer.ok and answer.step == "verify":
        return bool(first_tx)
    return bool(first_tx) and answer.ok and answer.transaction.lower() == first_tx.lower()


def run_case(case: Case, ctx: Ctx, endpoint: Endpoint) -> CaseResult:
    """Send a case's attempts the way its kind says and judge the answers (the chain is asked later)."""
    target = endpoint.target
    expect = case.expect_for(target)
    attempts = case.build(ctx)
    result = CaseResult(case, expected_text(case, target), [])
    result.ids = list(dict.fromkeys(i for a in attempts if (i := a.authorization_id()) is not None))
    problems = result.problems
    if case.kind in ("paid", "once"):
        (attempt,) = attempts
        result.answers = endpoint.once(attempt, ctx)
        for answer in result.answers:
            _add(problems, paid_problems(answer, target) if case.kind == "paid" else refusal_problems(answer, expect, target))
    elif case.kind == "replay":
        first, *again = attempts
        result.answers = [endpoint.pay(first, ctx)]
        _add(problems, paid_problems(result.answers[0], target))
        first_tx = result.answers[0].transaction
        for attempt in again:
            answers = endpoint.again(attempt, ctx)
            result.answers += answers
            for answer in answers:
                if case.same_answer_ok and _same_settlement(answer, first_tx):
                    continue  # answered as a retry of the first payment: nothing paid twice
                _add(problems, refusal_problems(answer, expect, target))
    else:
        gate = threading.Barrier(len(attempts))

        def at_once(attempt: Attempt) -> Answer:
            gate.wait(timeout=endpoint.timeout_s)  # released together: a real race, not a queue
            return endpoint.pay(attempt, ctx)

        with ThreadPoolExecutor(len(attempts)) as pool:
            result.answers = list(pool.map(at_once, attempts))
        served = [i for i, a in enumerate(result.answers) if a.ok or (target == "service" and a.status == 200)]
        transactions = {result.answers[i].transaction.lower() for i in served}
        repeats: set[int] = set()
        if case.same_answer_ok and len(served) > 1 and len(transactions) == 1 and "" not in transactions:
            repeats, served = set(served[1:]), served[:1]  # every served copy names one settlement: retries
        if len(served) != 1:
            problems.append(f"{len(served)} of {len(attempts)} copies served, exactly 1 expected")
        for i, answer in enumerate(result.answers):
            if i in repeats:
                continue
            if i not in served:
                _add(problems, refusal_problems(answer, expect, target))
            elif i == served[0]:
                _add(problems, paid_problems(answer, target))
    return result


# --- the whole probe -------------------------------------------------------------------------------


@dataclass
class ProbeReport:
    """Every case's result, and the payee's balance against what the accepted payments paid."""

    target: Target
    url: str
    payee: str
    amount: int
    results: list[CaseResult]
    delta: int
    unseen_transactions: list[str]

    @property
    def expected_delta(self) -> int:
        return self.amount * sum(1 for res in self.results if res.case.pays)

    @property
    def ok(self) -> bool:
        return all(res.holds for res in self.results) and self.delta == self.expected_delta

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "url": self.url, "payee": self.payee, "amount": self.amount,
                "cases": [res.to_json() for res in self.results], "held": sum(res.holds for res in self.results),
                "payee_delta": self.delta, "expected_payee_delta": self.expected_delta,
                "unseen_transactions": self.unseen_transactions, "ok": self.ok}


def run_probe(world: dict[str, Any], endpoint: Endpoint, *, amount: int | None = None, first_agent: int = 0,
              cases: list[Case] | None = None) -> ProbeReport:
    """Run `cases` (all of them by default) against `endpoint` with the world's agents paying."""
    cases = CASES if cases is None else cases
    chain = Chain(world)
    if isinstance(endpoint, ServiceEndpoint):
        quote = endpoint.learn_terms(world)
    else:
        assert isinstance(endpoint, FacilitatorEndpoint)
        endpoint.check(world["network"])
        quote = facilitator_terms(world, amount)
    agents = [AuthorizationSigner(a["private_key"]) for a in world["agents"]]
    payers = [agents[(first_agent + i) % len(agents)] for i in range(len(cases))]
    paying = sorted({p.address for p, case in zip(payers, cases) if case.pays})
    for address, balance in zip(paying, chain.balances(paying)):
        if balance < quote.amount:
            raise ProbeInputError(f"agent {address} holds {balance} atomic units of the token; a payment needs "
                                  f"{quote.amount}")
    payee = quote.requirement["payTo"]
    (before,) = chain.balances([payee])
    unfunded, random_key = AuthorizationSigner(_fresh_key()), AuthorizationSigner(_fresh_key())
    results = []
    for i, (case, payer) in enumerate(zip(cases, payers)):
        bystander = agents[(first_agent + i + 1) % len(agents)].address if len(agents) > 1 else random_key.address
        ctx = Ctx(quote, payer, bystander, unfunded, random_key, int(time.time()))
        results.append(run_case(case, ctx, endpoint))
    unseen = chain.wait_for([a.transaction for res in results for a in res.answers if a.ok and a.transaction],
                            endpoint.timeout_s)
    _judge_on_chain(results, chain)
    (after,) = chain.balances([payee])
    return ProbeReport(endpoint.target, endpoint.url, payee, quote.amount, results, after - before, unseen)


def _judge_on_chain(results: list[CaseResult], chain: Chain) -> None:
    """Accepted payments must have used their nonce on chain; hostile ones must not have."""
    ids = [i for res in results for i in res.ids]
    used = dict(zip(ids, chain.used(ids))) if ids else {}
    for res in results:
        for payment in res.ids:
            if res.case.pays and not used[payment]:
                res.problems.append("nothing settled on chain (authorization unused)")
            elif not res.case.pays and used[payment]:
                res.problems.append("settled on chain: the hostile authorization was used")


def _fresh_key() -> bytes:
    import secrets

    while not 0 < int.from_bytes(key := secrets.token_bytes(32), "big") < SECP256K1_N:
        pass
    return key

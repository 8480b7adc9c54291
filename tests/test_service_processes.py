"""Several services processes on one address (Scenario.service_processes): real Anvil, real processes, real HTTP.

One batch-settlement world with `service_processes: 2` (our facilitator, strategy sync; the services' cadence
claims every 1 s, settles only on request). Both processes serve the one service URL (SO_REUSEPORT: fresh
connections reach both) and each its own address, where this test sends one payer's vouchers alternately to
the one and the other process. Their channel state is one: every voucher is charged once and in order, a
voucher already paid at one process and a lowered one are refused at the other, and the same next voucher
sent to both at once is served by exactly one. One process is the keeper: the other reports it, the claims on
chain are the keeper's count (which both processes report alike), and after claim + settle through the
*other* process's harness route the payee holds exactly what was charged. Killed, the keeper is replaced by
the other within a tick; "the services" killed and restarted (the service_crash fault's way) come back on the
same address with their channels. And the sim runs the field as that many CPU servers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from services.escrow import channel_state, escrow_events, receiver_totals
from services.process import ProcessGroup
from services.stack import World
from services.token import balance_of
from test_batch_settlement_facilitator import PRICE, Payer, decode, scenario_data, wait_for
from x402bench.scenario import ScenarioError, validate_scenario


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = {**scenario_data({"claim_every_s": 1.0, "settle_every_s": 86_400}), "service_processes": 2}
    with World(validate_scenario(data), workdir=tmp_path_factory.mktemp("world-2-services")) as w:
        yield w


def status(url: str) -> dict[str, Any]:
    return httpx.get(url + "/_channels/status", timeout=30).json()


def test_the_field_is_checked() -> None:
    data = scenario_data({})
    assert validate_scenario(data).service_processes == 1
    for bad in (0, 65):
        with pytest.raises(ScenarioError, match="service_processes"):
            validate_scenario({**data, "service_processes": bad})
    with pytest.raises(ScenarioError, match="service_processes"):
        validate_scenario({**data, "service_processes": 2, "external_service_url": "http://127.0.0.1:9/x"})


def test_two_processes_one_address_one_book(world: World) -> None:
    info = world.info
    rpc, token, payee = info.rpc_url, info.token["address"], info.payees[0]
    group = world.process("services")
    assert isinstance(group, ProcessGroup) and len(set(group.pids)) == 2
    assert {info.pids["services"], info.pids["services.2"]} == set(group.pids)
    a, b = (m.url for m in group.members)
    assert [httpx.get(u + "/health").json()["pid"] for u in (a, b)] == group.pids
    assert info.service_urls["metered"] == group.url + "/metered"
    seen: set[int] = set()  # fresh connections to the one address reach both processes
    for _ in range(200):
        with httpx.Client() as fresh:
            seen.add(fresh.get(group.url + "/health").json()["pid"])
        if len(seen) == 2:
            break
    assert seen == set(group.pids)

    payer = Payer(world, 0)
    payee_start = balance_of(rpc, token, payee)
    paid = 7
    for n in range(1, paid + 1):  # the deposit at a, then vouchers at b, a, b, ...: one channel, charged in order
        payer.url = (a if n % 2 else b) + "/metered"
        answer = payer.pay()
        assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str(n * PRICE), (n, answer)
        assert (answer["transaction"] != "") == (n == 1)
    served_at = a if paid % 2 else b
    other = b if served_at == a else a
    # The voucher just paid at one process, and a lowered one, sent to the other: refused, nothing served.
    for header in (payer.sent[-1], encode_payment_signature_header(payer.voucher((paid - 1) * PRICE))):
        again = httpx.get(other + "/metered", headers={"PAYMENT-SIGNATURE": header}, timeout=30)
        assert again.status_code == 402 and decode(again.headers["payment-required"])["error"] == (
            bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH)
    # The same next voucher to both processes at once: exactly one serves it (the reservation is shared).
    header = encode_payment_signature_header(payer.voucher((paid + 1) * PRICE))
    start, codes = threading.Barrier(2), []

    def send(url: str) -> None:
        start.wait()
        codes.append(httpx.get(url + "/metered", headers={"PAYMENT-SIGNATURE": header}, timeout=30).status_code)

    threads = [threading.Thread(target=send, args=(u,)) for u in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 402]
    charged = (paid + 1) * PRICE
    views = [status(u) for u in (a, b)]
    assert [v["charged"][payer.channel_id] for v in views] == [str(charged)] * 2

    # One keeper: both processes name the same one, and it is one of them.
    assert views[0]["keeper_pid"] == views[1]["keeper_pid"] in group.pids
    assert sorted(v["keeper"] for v in views) == [False, True]
    keeper_url = a if views[0]["keeper"] else b
    # Its cadence claims everything; the claim txs on chain are its count, which both processes report.
    wait_for(lambda: channel_state(rpc, payer.channel_id).total_claimed == charged, 15, "cadence claim")
    wait_for(lambda: status(a)["claimed_amount"] == charged, 10, "the claim in the shared book")
    claims = escrow_events(rpc, event="Claimed", channel_id=payer.channel_id)
    # every process's voucher counts, whichever answers (each writes its own every second)
    wait_for(lambda: status(a)["vouchers"] == status(b)["vouchers"], 5, "the same voucher counts")
    assert sum(status(a)["vouchers"].values()) >= paid - 1 + 2 + 2  # paid, refused, raced
    views = [status(u) for u in (a, b)]
    assert views[0]["claim_txs"] == views[1]["claim_txs"] == len(claims) >= 1
    assert views[0]["claimed_amount"] == views[1]["claimed_amount"] == charged
    time.sleep(1.2)  # another cadence tick: nothing is claimed again, by either process
    assert len(escrow_events(rpc, event="Claimed", channel_id=payer.channel_id)) == len(claims)

    # Settle through the harness route of the process that is not the keeper: the payee holds what was charged.
    not_keeper = b if keeper_url == a else a
    done = httpx.post(not_keeper + "/_channels/claim_settle", timeout=120).json()
    assert done["claims"] == [] and done["settle_transaction"], done
    assert balance_of(rpc, token, payee) - payee_start == charged
    assert receiver_totals(rpc, payee, token) == (charged, charged)
    again = httpx.post(keeper_url + "/_channels/claim_settle", timeout=120).json()
    assert (again["claims"], again["settle_transaction"]) == ([], None)
    assert status(keeper_url)["settle_txs"] == 1

    # The keeper killed: the other process takes the cadence over within a tick.
    (dead,) = [m for m in group.members if m.url == keeper_url]
    dead_pid = dead.pid
    dead.kill()
    wait_for(lambda: status(not_keeper)["keeper"], 5, "a new keeper")
    assert status(not_keeper)["keeper_pid"] != dead_pid
    # "The services" crashed and restarted as the service_crash fault does: every process, same address.
    old = set(group.pids)
    group.kill()
    group.start(port=group.port)
    assert len(set(group.pids)) == 2 and not set(group.pids) & old
    # the channel survived in the shared store: the next voucher (on top of the raced one, which the SDK client
    # does not know of) is charged on top
    payer.url = group.url + "/metered"
    served = payer.send(encode_payment_signature_header(payer.voucher(charged + PRICE)))
    assert served.status_code == 200, served.headers
    answer = decode(served.headers["payment-response"])
    assert answer["extra"]["channelState"]["chargedCumulativeAmount"] == str(charged + PRICE), answer
    views = [status(m.url) for m in group.members]
    assert sorted(v["keeper"] for v in views) == [False, True]
    assert all(v["claimed_amount"] == charged and v["settle_txs"] == 1 for v in views)


def test_the_sim_runs_one_cpu_server_per_process() -> None:
    """2 ms of services CPU per paid request and 100 closed-loop payers: one process carries ~500/s, two ~1,000/s
    (each at most one core), and on a 2-core shared host still about twice one."""
    from sim.calibration import Dist, default_calibration
    from sim.run import build_sim_summary, run_sim
    from x402bench.scenario import load_scenario

    base = default_calibration()
    cal = base.model_copy(update={"service": base.service.model_copy(
        update={"cpu_s": Dist.from_ms(2.0), "voucher_verify_s": Dist.const(0.0)})})
    deferred = load_scenario("scenarios/deferred.yaml")
    rps = {}
    for cores in (None, 2):
        for n in (1, 2):
            s = deferred.with_overrides(agents={"count": 100, "arrivals": {"kind": "closed"}}, service_processes=n,
                                        run={"duration_s": 10.0, "warmup_s": 2.0})
            result = run_sim(s, cal.model_copy(update={"machine_cores": cores}))
            rps[cores, n] = build_sim_summary(result)["metrics"]["throughput_rps"]
    assert rps[None, 1] == pytest.approx(500, rel=0.05) and rps[None, 2] == pytest.approx(1000, rel=0.05)
    assert rps[2, 2] > 1.8 * rps[2, 1]


def _channel(cid: str, charged: int, pending: bool) -> Any:
    from x402.mechanisms.evm.batch_settlement.server.storage import Channel, PendingRequest
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

    config = ChannelConfig.from_dict({"payer": "0x" + "11" * 20, "payerAuthorizer": "0x" + "11" * 20,
                                      "receiver": "0x" + "22" * 20, "receiverAuthorizer": "0x" + "33" * 20,
                                      "token": "0x" + "44" * 20, "withdrawDelay": 900, "salt": "0x" + "00" * 32})
    return Channel(channel_id=cid, channel_config=config, charged_cumulative_amount=str(charged),
                   pending_request=PendingRequest("p", str(charged), 2**62) if pending else None)


#: Run by each of two processes: 300 read-modify-write increments of one channel's charged amount.
_INCREMENTS = """
import sys
from services.resource.channel_storage import SqliteChannelStorage
store = SqliteChannelStorage(sys.argv[1], shared=True)
def bump(current):
    following = current.copy()
    following.charged_cumulative_amount = str(int(current.charged_cumulative_amount) + 1)
    return following
for _ in range(300):
    assert store.update_channel(sys.argv[2], bump).status == "updated"
store.close()
"""


def test_shared_storage_updates_are_atomic_across_processes_and_a_dead_one_holds_no_reservation(tmp_path: Any) -> None:
    """Two processes incrementing one channel 300 times each end at 600 (no lost update); a reservation made by a
    process that is gone is not seen (it would hold the channel busy for its TTL), one by a live process is, and an
    update by another process that carries it over (a claim) leaves it the maker's."""
    import os
    import subprocess
    import sys

    from services.chain import REPO_ROOT
    from services.resource.channel_storage import SqliteChannelStorage

    path, cid = tmp_path / "channels.sqlite", "0x" + "ab" * 32
    store = SqliteChannelStorage(path, shared=True)
    store.update_channel(cid, lambda _: _channel(cid, 0, pending=False))
    workers = [subprocess.Popen([sys.executable, "-c", _INCREMENTS, str(path), cid], cwd=REPO_ROOT) for _ in range(2)]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    assert store.get(cid).charged_cumulative_amount == "600"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    reserved = SqliteChannelStorage(path, shared=True)
    reserved._pid = gone.pid  # as if that process had made the reservation
    reserved.update_channel(cid, lambda current: _channel(cid, 600, pending=True))
    assert store.get(cid).pending_request is None and store.get(cid).charged_cumulative_amount == "600"
    reserved._pid = os.getppid()  # a live process (our parent)
    reserved.update_channel(cid, lambda current: _channel(cid, 600, pending=True))
    assert store.get(cid).pending_request is not None

    def claimed(current: Any) -> Any:
        following = current.copy()
        following.total_claimed = "600"
        return following
    store.update_channel(cid, claimed)  # carries the other's reservation over: it stays that process's
    assert store._db.execute("SELECT pending_pid FROM channels").fetchone() == (os.getppid(),)
    store.close()
    reserved.close()

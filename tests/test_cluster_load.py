"""seatres on a Redis Cluster whose topology changes under load: one event's slot moved to
another master key by key (ASK / TRYAGAIN while it is half moved, MOVED after, and a
target node whose script cache is empty), a replica promoted by a manual failover, a
master killed (under load, and while a worker was idle), and every script flushed from
every node. Through a real `seatres serve` (two workers):
requests succeed or answer 503 (never another 5xx), every acknowledged reservation and
transition is in Redis as acknowledged, and no seat ever has two active reservations.

Each test starts a cluster of its own (its slots are moved), about two seconds."""

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import redis

from seatres.embedded_cluster import LocalCluster
from seatres.store import keys
from seatres.store.connection import SyncClient, connect_sync
from tests.cluster import (
    events_on_every_master,
    keyslot,
    masters_by_port,
    migrate_slot,
    port_of_event,
)
from tests.conftest import ADMIN, bearer
from tests.processes import api_server

pytestmark = pytest.mark.cluster

SEATS = [f"S{i:03d}" for i in range(300)]
CUSTOMERS = [f"u{i:03d}" for i in range(300)]
CLIENTS = 24  # requests in flight at once
ACTIVE = ("RESERVED", "CONFIRMED")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", replicas=1) as c:
        yield c


@dataclass
class Ledger:
    """What the clients were told, to hold Redis to it afterwards."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    # reservation id -> (event, seats) of every acknowledged (201) reservation
    reserved: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # reservation id -> when (monotonic) its 201 or 200 came
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    # reservation id -> state a 200 confirmed or cancelled it into
    settled: dict[str, str] = field(default_factory=dict)
    # reservation id -> states a transition that got no answer (503) may have made
    maybe: dict[str, set[str]] = field(default_factory=dict)
    # every answer: when (monotonic), its status, the event it was about
    answers: list[tuple[float, int, str]] = field(default_factory=list)


async def _load(
    base: str, events: list[str], seconds: float, ledger: Ledger, seed: int = 7
) -> None:
    """CLIENTS loops of: reserve 1-3 random seats of a random event; confirm or cancel
    (or leave) a reservation of one's own; until `seconds` have passed."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as http:

        async def post(
            kind: str, event: str, path: str, who: str, body: Any = None
        ) -> httpx.Response:
            response = await http.post(path, json=body, headers=bearer(who))
            ledger.statuses[(kind, response.status_code)] += 1
            ledger.answers.append((time.monotonic(), response.status_code, event))
            return response

        async def client(n: int) -> None:
            mine: list[tuple[str, str, str]] = []  # (reservation id, owner, event)
            while time.monotonic() < deadline:
                customer = rng.choice(CUSTOMERS)
                event = rng.choice(events)
                seats = rng.sample(SEATS, rng.randint(1, 3))
                body = {"eventId": event, "seatIds": seats}
                r = await post("reserve", event, "/reservations", customer, body)
                if r.status_code == 201:
                    rid = r.json()["id"]
                    ledger.reserved[rid] = (event, tuple(seats))
                    ledger.acknowledged_at[rid] = time.monotonic()
                    mine.append((rid, customer, event))
                if mine and rng.random() < 0.6:
                    rid, owner, of = mine.pop(rng.randrange(len(mine)))
                    action = rng.choice(["confirm", "cancel"])
                    target = "CONFIRMED" if action == "confirm" else "CANCELLED"
                    t = await post(action, of, f"/reservations/{rid}/{action}", owner)
                    if t.status_code == 200:
                        assert t.json()["state"] == target, t.text
                        ledger.settled[rid] = target
                        ledger.acknowledged_at[rid] = time.monotonic()
                    else:
                        ledger.maybe.setdefault(rid, set()).add(target)

        await asyncio.gather(*(client(n) for n in range(CLIENTS)))


def _check(
    store: SyncClient, events: list[str], ledger: Ledger, lost_after: float | None = None
) -> set[str]:
    """Redis agrees with every acknowledged answer, and each event's invariants hold.
    lost_after: answers acknowledged after this moment may be missing (a master that
    died before its replica had them: replication is asynchronous). Returns those."""
    allowed = {
        "reserve": {201, 400, 409, 503},
        "confirm": {200, 503},
        "cancel": {200, 503},
    }
    for (kind, status), _n in ledger.statuses.items():
        assert status in allowed[kind], ledger.statuses
    assert ledger.statuses[("reserve", 201)] > 50, ledger.statuses

    stored: dict[str, dict[str, Any]] = {}
    for event in events:
        k = keys.event_keys(event)
        raw: Any = store.hgetall(k.reservations)
        reservations = {rid: orjson.loads(v) for rid, v in raw.items()}
        stored |= reservations
        # one active reservation per seat, and the claims say exactly that
        active = {rid: r for rid, r in reservations.items() if r["state"] in ACTIVE}
        seats = Counter(seat for r in active.values() for seat in r["seatIds"])
        assert all(n == 1 for n in seats.values()), seats.most_common(3)
        claims: Any = store.hgetall(k.claims)
        assert claims == {seat: rid for rid, r in active.items() for seat in r["seatIds"]}
        held = sum(len(r["seatIds"]) for r in active.values() if r["state"] == "RESERVED")
        booked = sum(len(r["seatIds"]) for r in active.values() if r["state"] == "CONFIRMED")
        assert store.hmget(k.meta, "held", "booked") == [str(held), str(booked)]
        holds = set(store.zrange(k.holds, 0, -1))
        assert holds == {rid for rid, r in active.items() if r["state"] == "RESERVED"}
        customers: Any = store.hgetall(k.customers)
        per_customer = Counter[str]()
        for r in active.values():
            per_customer[r["customerId"]] += len(r["seatIds"])
        assert {c: int(n) for c, n in customers.items()} == dict(per_customer)

    # every acknowledged reservation is there, with its seats, in the state it was left in
    lost: set[str] = set()
    for rid, (event, seats) in ledger.reserved.items():
        r = stored.get(rid)
        may_be_lost = lost_after is not None and ledger.acknowledged_at[rid] >= lost_after
        if r is None and may_be_lost:
            lost.add(rid)
            continue
        assert r is not None, f"acknowledged reservation {rid} is not in Redis"
        assert (r["eventId"], tuple(r["seatIds"])) == (event, seats)
        if rid in ledger.settled and not (may_be_lost and r["state"] == "RESERVED"):
            assert r["state"] == ledger.settled[rid], (rid, r["state"])
        elif rid not in ledger.settled:
            assert r["state"] in {"RESERVED", *ledger.maybe.get(rid, set())}, (rid, r)
    return lost


def _put_events(base: str, events: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=10) as http:
        for event in events:
            response = http.put(
                f"/events/{event}", json={"name": event, "seats": SEATS}, headers=ADMIN
            )
            assert response.status_code == 201, response.text


def _during_load(
    cluster: LocalCluster,
    tmp_path: Path,
    events: list[str],
    change: Callable[[], None],
    seconds: float = 6.0,
    settle: float = 1.0,
    may_lose: float | None = None,
) -> tuple[Ledger, float, float]:
    """Runs the load for `seconds`; `change` runs in a thread after `settle` seconds.
    Returns the ledger and when the change started and ended (monotonic). may_lose:
    answers acknowledged up to this long before the change may be lost."""
    ledger = Ledger()
    span: list[float] = []

    def in_thread() -> None:
        time.sleep(settle)
        span.append(time.monotonic())
        change()
        span.append(time.monotonic())

    store = connect_sync(cluster.url, 10)
    try:
        with api_server(cluster.url, tmp_path / "api.log", workers=2) as base:
            _put_events(base, events)
            thread = threading.Thread(target=in_thread)
            thread.start()
            try:
                asyncio.run(_load(base, events, seconds, ledger))
            finally:
                thread.join()
            assert len(span) == 2, "the topology change did not finish"
            # the service still works afterwards, on every event
            with httpx.Client(base_url=base, timeout=10) as http:
                for event in events:
                    summary = http.get(f"/events/{event}", headers=ADMIN)
                    assert summary.status_code == 200, summary.text
        lost_after = None if may_lose is None else span[0] - may_lose
        try:
            lost = _check(store, events, ledger, lost_after)
        except AssertionError as failed:
            failed.add_note(_unhandled_errors(tmp_path / "api.log"))
            raise
        print(f"acknowledged, then lost with the master: {len(lost)}")
    finally:
        store.close()
    return ledger, span[0], span[1]


def _unhandled_errors(log: Path, most: int = 2) -> str:
    """The tracebacks of the service's first unhandled errors (its 500s), from its log
    (one JSON object a line)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if "unhandled error" in line and len(found) < most:
            entry = orjson.loads(line)
            found.append(f"{entry['message']}:\n{entry.get('error', '')}")
    return "\n".join(found) or f"no unhandled error in {log}"


def _answered_between(ledger: Ledger, start: float, end: float) -> Counter[int]:
    return Counter(status for at, status, _ in ledger.answers if start <= at <= end)


def _unavailable(ledger: Ledger) -> list[tuple[float, str]]:
    """When, and about which event, the service answered 503."""
    return [(at, event) for at, status, event in ledger.answers if status == 503]


def test_moving_an_events_slot_under_load_loses_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    events = events_on_every_master(cluster, "mig")
    moving = events[0]
    slot = keyslot(cluster, keys.event_keys(moving).meta)
    source = port_of_event(cluster, moving)
    target = next(p for p in cluster.master_ports() if p != source)

    def move() -> None:
        # the target's script cache is empty, as on a node that just joined
        with cluster.client(target) as node:
            node.script_flush()
        # one key at a time, 0.2 s apart: for about two seconds the event's keys are
        # split between the two masters (ASK for the moved ones, TRYAGAIN for scripts
        # whose keys are on both)
        moved = migrate_slot(cluster, slot, target, keys_per_call=1, pause=0.2)
        assert moved >= 6  # meta, seats, claims, reservations, holds, customers, log, ...

    ledger, start, end = _during_load(cluster, tmp_path, events, move)
    assert port_of_event(cluster, moving) == target
    # every key of the event is on the target now, none left behind
    with cluster.client(target) as node:
        assert node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) >= 6
        assert node.exists(keys.event_keys(moving).meta) == 1
    with cluster.client(source) as node:
        assert node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    during = _answered_between(ledger, start, end)
    assert during[201] + during[409] > 0, during  # the service kept answering meanwhile
    # 503 only about the event being moved, and only while it moved (redis-py gives up
    # on TRYAGAIN after about 0.5 s: hence the slack); the other masters' events never
    for at, event in _unavailable(ledger):
        assert event == moving, (event, moving)
        assert start <= at <= end + 1.0, (at - start, end - start)
    print(f"slot migration: {dict(ledger.statuses)}; during it: {dict(during)}")


def test_a_failover_under_load_loses_nothing(
    cluster_with_replicas: LocalCluster, tmp_path: Path
) -> None:
    cluster = cluster_with_replicas
    events = events_on_every_master(cluster, "fo")
    master = port_of_event(cluster, events[0])
    master_id = masters_by_port(cluster)[master]

    def fail_over() -> None:
        # CLUSTER FAILOVER on the master's replica: it catches up, then takes over its
        # slots; the old master becomes its replica and answers MOVED
        with cluster.any_client() as r:
            nodes = r.execute_command("CLUSTER NODES")
        replica = next(
            int(address.rsplit(":", 1)[1].split("@")[0])
            for address, info in nodes.items()
            if info["master_id"] == master_id
        )
        with cluster.client(replica) as node:
            node.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 30
        while port_of_event(cluster, events[0]) != replica:
            assert time.monotonic() < deadline, "the replica did not take over"
            time.sleep(0.05)
        cluster.wait_until_ok()

    ledger, start, end = _during_load(cluster, tmp_path, events, fail_over)
    assert port_of_event(cluster, events[0]) != master
    during = _answered_between(ledger, start, end)
    print(f"failover: {dict(ledger.statuses)}; during it: {dict(during)}")


def test_scripts_flushed_from_every_node_under_load(cluster: LocalCluster, tmp_path: Path) -> None:
    events = events_on_every_master(cluster, "flush")

    def flush_scripts() -> None:
        # often: three rounds half a second apart caught a script call that joined a
        # finished load once in many CI runs; thirty, 50 ms apart, in 2 runs of 6
        for _ in range(30):
            for port in cluster.master_ports():
                with cluster.client(port) as node:
                    node.script_flush()
            time.sleep(0.05)

    ledger, _start, _end = _during_load(cluster, tmp_path, events, flush_scripts, seconds=4.0)
    # NOSCRIPT is answered by loading the script again: nobody sees it
    assert ledger.statuses[("reserve", 503)] == 0, ledger.statuses


@pytest.fixture
def cluster_that_fails_over_fast(tmp_path: Path) -> Iterator[LocalCluster]:
    # a master is marked failed after 1 s without answers (the default here is 5 s)
    with LocalCluster(tmp_path / "cluster", replicas=1, node_timeout_ms=1000) as c:
        yield c


def _kill_master_of(cluster: LocalCluster, event: str) -> None:
    """kill -9 of the event's master; returns once the cluster names another one."""
    master = port_of_event(cluster, event)
    next(n for n in cluster.nodes if n.port == master).stop(kill=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if port_of_event(cluster, event) != master:
                return
        except (redis.RedisError, AssertionError):
            pass
        assert time.monotonic() < deadline, "no replica took over"
        time.sleep(0.05)


def test_a_master_killed_under_load(
    cluster_that_fails_over_fast: LocalCluster, tmp_path: Path
) -> None:
    """kill -9 of a master: its replica takes over after the node timeout. Meanwhile its
    events answer 503; afterwards everything works again; no answer is a 500, and the
    invariants hold. Replication is asynchronous: what the master acknowledged in its
    last moment may not have reached the replica (README "Durability"), so reservations
    acknowledged within 1 s of the kill may be missing (counted, not failed)."""
    cluster = cluster_that_fails_over_fast
    events = events_on_every_master(cluster, "kill")

    def kill() -> None:
        _kill_master_of(cluster, events[0])

    ledger, start, end = _during_load(cluster, tmp_path, events, kill, seconds=8.0, may_lose=1.0)
    late = [(at - end, event) for at, event in _unavailable(ledger) if at > end + 3.0]
    assert not late, late  # 503 only until shortly after the replica took over
    print(f"master killed: {dict(ledger.statuses)}; failover took {end - start:.1f} s")


def test_the_first_request_after_a_failover_the_worker_did_not_see(
    cluster_that_fails_over_fast: LocalCluster, tmp_path: Path
) -> None:
    """A worker idle while a master is killed and its replica takes over still holds
    connections to the dead master (opened at start and by the event's creation). Its
    first request to that master's events afterwards is answered, not 503: the call
    whose connection breaks as its reply is read goes again on the new slot map. (Seen
    in CI: under load all connections went to one worker, and the other's first request
    after the failover answered 503.)"""
    cluster = cluster_that_fails_over_fast
    event = events_on_every_master(cluster, "idle")[0]
    with api_server(cluster.url, tmp_path / "api.log", workers=1) as base:
        _put_events(base, [event])
        _kill_master_of(cluster, event)
        with httpx.Client(base_url=base, timeout=10) as http:
            summary = http.get(f"/events/{event}", headers=ADMIN)
            assert summary.status_code == 200, summary.text
            reserved = http.post(
                "/reservations",
                json={"eventId": event, "seatIds": [SEATS[0]]},
                headers=bearer(CUSTOMERS[0]),
            )
            assert reserved.status_code == 201, reserved.text

"""Many customers racing for the same seats through a real `seatres serve` (two worker
processes) and a real Redis: every seat ends with exactly one winner, every loser is told
which seat it lost, and Redis agrees with what the clients were told. Then the owners race
confirm against cancel on their own reservations: exactly one transition wins.

Run twice: on one redis-server, and on a local 3-master Redis Cluster with three events
whose slots are on three different masters (checked: each event's keys are on its
master), all fought over at once."""

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import redis

from seatres.embedded import RedisServer
from seatres.embedded_cluster import LocalCluster
from seatres.store import keys
from seatres.store.connection import SyncClient, connect_sync
from tests.cluster import events_on_every_master, flush, port_of_event
from tests.conftest import ADMIN, bearer
from tests.processes import api_server

EVENT = "flash-sale"
SEATS = [f"S{i:02d}" for i in range(20)]
CUSTOMERS = [f"c{i}" for i in range(50)]
# Requests in flight at once (the HTTP client's connection limit).
IN_FLIGHT = 64
RACE_ROUNDS = 6  # confirms and as many cancels per reservation, all at once


@dataclass(frozen=True)
class Answer:
    customer: str
    spot: tuple[str, str]  # (event, seat)
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Setup:
    base: str  # the API's URL
    store: SyncClient  # the reservations' Redis (or cluster), to check what it holds
    events: list[str]  # the events fought over (on a cluster: one per master)
    cluster: LocalCluster | None = None


@pytest.fixture(params=["real", pytest.param("cluster", marks=pytest.mark.cluster)])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    cluster: LocalCluster | None = None
    if request.param == "real":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, events = server.url, [EVENT]
        with redis.Redis.from_url(url) as r:
            r.flushall()
    else:
        cluster = request.getfixturevalue("redis_cluster")
        assert cluster is not None
        flush(cluster)
        url, events = cluster.url, events_on_every_master(cluster, EVENT)
        assert {port_of_event(cluster, e) for e in events} == set(cluster.master_ports())
    store = connect_sync(url, 10)
    try:
        with api_server(url, tmp_path / "api.log", workers=2) as base:
            yield Setup(base, store, events, cluster)
    finally:
        store.close()


def _client(base: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=20.0)


def _spots(events: list[str], seats: list[str]) -> list[tuple[str, str]]:
    return [(e, s) for e in events for s in seats]


async def _storm(base: str, customers: list[str], spots: list[tuple[str, str]]) -> list[Answer]:
    """Every customer asks for every seat, one seat per request, all requests released
    at once in a shuffled order so that each seat is fought over from many connections."""
    headers = {c: bearer(c) for c in customers}
    pairs = [(c, spot) for c in customers for spot in spots]
    random.Random(20240601).shuffle(pairs)
    start = asyncio.Event()

    async with _client(base) as http:

        async def one(customer: str, spot: tuple[str, str]) -> Answer:
            await start.wait()
            response = await http.post(
                "/reservations",
                json={"eventId": spot[0], "seatId": spot[1]},
                headers=headers[customer],
            )
            return Answer(customer, spot, response.status_code, response.json())

        tasks = [asyncio.create_task(one(c, spot)) for c, spot in pairs]
        start.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)


def _winners(
    answers: list[Answer], contested: list[tuple[str, str]]
) -> dict[tuple[str, str], Answer]:
    """The one 201 of each contested seat; asserts that every other answer is a 409
    naming that seat, and that nothing else (no 5xx) came back."""
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {201, 409}, statuses
    winners: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        event, seat = a.spot
        if a.status == 201:
            winners[a.spot].append(a)
            assert a.body["eventId"] == event, a.body
            assert a.body["seatIds"] == [seat], a.body
            assert a.body["customerId"] == a.customer, a.body
            assert a.body["state"] == "RESERVED", a.body
        else:
            assert a.body["code"] == "seat_unavailable", a.body
            assert a.body["status"] == 409, a.body
            assert seat in a.body["seatIds"], a.body
    assert sorted(winners) == sorted(contested)
    assert {spot: len(w) for spot, w in winners.items()} == dict.fromkeys(contested, 1)
    return {spot: w[0] for spot, w in winners.items()}


def _reservations(store: SyncClient, events: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        raw: Any = store.hgetall(keys.event_keys(event).reservations)
        found |= {rid: orjson.loads(value) for rid, value in raw.items()}
    return found


def _claims(store: SyncClient, events: list[str]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for event in events:
        raw: Any = store.hgetall(keys.event_keys(event).claims)
        found |= {(event, seat): rid for seat, rid in raw.items()}
    return found


def _holds(store: SyncClient, events: list[str]) -> set[str]:
    return {rid for e in events for rid in store.zrange(keys.event_keys(e).holds, 0, -1)}


def _meta(store: SyncClient, event: str) -> tuple[int, int]:
    held, booked = store.hmget(keys.event_keys(event).meta, "held", "booked")
    assert held is not None and booked is not None
    return int(held), int(booked)


async def _race(
    base: str, winners: dict[tuple[str, str], Answer]
) -> dict[str, list[tuple[str, int, dict[str, Any]]]]:
    """For each reservation, its owner sends RACE_ROUNDS confirms and as many cancels,
    interleaved, all in flight together. Returns the answers per reservation id."""
    start = asyncio.Event()
    async with _client(base) as http:

        async def one(rid: str, owner: str, action: str) -> tuple[str, str, int, dict[str, Any]]:
            await start.wait()
            response = await http.post(f"/reservations/{rid}/{action}", headers=bearer(owner))
            return rid, action, response.status_code, response.json()

        tasks = []
        for w in winners.values():
            rid = w.body["id"]
            for i in range(2 * RACE_ROUNDS):
                action = "confirm" if i % 2 == 0 else "cancel"
                tasks.append(asyncio.create_task(one(rid, w.customer, action)))
        start.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    by_id: dict[str, list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
    for rid, action, status, body in results:
        by_id[rid].append((action, status, body))
    return by_id


async def _get(base: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    async with _client(base) as http:
        response = await http.get(path, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _summaries(base: str, events: list[str]) -> dict[str, dict[str, int]]:
    return {e: asyncio.run(_get(base, f"/events/{e}", bearer("c0")))["seats"] for e in events}


def test_each_seat_has_exactly_one_winner_and_confirm_races_cancel(setup: Setup) -> None:
    server, store, events = setup.base, setup.store, setup.events
    spots = _spots(events, SEATS)
    with httpx.Client(base_url=server, timeout=10) as http:
        for event in events:
            created = http.put(
                f"/events/{event}", json={"name": "Flash", "seats": SEATS}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
    if setup.cluster is not None:
        # each event's keys are on its own master, asked of that master itself
        homes = {port_of_event(setup.cluster, e): e for e in events}
        assert sorted(homes) == setup.cluster.master_ports()
        for port, event in homes.items():
            with setup.cluster.client(port) as node:
                assert node.exists(*keys.event_keys(event)[:2]) == 2  # meta, seats

    # 1. Everyone reserves every seat at once.
    answers = asyncio.run(_storm(server, CUSTOMERS, spots))
    assert len(answers) == len(CUSTOMERS) * len(spots)
    winners = _winners(answers, spots)
    winning_ids = {spot: w.body["id"] for spot, w in winners.items()}
    assert len(set(winning_ids.values())) == len(spots)

    assert _claims(store, events) == winning_ids
    reservations = _reservations(store, events)
    assert set(reservations) == set(winning_ids.values())
    for spot, rid in winning_ids.items():
        r = reservations[rid]
        assert (r["eventId"], r["state"], r["seatIds"], r["customerId"]) == (
            spot[0],
            "RESERVED",
            [spot[1]],
            winners[spot].customer,
        )
    assert _holds(store, events) == set(winning_ids.values())
    for event in events:
        assert _meta(store, event) == (len(SEATS), 0)
    full = {"total": len(SEATS), "free": 0, "held": len(SEATS), "booked": 0}
    assert _summaries(server, events) == dict.fromkeys(events, full)

    # 2. Each owner races confirm against cancel on their reservation.
    raced = asyncio.run(_race(server, winners))
    assert set(raced) == set(winning_ids.values())
    outcome: dict[str, str] = {}
    for rid, results in raced.items():
        assert len(results) == 2 * RACE_ROUNDS
        assert {status for _, status, _ in results} <= {200, 400}, results
        won = {body["state"] for _, status, body in results if status == 200}
        assert len(won) == 1, results
        final = won.pop()
        assert final in ("CONFIRMED", "CANCELLED")
        winning_action = "confirm" if final == "CONFIRMED" else "cancel"
        for action, status, body in results:
            if action == winning_action:
                # The first one made the transition; the repeats answer the same.
                assert status == 200, body
                assert body["state"] == final, body
            else:
                assert status == 400, body
                assert body["code"] == "invalid_transition", body
        updated = {body["updatedAt"] for _, status, body in results if status == 200}
        assert len(updated) == 1, results
        outcome[rid] = final

    confirmed = {spot for spot, rid in winning_ids.items() if outcome[rid] == "CONFIRMED"}
    cancelled = set(spots) - confirmed
    reservations = _reservations(store, events)
    assert {rid: r["state"] for rid, r in reservations.items()} == outcome
    assert _claims(store, events) == {spot: winning_ids[spot] for spot in confirmed}
    assert _holds(store, events) == set()
    for event in events:
        booked = sum(1 for e, _ in confirmed if e == event)
        assert _meta(store, event) == (0, booked)
    for spot, rid in winning_ids.items():
        body = asyncio.run(_get(server, f"/reservations/{rid}", bearer(winners[spot].customer)))
        assert body["state"] == outcome[rid]
    assert _summaries(server, events) == {
        e: {
            "total": len(SEATS),
            "free": sum(1 for x, _ in cancelled if x == e),
            "held": 0,
            "booked": sum(1 for x, _ in confirmed if x == e),
        }
        for e in events
    }

    # 3. Cancelled seats are free again, and fought over again; booked seats stay booked.
    again = asyncio.run(_storm(server, CUSTOMERS[:10], spots))
    second = _winners([a for a in again if a.spot in cancelled], sorted(cancelled))
    assert all(a.status == 409 for a in again if a.spot in confirmed)
    assert _claims(store, events) == {
        **{spot: winning_ids[spot] for spot in confirmed},
        **{spot: w.body["id"] for spot, w in second.items()},
    }
    for event in events:
        booked = sum(1 for e, _ in confirmed if e == event)
        assert _meta(store, event) == (len(SEATS) - booked, booked)
    assert _summaries(server, events) == {
        e: {
            "total": len(SEATS),
            "free": 0,
            "held": sum(1 for x, _ in cancelled if x == e),
            "booked": sum(1 for x, _ in confirmed if x == e),
        }
        for e in events
    }

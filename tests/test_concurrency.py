"""Many customers racing for the same seats through a real `seatres serve` (two worker
processes) and a real Redis: every seat ends with exactly one winner, every loser is told
which seat it lost, and Redis agrees with what the clients were told. Then the owners race
confirm against cancel on their own reservations: exactly one transition wins."""

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
from seatres.store import keys
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
    seat: str
    status: int
    body: dict[str, Any]


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    with api_server(redis_server.url, tmp_path / "api.log", workers=2) as base:
        yield base


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        yield r


def _client(base: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=20.0)


async def _storm(base: str, customers: list[str], seats: list[str]) -> list[Answer]:
    """Every customer asks for every seat, one seat per request, all requests released
    at once in a shuffled order so that each seat is fought over from many connections."""
    headers = {c: bearer(c) for c in customers}
    pairs = [(c, s) for c in customers for s in seats]
    random.Random(20240601).shuffle(pairs)
    start = asyncio.Event()

    async with _client(base) as http:

        async def one(customer: str, seat: str) -> Answer:
            await start.wait()
            response = await http.post(
                "/reservations",
                json={"eventId": EVENT, "seatId": seat},
                headers=headers[customer],
            )
            return Answer(customer, seat, response.status_code, response.json())

        tasks = [asyncio.create_task(one(c, s)) for c, s in pairs]
        start.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


def _winners(answers: list[Answer], contested: list[str]) -> dict[str, Answer]:
    """The one 201 of each contested seat; asserts that every other answer is a 409
    naming that seat, and that nothing else (no 5xx) came back."""
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {201, 409}, statuses
    winners: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        if a.status == 201:
            winners[a.seat].append(a)
            assert a.body["seatIds"] == [a.seat], a.body
            assert a.body["customerId"] == a.customer, a.body
            assert a.body["state"] == "RESERVED", a.body
        else:
            assert a.body["code"] == "seat_unavailable", a.body
            assert a.body["status"] == 409, a.body
            assert a.seat in a.body["seatIds"], a.body
    assert sorted(winners) == sorted(contested)
    assert {seat: len(w) for seat, w in winners.items()} == dict.fromkeys(contested, 1)
    return {seat: w[0] for seat, w in winners.items()}


def _reservations(store: redis.Redis) -> dict[str, dict[str, Any]]:
    raw: dict[str, str] = store.hgetall(keys.event_keys(EVENT).reservations)  # type: ignore[assignment]
    return {rid: orjson.loads(value) for rid, value in raw.items()}


def _meta(store: redis.Redis) -> tuple[int, int]:
    held, booked = store.hmget(keys.event_keys(EVENT).meta, "held", "booked")
    assert held is not None and booked is not None
    return int(held), int(booked)


async def _race(
    base: str, winners: dict[str, Answer]
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
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
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


def test_each_seat_has_exactly_one_winner_and_confirm_races_cancel(
    server: str, store: redis.Redis
) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        created = http.put(
            f"/events/{EVENT}", json={"name": "Flash", "seats": SEATS}, headers=ADMIN
        )
        assert created.status_code == 201, created.text

    # 1. Everyone reserves every seat at once.
    answers = asyncio.run(_storm(server, CUSTOMERS, SEATS))
    assert len(answers) == len(CUSTOMERS) * len(SEATS)
    winners = _winners(answers, SEATS)
    winning_ids = {seat: w.body["id"] for seat, w in winners.items()}
    assert len(set(winning_ids.values())) == len(SEATS)

    k = keys.event_keys(EVENT)
    assert store.hgetall(k.claims) == winning_ids
    reservations = _reservations(store)
    assert set(reservations) == set(winning_ids.values())
    for seat, rid in winning_ids.items():
        r = reservations[rid]
        assert (r["state"], r["seatIds"], r["customerId"]) == (
            "RESERVED",
            [seat],
            winners[seat].customer,
        )
    assert set(store.zrange(k.holds, 0, -1)) == set(winning_ids.values())
    assert _meta(store) == (len(SEATS), 0)
    summary = asyncio.run(_get(server, f"/events/{EVENT}", bearer("c0")))
    assert summary["seats"] == {"total": len(SEATS), "free": 0, "held": len(SEATS), "booked": 0}

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

    confirmed = {seat for seat, rid in winning_ids.items() if outcome[rid] == "CONFIRMED"}
    cancelled = set(SEATS) - confirmed
    reservations = _reservations(store)
    assert {rid: r["state"] for rid, r in reservations.items()} == outcome
    assert store.hgetall(k.claims) == {seat: winning_ids[seat] for seat in confirmed}
    assert store.zcard(k.holds) == 0
    assert _meta(store) == (0, len(confirmed))
    for seat, rid in winning_ids.items():
        body = asyncio.run(_get(server, f"/reservations/{rid}", bearer(winners[seat].customer)))
        assert body["state"] == outcome[rid]
    summary = asyncio.run(_get(server, f"/events/{EVENT}", bearer("c0")))
    assert summary["seats"] == {
        "total": len(SEATS),
        "free": len(cancelled),
        "held": 0,
        "booked": len(confirmed),
    }

    # 3. Cancelled seats are free again, and fought over again; booked seats stay booked.
    again = asyncio.run(_storm(server, CUSTOMERS[:10], SEATS))
    second = _winners([a for a in again if a.seat in cancelled], sorted(cancelled))
    assert all(a.status == 409 for a in again if a.seat in confirmed)
    claims = store.hgetall(k.claims)
    assert claims == {
        **{seat: winning_ids[seat] for seat in confirmed},
        **{seat: w.body["id"] for seat, w in second.items()},
    }
    assert _meta(store) == (len(cancelled), len(confirmed))
    summary = asyncio.run(_get(server, f"/events/{EVENT}", bearer("c0")))
    assert summary["seats"] == {
        "total": len(SEATS),
        "free": 0,
        "held": len(cancelled),
        "booked": len(confirmed),
    }

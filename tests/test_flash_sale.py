"""Flash-sale rules on fakeredis and real Redis: multi-seat all-or-nothing holds,
per-customer limits, idempotency keys, hold extension and the history log."""

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from seatres.domain.errors import LimitExceeded
from seatres.domain.ids import new_reservation_id
from seatres.http.app import create_app
from seatres.store import keys
from seatres.store.redis_store import RedisStore
from tests.conftest import ADMIN, ALICE, BOB, Backend, make_settings, put_event

SEATS = [f"A{i}" for i in range(1, 13)]
K = keys.event_keys("sale")


@contextmanager
def sale(backend: Backend, **settings: Any) -> Iterator[TestClient]:
    app = create_app(make_settings(**settings), redis_factory=lambda _s: backend.make_async())
    with TestClient(app, raise_server_exceptions=False) as c:
        put_event(c, "sale", SEATS)
        yield c


def hold(c: TestClient, seats: list[str], who: dict[str, str] = ALICE, **headers: str) -> Any:
    return c.post(
        "/reservations", json={"eventId": "sale", "seatIds": seats}, headers={**who, **headers}
    )


def state_of(backend: Backend) -> dict[str, Any]:
    """Every key's name, and every value of the event and the sweep index."""
    r = backend.sync
    return {
        "keys": sorted(r.keys("*")),
        "sweep": r.zrange(keys.SWEEP_DUE, 0, -1, withscores=True),
        "log": r.xlen(K.log),
        "claims": r.hgetall(K.claims),
        "reservations": r.hgetall(K.reservations),
        "holds": r.zrange(K.holds, 0, -1, withscores=True),
        "meta": r.hgetall(K.meta),
        "customers": r.hgetall(K.customers),
    }


# Multi-seat holds


def test_a_conflict_lists_exactly_the_taken_seats_and_changes_nothing(backend: Backend) -> None:
    with sale(backend) as c:
        assert hold(c, ["A2"], BOB).status_code == 201
        booked = hold(c, ["A4", "A5"], BOB).json()["id"]
        c.post(f"/reservations/{booked}/confirm", headers=BOB)
        # as a sweep leaves it once the event's holds are gone: a refusal must not index it
        backend.sync.delete(keys.SWEEP_DUE)
        before = state_of(backend)
        response = hold(c, ["A1", "A2", "A3", "A4", "A6"])
        assert response.status_code == 409
        assert response.json()["code"] == "seat_unavailable"
        assert sorted(response.json()["seatIds"]) == ["A2", "A4"]
        assert state_of(backend) == before
        seats = {
            s["seatId"]: s["status"]
            for s in c.get("/events/sale/seats", headers=ALICE).json()["seats"]
        }
        assert [s for s, status in seats.items() if status == "held"] == ["A2"]
        assert [s for s, status in seats.items() if status == "booked"] == ["A4", "A5"]


def test_seat_ids_rules(backend: Backend) -> None:
    with sale(backend, max_seats_per_reservation=3) as c:
        assert hold(c, ["A1", "A2", "A3"]).status_code == 201
        for bad in (["A4", "A5", "A6", "A7"], [], ["A4", "A4"]):
            response = hold(c, bad)
            assert response.status_code == 400 and response.json()["code"] == "validation_error"
        both = c.post(
            "/reservations",
            json={"eventId": "sale", "seatId": "A9", "seatIds": ["A8"]},
            headers=ALICE,
        )
        assert both.status_code == 400


@pytest.mark.parametrize("transition", ["confirm", "cancel"])
def test_transitions_move_all_seats_together(backend: Backend, transition: str) -> None:
    with sale(backend) as c:
        rid = hold(c, ["A1", "A2", "A3"]).json()["id"]
        assert c.post(f"/reservations/{rid}/{transition}", headers=ALICE).status_code == 200
        counts = c.get("/events/sale", headers=ALICE).json()["seats"]
        if transition == "confirm":
            assert counts == {"total": 12, "free": 9, "held": 0, "booked": 3}
            assert backend.sync.hgetall(K.claims) == {"A1": rid, "A2": rid, "A3": rid}
        else:
            assert counts == {"total": 12, "free": 12, "held": 0, "booked": 0}
            assert backend.sync.hgetall(K.claims) == {}


def test_expiry_frees_all_seats_together(backend: Backend) -> None:
    with sale(backend, hold_seconds=1) as c:
        hold(c, ["A1", "A2", "A3"])
        time.sleep(1.05)
        batch = asyncio.run(_expire(backend))
        assert len(batch) == 1
        assert backend.sync.hgetall(K.claims) == {}
        assert c.get("/events/sale", headers=ALICE).json()["seats"]["free"] == 12


async def _expire(backend: Backend) -> tuple[str, ...]:
    redis = backend.make_async()
    try:
        return (await RedisStore(redis).expire_batch("sale", 100)).expired_ids
    finally:
        await redis.aclose()


# Per-customer limit


def test_customer_limit(backend: Backend) -> None:
    with sale(backend, max_seats_per_customer=4) as c:
        first = hold(c, ["A1", "A2", "A3"])
        assert first.status_code == 201
        over = hold(c, ["A4", "A5"])
        assert over.status_code == 400
        assert over.json()["code"] == "limit_exceeded"
        assert over.json()["limit"] == 4
        assert hold(c, ["A4"]).status_code == 201  # exactly at the limit
        assert hold(c, ["A5"], BOB).status_code == 201  # other customers have their own
        # confirmed seats still count; cancelled ones stop counting
        c.post(f"/reservations/{first.json()['id']}/confirm", headers=ALICE)
        assert hold(c, ["A6"]).json()["code"] == "limit_exceeded"
        single = c.get("/events/sale", headers=ALICE)  # the limit is per event, not global
        assert single.status_code == 200
        assert backend.sync.hget(K.customers, "alice") == "4"


def test_cancelled_and_expired_seats_stop_counting(backend: Backend) -> None:
    with sale(backend, max_seats_per_customer=2, hold_seconds=1) as c:
        rid = hold(c, ["A1", "A2"]).json()["id"]
        assert hold(c, ["A3"]).status_code == 400
        c.post(f"/reservations/{rid}/cancel", headers=ALICE)
        assert hold(c, ["A3", "A4"]).status_code == 201
        time.sleep(1.05)  # both seats' hold is due, not yet swept: it no longer counts
        again = hold(c, ["A5", "A6"])
        assert again.status_code == 201, again.text
        assert backend.sync.hget(K.customers, "alice") == "2"


def test_zero_means_no_limit(backend: Backend) -> None:
    with sale(backend, max_seats_per_customer=0) as c:
        for i in range(0, 12, 3):
            assert hold(c, SEATS[i : i + 3]).status_code == 201


def test_concurrent_requests_of_one_customer_never_exceed_the_limit(backend: Backend) -> None:
    limit = 5

    async def burst() -> list[bool]:
        clients = [backend.make_async() for _ in range(10)]
        stores = [RedisStore(r) for r in clients]
        await stores[0].upsert_event("sale", "Sale", [f"S{i}" for i in range(100)])

        async def one(i: int) -> bool:
            try:
                await stores[i % 10].reserve(
                    "sale", new_reservation_id("sale"), "alice", [f"S{i}"], 60_000, limit
                )
                return True
            except LimitExceeded:
                return False

        try:
            return await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            for r in clients:
                await r.aclose()

    results = asyncio.run(burst())
    assert results.count(True) == limit
    assert backend.sync.hget(K.customers, "alice") == str(limit)
    assert backend.sync.hlen(K.claims) == limit


# Idempotency keys


def test_same_key_same_request_replays_the_first_answer(backend: Backend) -> None:
    with sale(backend) as c:
        first = hold(c, ["A1"], **{"Idempotency-Key": "order-1"})
        assert first.status_code == 201
        assert "idempotent-replayed" not in first.headers
        again = hold(c, ["A1"], **{"Idempotency-Key": "order-1"})
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert backend.sync.hlen(K.reservations) == 1
        # the key is the customer's own: bob's order-1 is another request
        assert hold(c, ["A2"], BOB, **{"Idempotency-Key": "order-1"}).status_code == 201
        record = keys.idempotency_key("sale", "alice", "order-1")
        assert 86_000_000 < backend.sync.pttl(record) <= 86_400_000


def test_replay_after_confirm_returns_the_original_201_body(backend: Backend) -> None:
    with sale(backend) as c:
        first = hold(c, ["A1", "A2"], **{"Idempotency-Key": "k-42"})
        rid = first.json()["id"]
        confirmed = c.post(
            f"/reservations/{rid}/confirm", headers={**ALICE, "Idempotency-Key": "c-1"}
        )
        assert confirmed.json()["state"] == "CONFIRMED"
        again = hold(c, ["A1", "A2"], **{"Idempotency-Key": "k-42"})
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.json()["state"] == "RESERVED"
        replayed_confirm = c.post(
            f"/reservations/{rid}/confirm", headers={**ALICE, "Idempotency-Key": "c-1"}
        )
        assert replayed_confirm.json() == confirmed.json()
        assert replayed_confirm.headers["idempotent-replayed"] == "true"


def test_refusals_are_replayed_too(backend: Backend) -> None:
    with sale(backend) as c:
        hold(c, ["A1"], BOB)
        first = hold(c, ["A1"], **{"Idempotency-Key": "try-1"})
        assert first.status_code == 409
        c.post("/reservations", json={}, headers=ALICE)
        again = hold(c, ["A1"], **{"Idempotency-Key": "try-1"})
        assert (again.status_code, again.json()) == (409, first.json())
        assert again.headers["idempotent-replayed"] == "true"


def test_same_key_other_request_is_422(backend: Backend) -> None:
    with sale(backend) as c:
        rid = hold(c, ["A1"], **{"Idempotency-Key": "k"}).json()["id"]
        other = hold(c, ["A2"], **{"Idempotency-Key": "k"})
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_mismatch"
        assert other.headers["content-type"].startswith("application/problem+json")
        confirm = c.post(f"/reservations/{rid}/confirm", headers={**ALICE, "Idempotency-Key": "k"})
        assert confirm.status_code == 422
        assert backend.sync.hlen(K.reservations) == 1
        # the same body in another key order is the same request
        same = c.post(
            "/reservations",
            content=b'{"seatIds": ["A1"], "eventId": "sale"}',
            headers={**ALICE, "Idempotency-Key": "k", "content-type": "application/json"},
        )
        assert same.status_code == 201 and same.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_bad_idempotency_keys_are_400(backend: Backend, key: str) -> None:
    with sale(backend) as c:
        response = c.post(
            "/reservations",
            content=b'{"eventId": "sale", "seatId": "A1"}',
            headers=[
                ("authorization", ALICE["Authorization"]),
                ("content-type", "application/json"),
                ("idempotency-key", key.encode("utf-8")),
            ],
        )
        assert response.status_code == 400
        assert response.json()["code"] == "validation_error"


def test_twenty_concurrent_requests_with_one_key_make_one_reservation(backend: Backend) -> None:
    from seatres.domain.models import IdempotencyKey

    key = IdempotencyKey("burst", "same-fingerprint")

    async def burst() -> set[str]:
        clients = [backend.make_async() for _ in range(5)]
        stores = [RedisStore(r) for r in clients]
        await stores[0].upsert_event("sale", "Sale", SEATS)
        try:
            outcomes = await asyncio.gather(
                *(
                    stores[i % 5].reserve(
                        "sale", new_reservation_id("sale"), "alice", ["A1"], 60_000, 0, key
                    )
                    for i in range(20)
                )
            )
        finally:
            for r in clients:
                await r.aclose()
        assert sum(not o.replayed for o in outcomes) == 1
        return {o.reservation.id for o in outcomes}

    assert len(asyncio.run(burst())) == 1
    assert backend.sync.hlen(K.reservations) == 1


# Hold extension


def test_extend_pushes_back_the_expiry(backend: Backend) -> None:
    with sale(backend) as c:
        made = hold(c, ["A1"]).json()
        response = c.post(
            f"/reservations/{made['id']}/extend", json={"seconds": 300}, headers=ALICE
        )
        assert response.status_code == 200
        before = datetime.fromisoformat(made["expiresAt"])
        after = datetime.fromisoformat(response.json()["expiresAt"])
        assert (after - before).total_seconds() == 300
        score = backend.sync.zscore(K.holds, made["id"])
        assert score == after.timestamp() * 1000


def test_extension_limits(backend: Backend) -> None:
    with sale(backend, hold_seconds=600, max_hold_seconds=1800) as c:
        rid = hold(c, ["A1"]).json()["id"]
        url = f"/reservations/{rid}/extend"
        assert c.post(url, json={"seconds": 1200}, headers=ALICE).status_code == 200
        over = c.post(url, json={"seconds": 1}, headers=ALICE)
        assert over.status_code == 400
        assert (over.json()["code"], over.json()["limit"]) == ("limit_exceeded", 1800)
        for bad in ({"seconds": 0}, {"seconds": -5}, {"seconds": 10**12}, {"seconds": "5"}, {}):
            response = c.post(url, json=bad, headers=ALICE)
            assert response.status_code == 400, bad
            assert response.json()["code"] == "validation_error"
        # owner only: others (admins included) get 404
        assert c.post(url, json={"seconds": 1}, headers=BOB).status_code == 404
        assert c.post(url, json={"seconds": 1}, headers=ADMIN).status_code == 404


def test_only_live_holds_can_be_extended(backend: Backend) -> None:
    with sale(backend, hold_seconds=1) as c:
        confirmed = hold(c, ["A1"]).json()["id"]
        c.post(f"/reservations/{confirmed}/confirm", headers=ALICE)
        response = c.post(f"/reservations/{confirmed}/extend", json={"seconds": 5}, headers=ALICE)
        assert response.json()["code"] == "invalid_transition"
        due = hold(c, ["A2"]).json()["id"]
        time.sleep(1.05)
        response = c.post(f"/reservations/{due}/extend", json={"seconds": 5}, headers=ALICE)
        assert (response.status_code, response.json()["code"]) == (400, "reservation_expired")
        assert '"EXPIRED"' in (backend.sync.hget(K.reservations, due) or "")


# History


def test_history_in_the_reservation_and_the_log_stream(backend: Backend) -> None:
    with sale(backend) as c:
        rid = hold(c, ["A1", "A2"]).json()["id"]
        c.post(f"/reservations/{rid}/extend", json={"seconds": 60}, headers=ALICE)
        c.post(f"/reservations/{rid}/confirm", headers=ADMIN)
        body = c.get(f"/reservations/{rid}", headers=ALICE).json()
        history = body["history"]
        assert [(h["action"], h["from"], h["to"], h["by"]) for h in history] == [
            ("reserve", None, "RESERVED", "alice"),
            ("extend", "RESERVED", "RESERVED", "alice"),
            ("confirm", "RESERVED", "CONFIRMED", "admin"),
        ]
        assert all(h["at"].endswith("Z") for h in history)
        log = backend.sync.xrange(K.log)
        assert [entry["action"] for _, entry in log] == ["reserve", "extend", "confirm"]
        assert log[-1][1] == {
            "reservation": rid,
            "action": "confirm",
            "from": "RESERVED",
            "to": "CONFIRMED",
            "by": "admin",
            "customer": "alice",
            "seats": "A1,A2",
            "at": log[-1][1]["at"],
        }


def test_expiry_is_logged_as_the_system(backend: Backend) -> None:
    with sale(backend, hold_seconds=1) as c:
        rid = hold(c, ["A1"]).json()["id"]
        time.sleep(1.05)
        asyncio.run(_expire(backend))
        history = c.get(f"/reservations/{rid}", headers=ALICE).json()["history"]
        assert history[-1]["action"] == "expire" and history[-1]["by"] == "system"
        assert backend.sync.xrange(K.log)[-1][1]["to"] == "EXPIRED"


def test_log_stream_is_capped(backend: Backend) -> None:
    with sale(backend, log_max_length=100, max_seats_per_customer=0) as c:
        for _ in range(150):
            rid = hold(c, ["A1"]).json()["id"]
            c.post(f"/reservations/{rid}/cancel", headers=ALICE)
        length = backend.sync.xlen(K.log)
        # MAXLEN ~ trims whole macro nodes: a little over the cap, far under 300
        assert 100 <= length < 300

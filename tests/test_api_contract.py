"""The HTTP contract, on fakeredis and on a real Redis: every transition, every refusal,
every error code, and ownership."""

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from seatres.http.app import create_app
from tests.conftest import ADMIN, ALICE, BOB, Backend, bearer, make_settings, put_event

PROBLEM = "application/problem+json"


def reserve(client: TestClient, seat: str = "A1", event: str = "e1", who: Any = ALICE) -> Any:
    return client.post("/reservations", json={"eventId": event, "seatId": seat}, headers=who)


def held(client: TestClient, seat: str = "A1", event: str = "e1", who: Any = ALICE) -> str:
    response = reserve(client, seat, event, who)
    assert response.status_code == 201, response.text
    rid: str = response.json()["id"]
    return rid


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


@pytest.fixture
def event(client: TestClient) -> str:
    put_event(client, "e1", ["A1", "A2", "A3", "B1"])
    return "e1"


# Reserve


def test_reserve_returns_the_reservation(client: TestClient, event: str) -> None:
    response = reserve(client)
    assert response.status_code == 201
    body = response.json()
    assert set(body) >= {
        "id",
        "eventId",
        "seatIds",
        "customerId",
        "state",
        "createdAt",
        "expiresAt",
    }
    assert body["eventId"] == "e1"
    assert body["seatIds"] == ["A1"]
    assert body["customerId"] == "alice"
    assert body["state"] == "RESERVED"
    assert body["createdAt"].endswith("Z") and body["expiresAt"].endswith("Z")
    assert response.headers["location"] == f"/reservations/{body['id']}"


def test_hold_length_comes_from_settings(client: TestClient, event: str) -> None:
    from datetime import datetime

    body = reserve(client).json()
    created = datetime.fromisoformat(body["createdAt"])
    expires = datetime.fromisoformat(body["expiresAt"])
    assert (expires - created).total_seconds() == 600


def test_a_held_seat_cannot_be_reserved_again(client: TestClient, event: str) -> None:
    held(client, "A1")
    body = assert_problem(reserve(client, "A1", who=BOB), 409, "seat_unavailable")
    assert body["seatIds"] == ["A1"]
    # the owner cannot take it twice either
    assert_problem(reserve(client, "A1"), 409, "seat_unavailable")


def test_a_booked_seat_cannot_be_reserved(client: TestClient, event: str) -> None:
    rid = held(client, "A1")
    assert client.post(f"/reservations/{rid}/confirm", headers=ALICE).status_code == 200
    assert_problem(reserve(client, "A1", who=BOB), 409, "seat_unavailable")


@pytest.mark.parametrize("transition", ["cancel"])
def test_a_released_seat_can_be_reserved_again(
    client: TestClient, event: str, transition: str
) -> None:
    rid = held(client, "A1")
    assert client.post(f"/reservations/{rid}/{transition}", headers=ALICE).status_code == 200
    assert reserve(client, "A1", who=BOB).status_code == 201


def test_reserving_in_an_unknown_event_or_seat_is_404(client: TestClient, event: str) -> None:
    assert_problem(reserve(client, "A1", event="nope"), 404, "not_found")
    assert_problem(reserve(client, "Z9"), 404, "not_found")


def test_multi_seat_reservation_is_all_or_nothing(client: TestClient, event: str) -> None:
    held(client, "A2", who=BOB)
    response = client.post(
        "/reservations", json={"eventId": "e1", "seatIds": ["A1", "A2", "A3"]}, headers=ALICE
    )
    assert assert_problem(response, 409, "seat_unavailable")["seatIds"] == ["A2"]
    seats = client.get("/events/e1/seats", headers=ALICE).json()["seats"]
    assert {s["seatId"]: s["status"] for s in seats} == {
        "A1": "free",
        "A2": "held",
        "A3": "free",
        "B1": "free",
    }
    ok = client.post(
        "/reservations", json={"eventId": "e1", "seatIds": ["A1", "A3"]}, headers=ALICE
    )
    assert ok.status_code == 201
    assert ok.json()["seatIds"] == ["A1", "A3"]


# Confirm and cancel


def test_confirm(client: TestClient, event: str) -> None:
    rid = held(client)
    response = client.post(f"/reservations/{rid}/confirm", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["state"] == "CONFIRMED"
    summary = client.get("/events/e1", headers=ALICE).json()
    assert summary["seats"] == {"total": 4, "free": 3, "held": 0, "booked": 1}


def test_cancel_frees_the_seat(client: TestClient, event: str) -> None:
    rid = held(client)
    response = client.post(f"/reservations/{rid}/cancel", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["state"] == "CANCELLED"
    summary = client.get("/events/e1", headers=ALICE).json()
    assert summary["seats"] == {"total": 4, "free": 4, "held": 0, "booked": 0}


@pytest.mark.parametrize("transition", ["confirm", "cancel"])
def test_repeating_a_transition_answers_200_unchanged(
    client: TestClient, event: str, transition: str
) -> None:
    rid = held(client)
    first = client.post(f"/reservations/{rid}/{transition}", headers=ALICE)
    again = client.post(f"/reservations/{rid}/{transition}", headers=ALICE)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()


@pytest.mark.parametrize(("first", "then"), [("confirm", "cancel"), ("cancel", "confirm")])
def test_terminal_states_never_change(
    client: TestClient, event: str, first: str, then: str
) -> None:
    rid = held(client)
    state = client.post(f"/reservations/{rid}/{first}", headers=ALICE).json()["state"]
    assert_problem(
        client.post(f"/reservations/{rid}/{then}", headers=ALICE), 400, "invalid_transition"
    )
    assert client.get(f"/reservations/{rid}", headers=ALICE).json()["state"] == state


@pytest.mark.parametrize("transition", ["confirm", "cancel"])
def test_unknown_reservation_is_404(client: TestClient, event: str, transition: str) -> None:
    rid = held(client)
    forged = rid[:-4] + ("AAAA" if not rid.endswith("AAAA") else "BBBB")
    for bad in (forged, "nope", "x.y", "%00"):
        assert_problem(
            client.post(f"/reservations/{bad}/{transition}", headers=ALICE), 404, "not_found"
        )
    assert_problem(client.get(f"/reservations/{forged}", headers=ALICE), 404, "not_found")


# Ownership


@pytest.mark.parametrize("transition", ["confirm", "cancel"])
def test_someone_elses_reservation_is_404_and_unchanged(
    client: TestClient, event: str, transition: str
) -> None:
    rid = held(client)
    assert_problem(client.post(f"/reservations/{rid}/{transition}", headers=BOB), 404, "not_found")
    assert_problem(client.get(f"/reservations/{rid}", headers=BOB), 404, "not_found")
    assert client.get(f"/reservations/{rid}", headers=ALICE).json()["state"] == "RESERVED"


def test_admin_may_read_confirm_and_cancel_any_reservation(client: TestClient, event: str) -> None:
    rid = held(client, "A1")
    assert client.get(f"/reservations/{rid}", headers=ADMIN).json()["customerId"] == "alice"
    assert client.post(f"/reservations/{rid}/confirm", headers=ADMIN).json()["state"] == "CONFIRMED"
    other = held(client, "A2")
    assert (
        client.post(f"/reservations/{other}/cancel", headers=ADMIN).json()["state"] == "CANCELLED"
    )


# Lazy expiry


@pytest.fixture
def short_client(backend: Backend) -> Any:
    app = create_app(make_settings(hold_seconds=1), redis_factory=lambda _s: backend.make_async())
    with TestClient(app, raise_server_exceptions=False) as c:
        put_event(c, "e1", ["A1", "A2"])
        yield c


def test_confirming_an_expired_hold_fails_and_marks_it_expired(
    short_client: TestClient, backend: Backend
) -> None:
    rid = held(short_client, "A1")
    time.sleep(1.05)
    assert short_client.get(f"/reservations/{rid}", headers=ALICE).json()["state"] == "EXPIRED"
    first = short_client.post(f"/reservations/{rid}/confirm", headers=ALICE)
    assert_problem(first, 400, "reservation_expired")
    # the expiry was written (not only computed) and a retry answers the same
    stored = backend.sync.hget("seatres:{evt:e1}:reservations", rid)
    assert stored is not None and '"EXPIRED"' in stored
    assert backend.sync.hget("seatres:{evt:e1}:claims", "A1") is None
    assert backend.sync.zcard("seatres:{evt:e1}:holds") == 0
    assert_problem(
        short_client.post(f"/reservations/{rid}/confirm", headers=ALICE), 400, "reservation_expired"
    )
    assert_problem(
        short_client.post(f"/reservations/{rid}/cancel", headers=ALICE), 400, "reservation_expired"
    )
    summary = short_client.get("/events/e1", headers=ALICE).json()["seats"]
    assert summary == {"total": 2, "free": 2, "held": 0, "booked": 0}


def test_reserving_the_seat_of_an_expired_hold_succeeds(
    short_client: TestClient, backend: Backend
) -> None:
    old = held(short_client, "A1")
    held(short_client, "A2")
    time.sleep(1.05)
    # before anything touched it, the due hold already counts as free
    assert short_client.get("/events/e1", headers=BOB).json()["seats"]["free"] == 2
    new = held(short_client, "A1", who=BOB)
    assert backend.sync.hget("seatres:{evt:e1}:claims", "A1") == new
    assert '"EXPIRED"' in (backend.sync.hget("seatres:{evt:e1}:reservations", old) or "")
    assert short_client.get(f"/reservations/{old}", headers=ALICE).json()["state"] == "EXPIRED"
    summary = short_client.get("/events/e1", headers=BOB).json()["seats"]
    # A2's hold is due too, so only BOB's new hold counts
    assert summary == {"total": 2, "free": 1, "held": 1, "booked": 0}


# Events


def test_put_event_creates_then_updates(client: TestClient) -> None:
    body = {"name": "Gala", "seats": ["A1", "A2"]}
    created = client.put("/events/gala", json=body, headers=ADMIN)
    assert created.status_code == 201
    assert created.json() == {
        "eventId": "gala",
        "name": "Gala",
        "seats": {"total": 2, "free": 2, "held": 0, "booked": 0},
    }
    again = client.put("/events/gala", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json() == created.json()
    more = client.put(
        "/events/gala", json={"name": "Gala 2", "seats": ["A1", "A2", "A3"]}, headers=ADMIN
    )
    assert more.status_code == 200
    assert more.json()["name"] == "Gala 2"
    assert more.json()["seats"]["total"] == 3


def test_removing_a_seat_with_an_active_reservation_is_409(client: TestClient, event: str) -> None:
    held(client, "A1")
    rid = held(client, "A2")
    client.post(f"/reservations/{rid}/confirm", headers=ALICE)
    response = client.put("/events/e1", json={"name": "Show", "seats": ["A3"]}, headers=ADMIN)
    assert sorted(assert_problem(response, 409, "seat_unavailable")["seatIds"]) == ["A1", "A2"]
    assert client.get("/events/e1", headers=ALICE).json()["seats"]["total"] == 4
    # seats without an active reservation can go
    ok = client.put("/events/e1", json={"name": "Show", "seats": ["A1", "A2"]}, headers=ADMIN)
    assert ok.status_code == 200
    assert ok.json()["seats"] == {"total": 2, "free": 0, "held": 1, "booked": 1}


def test_100k_seats_in_one_call(client: TestClient) -> None:
    seats = [f"S{i}" for i in range(100_000)]
    response = client.put("/events/big", json={"name": "Stadium", "seats": seats}, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["seats"]["total"] == 100_000
    assert reserve(client, "S99999", event="big").status_code == 201


def test_event_writes_need_admin(client: TestClient) -> None:
    response = client.put("/events/x", json={"name": "X", "seats": ["A1"]}, headers=ALICE)
    assert_problem(response, 403, "forbidden")
    assert_problem(client.get("/events/x", headers=ALICE), 404, "not_found")
    # refused before the body is read: a customer learns nothing from a bad body
    bad = client.put(
        "/events/x", content=b"{not json", headers={**ALICE, "Content-Type": "text/plain"}
    )
    assert_problem(bad, 403, "forbidden")


def test_seat_pages(client: TestClient) -> None:
    put_event(client, "p", [f"S{i:03d}" for i in range(250)])
    rid = held(client, "S001", event="p")
    client.post(f"/reservations/{rid}/confirm", headers=ALICE)
    held(client, "S002", event="p")
    seen: list[dict[str, str]] = []
    cursor = ""
    while True:
        page = client.get(f"/events/p/seats?limit=100&cursor={cursor}", headers=BOB).json()
        seen += page["seats"]
        if page["nextCursor"] is None:
            break
        cursor = page["nextCursor"]
    assert [s["seatId"] for s in seen] == [f"S{i:03d}" for i in range(250)]
    assert seen[1] == {"seatId": "S001", "status": "booked"}
    assert seen[2] == {"seatId": "S002", "status": "held"}
    assert seen[0]["status"] == "free"
    assert_problem(client.get("/events/p/seats?limit=0", headers=BOB), 400, "validation_error")
    for bad in ("abc", "²", "-1", "1001", "9" * 40, "1.5"):
        response = client.get(f"/events/p/seats?limit={bad}", headers=BOB)
        assert_problem(response, 400, "validation_error")
    assert_problem(client.get("/events/p/seats?cursor=%00", headers=BOB), 400, "validation_error")
    assert_problem(client.get("/events/none/seats", headers=BOB), 404, "not_found")


# Validation


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"eventId": "e1"}',
        b'{"eventId": "e1", "seatId": 5}',
        b'{"eventId": "e1", "seatId": "A1", "extra": 1}',
        b'{"eventId": "e1", "seatId": "A1", "seatIds": ["A2"]}',
        b'{"eventId": "", "seatId": "A1"}',
        b'{"eventId": "e1", "seatId": ""}',
        b'{"eventId": "e1", "seatId": "' + b"A" * 65 + b'"}',
        b'{"eventId": "e 1", "seatId": "A1"}',
        b'{"eventId": "e1", "seatId": "A1\\u0000"}',
        b'{"eventId": "e1", "seatIds": []}',
        b'{"eventId": "e1", "seatIds": ["A1", "A1"]}',
        b'{"eventId": "e1", "seatIds": ["S1","S2","S3","S4","S5","S6","S7","S8","S9","S10","S11"]}',
    ],
)
def test_bad_reserve_bodies_are_400(client: TestClient, event: str, body: bytes) -> None:
    response = client.post(
        "/reservations", content=body, headers={**ALICE, "content-type": "application/json"}
    )
    assert_problem(response, 400, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "X"},
        {"name": "", "seats": ["A1"]},
        {"name": "X", "seats": []},
        {"name": "X", "seats": ["A1", "A1"]},
        {"name": "X", "seats": ["bad seat"]},
        {"name": "X", "seats": "A1"},
    ],
)
def test_bad_event_bodies_are_400(client: TestClient, body: dict[str, Any]) -> None:
    assert_problem(client.put("/events/x", json=body, headers=ADMIN), 400, "validation_error")


def test_bad_event_id_in_path_is_400(client: TestClient) -> None:
    body = {"name": "X", "seats": ["A1"]}
    assert_problem(
        client.put("/events/" + "x" * 65, json=body, headers=ADMIN), 400, "validation_error"
    )
    assert_problem(client.get("/events/b@d", headers=ADMIN), 400, "validation_error")


def test_other_http_errors_are_problems(client: TestClient, event: str) -> None:
    assert_problem(client.get("/nowhere", headers=ALICE), 404, "not_found")
    assert_problem(client.delete("/reservations", headers=ALICE), 405, "method_not_allowed")
    wrong_type = client.post(
        "/reservations", content=b"eventId=e1", headers={**ALICE, "content-type": "text/plain"}
    )
    assert_problem(wrong_type, 415, "unsupported_media_type")


def test_oversized_body_is_413(backend: Backend) -> None:
    app = create_app(
        make_settings(max_body_bytes=2048), redis_factory=lambda _s: backend.make_async()
    )
    with TestClient(app) as c:
        response = c.put("/events/x", json={"name": "X", "seats": ["A"] * 2000}, headers=ADMIN)
        assert_problem(response, 413, "payload_too_large")


# Auth


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic abc",
        "Bearer not-a-jwt",
        bearer("alice", ttl=-60)["Authorization"],
        "Bearer " + bearer("alice")["Authorization"].split()[1][:-3] + "abc",
    ],
)
def test_bad_tokens_are_401(client: TestClient, event: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post("/reservations", json={"eventId": "e1", "seatId": "A1"}, headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert_problem(client.get("/events/e1", headers=headers), 401, "unauthorized")


def test_token_signed_with_another_secret_is_401(client: TestClient, event: str) -> None:
    from seatres import tokens

    forged = tokens.mint("another-secret-" + "y" * 40, "admin", admin=True)
    response = client.put(
        "/events/e1",
        json={"name": "X", "seats": ["A1"]},
        headers={"Authorization": f"Bearer {forged}"},
    )
    assert_problem(response, 401, "unauthorized")


# Health and description


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_without_redis() -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=0.2)
    app = create_app(settings)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert_problem(c.get("/readyz"), 503, "store_unavailable")
        assert_problem(reserve(c), 503, "store_unavailable")


def test_openapi_describes_every_route(client: TestClient) -> None:
    from seatres.http.routes import ROUTES

    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for route in ROUTES:
        for method in route.methods or ():
            if method == "HEAD":
                continue
            assert method.lower() in spec["paths"][route.path], (method, route.path)

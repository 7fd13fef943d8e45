"""Fuzzing the HTTP surface.

1. schemathesis over the service's own OpenAPI description, every operation, in-process
   on fakeredis: no 5xx, every error is problem+json with a code documented for its
   status, answers conform to the description (status, content type, schema), a request
   the description calls valid is never refused as validation_error, and one it calls
   invalid is refused. Requests carry admin, customer and invalid tokens, and their ids
   are often swapped for ids that exist (events, seats, live and finished
   reservations, holds made earlier in the run), so the fuzzing reaches real states.
2. Hand-written bad inputs (huge and deep bodies, wrong content types, broken UTF-8,
   control characters and NUL in every kind of id, absurd numbers, repeated members):
   each answers a clean 4xx problem+json with a documented code and writes nothing.

`--long` runs many more schemathesis examples per operation.
"""

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import fakeredis
import hypothesis.strategies as st
import jwt
import pytest
import redis
import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import TestPhase
from schemathesis.python import asgi
from starlette.applications import Starlette
from starlette.testclient import TestClient

from seatres import tokens
from seatres.domain.service import MAX_EVENT_NAME
from seatres.http.app import create_app
from seatres.http.openapi import ERROR_CODES, openapi_document
from seatres.inspection import event_report
from seatres.store import keys
from tests.conftest import ADMIN, ALICE, BOB, SECRET, Backend, bearer, make_settings, put_event
from tests.test_security import snapshot

Case = schemathesis.Case[Any]
PROBLEM = "application/problem+json"
DEFAULT_EXAMPLES = 100  # per operation: the default run stays around a minute on 2 cores
LONG_EXAMPLES = 1000  # --long: about 5 minutes more

# Part 1: schemathesis


# Confirmed seats count against a customer's limit for good: with the default 10, the
# three customers would be at it early in the run and every reserve would be refused.
FUZZ_SETTINGS = make_settings(max_seats_per_customer=40)


def _config(max_examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # Tokens come from the hooks below (TOKENS: valid and invalid ones), so that
            # schemathesis does not count Authorization as a parameter of its own.
            "generation": {
                "mode": "all",
                "max-examples": max_examples,
                "with-security-parameters": False,
            },
            # Business refusals are 400 too (invalid_transition, limit_exceeded, ...), so
            # schemathesis' "valid data must not get a 4xx" cannot hold on a stateful
            # service; check_problem below checks the precise rule instead: a valid
            # request is never refused as validation_error.
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    )


def _printable_names() -> st.SearchStrategy[str]:
    """Event names as the domain takes them (format "printable" in the description):
    1-MAX_EVENT_NAME printable characters once trimmed, sometimes with surrounding spaces."""
    printable = st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" ")
    core = st.text(printable, min_size=1, max_size=MAX_EVENT_NAME).map(str.strip)
    padding = st.sampled_from(["", " ", "  "])
    return st.tuples(padding, core.filter(bool), padding).map("".join)


schemathesis.openapi.format("printable", _printable_names())

# The app is built here (nothing runs before its first request) so that the schemas know
# it from the start: the checks that send requests of their own (ignored_auth,
# unsupported_method) reach it in-process too. The fuzz_world fixture seeds it.
FAKE_REDIS = fakeredis.FakeServer()
APP = create_app(
    FUZZ_SETTINGS,
    redis_factory=lambda _s: fakeredis.FakeAsyncRedis(server=FAKE_REDIS, decode_responses=True),
)
DESCRIPTION = openapi_document(FUZZ_SETTINGS.max_seats_per_reservation)
SCHEMA = schemathesis.openapi.from_dict(DESCRIPTION, config=_config(DEFAULT_EXAMPLES))
LONG_SCHEMA = schemathesis.openapi.from_dict(DESCRIPTION, config=_config(LONG_EXAMPLES))
SCHEMA.app = LONG_SCHEMA.app = APP


def _header(token: str | None) -> str | None:
    return None if token is None else f"Bearer {token}"


# Mostly tokens that get in, so that most requests reach the domain; a few that do not.
TOKENS: tuple[str | None, ...] = (
    ADMIN["Authorization"],
    ADMIN["Authorization"],
    ALICE["Authorization"],
    ALICE["Authorization"],
    ALICE["Authorization"],
    BOB["Authorization"],
    None,
    "Bearer not-a-jwt",
    bearer("alice", ttl=-60)["Authorization"],
    _header(tokens.mint("another-secret-" + "y" * 40, "admin", admin=True)),
    _header(jwt.encode({"sub": "al\x00ice", "exp": 2**31}, SECRET, algorithm="HS256")),
)

VALID_TOKENS = {ADMIN["Authorization"], ALICE["Authorization"], BOB["Authorization"]}
# Events that reads, reserves and transitions are pointed at, and the one event writes
# are pointed at (its seat H1 is held for the whole run, so replacing its seat list is
# refused with 409 unless the new list keeps H1): e1 and e2 keep their seats.
EVENTS = ("e1", "e2")
WRITTEN_EVENT = "e3"
SEATS = {"e1": [f"S{i:03d}" for i in range(300)], "e2": ["A1", "A2", "A3"], "e3": ["H1", "H2"]}


@dataclass
class World:
    """The app under fuzz and the ids that exist in it, which the hooks below put into
    generated requests (reservations made during the run are added as they come)."""

    app: Starlette
    sync: redis.Redis
    reservations: list[str] = field(default_factory=list)  # in any state
    holds: list[str] = field(default_factory=list)  # RESERVED when last seen
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)

    def remember(self, response: schemathesis.Response) -> None:
        if response.status_code not in (200, 201) or "/reservations" not in str(
            response.request.url
        ):
            return
        body = response.json()
        if body["id"] not in self.reservations:
            self.reservations.append(body["id"])
        if body["state"] == "RESERVED" and body["id"] not in self.holds:
            self.holds.append(body["id"])
        elif body["state"] != "RESERVED" and body["id"] in self.holds:
            self.holds.remove(body["id"])

    def replenish(self) -> None:
        """New holds when none is left: operations run one after the other, and by the
        time extend runs, confirm and cancel would have finished them all."""
        if self.holds:
            return
        taken = set(self.sync.hkeys(keys.event_keys("e1").claims))
        free = [s for s in SEATS["e1"] if s not in taken]
        with _client(self.app) as client:
            for who, seat in zip((ALICE, BOB, ADMIN), free, strict=False):
                body = {"eventId": "e1", "seatId": seat}
                response = client.post("/reservations", json=body, headers=who)
                if response.status_code == 201:  # else a customer is at the limit
                    self.reservations.append(response.json()["id"])
                    self.holds.append(response.json()["id"])


_world: World | None = None


def _client(app: Starlette) -> asgi.ASGIClient:
    """schemathesis' own in-process client: requests through the app's one lifespan."""
    return asgi.get_client(cast(Any, app))


def _seed(app: Starlette, sync: redis.Redis) -> list[str]:
    """Three events, and in e1 reservations in every state: alice's live holds (one and
    two seats), a confirmed one, a cancelled one, one past its time, and bob's hold."""
    made: list[str] = []
    with _client(app) as client:

        def reserve(seats: list[str], who: dict[str, str] = ALICE, event: str = "e1") -> str:
            body = {"eventId": event, "seatIds": seats}
            response = client.post("/reservations", json=body, headers=who)
            assert response.status_code == 201, response.text
            rid: str = response.json()["id"]
            return rid

        for event_id, seats in SEATS.items():
            body = {"name": f"Fuzz {event_id}", "seats": seats}
            response = client.put(f"/events/{event_id}", json=body, headers=ADMIN)
            assert response.status_code == 201, response.text
        reserve(["H1"], BOB, WRITTEN_EVENT)  # not in the pool: nobody lets it go
        made += [reserve(["S000"]), reserve(["S001", "S002"]), reserve(["S006"], BOB)]  # holds
        confirmed, cancelled, past = reserve(["S003"]), reserve(["S004"]), reserve(["S005"])
        made += [confirmed, cancelled, past]
        assert client.post(f"/reservations/{confirmed}/confirm", headers=ALICE).ok
        assert client.post(f"/reservations/{cancelled}/cancel", headers=ALICE).ok
    # A hold past its time, without waiting for it: moved back in Redis (README's key
    # schema), as a hold that nothing touched since it expired.
    k = keys.event_keys("e1")
    stored = json.loads(str(sync.hget(k.reservations, past)))
    stored["createdAt"] = stored["updatedAt"] = 1_000
    stored["expiresAt"] = 2_000
    sync.hset(k.reservations, past, json.dumps(stored))
    sync.zadd(k.holds, {past: 2_000})
    sync.zadd(keys.SWEEP_DUE, {"e1": 2_000})
    return made


@pytest.fixture(scope="module")
def fuzz_world() -> Iterator[World]:
    global _world
    sync = fakeredis.FakeRedis(server=FAKE_REDIS, decode_responses=True)
    sync.flushall()
    _world = World(APP, sync)
    _world.reservations += _seed(APP, sync)
    _world.holds += _world.reservations[:3]
    yield _world
    _world = None
    # schemathesis keeps the app's lifespan running until the process exits otherwise
    asgi.shutdown_lifespans()
    sync.close()


@dataclass(frozen=True)
class Swap:
    """What to put into one generated request. None: keep what was generated."""

    token: str | None
    event: str | None = None
    reservation: str | None = None
    seats: tuple[str, ...] | None = None


def _swap(case: Case, swap: Swap) -> None:
    case.headers = case.headers.copy()
    case.headers.pop("Authorization", None)
    if swap.token is not None:
        case.headers["Authorization"] = swap.token
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE:
        # A request that is invalid on purpose stays as generated: only valid ones are
        # pointed at things that exist.
        return
    writes = case.method.upper() == "PUT"
    params = dict(case.path_parameters)
    if swap.event is not None and "eventId" in params:
        params["eventId"] = WRITTEN_EVENT if writes else swap.event
    if swap.reservation is not None and "id" in params:
        params["id"] = swap.reservation
    case.path_parameters = params
    body = case.body
    if writes and isinstance(body, dict) and swap.event is not None and swap.seats is not None:
        # the generated seats and the held one: an update, not a 409
        kept = SEATS[WRITTEN_EVENT]
        generated = cast(list[str], body["seats"])
        case.body = {**body, "seats": [*kept, *(s for s in generated if s not in kept)]}
    elif isinstance(body, dict) and "eventId" in body and swap.event is not None:
        body = {**body, "eventId": swap.event}
        if swap.seats is not None:
            if body.get("seatIds") is not None:
                body["seatIds"] = list(swap.seats)
            elif body.get("seatId") is not None:
                body["seatId"] = swap.seats[0]
        case.body = body
    # Not in the coverage phase, whose query values are already strings for the wire:
    # schemathesis would check the edited query again and take limit="5" for a non-integer.
    coverage = meta.phase.name is TestPhase.COVERAGE
    if "cursor" in case.query and swap.seats is not None and not coverage:
        case.query = {**case.query, "cursor": swap.seats[0]}


def _mostly(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value that exists three times out of four, else None (keep the generated one).
    Hypothesis leans to the first branch, and shrinks towards it."""
    return st.one_of(values, values, values, st.none())


def _reservation(live: bool, index: int) -> str:
    assert _world is not None
    pool = (_world.holds if live else []) or _world.reservations
    return pool[-1 - index % len(pool)]


def _seats(event_id: str, free: bool, indexes: list[int]) -> tuple[str, ...]:
    """Seats of the event, free ones (at the time of drawing) or any."""
    assert _world is not None
    seats = SEATS[event_id]
    if free:
        taken = set(_world.sync.hkeys(keys.event_keys(event_id).claims))
        seats = [s for s in seats if s not in taken] or seats
    return tuple(dict.fromkeys(seats[i % len(seats)] for i in indexes))


def _swaps() -> st.SearchStrategy[Swap]:
    # The pools change during the run: an index into one (0: the latest) keeps the shape
    # of what hypothesis draws fixed, which it needs to replay and shrink.
    reservations = _mostly(st.builds(_reservation, st.booleans(), st.integers(0, 255)))

    def for_event(event: str | None) -> st.SearchStrategy[Swap]:
        indexes = st.lists(st.integers(0, 10**6), min_size=1, max_size=3)
        seats = st.builds(partial(_seats, event or "e1"), st.booleans(), indexes)
        return st.builds(
            Swap, st.sampled_from(TOKENS), st.just(event), reservations, _mostly(seats)
        )

    return _mostly(st.sampled_from(EVENTS)).flatmap(for_event)


def _swapped(case: Case, swap: Swap) -> Case:
    _swap(case, swap)
    return case


@SCHEMA.hook
@LONG_SCHEMA.hook
def flatmap_case(context: schemathesis.HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Fuzzing phase: hypothesis draws the token and the swaps (and shrinks them)."""
    if _world is None:  # an explicit example, built when the tests are collected
        return st.just(case)
    return _swaps().map(lambda swap: _swapped(case, swap))


def _fixed_swap(case: Case) -> Swap:
    """The swaps for a coverage-phase case (fixed boundary cases, built when the tests are
    collected, before any id exists): chosen from the case's own content, so each case
    keeps its choice from run to run."""
    assert _world is not None
    seed = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    event = EVENTS[seed % 2] if seed % 4 else None
    reservations = _world.reservations
    seats = SEATS[event or "e1"]
    first = seed % len(seats)
    return Swap(
        token=TOKENS[seed % len(TOKENS)],
        event=event,
        reservation=reservations[seed % len(reservations)] if seed % 4 else None,
        seats=tuple(seats[first : first + 1 + seed % 3]),
    )


def check_problem(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """Errors are problem+json with a code documented for their status, and a request
    that the description calls valid is never refused as invalid."""
    status = response.status_code
    assert status < 500, f"server error {status}: {response.text[:300]}"
    if status < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM), content_type
    body = json.loads(response.content)
    assert body["status"] == status, body
    assert body["code"] in ERROR_CODES[status], (status, body)
    assert body["type"].endswith("/" + body["code"]), body
    assert "Traceback" not in response.text
    meta = case.meta
    if meta is not None and meta.generation.mode is GenerationMode.POSITIVE:
        assert body["code"] != "validation_error", f"valid request refused: {body}"


def check_auth(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """Our tokens get in, the broken ones (and none) never do."""
    if case.operation.definition.raw.get("security") == []:
        return
    token = response.request.headers.get("Authorization")
    if token in VALID_TOKENS:
        assert response.status_code != 401, response.text
    elif response.status_code != 401:
        # Only a request that reached no handler may answer otherwise: a path parameter
        # with "/" in it, or a method the path does not take.
        assert response.status_code in (404, 405), response.text
        assert json.loads(response.content)["detail"] in ("Not Found", "Method Not Allowed")


def _fuzz(case: Case, world: World) -> None:
    if case.meta is not None and case.meta.phase.name is TestPhase.COVERAGE:
        _swap(case, _fixed_swap(case))
    world.replenish()
    # The hooks chose the token; given as the caller's own header, schemathesis takes it
    # for real credentials (a 2xx with one it generated itself would be "ignored auth"),
    # and its ignored_auth check tries the request again without it and with a bad one.
    token = case.headers.pop("Authorization", None)
    headers = None if token is None else {"Authorization": token}
    response = case.call_and_validate(
        headers=headers, additional_checks=[check_problem, check_auth]
    )
    world.remember(response)
    world.outcomes[case.operation.label, response.status_code] += 1


@SCHEMA.parametrize()
def test_schemathesis(case: Case, fuzz_world: World) -> None:
    _fuzz(case, fuzz_world)


@pytest.fixture(scope="module")  # hypothesis refuses function-scoped fixtures
def long_only(long_mode: bool) -> None:
    if not long_mode:
        pytest.skip("runs with --long")


@LONG_SCHEMA.parametrize()
def test_schemathesis_long(case: Case, fuzz_world: World, long_only: None) -> None:
    _fuzz(case, fuzz_world)


# These run after the fuzzing above (pytest keeps the order of the module).


def test_fuzzing_reached_real_states(fuzz_world: World) -> None:
    """The swaps worked: events were written, holds made, confirmed, cancelled and read."""
    if not fuzz_world.outcomes:
        pytest.skip("the schemathesis tests did not run")
    for label, status in [
        ("PUT /events/{eventId}", 200),
        ("GET /events/{eventId}", 200),
        ("GET /events/{eventId}/seats", 200),
        ("POST /reservations", 201),
        ("POST /reservations", 409),
        ("GET /reservations/{id}", 200),
        ("POST /reservations/{id}/confirm", 200),
        ("POST /reservations/{id}/cancel", 200),
    ]:
        assert fuzz_world.outcomes[label, status] > 0, (label, status)


def test_fuzzing_left_redis_consistent(fuzz_world: World) -> None:
    """Every counter, claim and index of the fuzzed events still adds up."""
    for event_id in SEATS:
        assert event_report(fuzz_world.sync, event_id).problems == []


def test_the_fuzzed_description_is_the_served_one(fuzz_world: World) -> None:
    with _client(fuzz_world.app) as client:
        served = client.get("/openapi.json").json()
    assert served == json.loads(json.dumps(DESCRIPTION))
    SCHEMA.validate()  # against the OpenAPI 3.1 meta-schema


# Part 2: hand-written bad inputs. Each answers a 4xx problem+json with a code documented
# for its status, and leaves Redis exactly as it was.

# Not on the cluster backend: nothing here reaches Redis, and fake and real show that.
on_fake_and_real = pytest.mark.parametrize("backend", ["fake", "real"], indirect=True)
JSON = {"content-type": "application/json"}
Headers = dict[str, str] | list[tuple[bytes, bytes]]


def assert_problem(response: Any, *statuses: int) -> str:
    """A clean problem+json error with one of `statuses` and a code documented for it."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == response.status_code
    assert body["code"] in ERROR_CODES[response.status_code], body
    assert body["type"].endswith("/" + body["code"]) and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    code: str = body["code"]
    return code


@dataclass
class Target:
    """An app on one backend, with an event e1 (seats A1-A3) and alice's hold on A1."""

    client: TestClient
    backend: Backend
    hold: str

    def refuses(
        self,
        method: str,
        path: str,
        *statuses: int,
        content: bytes | Iterator[bytes] | None = None,
        headers: Headers = ALICE,
    ) -> None:
        before = snapshot(self.backend.sync)
        response = self.client.request(method, path, content=content, headers=headers)
        code = assert_problem(response, *statuses)
        # a bad input, not a refused action (invalid_transition, limit_exceeded, ...)
        assert response.status_code != 400 or code == "validation_error", response.text
        assert snapshot(self.backend.sync) == before, f"{method} {path} wrote to Redis"


def _target(backend: Backend, **settings: Any) -> Iterator[Target]:
    app = create_app(make_settings(**settings), redis_factory=lambda _s: backend.make_async())
    with TestClient(app, raise_server_exceptions=False) as client:
        put_event(client, "e1", ["A1", "A2", "A3"])
        response = client.post(
            "/reservations", json={"eventId": "e1", "seatId": "A1"}, headers=ALICE
        )
        assert response.status_code == 201, response.text
        yield Target(client, backend, response.json()["id"])


@pytest.fixture
def target(backend: Backend) -> Iterator[Target]:
    yield from _target(backend)


MAX_BODY = 4096


@pytest.fixture
def small_target(backend: Backend) -> Iterator[Target]:
    yield from _target(backend, max_body_bytes=MAX_BODY)


def _bodies(t: Target) -> list[tuple[str, str, dict[str, str]]]:
    """Every endpoint that reads a body: method, path, and the token it needs."""
    return [
        ("PUT", "/events/e1", ADMIN),
        ("POST", "/reservations", ALICE),
        ("POST", f"/reservations/{t.hold}/extend", ALICE),
    ]


# Size and shape


@on_fake_and_real
def test_huge_bodies_are_413(small_target: Target) -> None:
    t = small_target
    huge = b'{"name": "x", "seats": [' + b'"A1", ' * MAX_BODY + b'"A2"]}'

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(MAX_BODY):
            yield b'"A1", '

    for method, path, who in _bodies(t):
        t.refuses(method, path, 413, content=huge, headers={**who, **JSON})
        t.refuses(method, path, 413, content=streamed(), headers={**who, **JSON})
        # a Content-Length far beyond the limit is refused before anything is read
        lying = {**who, **JSON, "content-length": str(10**12)}
        t.refuses(method, path, 413, content=b"{}", headers=lying)


@on_fake_and_real
def test_deeply_nested_json_is_400(target: Target) -> None:
    depth = 100_000
    for method, path, who in _bodies(target):
        for body in [
            b"[" * depth + b"]" * depth,
            b'{"a": ' * depth + b"1" + b"}" * depth,
            b'{"eventId": ' + b"[" * depth + b"]" * depth + b', "seatId": "A2"}',
            b'{"name": "x", "seats": [' + b"[" * depth + b"]" * depth + b"]}",
        ]:
            target.refuses(method, path, 400, content=body, headers={**who, **JSON})


@on_fake_and_real
def test_bodies_that_are_not_json_are_415(target: Target) -> None:
    body = b'{"eventId": "e1", "seatId": "A2"}'
    for method, path, who in _bodies(target):
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/jsonx",
            "json",
            "",
        ]:
            headers = {**who, "content-type": content_type}
            target.refuses(method, path, 415, content=body, headers=headers)


@on_fake_and_real
def test_broken_encodings_are_400(target: Target) -> None:
    for body in [
        b'{"eventId": "e1", "seatId": "\xff"}',  # not UTF-8
        b'{"eventId": "e1", "seatId": "\xc0\xaf"}',  # overlong "/"
        b'{"eventId": "e1", "seatId": "\\ud800"}',  # lone surrogate
        b'{"eventId": "e1", "seatId": "\xed\xa0\x80"}',  # surrogate, UTF-8 encoded
        '{"eventId": "e1", "seatId": "A2"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"eventId": "e1", "seatId": "A2"}',  # BOM
        b'{"eventId": "e1", "seatId": "A2"',  # cut short
        b"",
        b"null",
        b'"e1"',
    ]:
        target.refuses("POST", "/reservations", 400, content=body, headers={**ALICE, **JSON})


# Ids: control characters, NUL, unicode, percent-encoded bytes


BAD_IDS = [
    "e1\x00",
    "\x00",
    "e1\n",
    "e\x7f1",
    "\u202ee1",  # right-to-left override
    "é1",
    "e1\u200b",  # zero-width space
    "🎫",
    " e1",
    "e1 ",
    "-e1",
    "e" * 65,
    "",
]


@on_fake_and_real
def test_bad_ids_in_paths(target: Target) -> None:
    from urllib.parse import quote

    for bad in [*BAD_IDS[:-1], "%FF", "%C0%AF"]:
        event = bad if bad.startswith("%") else quote(bad, safe="")
        target.refuses("GET", f"/events/{event}", 400, headers=ALICE)
        target.refuses("GET", f"/events/{event}/seats", 400, headers=ALICE)
        target.refuses("GET", f"/ui/events/{event}", 400, headers={})
        target.refuses("GET", f"/ui/events/{event}/seats", 400, headers=ADMIN)
        body = json.dumps({"name": "X", "seats": ["A1"]}).encode()
        target.refuses("PUT", f"/events/{event}", 400, content=body, headers={**ADMIN, **JSON})
    # reservation ids: whatever was never issued is not found
    for bad in [*BAD_IDS[:-1], "ZQA." + "a" * 22, "%FF." + "a" * 22, target.hold + "\x00"]:
        rid = bad if bad.startswith("%") else quote(bad, safe="")
        target.refuses("GET", f"/reservations/{rid}", 404, headers=ALICE)
        for action in ("confirm", "cancel"):
            target.refuses("POST", f"/reservations/{rid}/{action}", 404, headers=ALICE)
        body = b'{"seconds": 60}'
        extend = f"/reservations/{rid}/extend"
        target.refuses("POST", extend, 404, content=body, headers={**ALICE, **JSON})


@on_fake_and_real
def test_bad_seat_ids_in_bodies(target: Target) -> None:
    for bad in BAD_IDS:
        for body in [
            {"eventId": "e1", "seatId": bad},
            {"eventId": "e1", "seatIds": ["A2", bad]},
            {"eventId": bad, "seatId": "A2"},
        ]:
            content = json.dumps(body).encode()
            target.refuses("POST", "/reservations", 400, content=content, headers={**ALICE, **JSON})
        content = json.dumps({"name": "X", "seats": ["A1", bad]}).encode()
        target.refuses("PUT", "/events/e1", 400, content=content, headers={**ADMIN, **JSON})


@on_fake_and_real
def test_bad_subjects_in_tokens_are_401(target: Target) -> None:
    body = b'{"eventId": "e1", "seatId": "A2"}'
    for sub in ["al\x00ice", "ålice", "al ice", "alice\n", "", "a" * 129, 42, None, ["alice"]]:
        claims = {"sub": sub, "exp": 2**31, "scope": "seatres:admin"}
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        auth = {"Authorization": f"Bearer {token}"}
        target.refuses("GET", "/events/e1", 401, headers=auth)
        target.refuses("POST", "/reservations", 401, content=body, headers={**auth, **JSON})
        target.refuses("POST", f"/reservations/{target.hold}/cancel", 401, headers=auth)
    for raw in [b"Bearer \xff\xfe", b"Bearer a\x00b", b"Bearer " + b"a" * 100_000, b"\x00"]:
        target.refuses("GET", "/events/e1", 401, headers=[(b"authorization", raw)])


@on_fake_and_real
def test_bad_idempotency_keys_are_400(target: Target) -> None:
    reserve = b'{"eventId": "e1", "seatId": "A2"}'
    for key in [b"", b"k\x00", b"k\n", b"k\tk", b"k\x7f", "ключ".encode(), b"\xff", b"k" * 256]:
        for path, body in [
            ("/reservations", reserve),
            (f"/reservations/{target.hold}/confirm", None),
            (f"/reservations/{target.hold}/cancel", None),
            (f"/reservations/{target.hold}/extend", b'{"seconds": 60}'),
        ]:
            headers = [
                (b"authorization", ALICE["Authorization"].encode()),
                (b"content-type", b"application/json"),
                (b"idempotency-key", key),
            ]
            target.refuses("POST", path, 400, content=body, headers=headers)


@on_fake_and_real
def test_ten_thousand_seats_in_one_reserve_is_400(target: Target) -> None:
    body = json.dumps({"eventId": "e1", "seatIds": [f"S{i}" for i in range(10_000)]})
    headers = {**ALICE, **JSON}
    target.refuses("POST", "/reservations", 400, content=body.encode(), headers=headers)


# Numbers, repeated members, extra members, nulls


@on_fake_and_real
def test_bad_extension_seconds_are_400(target: Target) -> None:
    path = f"/reservations/{target.hold}/extend"
    for seconds in [
        b"-1",
        b"0",
        b"-0.0",
        b"0.5",
        b"1.5",
        b"86401",
        b"1e308",
        b"-1e308",
        b"1e999",
        str(2**64).encode(),
        b"1" + b"0" * 400,
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'"60"',
        b'""',
        b"true",
        b"null",
        b"[]",
        b"{}",
    ]:
        body = b'{"seconds": ' + seconds + b"}"
        target.refuses("POST", path, 400, content=body, headers={**ALICE, **JSON})


@on_fake_and_real
def test_a_whole_number_written_with_a_point_is_a_whole_number(target: Target) -> None:
    """JSON (and JSON Schema's "integer") makes no difference between 60 and 60.0."""
    path = f"/reservations/{target.hold}/extend"
    response = target.client.post(path, content=b'{"seconds": 60.0}', headers={**ALICE, **JSON})
    assert response.status_code == 200, response.text


@on_fake_and_real
def test_repeated_members_are_400(target: Target) -> None:
    """pydantic would take the last one, other parsers the first: refused."""
    for method, path, body, who in [
        ("POST", "/reservations", b'{"eventId": "e1", "seatId": "A2", "seatId": "A3"}', ALICE),
        ("POST", "/reservations", b'{"eventId": "e1", "eventId": "e1", "seatId": "A2"}', ALICE),
        ("PUT", "/events/e1", b'{"name": "a", "name": "b", "seats": ["A1"]}', ADMIN),
        ("PUT", "/events/e1", b'{"seats": ["A9"], "name": "a", "seats": ["A1"]}', ADMIN),
        ("POST", f"/reservations/{target.hold}/extend", b'{"seconds": 1, "seconds": 60}', ALICE),
        # the same member spelled with an escape the second time
        (
            "POST",
            "/reservations",
            b'{"eventId": "e1", "seatId": "A2", "seat\\u0049d": "A3"}',
            ALICE,
        ),
    ]:
        target.refuses(method, path, 400, content=body, headers={**who, **JSON})


@on_fake_and_real
def test_extra_members_are_400(target: Target) -> None:
    for method, path, body, who in [
        ("POST", "/reservations", {"eventId": "e1", "seatId": "A2", "customerId": "bob"}, ALICE),
        ("POST", "/reservations", {"eventId": "e1", "seatId": "A2", "state": "CONFIRMED"}, ALICE),
        ("PUT", "/events/e1", {"name": "X", "seats": ["A1"], "admin": True}, ADMIN),
        ("POST", f"/reservations/{target.hold}/extend", {"seconds": 60, "expiresAt": 0}, ALICE),
    ]:
        content = json.dumps(body).encode()
        target.refuses(method, path, 400, content=content, headers={**who, **JSON})


@on_fake_and_real
def test_null_where_a_string_belongs_is_400(target: Target) -> None:
    for method, path, body, who in [
        ("POST", "/reservations", {"eventId": None, "seatId": "A2"}, ALICE),
        ("POST", "/reservations", {"eventId": "e1", "seatId": None}, ALICE),
        ("POST", "/reservations", {"eventId": "e1", "seatIds": [None]}, ALICE),
        ("POST", "/reservations", {"eventId": "e1", "seatId": None, "seatIds": None}, ALICE),
        ("PUT", "/events/e1", {"name": None, "seats": ["A1"]}, ADMIN),
        ("PUT", "/events/e1", {"name": "X", "seats": None}, ADMIN),
        ("PUT", "/events/e1", {"name": "X", "seats": ["A1", None]}, ADMIN),
        ("POST", f"/reservations/{target.hold}/extend", {"seconds": None}, ALICE),
    ]:
        content = json.dumps(body).encode()
        target.refuses(method, path, 400, content=content, headers={**who, **JSON})


@on_fake_and_real
def test_page_limits_are_plain_integers(target: Target) -> None:
    """int() also reads these; as a query parameter none is an integer."""
    for limit in ["1_0", "+5", "%205", "5%20", "%D9%A5", "%EF%BC%95", "0x10", "1e2", "5.0"]:
        target.refuses("GET", f"/events/e1/seats?limit={limit}", 400, headers=BOB)
        target.refuses("GET", f"/ui/events/e1/seats?limit={limit}", 400, headers=ADMIN)
    for cursor in ["%00", "A1%00", "%FF", "a" * 65, "%E2%80%AE"]:
        target.refuses("GET", f"/events/e1/seats?cursor={cursor}", 400, headers=BOB)


@on_fake_and_real
def test_405_names_every_method_of_the_path(target: Target) -> None:
    response = target.client.request("DELETE", "/events/e1", headers=ADMIN)
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD, PUT"

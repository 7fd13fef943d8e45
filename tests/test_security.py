"""Security checks, on fakeredis and on a real Redis: tokens that must not get in (401),
customers on admin endpoints (403), someone else's reservation (404, and nothing changes in
Redis, Idempotency-Key or not), unguessable reservation ids, and event / seat / customer
ids that cannot reach outside their place in the key schema or the Lua scripts.

tests/test_api_contract.py already covers the plain cases (no token, "Basic", a token that
is not a JWT, one expired a minute ago, a tampered signature, another secret, confirm and
cancel of someone else's reservation, a forged id); these go further."""

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import quote

import jwt
import orjson
import pytest
import redis
from starlette.testclient import TestClient

from seatres import tokens
from seatres.domain import ids
from seatres.http.openapi import openapi_document
from seatres.store import keys
from tests.conftest import ADMIN, ALICE, BOB, SECRET, Backend, put_event
from tests.test_api_contract import PROBLEM, assert_problem

EVENT = "e1"
OTHER_EVENT = "e2"
SEATS = ["A1", "A2", "A3", "A4", "B1"]

# Every key the service may write, as README.md "Key schema" documents it.
_ID = r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}"
KEY_SCHEMA = re.compile(
    rf"seatres:\{{evt:(?P<event>{_ID})\}}:"
    rf"(?:meta|seats|claims|reservations|holds|customers|log|idem:[0-9a-f]{{32}}|claim:{_ID})"
    r"|seatres:\{sweep\}:(?:due|claimed|stats)"
    r"|seatres:\{index\}:events"
)


# Helpers


Snapshot = dict[str, tuple[str, Any, bool]]


def snapshot(sync: redis.Redis) -> Snapshot:
    """Every key of the database with its type, whole value and whether it has a TTL
    (not the TTL itself, which moves on by itself)."""
    readers: dict[str, Callable[[str], Any]] = {
        "string": sync.get,
        "hash": sync.hgetall,
        "zset": lambda k: sync.zrange(k, 0, -1, withscores=True),
        "set": lambda k: sorted(sync.smembers(k)),
        "list": lambda k: sync.lrange(k, 0, -1),
        "stream": sync.xrange,
    }
    shot: Snapshot = {}
    for key in sorted(sync.scan_iter(count=1000)):
        kind = sync.type(key)
        shot[key] = (kind, readers[kind](key), sync.pttl(key) > 0)
    return shot


def assert_keys_follow_the_schema(sync: redis.Redis, events: set[str]) -> None:
    """SCAN the database: each key matches the documented schema, and the only events
    that have keys are the ones the test made."""
    seen: set[str] = set()
    for key in sync.scan_iter(count=1000):
        match = KEY_SCHEMA.fullmatch(key)
        assert match is not None, f"key outside the schema: {key!r}"
        if match["event"] is not None:
            seen.add(match["event"])
    assert seen <= events, seen - events
    assert sync.smembers(keys.EVENTS) <= events


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(part: object) -> str:
    """A JWT header or payload segment; a str is taken as raw JSON text (for what
    json.dumps would not write: duplicate members, Infinity, huge numbers)."""
    raw = part.encode() if isinstance(part, str) else orjson.dumps(part)
    return b64url(raw)


def hand_token(
    header: object,
    payload: object,
    key: bytes = SECRET.encode(),
    digest: str = "sha256",
) -> str:
    """A JWT built by hand: any header, any payload, HMAC-signed with `key`."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "alice", "iat": now, "exp": now + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()  # claims(sub=_DROP): the claim is left out
HS256 = {"alg": "HS256", "typ": "JWT"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reserve(client: TestClient, seat: str, who: dict[str, str], key: str | None = None) -> Any:
    headers = who if key is None else {**who, "Idempotency-Key": key}
    return client.post("/reservations", json={"eventId": EVENT, "seatId": seat}, headers=headers)


def held(client: TestClient, seat: str, who: dict[str, str] = ALICE, key: str | None = None) -> str:
    response = reserve(client, seat, who, key)
    assert response.status_code == 201, response.text
    rid: str = response.json()["id"]
    return rid


@pytest.fixture
def event(client: TestClient) -> str:
    put_event(client, EVENT, SEATS)
    put_event(client, OTHER_EVENT, SEATS)
    return EVENT


# 401: tokens that must not get in


def _none_token(payload: dict[str, object], alg: str = "none") -> str:
    return f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(payload)}."


def _swapped_payload() -> str:
    """alice's genuine signature over a payload that now claims the admin scope."""
    genuine = jwt.encode(claims(), SECRET, algorithm="HS256")
    head, _payload, signature = genuine.split(".")
    return f"{head}.{segment(claims(scope='seatres:admin'))}.{signature}"


def _now() -> int:
    return int(time.time())


def _good() -> str:
    return hand_token(HS256, claims())


Maker = Callable[[], str]


def _bad_token_makers() -> list[Any]:
    """Factories, not tokens: their times are taken when the test runs, not at collection."""
    makers: list[tuple[str, Maker]] = [
        ("alg-none-unsigned", lambda: _none_token(claims())),
        ("alg-None-unsigned", lambda: _none_token(claims(), "None")),
        ("alg-NONE-unsigned", lambda: _none_token(claims(), "NONE")),
        ("alg-none-with-hs256-signature", lambda: hand_token({"alg": "none"}, claims())),
        ("no-alg", lambda: hand_token({"typ": "JWT"}, claims())),
        # Right key, another HMAC: only HS256 is accepted.
        ("HS384-right-key", lambda: hand_token({"alg": "HS384"}, claims(), digest="sha384")),
        ("HS512-right-key", lambda: hand_token({"alg": "HS512"}, claims(), digest="sha512")),
        ("alg-lowercase", lambda: hand_token({"alg": "hs256"}, claims())),
        ("key-one-short", lambda: hand_token(HS256, claims(), key=SECRET[:-1].encode())),
        ("empty-key", lambda: hand_token(HS256, claims(), key=b"")),
        ("no-signature", lambda: _good().rsplit(".", 1)[0] + "."),
        ("payload-swapped-under-signature", _swapped_payload),
        # Time
        ("expired-past-leeway", lambda: hand_token(HS256, claims(exp=_now() - 10))),
        ("no-exp", lambda: hand_token(HS256, claims(exp=_DROP))),
        ("exp-null", lambda: hand_token(HS256, claims(exp=None))),
        ("exp-not-a-number", lambda: hand_token(HS256, claims(exp="soon"))),
        ("exp-a-numeric-string", lambda: hand_token(HS256, claims(exp=str(_now() + 600)))),
        ("nbf-a-numeric-string", lambda: hand_token(HS256, claims(nbf=str(_now() - 60)))),
        ("iat-a-numeric-string", lambda: hand_token(HS256, claims(iat=str(_now() - 60)))),
        ("exp-true", lambda: hand_token(HS256, claims(exp=True))),
        ("exp-infinity", lambda: hand_token(HS256, '{"sub": "alice", "exp": Infinity}')),
        ("exp-NaN", lambda: hand_token(HS256, '{"sub": "alice", "exp": NaN}')),
        ("exp-400-digits", lambda: hand_token(HS256, '{"sub": "a", "exp": 1' + "0" * 400 + "}")),
        ("nbf-in-the-future", lambda: hand_token(HS256, claims(nbf=_now() + 120))),
        ("iat-in-the-future", lambda: hand_token(HS256, claims(iat=_now() + 120))),
        # Subjects
        ("no-sub", lambda: hand_token(HS256, claims(sub=_DROP))),
        # Not a JWT at all
        ("two-segments", lambda: _good().rsplit(".", 1)[0]),
        ("four-segments", lambda: _good() + ".x"),
        ("trailing-word", lambda: _good() + " extra"),
        ("payload-a-list", lambda: hand_token(HS256, "[1, 2]")),
        ("payload-not-json", lambda: hand_token(HS256, "{not json")),
        ("header-a-list", lambda: hand_token("[]", claims())),
        ("16k-of-junk", lambda: "a" * 16_000),
        ("empty-segments", lambda: ".."),
    ]
    # Algorithm confusion: an asymmetric header "verified" with the shared HS key.
    for alg in ("RS256", "ES256", "PS256", "EdDSA"):
        makers.append((f"{alg}-hs-signed", partial(_with_alg, alg)))
    for sub, name in [
        ("", "empty"),
        (None, "null"),
        (42, "number"),
        (["alice"], "list"),
        ({"id": "alice"}, "object"),
        (" alice", "leading-space"),
        ("al ice", "inner-space"),
        ("alice\n", "newline"),
        ("alice\x00", "nul"),
        ("alice\x7f", "del"),
        ("ålice", "non-ascii"),
        ("a" * 129, "129-chars"),
    ]:
        makers.append((f"sub-{name}", partial(_with_sub, sub)))
    return [pytest.param(make, id=name) for name, make in makers]


def _with_alg(alg: str) -> str:
    return hand_token({"alg": alg, "typ": "JWT"}, claims())


def _with_sub(sub: object) -> str:
    return hand_token(HS256, claims(sub=sub))


def test_hand_built_tokens_are_accepted_when_right(client: TestClient, event: str) -> None:
    """The builder is sound: what the 401 cases change is the only thing wrong with them."""
    token = hand_token(HS256, claims(sub="carol"))
    shown = client.get(f"/events/{EVENT}", headers=auth(token))
    assert shown.status_code == 200, shown.text
    made = reserve(client, "A1", auth(token))
    assert made.status_code == 201 and made.json()["customerId"] == "carol"
    admin = hand_token(HS256, claims(sub="root", scope="openid seatres:admin"))
    updated = client.put(
        f"/events/{EVENT}", json={"name": "Renamed", "seats": SEATS}, headers=auth(admin)
    )
    assert updated.status_code == 200, updated.text


@pytest.mark.parametrize("make", _bad_token_makers())
def test_bad_token_is_401_and_changes_nothing(
    client: TestClient, backend: Backend, event: str, make: Maker
) -> None:
    token = make()
    rid = held(client, "A2")
    before = snapshot(backend.sync)
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/reservations", {"eventId": EVENT, "seatId": "A1"}),
        ("GET", f"/events/{EVENT}", None),
        ("GET", f"/reservations/{rid}", None),
        ("POST", f"/reservations/{rid}/cancel", None),
        ("PUT", f"/events/{EVENT}", {"name": "Taken over", "seats": ["Z9"]}),
    ]
    for method, path, body in requests:
        response = client.request(method, path, json=body, headers=auth(token))
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert snapshot(backend.sync) == before


def test_token_valid_once_is_refused_after_it_expires(client: TestClient, event: str) -> None:
    """Verified tokens are cached: the cache must not outlive the token."""
    # 2 s left, counting the grace (leeway) an expired token still gets
    token = hand_token(HS256, claims(exp=time.time() - tokens.LEEWAY_SECONDS + 2.0))
    assert client.get(f"/events/{EVENT}", headers=auth(token)).status_code == 200
    time.sleep(2.2)
    assert_problem(client.get(f"/events/{EVENT}", headers=auth(token)), 401, "unauthorized")


def _authenticated_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation that needs a token, from the OpenAPI document
    (so an endpoint added later is checked too)."""
    document = openapi_document()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and operation.get("security") != []:
                found.append((method.upper(), path))
    return found


def _concrete(path: str, rid: str) -> str:
    return path.replace("{eventId}", EVENT).replace("{id}", rid)


def test_every_authenticated_endpoint_refuses_missing_and_unsigned_tokens(
    client: TestClient, backend: Backend, event: str
) -> None:
    operations = _authenticated_operations()
    assert ("PUT", "/events/{eventId}") in operations and len(operations) >= 9
    rid = held(client, "A3")
    before = snapshot(backend.sync)
    unsigned = _none_token(claims(sub="admin", scope="seatres:admin"))
    for method, path in operations:
        body = {"seconds": 60} if path.endswith("/extend") else None
        for headers in ({}, auth(unsigned), {"Authorization": f"bearer {unsigned}"}):
            response = client.request(method, _concrete(path, rid), json=body, headers=headers)
            assert_problem(response, 401, "unauthorized")
    assert snapshot(backend.sync) == before


# 403: customers on admin endpoints


def _admin_operations() -> list[tuple[str, str]]:
    """Operations that document a 403: the admin-only ones."""
    document = openapi_document()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict) and "403" in operation.get("responses", {})
    ]


def _customer_token_makers() -> list[Any]:
    """Customers, however admin they may look (factories: times taken at run time)."""
    variants: list[tuple[str, dict[str, object]]] = [
        ("plain-customer", {}),
        ("sub-admin", {"sub": "admin"}),
        ("scope-prefix", {"scope": "seatres:admin2"}),
        ("scope-case", {"scope": "Seatres:Admin"}),
        ("scope-part", {"scope": "seatres"}),
        ("scope-as-list", {"scope": ["seatres:admin"]}),
        ("scope-joined", {"scope": "openid,seatres:admin"}),
        ("scp-claim", {"scp": "seatres:admin"}),
        ("scopes-claim", {"scopes": ["seatres:admin"]}),
        ("role-claim", {"role": "admin", "admin": True}),
    ]
    return [pytest.param(partial(_with_claims, extra), id=name) for name, extra in variants]


def _with_claims(extra: dict[str, object]) -> str:
    return hand_token(HS256, claims(**extra))


def test_the_admin_endpoints_are_the_documented_ones() -> None:
    assert sorted(_admin_operations()) == [
        ("GET", "/ui/events/{eventId}/seats"),
        ("PUT", "/events/{eventId}"),
    ]


@pytest.mark.parametrize("make", _customer_token_makers())
def test_customer_token_on_every_admin_endpoint_is_403(
    client: TestClient, backend: Backend, event: str, make: Maker
) -> None:
    who = auth(make())
    held(client, "A1")
    before = snapshot(backend.sync)
    bodies = {"PUT": {"name": "Mine now", "seats": ["A1"]}}
    for method, path in _admin_operations():
        for event_id in (EVENT, "not-there-yet"):
            url = path.replace("{eventId}", event_id)
            response = client.request(method, url, json=bodies.get(method), headers=who)
            assert_problem(response, 403, "forbidden")
    assert snapshot(backend.sync) == before
    assert client.get(f"/events/{EVENT}", headers=ADMIN).json()["name"] == "Show"


# 404: someone else's reservation, and nothing changes


def test_someone_elses_reservation_is_404_everywhere_and_redis_is_untouched(
    client: TestClient, backend: Backend, event: str
) -> None:
    """Bob tries every reservation endpoint on alice's reservations in each state (live,
    confirmed, cancelled): without an Idempotency-Key, with keys of his own, and sending
    alice's exact requests with alice's keys, which must not replay her answers."""
    extend_body = {"seconds": 60}
    owners: list[tuple[str, str, Any, str]] = []  # alice's keyed requests: method, path, body, key

    def alice(method: str, path: str, body: Any, key: str) -> Any:
        response = client.request(
            method, path, json=body, headers={**ALICE, "Idempotency-Key": key}
        )
        assert response.status_code in (200, 201), response.text
        owners.append((method, path, body, key))
        return response.json()

    live = alice("POST", "/reservations", {"eventId": EVENT, "seatId": "A1"}, "k-reserve")["id"]
    alice("POST", f"/reservations/{live}/extend", extend_body, "k-extend")
    confirmed = held(client, "A2")
    alice("POST", f"/reservations/{confirmed}/confirm", None, "k-confirm")
    cancelled = held(client, "A3")
    alice("POST", f"/reservations/{cancelled}/cancel", None, "k-cancel")
    alices = (live, confirmed, cancelled)

    def nothing_of_alices(response: Any) -> None:
        assert not any(rid in response.text for rid in alices), response.text
        assert "alice" not in response.text

    def bob_gets_404(keyed: bool) -> None:
        for n, rid in enumerate(alices):
            for method, action, body in (
                ("GET", "", None),
                ("POST", "/confirm", None),
                ("POST", "/cancel", None),
                ("POST", "/extend", extend_body),
            ):
                headers = dict(BOB)
                if keyed and method == "POST":  # a key of his own for each request
                    headers["Idempotency-Key"] = f"k-bob-{n}{action.replace('/', '-')}"
                response = client.request(
                    method, f"/reservations/{rid}{action}", json=body, headers=headers
                )
                assert_problem(response, 404, "not_found")
                nothing_of_alices(response)

    before = snapshot(backend.sync)
    bob_gets_404(keyed=False)
    assert snapshot(backend.sync) == before

    bob_gets_404(keyed=True)
    # Alice's exact requests with alice's keys, twice (the second finds bob's own record).
    for _ in range(2):
        for method, path, body, key in owners:
            response = client.request(
                method, path, json=body, headers={**BOB, "Idempotency-Key": key}
            )
            if path == "/reservations":
                assert_problem(response, 409, "seat_unavailable")  # A1 is alice's hold
            else:
                assert_problem(response, 404, "not_found")
            nothing_of_alices(response)

    # Alice's data is as it was. The only new key is bob's own record of his refused
    # reserve (409, remembered under his name, holding none of alice's data): a 404 is
    # never remembered, so forged or foreign ids leave nothing behind.
    after = snapshot(backend.sync)
    assert {k: after[k] for k in before} == before
    added = set(after) - set(before)
    reserve_keys = [key for _, path, _, key in owners if path == "/reservations"]
    assert added == {keys.idempotency_key(EVENT, "bob", key) for key in reserve_keys}
    for key in added:
        assert KEY_SCHEMA.fullmatch(key) and ":idem:" in key
        assert not any(rid in after[key][1] for rid in alices)
        assert "alice" not in after[key][1]

    # ...and alice still gets her own answers back.
    for rid, state in zip(alices, ("RESERVED", "CONFIRMED", "CANCELLED"), strict=True):
        assert client.get(f"/reservations/{rid}", headers=ALICE).json()["state"] == state
    for method, path, body, key in owners:
        replay = client.request(method, path, json=body, headers={**ALICE, "Idempotency-Key": key})
        assert replay.status_code in (200, 201), replay.text
        assert replay.headers["idempotent-replayed"] == "true"


def test_admin_is_not_the_owner_for_extend(
    client: TestClient, backend: Backend, event: str
) -> None:
    """README: extend is owner only (an extension is the customer's decision)."""
    rid = held(client, "A1")
    before = snapshot(backend.sync)
    response = client.post(f"/reservations/{rid}/extend", json={"seconds": 60}, headers=ADMIN)
    assert_problem(response, 404, "not_found")
    assert snapshot(backend.sync) == before


# Reservation ids are unguessable


def _random_part(rid: str) -> str:
    prefix, dot, random_part = rid.partition(".")
    assert dot and prefix
    return random_part


def _decoded(random_part: str) -> bytes:
    return base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))


def test_reservation_id_random_part_comes_from_secrets_with_at_least_122_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Structurally: the random part is what secrets (the OS CSPRNG) returns, asked for
    at least 16 bytes, and nothing else."""
    asked: list[int | None] = []
    real = secrets.token_urlsafe

    def recording(nbytes: int | None = None) -> str:
        asked.append(nbytes)
        return real(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", recording)  # what ids calls
    rid = ids.new_reservation_id("gala")
    assert len(asked) == 1 and asked[0] is not None and asked[0] * 8 >= 122
    assert rid.startswith(b64url(b"gala") + ".")
    assert len(_decoded(_random_part(rid))) == asked[0]


def test_reservation_ids_are_random_statistically() -> None:
    """20,000 ids: all distinct; each random part is 22 URL-safe characters carrying
    exactly 128 bits; every one of those bits is set about half the time; every character
    position but the last (2 bits) uses the whole alphabet."""
    n = 20_000
    made = [ids.new_reservation_id("gala") for _ in range(n)]
    assert len(set(made)) == n
    parts = [_random_part(rid) for rid in made]
    assert {rid.partition(".")[0] for rid in made} == {b64url(b"gala")}
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(p) == 22 and set(p) <= alphabet for p in parts)
    raw = [_decoded(p) for p in parts]
    assert all(len(r) == 16 and b64url(r) == p for r, p in zip(raw, parts, strict=True))
    assert len(set(raw)) == n
    # Each bit is a fair coin: 6 standard deviations is far outside chance for 128 bits.
    ones = Counter[int]()
    for r in raw:
        value = int.from_bytes(r, "big")
        for bit in range(128):
            if value >> bit & 1:
                ones[bit] += 1
    limit = 6 * (n * 0.25) ** 0.5
    assert all(abs(ones[bit] - n / 2) < limit for bit in range(128)), ones
    for position in range(21):
        assert {p[position] for p in parts} == alphabet, position
    assert {p[21] for p in parts} == set("AQgw")  # the last 2 bits of the 128


@pytest.fixture
def issued(client: TestClient, event: str) -> list[str]:
    made = [held(client, seat) for seat in SEATS[:4]]
    for rid in made:
        assert ids.event_of_reservation(rid) == EVENT
    return made


def test_ids_issued_by_the_api_are_distinct_and_well_formed(issued: list[str]) -> None:
    assert len(set(issued)) == len(issued)
    for rid in issued:
        prefix, _, random_part = rid.partition(".")
        assert prefix == b64url(EVENT.encode())
        assert len(_decoded(random_part)) == 16


def _mutations(rid: str) -> Iterator[str]:
    prefix, _, random_part = rid.partition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(random_part):
        other = alphabet[(alphabet.index(ch) + 1) % 64]
        yield f"{prefix}.{random_part[:i]}{other}{random_part[i + 1 :]}"
    # The last character carries 2 bits: these aliases decode to the same 16 bytes.
    last = alphabet.index(random_part[-1])
    for alias in range(last - last % 16, last - last % 16 + 16):
        if alias != last:
            yield f"{prefix}.{random_part[:-1]}{alphabet[alias]}"
    yield f"{prefix}.{random_part.swapcase()}"
    yield f"{prefix}.{random_part[:-1]}"
    yield f"{prefix}.{random_part}A"
    yield f"{prefix}.{random_part}=="
    yield f"{prefix}=.{random_part}"
    yield f"{prefix[:2]}!{prefix[2:]}.{random_part}"  # b64decode would skip the "!"
    yield f"{prefix}.{random_part}.{random_part}"
    yield f"{prefix}..{random_part}"
    yield f"{b64url(OTHER_EVENT.encode())}.{random_part}"  # the same random part, elsewhere
    yield f"{prefix.swapcase()}.{random_part}"
    yield f".{random_part}"
    yield f"{prefix}."
    yield random_part


def test_mutated_or_guessed_ids_are_404_and_change_nothing(
    client: TestClient, backend: Backend, issued: list[str]
) -> None:
    before = snapshot(backend.sync)
    rid = issued[0]
    guesses = [f"{b64url(EVENT.encode())}.{secrets.token_urlsafe(16)}" for _ in range(100)]
    for candidate in [*_mutations(rid), *guesses]:
        assert candidate not in issued
        path = f"/reservations/{quote(candidate, safe='')}"
        assert_problem(client.get(path, headers=ALICE), 404, "not_found")
        assert_problem(client.get(path, headers=ADMIN), 404, "not_found")
    for candidate in list(_mutations(rid))[::3]:
        path = f"/reservations/{quote(candidate, safe='')}"
        for action, body in (("confirm", None), ("cancel", None), ("extend", {"seconds": 5})):
            response = client.post(f"{path}/{action}", json=body, headers=ALICE)
            assert_problem(response, 404, "not_found")
    assert snapshot(backend.sync) == before
    assert client.get(f"/reservations/{rid}", headers=ALICE).json()["state"] == "RESERVED"


# Ids cannot inject into Redis keys or Lua


BAD_IDS = [
    "}",
    "{",
    "a}b",
    "a{b",
    "}:meta",
    "x}:seats:{evt:y",
    "{sweep}",
    "evt:x",
    "a:b",
    "*",
    "a*",
    "?",
    "[a-z]",
    "a b",
    " a",
    "a ",
    '"',
    'a"b',
    "a'b",
    "a\nb",
    "a\n",
    "a\r\nFLUSHALL\r\n",
    "a\x00b",
    "\x00",
    "a\tb",
    "a\\b",
    "a.b",
    "..",
    "-a",
    "_a",
    "a%b",
    "é",
    "a\u2028b",
    "]]..redis.call('FLUSHALL')..[[",
    "'); redis.call('flushall') --",
    "\" .. redis.call('FLUSHALL') .. \"",
    "a" * 65,
]


@pytest.fixture
def shaped(client: TestClient, backend: Backend) -> Iterator[tuple[TestClient, Backend]]:
    """An event with a hold, a booking and an idempotency record: the keys whose
    neighbourhood an injected id would try to reach."""
    put_event(client, EVENT, SEATS)
    rid = held(client, "A1", key="k")
    client.post(f"/reservations/{rid}/confirm", headers=ALICE)
    held(client, "A2", BOB)
    yield client, backend
    assert_keys_follow_the_schema(backend.sync, {EVENT})


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_ids_are_400_and_reach_no_key(shaped: tuple[TestClient, Backend], bad: str) -> None:
    client, backend = shaped
    before = snapshot(backend.sync)
    # quote() leaves "." alone, and a client would resolve a ".." segment away.
    in_path = quote(bad, safe="").replace(".", "%2E")
    refused: list[tuple[str, str, Any, dict[str, str]]] = [
        ("PUT", f"/events/{in_path}", {"name": "X", "seats": ["A1"]}, ADMIN),
        ("PUT", f"/events/{EVENT}", {"name": "X", "seats": ["A1", bad]}, ADMIN),
        ("PUT", "/events/fresh", {"name": "X", "seats": [bad]}, ADMIN),
        ("GET", f"/events/{in_path}", None, ALICE),
        ("GET", f"/events/{in_path}/seats", None, ALICE),
        ("GET", f"/events/{EVENT}/seats?cursor={in_path}", None, ALICE),
        ("GET", f"/ui/events/{in_path}", None, {}),
        ("GET", f"/ui/events/{in_path}/seats", None, ADMIN),
        ("GET", f"/ui/events/{EVENT}/seats?cursor={in_path}", None, ADMIN),
        ("POST", "/reservations", {"eventId": bad, "seatId": "A3"}, ALICE),
        ("POST", "/reservations", {"eventId": EVENT, "seatId": bad}, ALICE),
        ("POST", "/reservations", {"eventId": EVENT, "seatIds": ["A3", bad]}, ALICE),
    ]
    for method, path, body, who in refused:
        for extra in ({}, {"Idempotency-Key": "inject"}):
            headers = {**who, **extra}
            response = client.request(method, path, json=body, headers=headers)
            assert_problem(response, 400, "validation_error")
    # A reservation id naming such an event is one the API never issued: 404.
    forged = quote(f"{b64url(bad.encode())}.{secrets.token_urlsafe(16)}", safe="")
    for method, action, body in (
        ("GET", "", None),
        ("POST", "/confirm", None),
        ("POST", "/cancel", None),
        ("POST", "/extend", {"seconds": 5}),
    ):
        for extra in ({}, {"Idempotency-Key": "inject"}):
            response = client.request(
                method, f"/reservations/{forged}{action}", json=body, headers={**ALICE, **extra}
            )
            assert_problem(response, 404, "not_found")
    assert snapshot(backend.sync) == before


def test_a_slash_in_an_id_is_no_route(shaped: tuple[TestClient, Backend]) -> None:
    client, backend = shaped
    before = snapshot(backend.sync)
    for path in ("/events/a%2Fb", "/events/a/b", "/events/..%2F..%2Fx"):
        response = client.request("PUT", path, json={"name": "X", "seats": ["A1"]}, headers=ADMIN)
        assert response.status_code in (400, 404, 405), response.text
        assert response.headers["content-type"].startswith(PROBLEM)
    assert snapshot(backend.sync) == before


ODD_CUSTOMERS = [
    'a"b\\c',
    "}{evt:e1}:meta",
    "x:*:y",
    "');redis.call('flushall')--",
    "]]..redis.call('FLUSHALL')..[[",
    "{sweep}",
    "%00",
    "~" * 128,
]


@pytest.mark.parametrize("sub", ODD_CUSTOMERS, ids=repr)
def test_odd_but_valid_customer_ids_stay_data(shaped: tuple[TestClient, Backend], sub: str) -> None:
    """A sub may be any printable ASCII: it reaches Redis only as a script argument (a
    hash field, a JSON string, hashed into the idempotency key), never as a key name."""
    client, backend = shaped
    who = auth(hand_token(HS256, claims(sub=sub)))
    key = "}{:*\"' \\ k"
    made = reserve(client, "A3", who, key)
    assert made.status_code == 201, made.text
    rid = made.json()["id"]
    assert made.json()["customerId"] == sub
    again = reserve(client, "A3", who, key)
    assert again.status_code == 201 and again.json()["id"] == rid
    shown = client.get(f"/reservations/{rid}", headers=who).json()
    assert shown["customerId"] == sub and shown["history"][0]["by"] == sub
    assert_problem(client.get(f"/reservations/{rid}", headers=ALICE), 404, "not_found")
    confirmed = client.post(f"/reservations/{rid}/confirm", headers=who)
    assert confirmed.json()["state"] == "CONFIRMED"
    k = keys.event_keys(EVENT)
    assert backend.sync.hget(k.customers, sub) == "1"
    log = backend.sync.xrange(k.log)
    assert [f["customer"] for _, f in log if f["reservation"] == rid] == [sub, sub]
    assert backend.sync.exists(keys.idempotency_key(EVENT, sub, key)) == 1
    assert client.get(f"/events/{EVENT}", headers=who).json()["seats"]["booked"] == 2
    digest = hashlib.sha256(f"{sub}\0{key}".encode()).hexdigest()[:32]
    assert keys.idempotency_key(EVENT, sub, key).endswith(f":idem:{digest}")


def test_forged_ids_of_unknown_events_create_no_key(client: TestClient, backend: Backend) -> None:
    ghost = f"{b64url(b'ghost')}.{secrets.token_urlsafe(16)}"
    for action, body in (("confirm", None), ("cancel", None), ("extend", {"seconds": 60})):
        response = client.post(
            f"/reservations/{ghost}/{action}",
            json=body,
            headers={**ALICE, "Idempotency-Key": action},
        )
        assert_problem(response, 404, "not_found")
    response = client.post(
        "/reservations",
        json={"eventId": "ghost", "seatId": "A1"},
        headers={**ALICE, "Idempotency-Key": "reserve"},
    )
    assert_problem(response, 404, "not_found")
    assert snapshot(backend.sync) == {}

"""`seatres inspect` (seatres/inspection.py) on fakeredis and on a real Redis: the numbers and
lists it shows match what the API did, due holds show as due, invariant breaks are
reported, `keys` counts the schema with SCAN only and says ≥ past its bound; and the
command itself, end to end, against a real redis-server."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from starlette.testclient import TestClient

from seatres import inspection
from seatres.domain.ids import new_reservation_id
from seatres.embedded import RedisServer
from seatres.store import keys
from seatres.store.redis_store import RedisStore
from tests.conftest import ADMIN, ALICE, BOB, Backend, bearer, put_event
from tests.processes import seatres_env

CAROL = bearer("carol")
EVENT = "gala"
SEATS = ["A1", "A2", "A3", "A4", "A5", "B1", "B2", "B3", "B4", "B5"]
PAST_DUE = 0.15  # seconds slept for a 50 ms hold to be due


def reserve(client: TestClient, seats: list[str], who: dict[str, str] = ALICE) -> str:
    response = client.post("/reservations", json={"eventId": EVENT, "seatIds": seats}, headers=who)
    assert response.status_code == 201, response.text
    rid: str = response.json()["id"]
    return rid


def post(client: TestClient, rid: str, action: str, who: dict[str, str], **body: Any) -> None:
    response = client.post(f"/reservations/{rid}/{action}", json=body or None, headers=who)
    assert response.status_code == 200, response.text


def due_hold(backend: Backend, customer: str, seats: list[str], event: str = EVENT) -> str:
    """A hold of 50 ms made through the store (the API's shortest is a second), left due."""
    rid = new_reservation_id(event)

    async def body() -> None:
        client = backend.make_async()
        try:
            await RedisStore(client).reserve(event, rid, customer, seats, hold_ms=50)
        finally:
            await client.aclose()

    asyncio.run(body())
    time.sleep(PAST_DUE)
    return rid


@pytest.fixture
def sale(backend: Backend, client: TestClient) -> dict[str, str]:
    """gala: alice holds A1 A2, bob booked B1, carol's hold of A5 is due (not swept)."""
    put_event(client, EVENT, SEATS, name="Gala night")
    alice = reserve(client, ["A1", "A2"])
    bob = reserve(client, ["B1"], BOB)
    post(client, bob, "confirm", BOB)
    carol = due_hold(backend, "carol", ["A5"])
    return {"alice": alice, "bob": bob, "carol": carol}


# inspect event


def test_event_report_matches_what_the_api_did(backend: Backend, sale: dict[str, str]) -> None:
    report = inspection.event_report(backend.sync, EVENT, limit=3)

    assert report.name == "Gala night"
    assert report.seats == inspection.SeatCounters(
        total=10, free=7, held=2, booked=1, due_not_swept=1, claimed=4, claim_keys=3
    )
    groups = {g.status: g for g in report.seats_by_status}
    assert (groups["free"].count, groups["free"].seat_ids) == (7, ["A3", "A4", "A5"])
    assert (groups["held"].count, groups["held"].seat_ids) == (2, ["A1", "A2"])
    assert (groups["booked"].count, groups["booked"].seat_ids) == (1, ["B1"])

    assert (report.holds_total, report.holds_due) == (2, 1)
    due, live = report.holds
    assert (due.reservation_id, due.customer_id, due.seat_ids) == (sale["carol"], "carol", ["A5"])
    assert due.due and due.expires_in_seconds < 0
    assert (live.reservation_id, live.customer_id, live.seat_ids) == (
        sale["alice"],
        "alice",
        ["A1", "A2"],
    )
    assert not live.due and 590 < live.expires_in_seconds <= 600

    assert report.customers_total == 3
    assert [(c.customer_id, c.seats) for c in report.customers] == [
        ("alice", 2),
        ("bob", 1),
        ("carol", 1),
    ]
    assert report.log_length == 4
    assert [(e.action, e.reservation, e.to_state) for e in report.log] == [
        ("reserve", sale["bob"], "RESERVED"),
        ("confirm", sale["bob"], "CONFIRMED"),
        ("reserve", sale["carol"], "RESERVED"),
    ]
    assert report.log[1].from_state == "RESERVED" and report.log[1].seat_ids == ["B1"]
    assert report.sweep.indexed and not report.sweep.claimed
    assert report.problems == []


def test_event_report_lists_every_seat_with_all(backend: Backend, sale: dict[str, str]) -> None:
    report = inspection.event_report(backend.sync, EVENT, limit=1, all_seats=True)
    groups = {g.status: g.seat_ids for g in report.seats_by_status}
    assert groups == {
        "free": ["A3", "A4", "A5", "B2", "B3", "B4", "B5"],
        "held": ["A1", "A2"],
        "booked": ["B1"],
    }
    assert len(report.holds) == 1 and len(report.customers) == 1 and len(report.log) == 1


def test_seat_lists_page_through_the_event(
    backend: Backend, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inspection, "SEAT_PAGE", 3)
    seats = [f"S{i:02d}" for i in range(20)]
    put_event(client, EVENT, seats)
    reserve(client, ["S18"])
    report = inspection.event_report(backend.sync, EVENT, limit=2)
    groups = {g.status: g.seat_ids for g in report.seats_by_status}
    assert groups == {"free": ["S00", "S01"], "held": ["S18"], "booked": []}
    everything = inspection.event_report(backend.sync, EVENT, all_seats=True)
    free = {g.status: g.seat_ids for g in everything.seats_by_status}["free"]
    assert free == [s for s in seats if s != "S18"]


def test_event_text_and_json(backend: Backend, sale: dict[str, str]) -> None:
    report = inspection.event_report(backend.sync, EVENT, limit=3)
    text = inspection.render_event(report)
    carol_line = next(line for line in text.splitlines() if sale["carol"] in line)
    assert "DUE" in carol_line and "ago" in carol_line
    alice_line = next(line for line in text.splitlines() if line.startswith(f"  {sale['alice']}"))
    assert "expires in" in alice_line
    assert "seats: 10 total, 7 free, 2 held, 1 booked" in text
    assert "4 claimed by an active reservation, 3 with a claim key" in text
    assert "problems: none" in text

    body = json.loads(inspection.dumps(report))
    assert body["seats"] == {
        "total": 10,
        "free": 7,
        "held": 2,
        "booked": 1,
        "dueNotSwept": 1,
        "claimed": 4,
        "claimKeys": 3,
    }
    assert body["holds"][0]["due"] is True
    assert body["holds"][0]["reservationId"] == sale["carol"]
    assert body["log"][1]["from"] == "RESERVED" and body["log"][1]["to"] == "CONFIRMED"


def test_event_report_shows_broken_invariants(backend: Backend, sale: dict[str, str]) -> None:
    k = keys.event_keys(EVENT)
    backend.sync.hset(k.meta, "held", 9)
    backend.sync.hincrby(k.customers, "alice", 5)
    backend.sync.zrem(keys.SWEEP_DUE, EVENT)
    # a claim key left on a free seat, and one naming another reservation than the hash
    backend.sync.set(keys.claim_key(EVENT, "A3"), sale["alice"])
    backend.sync.set(keys.claim_key(EVENT, "B1"), sale["alice"])
    problems = inspection.event_report(backend.sync, EVENT).problems
    assert len(problems) == 4
    assert "counters" in problems[0]
    assert "customers hash" in problems[1]
    assert "2 claim keys name a reservation the claims hash does not (seats A3, B1)" in problems[2]
    assert "sweep index" in problems[3]


def test_unknown_event_is_an_error(backend: Backend) -> None:
    with pytest.raises(inspection.InspectError, match="not found"):
        inspection.event_report(backend.sync, "nope")


def test_event_inspection_reads_no_whole_key(
    backend: Backend, sale: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_commands(backend.sync, monkeypatch)
    inspection.event_report(backend.sync, EVENT)
    inspection.reservation_report(backend.sync, sale["alice"])
    _assert_bounded(seen)
    assert {"EVALSHA", "HSCAN", "XREVRANGE", "XRANGE"} <= {c[0] for c in seen}


# inspect reservation


def test_reservation_report_with_history_and_log(
    backend: Backend, client: TestClient, sale: dict[str, str]
) -> None:
    rid = reserve(client, ["A3", "A4"])
    post(client, rid, "extend", ALICE, seconds=60)
    post(client, rid, "confirm", ADMIN)

    report = inspection.reservation_report(backend.sync, rid)
    assert (report.event_id, report.customer_id, report.seat_ids) == (EVENT, "alice", ["A3", "A4"])
    assert (report.state, report.effective_state, report.due_not_swept) == (
        "CONFIRMED",
        "CONFIRMED",
        False,
    )
    assert report.expires_in_seconds is None and not report.in_holds and report.event_exists
    assert [(h.action, h.from_state, h.to_state, h.by) for h in report.history] == [
        ("reserve", None, "RESERVED", "alice"),
        ("extend", "RESERVED", "RESERVED", "alice"),
        ("confirm", "RESERVED", "CONFIRMED", "admin"),
    ]
    assert [h.at for h in report.history] == sorted(h.at for h in report.history)
    assert [(e.action, e.reservation) for e in report.log] == [
        ("reserve", rid),
        ("extend", rid),
        ("confirm", rid),
    ]
    assert report.log_scanned >= 3
    assert all(c.by_this and c.claimant_customer == "alice" for c in report.seats)
    assert report.stored["state"] == "CONFIRMED" and "history" not in report.stored
    assert report.problems == []
    text = inspection.render_reservation(report)
    assert "history: 3 changes" in text and "claimed by this reservation" in text


def test_due_hold_shows_as_expired_not_yet_swept(backend: Backend, sale: dict[str, str]) -> None:
    report = inspection.reservation_report(backend.sync, sale["carol"])
    assert (report.state, report.effective_state, report.due_not_swept) == (
        "RESERVED",
        "EXPIRED",
        True,
    )
    assert report.in_holds and report.expires_in_seconds is not None
    assert report.expires_in_seconds < 0
    assert "not yet swept" in inspection.render_reservation(report)
    assert json.loads(inspection.dumps(report))["effectiveState"] == "EXPIRED"


def test_seats_show_who_claims_them_now(
    backend: Backend, client: TestClient, sale: dict[str, str]
) -> None:
    post(client, sale["alice"], "cancel", ALICE)
    bob = reserve(client, ["A2"], BOB)
    report = inspection.reservation_report(backend.sync, sale["alice"])
    assert report.effective_state == "CANCELLED"
    a1, a2 = report.seats
    assert (a1.seat_id, a1.claimed_by, a1.by_this) == ("A1", None, False)
    assert (a2.claimed_by, a2.claimant_customer, a2.claimant_state) == (bob, "bob", "RESERVED")
    assert report.problems == []
    assert f"claimed by {bob} (bob, RESERVED)" in inspection.render_reservation(report)


def test_reservation_report_shows_broken_invariants(backend: Backend, sale: dict[str, str]) -> None:
    k = keys.event_keys(EVENT)
    backend.sync.hdel(k.claims, "A1")
    backend.sync.zrem(k.holds, sale["alice"])
    problems = inspection.reservation_report(backend.sync, sale["alice"]).problems
    assert problems == [
        "RESERVED, but does not claim A1",
        "claim keys name another reservation than the claims hash: A1",
        "RESERVED, but missing from the event's holds",
    ]


@pytest.mark.parametrize("rid", ["bad", "Z2FsYQ", "Z2FsYQ.short", f"{'x' * 100}.{'a' * 22}"])
def test_malformed_reservation_id_is_an_error(backend: Backend, rid: str) -> None:
    with pytest.raises(inspection.InspectError, match="not a reservation id"):
        inspection.reservation_report(backend.sync, rid)


def test_unknown_reservation_is_an_error(backend: Backend, sale: dict[str, str]) -> None:
    with pytest.raises(inspection.InspectError, match="not found"):
        inspection.reservation_report(backend.sync, new_reservation_id(EVENT))


# inspect keys


def test_key_schema_covers_keys_py() -> None:
    assert set(inspection.EVENT_KEY_SCHEMA) == set(keys.EventKeys._fields)
    singles = {
        value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str) and value.startswith(f"{keys.PREFIX}:")
    }
    assert singles == set(inspection.SINGLE_KEY_SCHEMA)


def test_keys_report_counts_the_schema(
    backend: Backend, client: TestClient, sale: dict[str, str]
) -> None:
    put_event(client, "other", ["X1", "X2", "X3"])
    response = client.post(
        "/reservations",
        json={"eventId": "other", "seatId": "X1"},
        headers={**CAROL, "Idempotency-Key": "k-1"},
    )
    assert response.status_code == 201, response.text
    backend.sync.set("seatres:odd", "1")
    backend.sync.set("rq:job:abc", "1")
    backend.sync.sadd("rq:queues", "rq:queue:seatres")

    report = inspection.keys_report(backend.sync, redis_url="redis://x")
    assert report.complete and report.rq_complete
    assert (report.events, report.events_with_keys) == (2, 2)
    rows = {p.pattern.rsplit(":", 1)[-1]: p for p in report.patterns}
    assert (rows["meta"].keys, rows["meta"].elements) == (2, 12)
    assert (rows["seats"].keys, rows["seats"].elements) == (2, 13)
    assert rows["claims"].elements == 4 + 1
    assert rows["reservations"].elements == 3 + 1
    assert rows["holds"].elements == 2 + 1
    assert rows["log"].elements == 4 + 1
    assert (rows["<hash>"].keys, rows["<hash>"].elements) == (1, None)
    # live claims: alice's A1 A2, bob's booked B1, carol's X1 (carol's due A5 has none)
    assert (rows["<seatId>"].keys, rows["<seatId>"].type) == (4, "string")
    assert all(p.unexpected_types == [] for p in report.patterns)
    singles = {p.pattern: p for p in report.singles}
    assert (singles[keys.SWEEP_DUE].keys, singles[keys.SWEEP_DUE].elements) == (1, 2)
    assert singles[keys.SWEEP_CLAIMED].keys == 0
    assert singles[keys.EVENTS].elements == 2
    assert report.sweep.due_now == 1  # gala has carol's due hold
    assert (report.other_keys, report.other_examples) == (1, ["seatres:odd"])
    assert (report.rq_keys, report.rq_by_prefix) == (2, {"rq:job": 1, "rq:queues": 1})
    assert report.problems == []

    text = inspection.render_keys(report)
    assert "≥" not in text
    assert "seatres:{evt:<eventId>}:reservations" in text
    assert "other seatres:* keys: 1 (e.g. seatres:odd)" in text
    assert json.loads(inspection.dumps(report))["rqByPrefix"] == {"rq:job": 1, "rq:queues": 1}


def test_keys_report_says_at_least_past_its_bound(backend: Backend) -> None:
    pipe = backend.sync.pipeline(transaction=False)  # not MSET: the keys span slots
    for i in range(300):
        pipe.set(f"seatres:junk:{i}", "1")
    pipe.execute()
    bounded = inspection.keys_report(backend.sync, max_keys=20, scan_count=10)
    assert not bounded.complete
    assert 20 <= bounded.other_keys < 300
    assert "≥ " in inspection.render_keys(bounded)
    assert inspection.keys_report(backend.sync, scan_count=10).other_keys == 300


def test_keys_report_flags_schema_drift(backend: Backend, client: TestClient) -> None:
    put_event(client, EVENT, SEATS)
    backend.sync.srem(keys.EVENTS, EVENT)
    backend.sync.set(keys.event_keys("broken").seats, "not a zset")
    report = inspection.keys_report(backend.sync)
    assert any("not in seatres:{index}:events" in p for p in report.problems)
    assert any("is a string, not a zset" in p for p in report.problems)


def test_keys_report_uses_scan_and_cheap_commands_only(
    backend: Backend, sale: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_commands(backend.sync, monkeypatch)
    inspection.keys_report(backend.sync)
    _assert_bounded(seen)
    assert "SCAN" in {c[0] for c in seen}


def _record_commands(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    original = client.execute_command

    def recording(*args: Any, **options: Any) -> Any:
        words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
        seen.append((words[0].upper(), *words[1:]))
        return original(*args, **options)

    monkeypatch.setattr(client, "execute_command", recording)
    return seen


def _assert_bounded(seen: list[tuple[str, ...]]) -> None:
    """No KEYS, no command that returns a whole big key."""
    names = {c[0] for c in seen}
    assert not names & {"KEYS", "SMEMBERS", "HKEYS", "HVALS", "ZRANGEBYLEX", "LRANGE"}
    for command in seen:
        if command[0] == "HGETALL":
            assert command[1].endswith((":meta", ":stats")), command
        if command[0] in ("ZRANGE", "ZREVRANGE"):
            assert command[3] != "-1", command
        if command[0] in ("XRANGE", "XREVRANGE", "SCAN", "HSCAN"):
            assert "COUNT" in command, command


# The command, end to end


@pytest.fixture
def real_url(redis_server: RedisServer) -> Iterator[str]:
    """Database 9 of the session's redis-server, emptied before and after."""
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    with redis.Redis.from_url(url, decode_responses=True) as r:
        r.flushdb()
        yield url
        r.flushdb()


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seatres.cli", "inspect", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_inspect_command_end_to_end(real_url: str, tmp_path: Path) -> None:
    url = real_url

    async def setup() -> str:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            store = RedisStore(client)
            await store.upsert_event(EVENT, "Gala night", SEATS)
            rid = new_reservation_id(EVENT)
            await store.reserve(EVENT, rid, "alice", ["A1", "A2"], hold_ms=600_000)
            return rid
        finally:
            await client.aclose()

    rid = asyncio.run(setup())
    env = seatres_env(url)
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(repo)

    text = _cli(["event", EVENT], env, tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("event gala: Gala night")
    assert "seats: 10 total, 8 free, 2 held, 0 booked" in text.stdout
    assert rid in text.stdout

    as_json = _cli(["event", EVENT, "--json", "--limit", "1"], env, tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["seats"]["held"] == 2 and body["holds"][0]["reservationId"] == rid
    assert [g["seatIds"] for g in body["seatsByStatus"]] == [["A3"], ["A1"], []]

    res = _cli(["reservation", rid, "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["history"][0]["action"] == "reserve"

    listing = _cli(["keys"], env, tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "events: 1" in listing.stdout and "problems: none" in listing.stdout

    unknown = _cli(["event", "nope"], env, tmp_path)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "event 'nope' not found" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = _cli(["reservation", "nope"], env, tmp_path)
    assert bad.returncode == 1 and "not a reservation id" in bad.stderr

    assert _cli(["event", EVENT, "--limit", "0"], env, tmp_path).returncode == 2


def test_inspect_needs_a_redis_url(tmp_path: Path) -> None:
    env = {k: v for k, v in seatres_env("").items() if k != "SEATRES_REDIS_URL"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    result = _cli(["keys"], env, tmp_path)
    assert result.returncode == 1
    assert "set SEATRES_REDIS_URL" in result.stderr
    assert not (tmp_path / ".seatres").exists()  # no embedded Redis was started


def test_unreachable_redis_is_a_message(tmp_path: Path) -> None:
    env = seatres_env("redis://127.0.0.1:1/0", redis_timeout_seconds="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    result = _cli(["keys"], env, tmp_path)
    assert result.returncode == 1
    assert "seatres inspect: Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_redact_hides_the_password() -> None:
    assert inspection.redact("redis://user:pw@host:6380/2") == "redis://user:***@host:6380/2"
    assert inspection.redact("redis://:pw@host/0") == "redis://:***@host/0"
    assert inspection.redact("redis://host:6379/0") == "redis://host:6379/0"

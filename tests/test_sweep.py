"""The expiry sweep (seatres.jobs.sweep) on fakeredis and on a real Redis: due holds
expire, nothing else changes, and two sweeps at once, a sweep that died or one stopped by
its time bound never expire a hold twice, free a newer hold's seat or lose an expiry."""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import pytest
import redis

from seatres.domain.errors import SeatUnavailable
from seatres.domain.models import Caller, Claim, IdempotencyKey, SweepBatch
from seatres.domain.states import Transition
from seatres.embedded import RedisServer
from seatres.jobs import sweep as sweep_module
from seatres.jobs.sweep import SweepFailed, SweepReport, expire_due_holds, sweep
from seatres.store import keys, redis_store, scripts
from seatres.store.redis_store import RedisStore
from tests.conftest import SECRET, Backend

T = TypeVar("T")

EVENT = "gala"
SEATS = [f"A{i}" for i in range(1, 9)]
ALICE = Caller("alice")
BOB = Caller("bob")
DUE_MS = 50  # a hold that is due by the time the test sweeps
LATER_MS = 600_000  # a hold that is not
PAST_DUE = 0.15  # seconds slept for DUE_MS holds to be due
# A hold that lasts while a new client makes one transition on it, then is waited out: a
# new cluster client's first call took 283 ms once in CI, and 350 ms another time.
MOMENT_MS = 1000


# Helpers


def _sleep_past(expires_at_ms: int) -> None:
    """Until the local clock (the Redis server's machine) is past `expires_at_ms`."""
    time.sleep(max(0.0, expires_at_ms / 1000 - time.time()) + 0.05)


async def _with_store(backend: Backend, body: Callable[[RedisStore], Awaitable[T]]) -> T:
    client = backend.make_async()
    try:
        return await body(RedisStore(client))
    finally:
        await client.aclose()


def _store(backend: Backend, body: Callable[[RedisStore], Awaitable[T]]) -> T:
    return asyncio.run(_with_store(backend, body))


def _sweep(backend: Backend, batch_size: int = 200, **options: Any) -> SweepReport:
    return _store(backend, lambda store: sweep(store, batch_size, **options))


def _event(backend: Backend, event_id: str = EVENT, seats: list[str] = SEATS) -> None:
    _store(backend, lambda store: store.upsert_event(event_id, "Gala", seats))


def _reserve(
    backend: Backend, rid: str, seats: list[str], hold_ms: int, who: Caller = ALICE
) -> None:
    async def body(store: RedisStore) -> None:
        await store.reserve(EVENT, rid, who.customer_id, seats, hold_ms=hold_ms)

    _store(backend, body)


def _stored(sync: redis.Redis, rid: str, event_id: str = EVENT) -> dict[str, Any]:
    raw = sync.hget(keys.event_keys(event_id).reservations, rid)
    assert isinstance(raw, str), rid
    data: dict[str, Any] = orjson.loads(raw)
    return data


def _holds(sync: redis.Redis, event_id: str = EVENT) -> dict[str, float]:
    return dict(sync.zrange(keys.event_keys(event_id).holds, 0, -1, withscores=True))


def _claims(sync: redis.Redis, event_id: str = EVENT) -> dict[str, str]:
    claims: dict[str, str] = sync.hgetall(keys.event_keys(event_id).claims)
    return claims


def _counters(sync: redis.Redis, event_id: str = EVENT) -> tuple[int, int]:
    held, booked = sync.hmget(keys.event_keys(event_id).meta, "held", "booked")
    return int(held or 0), int(booked or 0)


def _expire_log(sync: redis.Redis, event_id: str = EVENT) -> Counter[str]:
    """Reservation id -> how many times the event's log stream says it expired."""
    entries = sync.xrange(keys.event_keys(event_id).log)
    return Counter(f["reservation"] for _, f in entries if f["action"] == "expire")


def _index(sync: redis.Redis) -> tuple[dict[str, float], dict[str, float]]:
    due = dict(sync.zrange(keys.SWEEP_DUE, 0, -1, withscores=True))
    claimed = dict(sync.zrange(keys.SWEEP_CLAIMED, 0, -1, withscores=True))
    return due, claimed


def _load_due_holds(sync: redis.Redis, events: int, per_event: int) -> dict[str, list[str]]:
    """events x per_event one-seat holds of 1 ms, made by the reserve script itself (in
    pipelines, for speed) with the sweep index written beside it as the store does.
    Returns event id -> reservation ids; every hold is due once this returns."""
    upsert, reserve = scripts.script("upsert_event"), scripts.script("reserve")
    sync.script_load(upsert.source)
    sync.script_load(reserve.source)
    made: dict[str, list[str]] = {}
    for e in range(events):
        event_id = f"ev{e:03d}"
        k = keys.event_keys(event_id)
        seats = [f"S{i:04d}" for i in range(per_event)]
        rids = [f"{event_id}-r{i:04d}" for i in range(per_event)]
        pipe = sync.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", upsert.sha, len(k), *k, event_id, "Bulk", 100_000, *seats)
        for rid, seat in zip(rids, seats, strict=True):
            pipe.execute_command(
                "EVALSHA", reserve.sha, len(k), *k, rid, f"c-{seat}", 1, 0, 100_000, "", 0, seat
            )
        pipe.zadd(keys.SWEEP_DUE, {event_id: int(time.time() * 1000) + 1}, lt=True)
        replies = pipe.execute()
        assert all(int(r[0]) == 1 for r in replies[1:-1])
        made[event_id] = rids
    time.sleep(0.01)
    return made


class Recording:
    """An ExpiryStore that passes every call through and notes what each call did."""

    def __init__(self, store: RedisStore, expire_delay: float = 0.0) -> None:
        self.store = store
        self.expire_delay = expire_delay
        self.expired_ids: list[str] = []
        self.events_looked_at: set[str] = set()

    async def claim_due_events(self, limit: int) -> list[Claim]:
        return await self.store.claim_due_events(limit)

    async def expire_batch(self, event_id: str, batch_size: int) -> SweepBatch:
        batch = await self.store.expire_batch(event_id, batch_size)
        self.expired_ids.extend(batch.expired_ids)
        self.events_looked_at.add(event_id)
        if self.expire_delay:
            await asyncio.sleep(self.expire_delay)
        return batch

    async def release_event(self, claim: Claim, next_due_ms: int | None) -> None:
        await self.store.release_event(claim, next_due_ms)


def _assert_all_expired_once(
    sync: redis.Redis, made: dict[str, list[str]], index_empty: bool = True
) -> None:
    for event_id, rids in made.items():
        assert _holds(sync, event_id) == {}
        assert _claims(sync, event_id) == {}
        assert _counters(sync, event_id) == (0, 0)
        assert _expire_log(sync, event_id) == Counter(dict.fromkeys(rids, 1))
        states = {_stored(sync, rid, event_id)["state"] for rid in rids}
        assert states == {"EXPIRED"}
    if index_empty:
        assert _index(sync) == ({}, {})


# Due and not yet due


def test_sweep_expires_due_holds_and_nothing_else(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "due-1", ["A1", "A2"], DUE_MS)
    _reserve(backend, "due-2", ["A3"], DUE_MS, BOB)
    _reserve(backend, "later", ["A4"], LATER_MS, BOB)
    time.sleep(PAST_DUE)

    report = _sweep(backend)

    s = backend.sync
    assert report.expired == {EVENT: 2}
    assert report.total == 2 and report.finished and report.failed == ()
    for rid in ("due-1", "due-2"):
        r = _stored(s, rid)
        assert r["state"] == "EXPIRED"
        assert r["history"][-1] | {"at": 0} == {
            "at": 0,
            "action": "expire",
            "from": "RESERVED",
            "to": "EXPIRED",
            "by": "system",
        }
    later = _stored(s, "later")
    assert later["state"] == "RESERVED"
    assert _holds(s) == {"later": later["expiresAt"]}
    assert _claims(s) == {"A4": "later"}
    assert _counters(s) == (1, 0)
    assert s.hgetall(keys.event_keys(EVENT).customers) == {"bob": "1"}
    # The event goes back to the index with the time of its next hold, unclaimed.
    assert _index(s) == ({EVENT: later["expiresAt"]}, {})

    again = _sweep(backend)
    assert again.total == 0 and again.batches == 0 and again.finished
    assert _stored(s, "later")["state"] == "RESERVED"


def test_sweep_with_nothing_indexed_does_nothing(backend: Backend) -> None:
    _event(backend)
    report = _sweep(backend)
    assert report == SweepReport(
        expired={},
        seconds=report.seconds,
        batches=0,
        longest_call_seconds=report.longest_call_seconds,
        finished=True,
    )
    assert report.as_dict()["expired"] == 0


def test_freed_seats_can_be_reserved_again(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "old", ["A1", "A2"], DUE_MS)
    time.sleep(PAST_DUE)
    assert _sweep(backend).total == 1
    _reserve(backend, "new", ["A1", "A2"], LATER_MS, BOB)
    assert _claims(backend.sync) == {"A1": "new", "A2": "new"}


# Confirm, cancel and re-reserve racing the sweep


def test_hold_confirmed_a_moment_before_the_sweep_stays_confirmed(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "kept", ["A1"], MOMENT_MS)
    _reserve(backend, "lapsed", ["A2"], DUE_MS)

    async def confirm(store: RedisStore) -> None:
        await store.transition(EVENT, "kept", Transition.CONFIRM, ALICE)

    _store(backend, confirm)
    s = backend.sync
    confirmed = _stored(s, "kept")
    assert confirmed["state"] == "CONFIRMED"
    # The sweep read the holds set before the confirm landed: the entry is still there
    # (with the hold's old, now past, expiry) when the expire script runs.
    s.zadd(keys.event_keys(EVENT).holds, {"kept": confirmed["expiresAt"]})
    _sleep_past(confirmed["expiresAt"])

    report = _sweep(backend)

    assert report.expired == {EVENT: 1}
    assert _stored(s, "kept") == confirmed  # not one byte changed
    assert _stored(s, "lapsed")["state"] == "EXPIRED"
    assert _holds(s) == {}
    assert _claims(s) == {"A1": "kept"}
    assert _counters(s) == (0, 1)
    assert _expire_log(s) == Counter({"lapsed": 1})


def test_hold_cancelled_a_moment_before_the_sweep_stays_cancelled(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "dropped", ["A1", "A2"], MOMENT_MS)
    _reserve(backend, "lapsed", ["A3"], DUE_MS, BOB)

    async def cancel(store: RedisStore) -> None:
        await store.transition(EVENT, "dropped", Transition.CANCEL, ALICE)

    _store(backend, cancel)
    s = backend.sync
    cancelled = _stored(s, "dropped")
    assert cancelled["state"] == "CANCELLED"
    s.zadd(keys.event_keys(EVENT).holds, {"dropped": cancelled["expiresAt"]})
    _sleep_past(cancelled["expiresAt"])

    report = _sweep(backend)

    assert report.expired == {EVENT: 1}
    assert _stored(s, "dropped") == cancelled
    assert _holds(s) == {}
    assert _claims(s) == {}
    assert _counters(s) == (0, 0)
    assert _expire_log(s) == Counter({"lapsed": 1})


def test_hold_confirmed_before_its_time_and_swept_after_stays_confirmed(
    backend: Backend,
) -> None:
    _event(backend)
    _reserve(backend, "kept", ["A1"], MOMENT_MS)
    _store(backend, lambda st: st.transition(EVENT, "kept", Transition.CONFIRM, ALICE))
    _sleep_past(_stored(backend.sync, "kept")["expiresAt"])
    assert _sweep(backend).total == 0
    assert _stored(backend.sync, "kept")["state"] == "CONFIRMED"
    assert _claims(backend.sync) == {"A1": "kept"}


def test_old_hold_never_frees_the_seat_of_a_newer_one(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "old", ["A1", "A2"], DUE_MS)
    time.sleep(PAST_DUE)
    # Bob takes A2: the old hold is expired lazily, in the same script.
    _reserve(backend, "new", ["A2"], LATER_MS, BOB)
    s = backend.sync
    old = _stored(s, "old")
    assert old["state"] == "EXPIRED"
    # A stale entry of the old hold in the holds set, as a sweep racing the reserve sees it.
    s.zadd(keys.event_keys(EVENT).holds, {"old": old["expiresAt"]})

    report = _sweep(backend)

    assert report.total == 0
    assert _stored(s, "old") == old
    assert _stored(s, "new")["state"] == "RESERVED"
    assert _claims(s) == {"A2": "new"}
    assert _holds(s) == {"new": _stored(s, "new")["expiresAt"]}
    assert _counters(s) == (1, 0)
    assert _expire_log(s) == Counter({"old": 1})  # the lazy expiry, not a second one


def test_expiring_a_hold_leaves_seats_claimed_by_another_reservation(backend: Backend) -> None:
    """Defence in depth: even a RESERVED hold whose seat another reservation now claims
    (no transition leaves that state behind) frees only the seats that are its own."""
    _event(backend)
    _reserve(backend, "old", ["A1", "A2"], DUE_MS)
    time.sleep(PAST_DUE)
    _reserve(backend, "new", ["A2"], LATER_MS, BOB)
    s = backend.sync
    k = keys.event_keys(EVENT)
    old = _stored(s, "old") | {"state": "RESERVED"}
    s.hset(k.reservations, "old", orjson.dumps(old).decode())
    s.hset(k.claims, "A1", "old")
    s.zadd(k.holds, {"old": old["expiresAt"]})

    report = _sweep(backend)

    assert report.expired == {EVENT: 1}
    assert _stored(s, "old")["state"] == "EXPIRED"
    assert _claims(s) == {"A2": "new"}
    assert _stored(s, "new")["state"] == "RESERVED"


def test_extended_hold_whose_index_lags_is_put_right_not_expired(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "ext", ["A1"], 5_000)

    async def extend(store: RedisStore) -> None:
        await store.extend(EVENT, "ext", ALICE, extra_ms=LATER_MS, max_hold_ms=2 * LATER_MS)

    _store(backend, extend)
    s = backend.sync
    extended = _stored(s, "ext")
    # The holds entry and the event's due time still say an earlier, now past, expiry.
    s.zadd(keys.event_keys(EVENT).holds, {"ext": extended["createdAt"] + 1})
    s.zadd(keys.SWEEP_DUE, {EVENT: extended["createdAt"] + 1})

    report = _sweep(backend)

    assert report.total == 0 and report.batches == 1
    assert _stored(s, "ext") == extended
    assert _holds(s) == {"ext": extended["expiresAt"]}
    assert _index(s) == ({EVENT: extended["expiresAt"]}, {})


# Volume


def test_ten_thousand_due_holds_in_a_hundred_events_expire_in_one_sweep(
    backend: Backend,
) -> None:
    s = backend.sync
    made = _load_due_holds(s, events=100, per_event=100)
    # Bystanders: an event with a hold that is not due, and one with no hold at all.
    _event(backend)
    _event(backend, "quiet")
    _reserve(backend, "later", ["A1"], LATER_MS)

    report = _sweep(backend, batch_size=64)

    assert report.total == 10_000 and report.finished
    assert report.expired == dict.fromkeys(made, 100)
    assert report.batches == 100 * 2  # 64 + 36 holds per event
    _assert_all_expired_once(s, {e: made[e] for e in list(made)[::10]}, index_empty=False)
    assert all(_holds(s, e) == {} for e in made)
    assert _stored(s, "later")["state"] == "RESERVED"
    due, claimed = _index(s)
    # Untouched: the reserve's own (client clock) estimate of the hold's expiry.
    assert list(due) == [EVENT] and claimed == {}
    assert abs(due[EVENT] - _stored(s, "later")["expiresAt"]) < 1000


# Two sweeps at once


def test_two_concurrent_sweeps_expire_each_hold_exactly_once(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No lease: each sweep takes over the events the other one is working on, so the
    # two really do run the expire script on the same events at the same time.
    monkeypatch.setattr(redis_store, "SWEEP_LEASE_MS", 0)
    s = backend.sync
    made = _load_due_holds(s, events=20, per_event=50)
    everyone = [rid for rids in made.values() for rid in rids]

    async def both() -> tuple[Recording, Recording, list[SweepReport]]:
        clients = [backend.make_async(), backend.make_async()]
        try:
            a, b = (Recording(RedisStore(c), expire_delay=0.001) for c in clients)
            reports = await asyncio.gather(
                sweep(a, 16, event_limit=3, max_seconds=20),
                sweep(b, 16, event_limit=3, max_seconds=20),
            )
            return a, b, list(reports)
        finally:
            for c in clients:
                await c.aclose()

    a, b, reports = asyncio.run(both())

    assert all(r.finished for r in reports)
    assert a.events_looked_at & b.events_looked_at  # they did overlap
    expired = a.expired_ids + b.expired_ids
    assert sorted(expired) == sorted(everyone)  # each once, none missing
    assert sum(r.total for r in reports) == len(everyone)
    _assert_all_expired_once(s, made)


def test_two_sweeps_in_two_threads_expire_each_hold_exactly_once(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "SWEEP_LEASE_MS", 0)
    s = backend.sync
    made = _load_due_holds(s, events=10, per_event=60)
    everyone = [rid for rids in made.values() for rid in rids]
    recordings: list[Recording] = []
    reports: list[SweepReport] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def one() -> None:
        async def body(store: RedisStore) -> SweepReport:
            recording = Recording(store)
            recordings.append(recording)
            start.wait()
            return await sweep(recording, 8, event_limit=2, max_seconds=20)

        try:
            reports.append(_store(backend, body))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(reports) == 2 and all(r.finished for r in reports)
    expired = [rid for r in recordings for rid in r.expired_ids]
    assert sorted(expired) == sorted(everyone)
    _assert_all_expired_once(s, made)


def test_sweeping_again_right_after_a_sweep_finds_nothing(backend: Backend) -> None:
    """What an rq retry, or a job enqueued twice, does after a run that succeeded."""
    made = _load_due_holds(backend.sync, events=3, per_event=10)
    first = _sweep(backend)
    second = _sweep(backend)
    assert first.total == 30
    assert second.total == 0 and second.batches == 0
    _assert_all_expired_once(backend.sync, made)


# A sweep that died, and one stopped by its time bound


def test_events_of_a_sweep_that_died_are_taken_over_after_its_lease(backend: Backend) -> None:
    s = backend.sync
    made = _load_due_holds(s, events=3, per_event=10)
    # A sweep claims the events, then its worker dies: nothing is released.
    claimed = _store(backend, lambda store: store.claim_due_events(500))
    assert sorted(c.event_id for c in claimed) == sorted(made)

    during_lease = _sweep(backend)
    assert during_lease.total == 0 and during_lease.finished
    assert all(len(_holds(s, e)) == 10 for e in made)

    # The lease runs out.
    s.zadd(keys.SWEEP_CLAIMED, dict.fromkeys(made, 1))
    after_lease = _sweep(backend)

    assert after_lease.total == 30
    assert after_lease.expired == dict.fromkeys(made, 10)
    _assert_all_expired_once(s, made)


def test_a_hold_made_while_its_event_is_claimed_is_not_hidden(backend: Backend) -> None:
    _event(backend)
    _reserve(backend, "first", ["A1"], DUE_MS)
    time.sleep(PAST_DUE)
    claims = _store(backend, lambda store: store.claim_due_events(500))
    assert [c.event_id for c in claims] == [EVENT]
    # A new hold while a (dead) sweep owns the event puts the event back in the index.
    _reserve(backend, "second", ["A2"], DUE_MS, BOB)
    time.sleep(PAST_DUE)

    report = _sweep(backend)

    assert report.expired == {EVENT: 2}
    assert _holds(backend.sync) == {}
    assert _expire_log(backend.sync) == Counter({"first": 1, "second": 1})


@pytest.mark.parametrize("with_key", [False, True], ids=["plain", "idempotency-key"])
def test_a_new_hold_indexes_its_event_at_its_earliest_hold(
    backend: Backend, with_key: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index holds each event at the time of its earliest hold. On a single Redis the
    reserve script writes it in the same step as the hold (the store sends no command
    of its own); on a cluster, where the index lives in another slot, the store does."""
    if backend.name != "cluster":

        async def no_second_command(*args: Any) -> None:
            raise AssertionError("the reserve script indexes the hold on a single Redis")

        monkeypatch.setattr(RedisStore, "_index_hold", no_second_command)

    def reserve(rid: str, seat: str, hold_ms: int) -> int:
        key = IdempotencyKey(f"key-{rid}", f"fp-{rid}") if with_key else None

        async def body(store: RedisStore) -> int:
            outcome = await store.reserve(EVENT, rid, "alice", [seat], hold_ms, 0, key)
            return outcome.reservation.expires_at_ms

        return _store(backend, body)

    def indexed() -> float | None:
        return backend.sync.zscore(keys.SWEEP_DUE, EVENT)

    _event(backend)
    late = reserve("late", "A1", LATER_MS)
    assert indexed() == late
    early = reserve("early", "A2", LATER_MS // 2)
    assert indexed() == early < late
    reserve("later", "A3", LATER_MS)  # a later hold leaves the earliest in place
    assert indexed() == early
    backend.sync.delete(keys.SWEEP_DUE)
    with pytest.raises(SeatUnavailable):  # a refusal indexes nothing
        reserve("refused", "A1", DUE_MS)
    assert indexed() is None


def test_sweep_out_of_time_gives_its_events_back_for_the_next_run(backend: Backend) -> None:
    s = backend.sync
    made = _load_due_holds(s, events=3, per_event=20)

    none = _sweep(backend, max_seconds=0)
    assert none.total == 0 and none.batches == 0 and not none.finished
    assert _index(s)[1] == {}  # nothing claimed

    async def slow(store: RedisStore) -> tuple[Recording, SweepReport]:
        # the client connects (to every node of a cluster) before the clock starts: a new
        # cluster client's first call took 350 ms once in CI, the whole budget and more
        await store.ping()
        recording = Recording(store, expire_delay=0.3)
        return recording, await sweep(recording, 5, max_seconds=0.15)

    first, stopped = _store(backend, slow)
    assert not stopped.finished
    assert stopped.batches == 1 and stopped.total == 5
    due, claimed = _index(s)
    assert claimed == {}  # every claimed event was given back...
    now_ms = time.time() * 1000
    assert sorted(due) == sorted(made) and all(t <= now_ms for t in due.values())  # ...due

    rest = _store(backend, lambda store: _sweep_recorded(store))
    assert rest[1].total == 55 and rest[1].finished
    assert sorted(first.expired_ids + rest[0].expired_ids) == sorted(
        rid for rids in made.values() for rid in rids
    )
    _assert_all_expired_once(s, made)


async def _sweep_recorded(store: RedisStore) -> tuple[Recording, SweepReport]:
    recording = Recording(store)
    return recording, await sweep(recording, 200)


# An event the expire script fails on


def test_an_event_that_fails_does_not_hold_up_the_others(backend: Backend) -> None:
    s = backend.sync
    made = _load_due_holds(s, events=3, per_event=5)
    broken = "ev001"
    k = keys.event_keys(broken)
    s.hset(k.reservations, "ev001-r0000", "{not json")

    report = _sweep(backend)

    assert report.failed == (broken,)
    assert report.expired == {"ev000": 5, "ev002": 5}
    # The broken event stays claimed (retried after the lease), the others are done.
    due, claimed = _index(s)
    assert due == {} and list(claimed) == [broken]
    _assert_all_expired_once(s, {"ev000": made["ev000"]}, index_empty=False)


# The rq job's entry point


@pytest.fixture
def job_redis(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The job reads its settings from the environment and connects to SEATRES_REDIS_URL
    itself: real Redis only."""
    monkeypatch.delenv("SEATRES_JOBS_REDIS_URL", raising=False)
    monkeypatch.setenv("SEATRES_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SEATRES_JWT_SECRET", SECRET)
    monkeypatch.setenv("SEATRES_SWEEP_BATCH_SIZE", "7")
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as sync:
        sync.flushall()
        yield sync
        sync.flushall()


def test_job_returns_a_json_able_report(job_redis: redis.Redis) -> None:
    made = _load_due_holds(job_redis, events=2, per_event=10)

    result = expire_due_holds()

    assert orjson.loads(orjson.dumps(result)) == result
    assert result["expired"] == 20
    assert result["events"] == dict.fromkeys(made, 10)
    assert result["batches"] == 2 * 2  # 7 + 3 per event
    assert result["finished"] is True and result["failed"] == []
    assert 0 < result["seconds"] < 10
    assert 0 < result["longestCallSeconds"] <= result["seconds"]
    _assert_all_expired_once(job_redis, made)
    assert expire_due_holds()["expired"] == 0


def test_job_fails_the_rq_way_when_an_event_fails(job_redis: redis.Redis) -> None:
    _load_due_holds(job_redis, events=2, per_event=3)
    job_redis.hset(keys.event_keys("ev000").reservations, "ev000-r0001", "{not json")
    with pytest.raises(SweepFailed, match="ev000"):
        expire_due_holds()
    assert _holds(job_redis, "ev001") == {}


def test_run_is_bounded_well_inside_the_lease() -> None:
    assert sweep_module.MAX_SWEEP_SECONDS * 1000 < redis_store.SWEEP_LEASE_MS / 2


def test_a_sweep_never_releases_a_claim_that_another_sweep_took_since(backend: Backend) -> None:
    s = backend.sync
    made = _load_due_holds(s, events=1, per_event=3)
    (first,) = _store(backend, lambda store: store.claim_due_events(500))
    # Another sweep owns the event now (say it claimed it again after a new hold) ...
    s.zadd(keys.SWEEP_CLAIMED, {first.event_id: first.lease_until_ms + 5})
    # ... so the first sweep's release, having seen no hold, must leave that claim.
    _store(backend, lambda store: store.release_event(first, None))
    assert s.zscore(keys.SWEEP_CLAIMED, first.event_id) == first.lease_until_ms + 5
    # Its own claim, by contrast, is released, and the next due time is indexed.
    s.zadd(keys.SWEEP_CLAIMED, {first.event_id: first.lease_until_ms})
    _store(backend, lambda store: store.release_event(first, 1234))
    assert s.zscore(keys.SWEEP_CLAIMED, first.event_id) is None
    assert s.zscore(keys.SWEEP_DUE, first.event_id) == 1234
    assert len(made) == 1

"""Model-based tests: hypothesis drives the domain API (ReservationService over
RedisStore, on every backend of the `backend` fixture: fakeredis, a real redis-server,
a Redis Cluster) with random sequences of reserves, confirms, cancels, extensions,
idempotent replays, callers who are not the owner, admins, time passing and expiry
sweeps. Each request's answer must be the one the plain-Python model of the rules
(tests/model.py) gives, and after every step Redis must hold exactly what the model
says: every reservation, the seat claims, holds, counters, per-customer counts, the
event summary and seat map, the log stream and the sweep index.

`--long` runs many more and longer sequences."""

import asyncio
import base64
from collections import Counter
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from seatres.domain.errors import DomainError, NotFound
from seatres.domain.models import (
    Caller,
    EventSummary,
    Outcome,
    Reservation,
    SeatCounts,
    SeatStatus,
)
from seatres.domain.service import ReservationService, Rules
from seatres.domain.states import ReservationState
from seatres.jobs.sweep import sweep
from seatres.store import keys
from seatres.store.connection import AsyncClient, SyncClient
from seatres.store.redis_store import RedisStore, decode_reservation
from tests.conftest import Backend
from tests.model import Entry, Expect, Kind, Model, ModelReservation, Request

S = ReservationState
MINUTE = 60_000

# Every time in a run (the hold, extensions, time moved on) is a whole number of minutes,
# and a run takes seconds: a hold the model has 1+ minutes left on is live in Redis too,
# one with 0 or less is due in both, however slowly the machine runs. Holds are long
# (10 minutes), so nothing expires by itself during a run.
RULES = Rules(
    hold_ms=10 * MINUTE,
    max_seats_per_reservation=3,
    max_seats_per_customer=3,
    max_hold_ms=30 * MINUTE,
)
# The same seat ids in both events: nothing of one event may leak into the other.
EVENTS = {"e1": ("A1", "A2", "A3", "A4", "A5"), "e2": ("A1", "A2", "A3")}
CUSTOMERS = ("alice", "bob")
ADMIN = Caller("admin", is_admin=True)

# A few of each, so that seats conflict, limits are reached and keys are reused.
seat_ids = st.sampled_from(EVENTS["e1"])
idempotency_keys = st.sampled_from((None, None, None, "k1", "k2"))
callers = st.sampled_from(("owner", "owner", "admin", "stranger"))


def unknown_reservation_id(event_id: str) -> str:
    """Well-formed (it names an existing event) but never issued."""
    encoded = base64.urlsafe_b64encode(event_id.encode()).rstrip(b"=").decode()
    return f"{encoded}.{'0' * 22}"


# Reading the store


@dataclass
class EventView:
    """One event as Redis has it, read in one round trip with the clock."""

    reservations: dict[str, Reservation]
    claims: dict[str, str]
    holds: dict[str, float]
    customers: dict[str, int]
    counters: tuple[int, int]  # held, booked
    log_length: int
    # seat -> (the reservation its claim key names or None, PEXPIRETIME: -1 none, -2 no key)
    claim_keys: dict[str, tuple[str | None, int]]
    summary: EventSummary | None = None
    seats: dict[str, SeatStatus] | None = None


def read_store(sync: SyncClient) -> tuple[dict[str, EventView], dict[str, float], int]:
    """Every event's keys, the sweep index (due, and claimed which must be empty between
    steps) and Redis's clock (ms). Nothing else runs meanwhile: no transaction needed
    (and none could span the slots of a Redis Cluster)."""
    pipe = sync.pipeline(transaction=False)
    for event_id in EVENTS:
        k = keys.event_keys(event_id)
        pipe.hgetall(k.reservations)
        pipe.hgetall(k.claims)
        pipe.zrange(k.holds, 0, -1, withscores=True)
        pipe.hgetall(k.customers)
        pipe.hmget(k.meta, "held", "booked")
        pipe.xlen(k.log)
        for seat in EVENTS[event_id]:
            pipe.get(keys.claim_key(event_id, seat))
            pipe.pexpiretime(keys.claim_key(event_id, seat))
    pipe.zrange(keys.SWEEP_DUE, 0, -1, withscores=True)
    pipe.zrange(keys.SWEEP_CLAIMED, 0, -1, withscores=True)
    replies = pipe.execute()
    # Redis's clock as the scripts read it, from the server of an event's slot (a
    # cluster routes TIME nowhere in particular, and its pipelines take no EVAL).
    seconds, micros = sync.eval("return redis.call('TIME')", 1, keys.event_keys("e1").meta)
    views = {}
    at = 0
    for event_id, seats in EVENTS.items():
        raw, claims, holds, customers, (held, booked), log_length = replies[at : at + 6]
        claim_keys = replies[at + 6 : at + 6 + 2 * len(seats)]
        at += 6 + 2 * len(seats)
        views[event_id] = EventView(
            reservations={rid: decode_reservation(v) for rid, v in raw.items()},
            claims=claims,
            holds=dict(holds),
            customers={c: int(n) for c, n in customers.items()},
            counters=(int(held), int(booked)),
            log_length=log_length,
            claim_keys={
                seat: (claim_keys[2 * j], claim_keys[2 * j + 1]) for j, seat in enumerate(seats)
            },
        )
    due, claimed = replies[-2:]
    assert claimed == [], "a sweep left events claimed"
    return views, dict(due), int(seconds) * 1000 + int(micros) // 1000


def shift_deadlines(sync: SyncClient, delta_ms: int) -> None:
    """Makes delta_ms pass, as far as reservations can tell.

    The scripts take the time from Redis (`TIME`), which a test cannot set, and sleeping
    would make the run slow and its timing flaky. So the clock stays and every time the
    store keeps moves delta_ms into the past instead, which is the same thing to every
    script: each reservation's createdAt, expiresAt, updatedAt and history times (in the
    reservations hash; createdAt too, since an extension's limit counts from it), each
    hold's score in the event's holds zset, and each event's score in the sweep's index
    (`{sweep}:due`, and `{sweep}:claimed`, empty between steps), and the expiry of each
    seat's claim key (which Redis deletes when it moves into the past). Each is shifted
    where it is, never recomputed from another, so a disagreement between them survives
    the shift for the invariants to see. Remembered idempotent answers and the log stream
    are left as they are: they are records of the past, and no script reads a time from
    them (the idempotency TTL is Redis's own, 24 h, never reached in a run)."""
    event_keys = [keys.event_keys(event_id) for event_id in EVENTS]
    claim_keys = [keys.claim_key(event, seat) for event, seats in EVENTS.items() for seat in seats]
    read = sync.pipeline(transaction=False)
    for k in event_keys:
        read.hgetall(k.reservations)
        read.zrange(k.holds, 0, -1, withscores=True)
    read.zrange(keys.SWEEP_DUE, 0, -1, withscores=True)
    read.zrange(keys.SWEEP_CLAIMED, 0, -1, withscores=True)
    for key in claim_keys:
        read.pexpiretime(key)
    replies = read.execute()
    expiries = replies[-len(claim_keys) :]
    replies = replies[: -len(claim_keys)]
    write = sync.pipeline(transaction=False)
    for key, expires_at in zip(claim_keys, expiries, strict=True):
        if expires_at >= 0:  # -1: no expiry (booked), -2: no key
            write.pexpireat(key, expires_at - delta_ms)
    for i, k in enumerate(event_keys):
        reservations, holds = replies[2 * i], replies[2 * i + 1]
        for rid, raw in reservations.items():
            data = orjson.loads(raw)
            for field in ("createdAt", "expiresAt", "updatedAt"):
                data[field] -= delta_ms
            for change in data["history"]:
                change["at"] -= delta_ms
            write.hset(k.reservations, rid, orjson.dumps(data))
        if holds:
            write.zadd(k.holds, {rid: score - delta_ms for rid, score in holds})
    for index, entries in zip((keys.SWEEP_DUE, keys.SWEEP_CLAIMED), replies[-2:], strict=True):
        if entries:
            write.zadd(index, {member: score - delta_ms for member, score in entries})
    write.execute()


# Comparing answers


def _entries(reservation: Reservation) -> list[Entry]:
    return [(c.action, c.from_state, c.to_state, c.by) for c in reservation.history]


def assert_same(model: ModelReservation, actual: Reservation) -> None:
    """The reservation the service showed is the model's (times: see check_times)."""
    if model.id:
        assert actual.id == model.id
    assert actual.event_id == model.event_id
    assert actual.seat_ids == model.seat_ids
    assert actual.customer_id == model.customer_id
    assert actual.state is model.state
    assert actual.expires_at_ms - actual.created_at_ms == model.lifetime_ms
    assert _entries(actual) == model.history


def assert_answer(expect: Expect, actual: Outcome | DomainError) -> None:
    if expect.replay is not None:
        first = expect.replay.answer
        if isinstance(first, Reservation):
            assert isinstance(actual, Outcome), actual
            assert actual.replayed and actual.reservation == first
        else:
            assert isinstance(actual, DomainError), actual
            assert type(actual) is type(first) and actual.replayed
            assert (actual.detail, actual.extra) == (first.detail, first.extra)
    elif expect.error is not None:
        assert isinstance(actual, expect.error), f"expected {expect.error.__name__}: {actual!r}"
        assert not actual.replayed
        assert actual.extra == expect.extra
    else:
        assert expect.reservation is not None
        assert isinstance(actual, Outcome), f"expected a reservation: {actual!r}"
        assert not actual.replayed
        assert_same(expect.reservation, actual.reservation)


class ReservationMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        backend.sync.flushall()
        self.model = Model(RULES, EVENTS)
        self.keyed: list[Request] = []  # every request sent with an Idempotency-Key
        # One event loop per run: the async client and its connections belong to it.
        self.runner = asyncio.Runner()
        self.client: AsyncClient = self.runner.run(self._connect())
        self.store = RedisStore(self.client)
        self.service = ReservationService(self.store, RULES)
        for event_id, seats in EVENTS.items():
            self.runner.run(self.service.upsert_event(ADMIN, event_id, event_id.upper(), seats))

    async def _connect(self) -> AsyncClient:
        """The client is made inside the loop that will use it."""
        return self.backend.make_async()

    def teardown(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.close()

    # Sending requests

    def _send(self, request: Request) -> Outcome | DomainError:
        if request.key is not None and request not in self.keyed:
            self.keyed.append(request)
        expect = self.model.handle(request)
        actual = self.runner.run(self._call(request))
        assert_answer(expect, actual)
        self.model.settle(expect, actual)
        return actual

    async def _call(self, request: Request) -> Outcome | DomainError:
        service, who, idempotency = self.service, request.caller, request.idempotency()
        try:
            if request.kind is Kind.RESERVE:
                seats = list(request.seat_ids)
                return await service.reserve(who, request.event_id, seats, idempotency)
            if request.kind is Kind.CONFIRM:
                return await service.confirm(who, request.reservation_id, idempotency)
            if request.kind is Kind.CANCEL:
                return await service.cancel(who, request.reservation_id, idempotency)
            rid, seconds = request.reservation_id, request.seconds
            return await service.extend(who, rid, seconds, idempotency)
        except DomainError as exc:
            return exc

    def _caller(self, reservation_id: str, who: str) -> Caller:
        """The owner, an admin, or another customer (who must find nothing)."""
        owner = self.model.reservations[reservation_id].customer_id
        if who == "owner":
            return Caller(owner)
        if who == "admin":
            return ADMIN
        return Caller(next(c for c in CUSTOMERS if c != owner))

    # Rules

    @rule(
        target=reservations,
        customer=st.sampled_from(CUSTOMERS),
        event_id=st.sampled_from(("e1", "e1", "e2")),  # e2 lacks A4 and A5
        seats=st.lists(seat_ids, min_size=1, max_size=RULES.max_seats_per_reservation, unique=True),
        key=idempotency_keys,
    )
    def reserve(self, customer: str, event_id: str, seats: list[str], key: str | None) -> Any:
        request = Request(
            Kind.RESERVE, Caller(customer), event_id=event_id, seat_ids=tuple(seats), key=key
        )
        actual = self._send(request)
        if isinstance(actual, Outcome) and not actual.replayed:
            return multiple(actual.reservation.id)
        return multiple()

    @rule(
        target=reservations,
        rid=reservations,
        seats=st.lists(seat_ids, min_size=1, max_size=RULES.max_seats_per_reservation, unique=True),
        key=idempotency_keys,
    )
    def reserve_more(self, rid: str, seats: list[str], key: str | None) -> Any:
        """The customer of an earlier reservation, in its event, again: where the
        per-customer limit bites, and where their own lapsed holds stop counting."""
        earlier = self.model.reservations[rid]
        return self.reserve(earlier.customer_id, earlier.event_id, seats, key)

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        event_id=st.sampled_from(("e1", "nope")),  # "nope" does not exist
        seats=st.one_of(
            # too many seats, or a repeated one: refused before the store is asked
            st.lists(seat_ids, min_size=RULES.max_seats_per_reservation + 1, max_size=5),
            st.lists(seat_ids, min_size=2, max_size=3).filter(lambda s: len(set(s)) < len(s)),
            # a seat that is in no event among free ones: nothing is held
            st.lists(seat_ids, max_size=2, unique=True).map(lambda s: [*s, "Z9"]),
        ),
        key=idempotency_keys,
    )
    def reserve_wrongly(
        self, customer: str, event_id: str, seats: list[str], key: str | None
    ) -> None:
        request = Request(
            Kind.RESERVE, Caller(customer), event_id=event_id, seat_ids=tuple(seats), key=key
        )
        assert isinstance(self._send(request), DomainError)

    @rule(rid=reservations, who=callers, key=idempotency_keys)
    def confirm(self, rid: str, who: str, key: str | None) -> None:
        self._send(Request(Kind.CONFIRM, self._caller(rid, who), reservation_id=rid, key=key))

    @rule(rid=reservations, who=callers, key=idempotency_keys)
    def cancel(self, rid: str, who: str, key: str | None) -> None:
        self._send(Request(Kind.CANCEL, self._caller(rid, who), reservation_id=rid, key=key))

    @rule(
        rid=reservations,
        who=callers,
        seconds=st.sampled_from((60, 600, 1200)),
        key=idempotency_keys,
    )
    def extend(self, rid: str, who: str, seconds: int, key: str | None) -> None:
        caller = self._caller(rid, who)
        self._send(Request(Kind.EXTEND, caller, reservation_id=rid, seconds=seconds, key=key))

    @rule(
        kind=st.sampled_from((Kind.CONFIRM, Kind.CANCEL, Kind.EXTEND)),
        event_id=st.sampled_from(tuple(EVENTS)),
        who=st.sampled_from((*CUSTOMERS, "admin")),
        key=idempotency_keys,
    )
    def act_on_unknown_reservation(
        self, kind: Kind, event_id: str, who: str, key: str | None
    ) -> None:
        caller = ADMIN if who == "admin" else Caller(who)
        rid = unknown_reservation_id(event_id)
        self._send(Request(kind, caller, reservation_id=rid, seconds=60, key=key))

    @precondition(lambda self: bool(self.keyed))
    @rule(data=st.data())
    def send_again(self, data: st.DataObject) -> None:
        """The same request with the same Idempotency-Key: the first answer again."""
        self._send(data.draw(st.sampled_from(self.keyed), label="request"))

    @rule(rid=reservations, who=callers)
    def look(self, rid: str, who: str) -> None:
        caller = self._caller(rid, who)
        model = self.model.reservations[rid]
        try:
            actual, now_ms = self.runner.run(self.service.get(caller, rid))
        except NotFound:
            assert not caller.is_admin and caller.customer_id != model.customer_id
            return
        assert caller.is_admin or caller.customer_id == model.customer_id
        assert_same(model, actual)
        assert actual.effective_state(now_ms) is model.effective_state

    def _holds_exist(self) -> bool:
        return any(r.state is S.RESERVED for r in self.model.reservations.values())

    # Time passing and the sweep only matter to holds: spend the steps where they do.
    @precondition(_holds_exist)
    @rule(minutes=st.sampled_from((1, 5, 10, 10)))
    def advance_time(self, minutes: int) -> None:
        shift_deadlines(self.backend.sync, minutes * MINUTE)
        self.model.advance(minutes * MINUTE)

    @precondition(_holds_exist)
    @rule(batch_size=st.sampled_from((1, 2, 100)))
    def run_sweep(self, batch_size: int) -> None:
        expected = self.model.sweep()
        report = self.runner.run(sweep(self.store, batch_size))
        assert report.expired == expected
        assert report.finished and report.failed == ()

    # Invariants

    @invariant()
    def store_matches_model(self) -> None:
        views, due, now_ms = read_store(self.backend.sync)
        self.runner.run(self._read_service(views))
        seen = {rid for view in views.values() for rid in view.reservations}
        assert seen == set(self.model.reservations)
        for event_id, view in views.items():
            self._check_reservations(view, now_ms)
            self._check_seats_and_limits(view, now_ms)
            self._check_counts(event_id, view)
            self._check_sweep_index(event_id, view, due)

    async def _read_service(self, views: dict[str, EventView]) -> None:
        """What readers of the API see: each event's summary and seat map (all at once:
        the store sends them in one round trip)."""

        async def read(view: EventView, event_id: str) -> None:
            view.summary, page = await asyncio.gather(
                self.service.event_summary(event_id), self.service.seat_page(event_id, None, 100)
            )
            assert page.next_cursor is None
            view.seats = dict(page.seats)

        await asyncio.gather(*(read(view, event_id) for event_id, view in views.items()))

    def _check_reservations(self, view: EventView, now_ms: int) -> None:
        """Every reservation as the model has it: state, seats, owner, history, times."""
        for rid, actual in view.reservations.items():
            model = self.model.reservations[rid]
            assert_same(model, actual)
            assert actual.created_at_ms == actual.history[0].at_ms
            assert actual.updated_at_ms == actual.history[-1].at_ms
            assert actual.effective_state(now_ms) is model.effective_state
            # The store's deadline is the model's less the real time the run has taken
            # since the reservation was made: under the minute that keeps them agreeing.
            elapsed = model.remaining_ms - (actual.expires_at_ms - now_ms)
            assert 0 <= elapsed < MINUTE, f"store and model disagree on time by {elapsed} ms"

    def _check_seats_and_limits(self, view: EventView, now_ms: int) -> None:
        """At most one active reservation per seat, and the claims say which; the holds
        zset has exactly the RESERVED ones, at their expiresAt; no customer over the
        per-customer limit. From Redis alone, whatever the model says."""
        claims: dict[str, str] = {}
        holds: dict[str, float] = {}
        for rid, r in view.reservations.items():
            if r.state.is_active:
                for seat in r.seat_ids:
                    assert seat not in claims, f"seat {seat}: {claims[seat]} and {rid} active"
                    claims[seat] = rid
            if r.state is S.RESERVED:
                holds[rid] = r.expires_at_ms
        assert view.claims == claims
        assert view.holds == holds
        # A seat's claim key names its claim's reservation while the claim is live, until
        # the millisecond the hold is due (for good once booked); otherwise there is none.
        for seat, key in view.claim_keys.items():
            r = view.reservations[claims[seat]] if seat in claims else None
            if r is not None and r.state is S.CONFIRMED:
                assert key == (r.id, -1), seat
            elif r is not None and r.expires_at_ms > now_ms:
                assert key == (r.id, r.expires_at_ms - 1), seat
            else:
                assert key == (None, -2), seat
        # No customer has more live seats than allowed (due holds do not count).
        live: Counter[str] = Counter()
        for r in view.reservations.values():
            if r.effective_state(now_ms).is_active:
                live[r.customer_id] += len(r.seat_ids)
        assert all(n <= RULES.max_seats_per_customer for n in live.values()), live

    def _check_counts(self, event_id: str, view: EventView) -> None:
        """The event's counters, summary, seat map and per-customer counts."""
        model = self.model
        assert view.counters == model.counters(event_id)
        assert view.customers == model.customer_seats(event_id)
        status = model.seat_status(event_id)
        assert view.seats == status
        by_status = Counter(status.values())
        held, booked = by_status[SeatStatus.HELD], by_status[SeatStatus.BOOKED]
        total = len(EVENTS[event_id])
        seats = SeatCounts(total=total, free=total - held - booked, held=held, booked=booked)
        assert view.summary == EventSummary(event_id, event_id.upper(), seats)
        # every change is in the event's log stream as well as in its reservation
        assert view.log_length == model.history_length(event_id)

    def _check_sweep_index(self, event_id: str, view: EventView, due: dict[str, float]) -> None:
        """An event with holds is indexed no later than its earliest hold: the sweep
        finds every due hold."""
        if view.holds:
            assert event_id in due, f"{event_id} has holds but is not in the sweep index"
            assert due[event_id] <= min(view.holds.values())


# Runs of up to 50 steps; fakeredis runs Lua about four times slower than Redis, so it
# gets fewer of them, and so does the cluster (the default run stays well under a minute
# on this 2-core machine, about 20 s for fakeredis and Redis together).
EXAMPLES = {"fake": 50, "real": 150}
LONG_EXAMPLES = 1000
LONG_STEPS = 100


# --long takes about 2 minutes on Redis and 4 on fakeredis (unloaded), and shrinking a
# failure up to 5 more (hypothesis's own bound): more than the suite's 300 s per test.
@pytest.mark.timeout(1800)
def test_reservations_follow_the_model(backend: Backend, long_mode: bool) -> None:
    class OnBackend(ReservationMachine):
        def __init__(self) -> None:
            super().__init__(backend)

    run_state_machine_as_test(
        OnBackend,
        settings=settings(
            max_examples=LONG_EXAMPLES if long_mode else EXAMPLES.get(backend.name, 50),
            stateful_step_count=LONG_STEPS if long_mode else 50,
        ),
    )


@pytest.mark.parametrize("minutes", [1, 10])
def test_shift_deadlines_moves_every_deadline(backend: Backend, minutes: int) -> None:
    """What advance_time relies on: after the shift, a 10-minute hold is due exactly
    when the minutes moved reach its length, for every reader and for the sweep."""
    machine = ReservationMachine(backend)
    try:
        rid = machine.reserve("alice", "e1", ["A1", "A2"], None).values[0]
        machine.advance_time(minutes)
        machine.store_matches_model()
        due = minutes * MINUTE >= RULES.hold_ms
        assert machine.model.reservations[rid].due is due
        machine.run_sweep(100)
        machine.store_matches_model()
        assert machine.model.reservations[rid].state is (S.EXPIRED if due else S.RESERVED)
    finally:
        machine.teardown()

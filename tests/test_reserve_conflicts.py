"""reserve.lua answers most calls of a burst (seat taken) before its helpers are defined;
the rest go through its full list of guards. Both must give the same answers, to the
millisecond: on fakeredis, whose TIME and key expiry read a clock the test sets, each
case runs without an Idempotency-Key (the early answer) and with one (the full script)."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import TypeVar

import fakeredis
import pytest
from fakeredis._socket import _base as fakeredis_socket
from fakeredis.commands_mixins import server_mixin

from seatres.domain.errors import DomainError, NotFound, SeatUnavailable
from seatres.domain.ids import new_reservation_id
from seatres.domain.models import Caller, IdempotencyKey, Outcome
from seatres.domain.states import ReservationState, Transition
from seatres.store import keys
from seatres.store.redis_store import RedisStore

T = TypeVar("T")
START_MS = 1_800_000_000_000
HOLD_MS = 60_000
SEATS = ["A1", "A2", "A3"]


class Clock:
    """What fakeredis's TIME answers, and the time its keys expire by, in ms."""

    def __init__(self) -> None:
        self.ms = START_MS

    def time(self) -> float:
        return self.ms / 1000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(server_mixin, "time", SimpleNamespace(time=c.time))
    monkeypatch.setattr(fakeredis_socket, "time", SimpleNamespace(time=c.time))
    return c


@pytest.fixture
def run() -> Iterator[Callable[[Callable[[RedisStore], Awaitable[T]]], T]]:
    server = fakeredis.FakeServer()

    def go(scenario: Callable[[RedisStore], Awaitable[T]]) -> T:
        async def main() -> T:
            redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
            store = RedisStore(redis)
            try:
                return await scenario(store)
            finally:
                await store.aclose()
                await redis.aclose()

        return asyncio.run(main())

    yield go


def _key(request: str, with_key: bool) -> IdempotencyKey | None:
    return IdempotencyKey(f"key-{request}", f"fp-{request}") if with_key else None


async def _hold(store: RedisStore, customer: str, seats: list[str]) -> str:
    rid = new_reservation_id("e")
    await store.reserve("e", rid, customer, seats, HOLD_MS)
    return rid


async def _bob_asks(store: RedisStore, seats: list[str], with_key: bool) -> Outcome:
    request = "-".join(seats)
    return await store.reserve(
        "e", new_reservation_id("e"), "bob", seats, HOLD_MS, idempotency=_key(request, with_key)
    )


WITH_KEY = pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])


@WITH_KEY
@pytest.mark.parametrize(("after_ms", "free"), [(HOLD_MS - 1, False), (HOLD_MS, True)])
def test_a_hold_is_taken_until_its_deadline_and_free_from_it(
    run: Callable[..., object], clock: Clock, with_key: bool, after_ms: int, free: bool
) -> None:
    async def scenario(store: RedisStore) -> None:
        await store.upsert_event("e", "E", SEATS)
        alice = await _hold(store, "alice", ["A1"])
        clock.ms = START_MS + after_ms
        if not free:
            with pytest.raises(SeatUnavailable) as refused:
                await _bob_asks(store, ["A1"], with_key)
            assert refused.value.seat_ids == ["A1"]
            return
        bob = await _bob_asks(store, ["A1"], with_key)
        assert bob.reservation.seat_ids == ("A1",)
        assert bob.reservation.created_at_ms == clock.ms
        ended, _ = await store.get_reservation("e", alice)
        assert ended is not None and ended.state is ReservationState.EXPIRED

    run(scenario)


@WITH_KEY
def test_a_confirmed_seat_stays_taken_past_the_hold_time(
    run: Callable[..., object], clock: Clock, with_key: bool
) -> None:
    async def scenario(store: RedisStore) -> None:
        await store.upsert_event("e", "E", SEATS)
        alice = await _hold(store, "alice", ["A1"])
        await store.transition("e", alice, Transition.CONFIRM, Caller("alice"))
        clock.ms = START_MS + 10 * HOLD_MS
        with pytest.raises(SeatUnavailable) as refused:
            await _bob_asks(store, ["A1"], with_key)
        assert refused.value.seat_ids == ["A1"]

    run(scenario)


@WITH_KEY
@pytest.mark.parametrize(
    ("asked", "refusal", "seat_ids"),
    [
        (["A1", "A2"], SeatUnavailable, ["A1", "A2"]),  # every seat taken: all named
        (["A1", "A3"], SeatUnavailable, ["A1"]),  # one free: only the taken one named
        (["A3", "A1"], SeatUnavailable, ["A1"]),
        (["A1", "Z9"], NotFound, ["Z9"]),  # an unknown seat comes before a taken one
    ],
)
def test_several_seats(
    run: Callable[..., object],
    clock: Clock,
    with_key: bool,
    asked: list[str],
    refusal: type[DomainError],
    seat_ids: list[str],
) -> None:
    async def scenario(store: RedisStore) -> None:
        await store.upsert_event("e", "E", SEATS)
        await _hold(store, "alice", ["A1", "A2"])
        with pytest.raises(refusal) as refused:
            await _bob_asks(store, asked, with_key)
        assert refused.value.extra["seatIds"] == seat_ids

    run(scenario)


def test_a_retried_call_finds_its_own_hold(run: Callable[..., object], clock: Clock) -> None:
    """The claim carries the caller's own id: not a conflict, the reservation it made."""

    async def scenario(store: RedisStore) -> None:
        await store.upsert_event("e", "E", SEATS)
        rid = new_reservation_id("e")
        first = await store.reserve("e", rid, "alice", ["A1", "A2"], HOLD_MS)
        clock.ms += 5
        again = await store.reserve("e", rid, "alice", ["A1", "A2"], HOLD_MS)
        assert again.reservation == first.reservation

    run(scenario)


def test_a_refusal_under_an_idempotency_key_is_remembered(
    run: Callable[..., object], clock: Clock
) -> None:
    """The early answer is only for calls without a key: one with a key must record it."""

    async def scenario(store: RedisStore) -> None:
        await store.upsert_event("e", "E", SEATS)
        alice = await _hold(store, "alice", ["A1"])
        with pytest.raises(SeatUnavailable) as first:
            await _bob_asks(store, ["A1"], with_key=True)
        assert not first.value.replayed
        await store.transition("e", alice, Transition.CANCEL, Caller("alice"))
        with pytest.raises(SeatUnavailable) as again:
            await _bob_asks(store, ["A1"], with_key=True)
        assert again.value.replayed and again.value.seat_ids == ["A1"]

    run(scenario)


def test_a_seats_claim_key_lives_exactly_as_long_as_its_live_claim(
    run: Callable[..., object], clock: Clock
) -> None:
    """The early answer trusts the claim key alone: it must name the claim's reservation,
    run out the millisecond its hold is due, move with an extension, stop expiring once
    booked, and be gone with every ended claim (cancel, sweep, lazy expiry)."""

    async def scenario(store: RedisStore) -> None:
        redis = store._redis
        await store.upsert_event("e", "E", ["A1", "A2", "A3", "A4"])

        async def claim_key(seat: str) -> tuple[str | None, int]:
            key = keys.claim_key("e", seat)
            return await redis.get(key), await redis.pexpiretime(key)

        alice = await _hold(store, "alice", ["A1", "A2"])
        deadline = START_MS + HOLD_MS
        assert await claim_key("A1") == (alice, deadline - 1)
        assert await claim_key("A2") == (alice, deadline - 1)

        await store.extend("e", alice, Caller("alice"), 5_000, 10 * HOLD_MS)
        assert await claim_key("A1") == (alice, deadline + 5_000 - 1)
        await store.transition("e", alice, Transition.CONFIRM, Caller("alice"))
        assert await claim_key("A1") == (alice, -1)  # no expiry

        bob = await _hold(store, "bob", ["A3"])
        await store.transition("e", bob, Transition.CANCEL, Caller("bob"))
        assert await claim_key("A3") == (None, -2)

        carol = await _hold(store, "carol", ["A4"])
        clock.ms = deadline - 1
        assert await claim_key("A4") == (carol, deadline - 1)
        clock.ms = deadline
        assert await claim_key("A4") == (None, -2)  # Redis let it run out
        # lazy expiry: the full script ends carol's hold and writes dave's claim key
        dave = await _bob_asks(store, ["A4"], with_key=False)
        assert await claim_key("A4") == (dave.reservation.id, clock.ms + HOLD_MS - 1)

        # the sweep: nothing of erin's is left, even had Redis not reclaimed the key yet
        clock.ms = START_MS
        erin = await _hold(store, "erin", ["A3"])
        await redis.persist(keys.claim_key("e", "A3"))
        clock.ms = START_MS + HOLD_MS
        swept = await store.expire_batch("e", 10)
        assert swept.expired_ids == (erin,)
        assert await claim_key("A3") == (None, -2)
        ended, _ = await store.get_reservation("e", erin)
        assert ended is not None and ended.state is ReservationState.EXPIRED

    run(scenario)


def test_a_claim_without_its_key_is_still_taken(run: Callable[..., object], clock: Clock) -> None:
    """Claims made before claim keys existed have none: the early answer cannot refuse
    them, the full script must (from the claims hash), and a confirm gives them one."""

    async def scenario(store: RedisStore) -> None:
        redis = store._redis
        await store.upsert_event("e", "E", SEATS)
        alice = await _hold(store, "alice", ["A1"])
        await redis.delete(keys.claim_key("e", "A1"))
        with pytest.raises(SeatUnavailable) as refused:
            await _bob_asks(store, ["A1"], with_key=False)
        assert refused.value.seat_ids == ["A1"]
        await store.transition("e", alice, Transition.CONFIRM, Caller("alice"))
        assert await redis.get(keys.claim_key("e", "A1")) == alice

    run(scenario)

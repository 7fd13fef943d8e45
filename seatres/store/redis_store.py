"""RedisStore: the domain's store, one Lua script per transition.

Result codes of the scripts are mapped to domain errors here and nowhere else
(`_raise_for`). Connection trouble becomes StoreUnavailable (503), never a 500."""

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import orjson
from redis.asyncio import Redis
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from seatres.domain.errors import (
    InvalidTransition,
    NotFound,
    ReservationExpired,
    SeatUnavailable,
    StoreUnavailable,
)
from seatres.domain.models import (
    Caller,
    EventSummary,
    EventUpsert,
    Reservation,
    SeatCounts,
    SeatPage,
    SeatStatus,
    SweepBatch,
)
from seatres.domain.states import ReservationState, Transition
from seatres.store import keys, scripts

# Script result codes (see the header of each file in seatres/lua).
CREATED = 1
UNCHANGED = 2
EVENT_NOT_FOUND = -1
UNKNOWN_SEATS = -2
SEATS_TAKEN = -3
INVALID_TRANSITION = -4
EXPIRED = -5
NOT_OWNER = -6

# An event claimed by a sweep that died is handed to another sweep after this long.
SWEEP_LEASE_MS = 90_000


def _raise_for(code: int, payload: Sequence[Any], what: str) -> NoReturn:
    """The one place where a script's refusal becomes a domain error."""
    if code == EVENT_NOT_FOUND:
        raise NotFound(f"{what} not found")
    if code == UNKNOWN_SEATS:
        raise NotFound(f"Seats not found in this event: {', '.join(payload)}", seatIds=payload)
    if code == SEATS_TAKEN:
        raise SeatUnavailable(list(payload))
    if code == INVALID_TRANSITION:
        state = _reservation(payload[0]).state.value
        raise InvalidTransition(f"A {state} reservation cannot make this transition")
    if code == EXPIRED:
        raise ReservationExpired("The hold expired; its seats are free again")
    if code == NOT_OWNER:
        raise NotFound("Reservation not found")
    raise RuntimeError(f"unknown result code {code} from the store")


def _reservation(raw: str) -> Reservation:
    data = orjson.loads(raw)
    return Reservation(
        id=data["id"],
        event_id=data["eventId"],
        seat_ids=tuple(data["seatIds"]),
        customer_id=data["customerId"],
        state=ReservationState(data["state"]),
        created_at_ms=int(data["createdAt"]),
        expires_at_ms=int(data["expiresAt"]),
        updated_at_ms=int(data["updatedAt"]),
    )


@asynccontextmanager
async def _unavailable_on_failure() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError) as exc:
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc
    except ResponseError as exc:
        if str(exc).startswith(("OOM", "MASTERDOWN", "LOADING", "READONLY", "NOREPLICAS")):
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        raise


class RedisStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def ping(self) -> None:
        async with _unavailable_on_failure():
            await self._redis.ping()
            if not await scripts.scripts_loaded(self._redis):
                await scripts.load_all(self._redis)

    async def _run(self, name: str, event_keys: Sequence[str], args: Sequence[str | int]) -> Any:
        async with _unavailable_on_failure():
            return await scripts.run(self._redis, name, event_keys, args)

    async def upsert_event(self, event_id: str, name: str, seat_ids: Sequence[str]) -> EventUpsert:
        k = keys.event_keys(event_id)
        result = await self._run(
            "upsert_event",
            [k.meta, k.seats, k.claims, k.reservations, k.holds],
            [event_id, name, *seat_ids],
        )
        code = int(result[0])
        if code < 0:
            _raise_for(code, result[1:], "Event")
        return EventUpsert(created=code == CREATED, added=int(result[1]), removed=int(result[2]))

    async def event_summary(self, event_id: str) -> EventSummary:
        k = keys.event_keys(event_id)
        result = await self._run("event_summary", [k.meta, k.seats, k.reservations, k.holds], [])
        if not result:
            raise NotFound("Event not found")
        name, total, held, booked = result[0], int(result[1]), int(result[2]), int(result[3])
        counts = SeatCounts(total=total, free=total - held - booked, held=held, booked=booked)
        return EventSummary(event_id=event_id, name=name, seats=counts)

    async def seat_page(self, event_id: str, cursor: str | None, limit: int) -> SeatPage:
        k = keys.event_keys(event_id)
        result = await self._run(
            "seat_page", [k.meta, k.seats, k.claims, k.reservations], [cursor or "", limit]
        )
        if result and result[0] == EVENT_NOT_FOUND:
            raise NotFound("Event not found")
        seats = tuple((result[i], SeatStatus(result[i + 1])) for i in range(0, len(result), 2))
        next_cursor = seats[-1][0] if len(seats) == limit else None
        return SeatPage(seats=seats, next_cursor=next_cursor)

    async def reserve(
        self,
        event_id: str,
        reservation_id: str,
        customer_id: str,
        seat_ids: Sequence[str],
        hold_ms: int,
    ) -> Reservation:
        k = keys.event_keys(event_id)
        s = scripts.script("reserve")
        call = [
            s.sha,
            5,
            k.seats,
            k.claims,
            k.reservations,
            k.holds,
            k.meta,
            reservation_id,
            customer_id,
            hold_ms,
            *seat_ids,
        ]
        # The sweep index lives in another slot, so it is written beside the script,
        # in the same round trip. Its score is this host's estimate of the expiry; the
        # sweep re-reads the true one from the event's holds set.
        due_estimate = int(time.time() * 1000) + hold_ms
        async with _unavailable_on_failure():
            for _ in range(2):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.execute_command("EVALSHA", *call)
                    pipe.zadd(keys.SWEEP_DUE, {event_id: due_estimate}, lt=True)
                    result, _indexed = await pipe.execute(raise_on_error=False)
                if isinstance(result, NoScriptError):
                    await self._redis.script_load(s.source)
                    continue
                if isinstance(result, Exception):
                    raise result
                break
        code = int(result[0])
        if code < 0:
            _raise_for(code, result[1:], "Event")
        return _reservation(result[1])

    async def transition(
        self, event_id: str, reservation_id: str, transition: Transition, caller: Caller
    ) -> Reservation:
        if transition is Transition.EXPIRE:
            raise ValueError("expiry is the sweep's job: use expire_batch")
        k = keys.event_keys(event_id)
        result = await self._run(
            transition.value,
            [k.claims, k.reservations, k.holds, k.meta],
            [reservation_id, caller.customer_id, "1" if caller.is_admin else "0"],
        )
        code = int(result[0])
        if code < 0:
            _raise_for(code, result[1:], "Reservation")
        return _reservation(result[1])

    async def get_reservation(
        self, event_id: str, reservation_id: str
    ) -> tuple[Reservation | None, int]:
        k = keys.event_keys(event_id)
        async with _unavailable_on_failure(), self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(k.reservations, reservation_id)
            pipe.time()
            raw, (seconds, micros) = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return (_reservation(raw) if raw else None), now_ms

    # The sweep's side (seatres.jobs.sweep)

    async def claim_due_events(self, limit: int) -> list[str]:
        result = await self._run(
            "claim_due_events", [keys.SWEEP_DUE, keys.SWEEP_CLAIMED], [SWEEP_LEASE_MS, limit]
        )
        return list(dict.fromkeys(result))

    async def expire_batch(self, event_id: str, batch_size: int) -> SweepBatch:
        k = keys.event_keys(event_id)
        result = await self._run(
            "expire", [k.claims, k.reservations, k.holds, k.meta], [batch_size]
        )
        next_due = int(result[2])
        return SweepBatch(
            expired_ids=tuple(result[3:]),
            more_due=bool(int(result[1])),
            next_due_ms=None if next_due < 0 else next_due,
        )

    async def release_event(self, event_id: str, next_due_ms: int | None) -> None:
        async with _unavailable_on_failure(), self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.SWEEP_CLAIMED, event_id)
            if next_due_ms is not None:
                pipe.zadd(keys.SWEEP_DUE, {event_id: next_due_ms}, lt=True)
            await pipe.execute()

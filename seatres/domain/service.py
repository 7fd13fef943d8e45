"""ReservationService: every business rule the HTTP layer and the CLI rely on.

Validation, authorization and ownership are decided here; the one-active-reservation
invariant and the state machine are enforced atomically by the store's scripts (see
seatres/lua), which this service calls exactly once per operation."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from seatres.domain import ids
from seatres.domain.errors import Forbidden, NotFound, ValidationFailed
from seatres.domain.models import (
    Caller,
    EventSummary,
    EventUpsert,
    IdempotencyKey,
    Outcome,
    Reservation,
    SeatPage,
)
from seatres.domain.ports import ReservationStore
from seatres.domain.states import Transition

MAX_SEATS_PER_EVENT = 100_000
MAX_EVENT_NAME = 200
MAX_PAGE_SIZE = 1000


IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
MAX_EXTENSION_SECONDS = 86_400


@dataclass(frozen=True)
class Rules:
    hold_ms: int
    max_seats_per_reservation: int = 10
    max_seats_per_customer: int = 10  # active seats in one event; 0 = no limit
    max_hold_ms: int = 30 * 60 * 1000  # longest a hold may last, extensions included


class ReservationService:
    def __init__(self, store: ReservationStore, rules: Rules) -> None:
        self._store = store
        self._rules = rules

    # Events

    async def upsert_event(
        self, caller: Caller, event_id: str, name: str, seat_ids: Sequence[str]
    ) -> EventUpsert:
        require_admin(caller)
        ids.check_id(event_id, "eventId")
        name = name.strip()
        if not 1 <= len(name) <= MAX_EVENT_NAME or not name.isprintable():
            raise ValidationFailed(f"name must be 1-{MAX_EVENT_NAME} printable characters")
        if not 1 <= len(seat_ids) <= MAX_SEATS_PER_EVENT:
            raise ValidationFailed(f"seats must list 1-{MAX_SEATS_PER_EVENT} seat ids")
        for seat_id in seat_ids:
            ids.check_id(seat_id, "every seat id")
        _require_unique(seat_ids, "seats")
        return await self._store.upsert_event(event_id, name, seat_ids)

    async def event_summary(self, event_id: str) -> EventSummary:
        ids.check_id(event_id, "eventId")
        return await self._store.event_summary(event_id)

    async def seat_page(self, event_id: str, cursor: str | None, limit: int) -> SeatPage:
        ids.check_id(event_id, "eventId")
        if cursor is not None:
            ids.check_id(cursor, "cursor")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        return await self._store.seat_page(event_id, cursor, limit)

    # Reservations

    async def reserve(
        self,
        caller: Caller,
        event_id: str,
        seat_ids: Sequence[str],
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        ids.check_id(event_id, "eventId")
        ids.check_customer_id(caller.customer_id)
        limit = self._rules.max_seats_per_reservation
        if not 1 <= len(seat_ids) <= limit:
            raise ValidationFailed(f"a reservation holds 1-{limit} seats")
        for seat_id in seat_ids:
            ids.check_id(seat_id, "seatId")
        _require_unique(seat_ids, "seatIds")
        _check_idempotency(idempotency)
        # The id is chosen here, before the store is called, so that a retried call
        # (redis-py retries after a timeout) finds the reservation it already made.
        reservation_id = ids.new_reservation_id(event_id)
        return await self._store.reserve(
            event_id,
            reservation_id,
            caller.customer_id,
            seat_ids,
            self._rules.hold_ms,
            self._rules.max_seats_per_customer,
            idempotency,
        )

    async def confirm(
        self, caller: Caller, reservation_id: str, idempotency: IdempotencyKey | None = None
    ) -> Outcome:
        return await self._transition(caller, reservation_id, Transition.CONFIRM, idempotency)

    async def cancel(
        self, caller: Caller, reservation_id: str, idempotency: IdempotencyKey | None = None
    ) -> Outcome:
        return await self._transition(caller, reservation_id, Transition.CANCEL, idempotency)

    async def extend(
        self,
        caller: Caller,
        reservation_id: str,
        seconds: int,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        """Push back the expiry of the caller's own hold (admins included: an extension
        is the customer's decision), up to Rules.max_hold_ms from its creation."""
        if not 1 <= seconds <= MAX_EXTENSION_SECONDS:
            raise ValidationFailed(f"seconds must be between 1 and {MAX_EXTENSION_SECONDS}")
        _check_idempotency(idempotency)
        event_id = ids.event_of_reservation(reservation_id)
        owner_only = Caller(caller.customer_id, is_admin=False)
        return await self._store.extend(
            event_id,
            reservation_id,
            owner_only,
            seconds * 1000,
            self._rules.max_hold_ms,
            idempotency,
        )

    async def get(self, caller: Caller, reservation_id: str) -> tuple[Reservation, int]:
        """The reservation and the store's clock, to tell a hold already past its time."""
        event_id = ids.event_of_reservation(reservation_id)
        reservation, now_ms = await self._store.get_reservation(event_id, reservation_id)
        if reservation is None or not _may_access(caller, reservation):
            # Someone else's reservation is indistinguishable from a missing one.
            raise NotFound("Reservation not found")
        return reservation, now_ms

    async def _transition(
        self,
        caller: Caller,
        reservation_id: str,
        transition: Transition,
        idempotency: IdempotencyKey | None,
    ) -> Outcome:
        _check_idempotency(idempotency)
        event_id = ids.event_of_reservation(reservation_id)
        return await self._store.transition(
            event_id, reservation_id, transition, caller, idempotency
        )


def _may_access(caller: Caller, reservation: Reservation) -> bool:
    return caller.is_admin or caller.customer_id == reservation.customer_id


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("This needs an admin token (scope seatres:admin)")


def _check_idempotency(idempotency: IdempotencyKey | None) -> None:
    if idempotency is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency.key):
        raise ValidationFailed("Idempotency-Key must be 1-255 printable ASCII characters")


def _require_unique(values: Sequence[str], field: str) -> None:
    if len(set(values)) != len(values):
        raise ValidationFailed(f"{field} must not repeat a seat id")

"""What the domain needs from a store. seatres.store.RedisStore is the implementation;
the domain depends only on this protocol, never on Redis types."""

from collections.abc import Sequence
from typing import Protocol

from seatres.domain.models import (
    Caller,
    Claim,
    EventSummary,
    EventUpsert,
    IdempotencyKey,
    Outcome,
    Reservation,
    SeatPage,
    SweepBatch,
)
from seatres.domain.states import Transition


class ReservationStore(Protocol):
    async def ping(self) -> None: ...

    async def upsert_event(
        self, event_id: str, name: str, seat_ids: Sequence[str]
    ) -> EventUpsert: ...

    async def event_summary(self, event_id: str) -> EventSummary: ...

    async def seat_page(self, event_id: str, cursor: str | None, limit: int) -> SeatPage: ...

    async def reserve(
        self,
        event_id: str,
        reservation_id: str,
        customer_id: str,
        seat_ids: Sequence[str],
        hold_ms: int,
        max_seats_per_customer: int = 0,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        """reservation_id is chosen by the caller: a retried call answers with the
        reservation its first run made."""
        ...

    async def transition(
        self,
        event_id: str,
        reservation_id: str,
        transition: Transition,
        caller: Caller,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome: ...

    async def extend(
        self,
        event_id: str,
        reservation_id: str,
        caller: Caller,
        extra_ms: int,
        max_hold_ms: int,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome: ...

    async def get_reservation(
        self, event_id: str, reservation_id: str
    ) -> tuple[Reservation | None, int]:
        """The reservation (None when missing) and the store's clock in ms."""
        ...


class ExpiryStore(Protocol):
    async def claim_due_events(self, limit: int) -> list[Claim]: ...

    async def expire_batch(self, event_id: str, batch_size: int) -> SweepBatch: ...

    async def release_event(self, claim: Claim, next_due_ms: int | None) -> None:
        """Re-index the event (next_due_ms) and drop the claim if it is still this one."""
        ...

"""What the domain hands out: plain immutable values, no Redis or HTTP types."""

from dataclasses import dataclass
from enum import StrEnum

from seatres.domain.states import ReservationState


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a reservation's history: a state change or an extension."""

    at_ms: int
    action: str  # reserve, confirm, cancel, expire, extend
    from_state: ReservationState | None
    to_state: ReservationState
    by: str  # the customer or admin who acted, or "system"


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    event_id: str
    seat_ids: tuple[str, ...]
    customer_id: str
    state: ReservationState
    created_at_ms: int
    expires_at_ms: int
    updated_at_ms: int
    history: tuple[Change, ...] = ()

    def effective_state(self, now_ms: int) -> ReservationState:
        """A hold past its time is expired, even before anything has written that down."""
        if self.state is ReservationState.RESERVED and self.expires_at_ms <= now_ms:
            return ReservationState.EXPIRED
        return self.state


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reservation as a store call left it; replayed when it is the remembered
    answer of an earlier request with the same idempotency key."""

    reservation: Reservation
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key and the fingerprint of the request that carries it."""

    key: str
    fingerprint: str


class SeatStatus(StrEnum):
    FREE = "free"
    HELD = "held"
    BOOKED = "booked"


@dataclass(frozen=True, slots=True)
class SeatCounts:
    total: int
    free: int
    held: int
    booked: int


@dataclass(frozen=True, slots=True)
class EventSummary:
    event_id: str
    name: str
    seats: SeatCounts


@dataclass(frozen=True, slots=True)
class SeatPage:
    seats: tuple[tuple[str, SeatStatus], ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class EventUpsert:
    created: bool
    added: int
    removed: int


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the JWT subject, and whether it carries the admin scope."""

    customer_id: str
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class SweepBatch:
    """What one run of the expire script did for one event."""

    expired_ids: tuple[str, ...]
    more_due: bool
    next_due_ms: int | None


@dataclass(frozen=True, slots=True)
class Claim:
    """An event a sweep owns until lease_until_ms (then another sweep may take it)."""

    event_id: str
    lease_until_ms: int


@dataclass(frozen=True, slots=True)
class SweepStats:
    """What the expiry job last reported, kept in Redis (the job runs in the rq worker)."""

    last_success_ms: int | None
    last_seconds: float
    last_expired: int
    runs: int
    expired: int


@dataclass(frozen=True, slots=True)
class EventCounts:
    event_id: str
    name: str
    total: int
    held: int
    booked: int

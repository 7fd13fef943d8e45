"""What the domain hands out: plain immutable values, no Redis or HTTP types."""

from dataclasses import dataclass
from enum import StrEnum

from seatres.domain.states import ReservationState


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

    def effective_state(self, now_ms: int) -> ReservationState:
        """A hold past its time is expired, even before anything has written that down."""
        if self.state is ReservationState.RESERVED and self.expires_at_ms <= now_ms:
            return ReservationState.EXPIRED
        return self.state


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

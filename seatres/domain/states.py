"""Reservation states and the only transitions allowed between them."""

from enum import StrEnum


class ReservationState(StrEnum):
    RESERVED = "RESERVED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def is_active(self) -> bool:
        """Active reservations own their seats: at most one per seat."""
        return self in ACTIVE_STATES

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]

    def can_become(self, target: "ReservationState") -> bool:
        return target in TRANSITIONS[self]


class Transition(StrEnum):
    """What a caller asks for; each maps to one Lua script of the same name."""

    CONFIRM = "confirm"
    CANCEL = "cancel"
    EXPIRE = "expire"

    @property
    def target(self) -> ReservationState:
        return _TARGETS[self]


# The whole state machine. The Lua scripts enforce exactly this table inside Redis;
# tests/test_state_machine.py checks that they agree.
TRANSITIONS: dict[ReservationState, frozenset[ReservationState]] = {
    ReservationState.RESERVED: frozenset(
        {ReservationState.CONFIRMED, ReservationState.CANCELLED, ReservationState.EXPIRED}
    ),
    ReservationState.CONFIRMED: frozenset(),
    ReservationState.CANCELLED: frozenset(),
    ReservationState.EXPIRED: frozenset(),
}

ACTIVE_STATES = frozenset({ReservationState.RESERVED, ReservationState.CONFIRMED})

_TARGETS = {
    Transition.CONFIRM: ReservationState.CONFIRMED,
    Transition.CANCEL: ReservationState.CANCELLED,
    Transition.EXPIRE: ReservationState.EXPIRED,
}

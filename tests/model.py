"""A plain-Python model of the reservation rules, for tests/test_model.py.

No Redis, no asyncio: a dictionary of reservations and of remembered idempotent answers,
and the rules of README.md ("Flash-sale rules", "Errors", "Lazy expiry") written out as
straight-line code. The model never reads a clock: every reservation carries the time it
has left (`remaining_ms`), and the test moves model time and store deadlines together
(see `shift_deadlines` in tests/test_model.py).

`Model.handle` says what a request must answer and applies its effect; the test then
sends the same request to the real service and hands the real answer back with
`Model.settle` (the store picks reservation ids, and a replay must repeat the very first
answer, byte for byte)."""

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from seatres.domain import ids
from seatres.domain.errors import (
    DomainError,
    IdempotencyKeyMismatch,
    InvalidTransition,
    LimitExceeded,
    NotFound,
    ReservationExpired,
    SeatUnavailable,
    ValidationFailed,
)
from seatres.domain.models import Caller, IdempotencyKey, Outcome, Reservation, SeatStatus
from seatres.domain.service import Rules
from seatres.domain.states import ReservationState

S = ReservationState

# One history entry as the model sees it: action, from state, to state, by whom.
Entry = tuple[str, ReservationState | None, ReservationState, str]
# What the service answered: a reservation, or the domain error it raised.
Answer = Reservation | DomainError


class Kind(StrEnum):
    RESERVE = "reserve"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    EXTEND = "extend"


@dataclass(frozen=True)
class Request:
    """One call of the domain API, complete enough to be sent again unchanged."""

    kind: Kind
    caller: Caller
    event_id: str = ""  # reserve
    seat_ids: tuple[str, ...] = ()  # reserve
    reservation_id: str = ""  # confirm, cancel, extend
    seconds: int = 0  # extend
    key: str | None = None  # Idempotency-Key

    def fingerprint(self) -> str:
        """As the HTTP layer makes it (seatres/http/requests.py): method, path and body,
        so that two requests share a fingerprint exactly when they are the same call."""
        if self.kind is Kind.RESERVE:
            path = "/reservations"
            body: dict[str, Any] = {"eventId": self.event_id, "seatIds": list(self.seat_ids)}
        else:
            path = f"/reservations/{self.reservation_id}/{self.kind.value}"
            body = {"seconds": self.seconds} if self.kind is Kind.EXTEND else {}
        canonical = f"POST {path}\n".encode() + orjson.dumps(body)
        return hashlib.sha256(canonical).hexdigest()

    def idempotency(self) -> IdempotencyKey | None:
        return None if self.key is None else IdempotencyKey(self.key, self.fingerprint())


@dataclass(eq=False)  # identity, not value: reservations go in sets
class ModelReservation:
    event_id: str
    seat_ids: tuple[str, ...]
    customer_id: str
    lifetime_ms: int  # expiresAt - createdAt: the hold plus its extensions
    remaining_ms: int  # expiresAt - now, in model time
    state: ReservationState = S.RESERVED
    history: list[Entry] = field(default_factory=list)
    id: str = ""  # known once the store answered

    @property
    def due(self) -> bool:
        """A hold past its time: counts as expired, whether or not it is written down."""
        return self.state is S.RESERVED and self.remaining_ms <= 0

    @property
    def effective_state(self) -> ReservationState:
        return S.EXPIRED if self.due else self.state


# Where an idempotent answer is kept: event, caller, Idempotency-Key.
Slot = tuple[str, str, str]


@dataclass(frozen=True)
class Record:
    """The remembered answer of one (event, caller, Idempotency-Key)."""

    fingerprint: str
    answer: Answer


@dataclass
class Expect:
    """What a request must answer. Exactly one of reservation / error / replay is set."""

    reservation: ModelReservation | None = None  # answered with this reservation
    error: type[DomainError] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the error's extra fields
    replay: Record | None = None  # a replay: answered as this record's first answer
    remember: tuple[Slot, str] | None = None  # where to keep the answer, with what fingerprint


class Model:
    def __init__(self, rules: Rules, events: dict[str, tuple[str, ...]]) -> None:
        self.rules = rules
        self.events = events
        self.reservations: dict[str, ModelReservation] = {}
        self.records: dict[Slot, Record] = {}

    # Requests

    def handle(self, request: Request) -> Expect:
        if request.kind is Kind.RESERVE:
            return self._reserve(request)
        if request.kind is Kind.EXTEND:
            return self._extend(request)
        target = S.CONFIRMED if request.kind is Kind.CONFIRM else S.CANCELLED
        return self._transition(request, target)

    def settle(self, expect: Expect, actual: Outcome | DomainError) -> None:
        """Learn what only the store knows: the new reservation's id, the first answer."""
        answer = actual.reservation if isinstance(actual, Outcome) else actual
        if expect.remember is not None:
            slot, fingerprint = expect.remember
            self.records[slot] = Record(fingerprint, answer)
        new = expect.reservation
        if new is not None and not new.id:
            assert isinstance(answer, Reservation)
            new.id = answer.id
            self.reservations[new.id] = new

    def _idempotency(
        self, request: Request, event_id: str
    ) -> tuple[Expect | None, tuple[Slot, str] | None]:
        """(an answer that ends the request here, or None; where to keep the answer)."""
        if request.key is None:
            return None, None
        slot = (event_id, request.caller.customer_id, request.key)
        fingerprint = request.fingerprint()
        record = self.records.get(slot)
        if record is None:
            return None, (slot, fingerprint)
        if record.fingerprint != fingerprint:
            return Expect(error=IdempotencyKeyMismatch), None
        return Expect(replay=record), None

    def _reserve(self, request: Request) -> Expect:
        seats, customer = request.seat_ids, request.caller.customer_id
        # the service refuses these before the store is called: no idempotency record
        if not 1 <= len(seats) <= self.rules.max_seats_per_reservation:
            return Expect(error=ValidationFailed)
        if len(set(seats)) != len(seats):
            return Expect(error=ValidationFailed)
        event_id = request.event_id
        early, remember = self._idempotency(request, event_id)
        if early is not None:
            return early

        def refuse(error: type[DomainError], **extra: Any) -> Expect:
            return Expect(error=error, extra=extra, remember=remember)

        if event_id not in self.events:
            return Expect(error=NotFound)  # "not found" is never remembered
        unknown = [s for s in seats if s not in self.events[event_id]]
        if unknown:
            return refuse(NotFound, seatIds=unknown)
        holders = self.holders(event_id)
        taken = [s for s in seats if s in holders and not holders[s].due]
        if taken:
            return refuse(SeatUnavailable, seatIds=taken)
        # due holds on the wanted seats are expired (lazily) by a successful reserve
        stale = {holders[s] for s in seats if s in holders}
        limit = self.rules.max_seats_per_customer
        if limit > 0:
            mine = [r for r in self._of_event(event_id) if r.customer_id == customer]
            mine = [r for r in mine if r.state.is_active]
            if _seats(mine) + len(seats) > limit:
                # the customer's own due holds do not count, and are expired as well
                stale |= {r for r in mine if r.due}
                live = [r for r in mine if r not in stale]
                if _seats(live) + len(seats) > limit:
                    return refuse(LimitExceeded, limit=limit)
        for r in stale:
            self._move(r, S.EXPIRED, "expire", "system")
        hold = self.rules.hold_ms
        new = ModelReservation(event_id, seats, customer, lifetime_ms=hold, remaining_ms=hold)
        new.history.append(("reserve", None, S.RESERVED, customer))
        return Expect(reservation=new, remember=remember)

    def _transition(self, request: Request, target: ReservationState) -> Expect:
        caller = request.caller
        early, remember, r = self._find(request, caller)
        if early is not None:
            return early
        assert r is not None
        if r.state is target:  # a repeated transition answers unchanged
            return Expect(reservation=r, remember=remember)
        refusal = self._refusal(r, remember)
        if refusal is not None:
            return refusal
        self._move(r, target, request.kind.value, caller.customer_id)
        return Expect(reservation=r, remember=remember)

    def _extend(self, request: Request) -> Expect:
        # an extension is the owner's decision: the service drops the admin scope
        owner_only = Caller(request.caller.customer_id)
        early, remember, r = self._find(request, owner_only)
        if early is not None:
            return early
        assert r is not None
        refusal = self._refusal(r, remember)
        if refusal is not None:
            return refusal
        extra_ms = request.seconds * 1000
        if r.lifetime_ms + extra_ms > self.rules.max_hold_ms:
            return Expect(
                error=LimitExceeded,
                extra={"limit": self.rules.max_hold_ms // 1000},
                remember=remember,
            )
        r.lifetime_ms += extra_ms
        r.remaining_ms += extra_ms
        r.history.append(("extend", S.RESERVED, S.RESERVED, owner_only.customer_id))
        return Expect(reservation=r, remember=remember)

    def _find(
        self, request: Request, caller: Caller
    ) -> tuple[Expect | None, tuple[Slot, str] | None, ModelReservation | None]:
        """The reservation the caller may act on, or the answer that ends the request."""
        event_id = ids.event_of_reservation(request.reservation_id)
        early, remember = self._idempotency(request, event_id)
        if early is not None:
            return early, None, None
        r = self.reservations.get(request.reservation_id)
        if r is None or not (caller.is_admin or caller.customer_id == r.customer_id):
            # Someone else's reservation is indistinguishable from a missing one, and
            # "not found" is never remembered under an idempotency key (nobody can make
            # records under another's reservation or a made-up event).
            return Expect(error=NotFound), None, None
        return None, remember, r

    def _refusal(self, r: ModelReservation, remember: tuple[Slot, str] | None) -> Expect | None:
        """Why a transition out of r's state is refused; a due hold is expired on the spot."""
        if r.state is S.EXPIRED:
            return Expect(error=ReservationExpired, remember=remember)
        if r.state is not S.RESERVED:
            return Expect(error=InvalidTransition, remember=remember)
        if r.due:
            self._move(r, S.EXPIRED, "expire", "system")
            return Expect(error=ReservationExpired, remember=remember)
        return None

    def _move(self, r: ModelReservation, state: ReservationState, action: str, by: str) -> None:
        assert r.state.can_become(state), (r.state, state)
        r.history.append((action, r.state, state, by))
        r.state = state

    # Time

    def advance(self, delta_ms: int) -> None:
        for r in self.reservations.values():
            r.remaining_ms -= delta_ms

    def sweep(self) -> dict[str, int]:
        """Every due hold written down as EXPIRED; event id -> holds expired."""
        expired: Counter[str] = Counter()
        for r in self.reservations.values():
            if r.due:
                self._move(r, S.EXPIRED, "expire", "system")
                expired[r.event_id] += 1
        return dict(expired)

    # What the store must show

    def _of_event(self, event_id: str) -> list[ModelReservation]:
        return [r for r in self.reservations.values() if r.event_id == event_id]

    def holders(self, event_id: str) -> dict[str, ModelReservation]:
        """Seat -> its active reservation as written down (due holds included)."""
        out: dict[str, ModelReservation] = {}
        for r in self._of_event(event_id):
            if r.state.is_active:
                for seat in r.seat_ids:
                    assert seat not in out, f"model: seat {seat} held twice"
                    out[seat] = r
        return out

    def counters(self, event_id: str) -> tuple[int, int]:
        """The event's held and booked counters as written down (due holds still held)."""
        rs = self._of_event(event_id)
        return _seats(r for r in rs if r.state is S.RESERVED), _seats(
            r for r in rs if r.state is S.CONFIRMED
        )

    def seat_status(self, event_id: str) -> dict[str, SeatStatus]:
        """What readers see: a due hold's seats are free."""
        holders = self.holders(event_id)
        status = {}
        for seat in self.events[event_id]:
            r = holders.get(seat)
            if r is None or r.due:
                status[seat] = SeatStatus.FREE
            elif r.state is S.CONFIRMED:
                status[seat] = SeatStatus.BOOKED
            else:
                status[seat] = SeatStatus.HELD
        return status

    def customer_seats(self, event_id: str) -> dict[str, int]:
        """Customer -> seats in the customer's active reservations, as written down."""
        counts: Counter[str] = Counter()
        for r in self._of_event(event_id):
            if r.state.is_active:
                counts[r.customer_id] += len(r.seat_ids)
        return {c: n for c, n in counts.items() if n}

    def history_length(self, event_id: str) -> int:
        return sum(len(r.history) for r in self._of_event(event_id))


def _seats(reservations: Iterable[ModelReservation]) -> int:
    return sum(len(r.seat_ids) for r in reservations)

"""Domain errors. Each class carries a stable code and the HTTP-agnostic kind of failure;
the HTTP layer turns any of them into a problem+json response in one handler."""

from collections.abc import Sequence
from typing import Any


class DomainError(Exception):
    code = "domain_error"
    title = "Domain error"
    # The status is part of the domain contract (the seed fixes 400 / 404 / 409), kept
    # as a plain number so the domain needs nothing from the HTTP layer.
    status = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        # True when this is the remembered answer of an earlier request that carried
        # the same idempotency key, given again.
        self.replayed = False


class ValidationFailed(DomainError):
    code = "validation_error"
    title = "Invalid request"
    status = 400


class InvalidTransition(DomainError):
    code = "invalid_transition"
    title = "Transition not allowed"
    status = 400


class ReservationExpired(DomainError):
    code = "reservation_expired"
    title = "Reservation expired"
    status = 400


class LimitExceeded(DomainError):
    """Over a configured limit: seats per customer, or the longest hold."""

    code = "limit_exceeded"
    title = "Limit exceeded"
    status = 400

    def __init__(self, detail: str, limit: int) -> None:
        super().__init__(detail, limit=limit)
        self.limit = limit


class IdempotencyKeyMismatch(DomainError):
    code = "idempotency_key_mismatch"
    title = "Idempotency key reused"
    status = 422


class SeatUnavailable(DomainError):
    code = "seat_unavailable"
    title = "Seat unavailable"
    status = 409

    def __init__(self, seat_ids: Sequence[str], detail: str | None = None) -> None:
        self.seat_ids = list(seat_ids)
        super().__init__(
            detail or f"Seats already held or booked: {', '.join(self.seat_ids)}",
            seatIds=self.seat_ids,
        )


class NotFound(DomainError):
    code = "not_found"
    title = "Not found"
    status = 404


class Unauthorized(DomainError):
    code = "unauthorized"
    title = "Unauthorized"
    status = 401


class Forbidden(DomainError):
    code = "forbidden"
    title = "Forbidden"
    status = 403


class StoreUnavailable(DomainError):
    """The store cannot be reached; the request may be retried later."""

    code = "store_unavailable"
    title = "Service unavailable"
    status = 503

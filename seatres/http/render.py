"""Domain values as JSON bodies (camelCase fields, ISO 8601 UTC times)."""

from typing import Any

import orjson

from seatres.clock import iso_time
from seatres.domain.models import Change, EventSummary, Reservation, SeatPage


def dump_json(body: Any) -> bytes:
    return orjson.dumps(body)


def reservation(
    r: Reservation, now_ms: int | None = None, with_history: bool = False
) -> dict[str, Any]:
    state = r.state if now_ms is None else r.effective_state(now_ms)
    body: dict[str, Any] = {
        "id": r.id,
        "eventId": r.event_id,
        "seatIds": list(r.seat_ids),
        "customerId": r.customer_id,
        "state": state.value,
        "createdAt": iso_time(r.created_at_ms),
        "expiresAt": iso_time(r.expires_at_ms),
        "updatedAt": iso_time(r.updated_at_ms),
    }
    if with_history:
        body["history"] = [change(c) for c in r.history]
    return body


def change(c: Change) -> dict[str, Any]:
    return {
        "at": iso_time(c.at_ms),
        "action": c.action,
        "from": c.from_state.value if c.from_state else None,
        "to": c.to_state.value,
        "by": c.by,
    }


def event(summary: EventSummary) -> dict[str, Any]:
    c = summary.seats
    return {
        "eventId": summary.event_id,
        "name": summary.name,
        "seats": {"total": c.total, "free": c.free, "held": c.held, "booked": c.booked},
    }


def seat_page(event_id: str, page: SeatPage) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "seats": [{"seatId": seat, "status": status.value} for seat, status in page.seats],
        "nextCursor": page.next_cursor,
    }

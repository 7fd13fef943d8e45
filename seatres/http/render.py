"""Domain values as JSON bodies (camelCase fields, ISO 8601 UTC times)."""

from typing import Any

import orjson
from starlette.responses import Response

from seatres.clock import iso_time
from seatres.domain.models import Change, EventSummary, Reservation, SeatPage


def dump_json(body: Any) -> bytes:
    return orjson.dumps(body)


class EncodedJSON(Response):
    """A body already encoded, its headers built directly: Starlette's Response scans
    and re-encodes the header dict and checks the media type's charset on every answer,
    and every answer of a burst is one of these."""

    def __init__(
        self,
        content: bytes,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: bytes = b"application/json",
    ) -> None:
        self.status_code = status_code
        self.body = content
        self.background = None
        raw = [(b"content-length", b"%d" % len(content)), (b"content-type", media_type)]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw


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

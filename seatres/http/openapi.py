"""The OpenAPI 3.1 description served at /openapi.json, built from the request models.

The request schemas carry the domain's own rules (id pattern, lengths, ranges, "seatId or
seatIds"), so a request the description calls valid is never refused as
validation_error, and one it calls invalid is refused: the fuzz tests check both."""

from functools import cache
from typing import Any

from seatres.domain import ids
from seatres.domain.service import (
    IDEMPOTENCY_KEY,
    MAX_EVENT_NAME,
    MAX_EXTENSION_SECONDS,
    MAX_PAGE_SIZE,
    MAX_SEATS_PER_EVENT,
)
from seatres.http.schemas import TEXT_MAX_LENGTH, Body, EventBody, ExtendBody, ReserveBody

ERROR_CODES = {
    400: ["validation_error", "invalid_transition", "reservation_expired", "limit_exceeded"],
    401: ["unauthorized"],
    403: ["forbidden"],
    404: ["not_found"],
    405: ["method_not_allowed"],
    409: ["seat_unavailable"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
    422: ["idempotency_key_mismatch"],
    500: ["internal_error"],
    503: ["store_unavailable", "sweep_stale"],
}

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted({c for cs in ERROR_CODES.values() for c in cs})},
        "seatIds": {"type": "array", "items": {"type": "string"}},
        "limit": {"type": "integer"},
    },
}
_TIME = {"type": "string", "format": "date-time"}
_RESERVATION = {
    "type": "object",
    "required": ["id", "eventId", "seatIds", "customerId", "state", "createdAt", "expiresAt"],
    "properties": {
        "id": {"type": "string"},
        "eventId": {"type": "string"},
        "seatIds": {"type": "array", "items": {"type": "string"}},
        "customerId": {"type": "string"},
        "state": {"type": "string", "enum": ["RESERVED", "CONFIRMED", "CANCELLED", "EXPIRED"]},
        "createdAt": _TIME,
        "expiresAt": _TIME,
        "updatedAt": _TIME,
        "history": {
            "type": "array",
            "description": "Only in GET /reservations/{id}: every change, oldest first",
            "items": {
                "type": "object",
                "properties": {
                    "at": _TIME,
                    "action": {
                        "type": "string",
                        "enum": ["reserve", "confirm", "cancel", "expire", "extend"],
                    },
                    "from": {"type": ["string", "null"]},
                    "to": {"type": "string"},
                    "by": {"type": "string"},
                },
            },
        },
    },
}
_COUNT = {"type": "integer", "minimum": 0}
_EVENT = {
    "type": "object",
    "required": ["eventId", "name", "seats"],
    "properties": {
        "eventId": {"type": "string"},
        "name": {"type": "string"},
        "seats": {
            "type": "object",
            "required": ["total", "free", "held", "booked"],
            "properties": {k: _COUNT for k in ("total", "free", "held", "booked")},
        },
    },
}
_SEAT_PAGE = {
    "type": "object",
    "required": ["eventId", "seats", "nextCursor"],
    "properties": {
        "eventId": {"type": "string"},
        "seats": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "seatId": {"type": "string"},
                    "status": {"type": "string", "enum": ["free", "held", "booked"]},
                },
            },
        },
        "nextCursor": {"type": ["string", "null"]},
    },
}
_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": ", ".join(ERROR_CODES[s]),
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for s in statuses
    }


def _ok(status: int, schema: str, description: str) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


# An event, seat or cursor id (seatres.domain.ids). JSON Schema patterns are not anchored.
_ID = {"type": "string", "pattern": f"^{ids.ID_PATTERN.pattern}$", "description": ids.ID_RULE}
# Names are trimmed, then must be 1-MAX_EVENT_NAME printable characters (str.isprintable):
# no JSON Schema pattern says "printable", so a format names the rule (the fuzz tests
# generate it) and the lengths bound what the parser takes.
_NAME = {
    "type": "string",
    "format": "printable",
    "minLength": 1,
    "maxLength": TEXT_MAX_LENGTH,
    "description": f"1-{MAX_EVENT_NAME} printable characters once surrounding whitespace "
    "is trimmed",
}


def _body_schema(model: type[Body], properties: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """The model's JSON schema (field names, required, no extra fields) with the domain's
    rules for each field in place of the parser's loose bounds."""
    schema = model.model_json_schema()
    assert set(properties) == set(schema["properties"]), model
    schema["properties"] = properties
    return {**schema, **rest}


def _reserve_body(max_seats: int) -> dict[str, Any]:
    seat_ids = {
        "type": "array",
        "items": _ID,
        "minItems": 1,
        "maxItems": max_seats,
        "uniqueItems": True,
    }
    null = {"type": "null"}
    # Exactly one of seatId / seatIds (the other absent or null).
    return _body_schema(
        ReserveBody,
        {"eventId": _ID, "seatId": {"anyOf": [_ID, null]}, "seatIds": {"anyOf": [seat_ids, null]}},
        oneOf=[
            {"required": ["seatId"], "properties": {"seatId": _ID}},
            {"required": ["seatIds"], "properties": {"seatIds": seat_ids}},
        ],
    )


_AUTH_ERRORS = (401, 500, 503)
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1-255 printable ASCII characters. The same key with the same request "
    "answers as the first time, with header Idempotent-Replayed: true; kept 24 hours.",
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
}


@cache
def openapi_document(max_seats_per_reservation: int = 10) -> dict[str, Any]:
    """The description, with the configured SEATRES_MAX_SEATS_PER_RESERVATION."""
    event_param = [_path_param("eventId", _ID)]
    reservation_param = [_path_param("id")]
    transition_params = [*reservation_param, _IDEMPOTENCY_KEY]
    transition_ok = _ok(200, "Reservation", "The reservation after the transition")
    transition = {
        "parameters": transition_params,
        "responses": {**transition_ok, **_errors(400, 404, 422, *_AUTH_ERRORS)},
    }
    seat_page_params = [
        *event_param,
        {
            "name": "cursor",
            "in": "query",
            "description": "nextCursor of the previous page; empty or absent: the first page",
            "schema": {"type": "string", "pattern": f"^({ids.ID_PATTERN.pattern})?$"},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        },
    ]
    paths = {
        "/events/{eventId}": {
            "put": {
                "summary": "Create an event or replace its name and seat list (admin)",
                "parameters": event_param,
                "requestBody": _body("EventBody"),
                "responses": {
                    **_ok(201, "Event", "Created"),
                    **_ok(200, "Event", "Updated"),
                    **_errors(400, 403, 409, 413, 415, *_AUTH_ERRORS),
                },
            },
            "get": {
                "summary": "An event with its seat counts",
                "parameters": event_param,
                "responses": {**_ok(200, "Event", "The event"), **_errors(400, 404, *_AUTH_ERRORS)},
            },
        },
        "/events/{eventId}/seats": {
            "get": {
                "summary": "One page of seats with their status, ordered by seat id",
                "parameters": seat_page_params,
                "responses": {
                    **_ok(200, "SeatPage", "Seats"),
                    **_errors(400, 404, *_AUTH_ERRORS),
                },
            }
        },
        "/reservations": {
            "post": {
                "summary": "Hold seats (all or none) for the caller",
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _body("ReserveBody"),
                "responses": {
                    **_ok(201, "Reservation", "The new hold"),
                    **_errors(400, 404, 409, 413, 415, 422, *_AUTH_ERRORS),
                },
            }
        },
        "/reservations/{id}": {
            "get": {
                "summary": "A reservation (its owner or an admin)",
                "parameters": reservation_param,
                "responses": {
                    **_ok(200, "Reservation", "The reservation"),
                    **_errors(404, *_AUTH_ERRORS),
                },
            }
        },
        "/reservations/{id}/confirm": {"post": {"summary": "RESERVED -> CONFIRMED", **transition}},
        "/reservations/{id}/cancel": {"post": {"summary": "RESERVED -> CANCELLED", **transition}},
        "/reservations/{id}/extend": {
            "post": {
                "summary": "Push back the expiry of the caller's hold",
                "parameters": transition_params,
                "requestBody": _body("ExtendBody"),
                "responses": {**transition_ok, **_errors(400, 404, 413, 415, 422, *_AUTH_ERRORS)},
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": _ok(200, "Status", "Alive"),
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis is reachable, the scripts are loaded and the expiry job ran "
                "within SEATRES_SWEEP_MAX_AGE_SECONDS",
                "security": [],
                "responses": {**_ok(200, "Status", "Ready"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document"}},
            }
        },
        "/ui/events/{eventId}": {
            "get": {
                "summary": "Live seat map (HTML page, no data in it). Its script polls "
                "/ui/events/{eventId}/seats with the admin token given as #token=... or typed",
                "security": [],
                "parameters": event_param,
                "responses": {
                    "200": {
                        "description": "The page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(400),
                },
            }
        },
        "/ui/events/{eventId}/seats": {
            "get": {
                "summary": "The seat map's data (admin): as /events/{eventId}/seats, "
                "limit 1000 unless given",
                "parameters": seat_page_params,
                "responses": {
                    **_ok(200, "SeatPage", "Seats"),
                    **_errors(400, 403, 404, *_AUTH_ERRORS),
                },
            }
        },
        "/ui/static/{name}": {
            "get": {
                "summary": "The seat map's script (seat_map.js) and style sheet (seat_map.css)",
                "security": [],
                "parameters": [_path_param("name")],
                "responses": {
                    "200": {"description": "The file"},
                    "304": {"description": "Unchanged since the If-None-Match ETag"},
                    **_errors(404),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "seatres", "version": "0.1.0"},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Problem": _PROBLEM,
                "Reservation": _RESERVATION,
                "Event": _EVENT,
                "SeatPage": _SEAT_PAGE,
                "Status": _STATUS,
                "EventBody": _body_schema(
                    EventBody,
                    {
                        "name": _NAME,
                        "seats": {
                            "type": "array",
                            "items": _ID,
                            "minItems": 1,
                            "maxItems": MAX_SEATS_PER_EVENT,
                            "uniqueItems": True,
                        },
                    },
                ),
                "ReserveBody": _reserve_body(max_seats_per_reservation),
                "ExtendBody": _body_schema(
                    ExtendBody,
                    {
                        "seconds": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_EXTENSION_SECONDS,
                        }
                    },
                ),
            },
        },
    }

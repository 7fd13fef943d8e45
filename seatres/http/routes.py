"""Handlers: parse the request, call the domain once, render the answer."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from seatres.domain.errors import ValidationFailed
from seatres.domain.models import Outcome
from seatres.http import render
from seatres.http.openapi import openapi_document
from seatres.http.problems import REPLAYED_HEADER
from seatres.http.requests import app_state, caller, idempotency, json_body
from seatres.http.schemas import EventBody, ExtendBody, ReserveBody

JSON = "application/json"
DEFAULT_PAGE_SIZE = 100


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(render.dump_json(body), status_code=status, media_type=JSON, headers=headers)


async def put_event(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, EventBody)
    event_id = request.path_params["eventId"]
    service = app_state(request).service
    result = await service.upsert_event(who, event_id, body.name, body.seats)
    summary = await service.event_summary(event_id)
    return _json(render.event(summary), 201 if result.created else 200)


async def get_event(request: Request) -> Response:
    caller(request)
    summary = await app_state(request).service.event_summary(request.path_params["eventId"])
    return _json(render.event(summary))


async def get_seats(request: Request) -> Response:
    caller(request)
    event_id = request.path_params["eventId"]
    try:
        limit = int(request.query_params.get("limit", DEFAULT_PAGE_SIZE))
    except ValueError:
        raise ValidationFailed("limit must be an integer") from None
    cursor = request.query_params.get("cursor") or None
    page = await app_state(request).service.seat_page(event_id, cursor, limit)
    return _json(render.seat_page(event_id, page))


def _outcome(outcome: Outcome, status: int = 200) -> Response:
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else {}
    if status == 201:
        headers["Location"] = f"/reservations/{outcome.reservation.id}"
    return _json(render.reservation(outcome.reservation), status, headers)


async def reserve(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, ReserveBody)
    service = app_state(request).service
    outcome = await service.reserve(who, body.eventId, body.seats, idempotency(request, body))
    return _outcome(outcome, 201)


async def confirm(request: Request) -> Response:
    who = caller(request)
    service = app_state(request).service
    rid = request.path_params["id"]
    return _outcome(await service.confirm(who, rid, idempotency(request)))


async def cancel(request: Request) -> Response:
    who = caller(request)
    service = app_state(request).service
    rid = request.path_params["id"]
    return _outcome(await service.cancel(who, rid, idempotency(request)))


async def extend(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, ExtendBody)
    service = app_state(request).service
    rid = request.path_params["id"]
    return _outcome(await service.extend(who, rid, body.seconds, idempotency(request, body)))


async def get_reservation(request: Request) -> Response:
    who = caller(request)
    reservation, now_ms = await app_state(request).service.get(who, request.path_params["id"])
    return _json(render.reservation(reservation, now_ms, with_history=True))


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    await app_state(request).store.ping()
    return _json({"status": "ready"})


async def openapi(request: Request) -> Response:
    return _json(openapi_document())


ROUTES = [
    Route("/events/{eventId}", put_event, methods=["PUT"]),
    Route("/events/{eventId}", get_event, methods=["GET"]),
    Route("/events/{eventId}/seats", get_seats, methods=["GET"]),
    Route("/reservations", reserve, methods=["POST"]),
    Route("/reservations/{id}/confirm", confirm, methods=["POST"]),
    Route("/reservations/{id}/cancel", cancel, methods=["POST"]),
    Route("/reservations/{id}/extend", extend, methods=["POST"]),
    Route("/reservations/{id}", get_reservation, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]

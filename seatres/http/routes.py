"""Handlers: parse the request, call the domain once, render the answer."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from seatres.domain.errors import ValidationFailed
from seatres.http import render
from seatres.http.openapi import openapi_document
from seatres.http.requests import app_state, caller, json_body
from seatres.http.schemas import EventBody, ReserveBody

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


async def reserve(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, ReserveBody)
    reservation = await app_state(request).service.reserve(who, body.eventId, body.seats)
    return _json(
        render.reservation(reservation), 201, {"Location": f"/reservations/{reservation.id}"}
    )


async def confirm(request: Request) -> Response:
    who = caller(request)
    service = app_state(request).service
    return _json(render.reservation(await service.confirm(who, request.path_params["id"])))


async def cancel(request: Request) -> Response:
    who = caller(request)
    service = app_state(request).service
    return _json(render.reservation(await service.cancel(who, request.path_params["id"])))


async def get_reservation(request: Request) -> Response:
    who = caller(request)
    reservation, now_ms = await app_state(request).service.get(who, request.path_params["id"])
    return _json(render.reservation(reservation, now_ms))


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
    Route("/reservations/{id}", get_reservation, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]

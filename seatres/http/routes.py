"""Handlers: parse the request, call the domain once, render the answer."""

import time
from collections.abc import Awaitable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from seatres.domain.errors import DomainError, SeatUnavailable
from seatres.domain.models import Outcome
from seatres.domain.service import require_admin
from seatres.http import render, ui
from seatres.http.endpoint import route
from seatres.http.openapi import openapi_document
from seatres.http.problems import REPLAYED_HEADER, domain_problem, problem
from seatres.http.requests import app_state, caller, idempotency, json_body, page_query
from seatres.http.schemas import EventBody, ExtendBody, ReserveBody
from seatres.metrics import store_families

DEFAULT_PAGE_SIZE = 100
# Events whose seat counts /metrics reports (by id): bounds the scrape's cost and series.
METRICS_MAX_EVENTS = 1000


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return render.EncodedJSON(render.dump_json(body), status, headers)


async def put_event(request: Request) -> Response:
    who = caller(request)
    require_admin(who)  # before reading a body of up to SEATRES_MAX_BODY_BYTES
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
    cursor, limit = page_query(request, DEFAULT_PAGE_SIZE)
    page = await app_state(request).service.seat_page(event_id, cursor, limit)
    return _json(render.seat_page(event_id, page))


async def _transition(
    request: Request, transition: str, call: Awaitable[Outcome], status: int = 200
) -> Response:
    """The answer of a reserve / confirm / cancel / extend, counted in the metrics."""
    metrics = app_state(request).metrics
    try:
        outcome = await call
    except DomainError as exc:
        metrics.count_transition(transition, exc.code)
        if isinstance(exc, SeatUnavailable):
            metrics.count_seat_conflicts(len(exc.seat_ids))
        if exc.replayed:
            metrics.count_replay(transition)
        # Answered here, as the app's DomainError handler would: most answers of a burst
        # are 409s, and the exception unwinding through Starlette's layers to that
        # handler cost more than building the answer.
        return domain_problem(exc)
    metrics.count_transition(transition, "ok")
    headers = {}
    if outcome.replayed:
        metrics.count_replay(transition)
        headers[REPLAYED_HEADER] = "true"
    if status == 201:
        headers["Location"] = f"/reservations/{outcome.reservation.id}"
    return _json(render.reservation(outcome.reservation), status, headers)


async def reserve(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, ReserveBody)
    service = app_state(request).service
    call = service.reserve(who, body.eventId, body.seats, idempotency(request, body))
    return await _transition(request, "reserve", call, 201)


async def confirm(request: Request) -> Response:
    who = caller(request)
    call = app_state(request).service.confirm(who, request.path_params["id"], idempotency(request))
    return await _transition(request, "confirm", call)


async def cancel(request: Request) -> Response:
    who = caller(request)
    call = app_state(request).service.cancel(who, request.path_params["id"], idempotency(request))
    return await _transition(request, "cancel", call)


async def extend(request: Request) -> Response:
    who = caller(request)
    body = await json_body(request, ExtendBody)
    call = app_state(request).service.extend(
        who, request.path_params["id"], body.seconds, idempotency(request, body)
    )
    return await _transition(request, "extend", call)


async def get_reservation(request: Request) -> Response:
    who = caller(request)
    reservation, now_ms = await app_state(request).service.get(who, request.path_params["id"])
    return _json(render.reservation(reservation, now_ms, with_history=True))


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Redis answers, the scripts are loaded, and the expiry job has run lately."""
    state = app_state(request)
    await state.store.ping()
    stats, now_ms = await state.store.sweep_stats()
    max_age = state.settings.sweep_max_age_seconds
    if stats.last_success_ms is None:
        if time.monotonic() - state.started_at > max_age:
            detail = f"No expiry run has succeeded yet (up for more than {max_age} s)"
            return problem(503, "sweep_stale", "Not ready", detail)
    elif now_ms - stats.last_success_ms > max_age * 1000:
        age = (now_ms - stats.last_success_ms) // 1000
        detail = f"The last successful expiry run was {age} s ago (more than {max_age} s)"
        return problem(503, "sweep_stale", "Not ready", detail)
    return _json({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's (or every worker's) counters, then the
    numbers read from Redis."""
    state = app_state(request)
    own = generate_latest(state.metrics.collecting_registry())
    counts = await state.store.event_counts(METRICS_MAX_EVENTS)
    stats, _now = await state.store.sweep_stats()
    return Response(own + store_families(counts, stats), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return _json(openapi_document(app_state(request).settings.max_seats_per_reservation))


# Starlette tries the routes in this order, a regex match each: a burst's routes first.
ROUTES = [
    route("/reservations", reserve, "POST"),
    route("/reservations/{id}/confirm", confirm, "POST"),
    route("/reservations/{id}/cancel", cancel, "POST"),
    route("/reservations/{id}/extend", extend, "POST"),
    route("/reservations/{id}", get_reservation, "GET"),
    route("/events/{eventId}", put_event, "PUT"),
    route("/events/{eventId}", get_event, "GET"),
    route("/events/{eventId}/seats", get_seats, "GET"),
    route("/healthz", healthz, "GET"),
    route("/readyz", readyz, "GET"),
    route("/metrics", metrics, "GET"),
    route("/openapi.json", openapi, "GET"),
    *ui.ROUTES,
]

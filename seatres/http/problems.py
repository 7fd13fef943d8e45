"""Errors as application/problem+json (RFC 9457), with a stable `code` member.

One handler for the domain error base class renders every domain error from the class's
own status and code; the others cover Starlette's HTTP errors and anything unexpected,
which is logged and answered without a trace."""

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from seatres.domain.errors import DomainError
from seatres.http.render import EncodedJSON, dump_json

log = logging.getLogger("seatres.http")

PROBLEM_TYPE_BASE = "https://seatres.dev/problems/"
MEDIA_TYPE = b"application/problem+json"
REPLAYED_HEADER = "Idempotent-Replayed"

# Codes for errors raised by the HTTP layer itself rather than the domain.
HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return EncodedJSON(dump_json(body), status, headers, MEDIA_TYPE)


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return domain_problem(exc)


def domain_problem(exc: DomainError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 503:
        headers = {"Retry-After": "1"}
        log.warning("store unavailable: %s", exc.detail)
    if exc.replayed:
        headers[REPLAYED_HEADER] = "true"
    return problem(exc.status, exc.code, exc.title, exc.detail, headers, **exc.extra)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, title = HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(exc.status_code, code, title, exc.detail, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path takes. Starlette's own Allow names only the
    first route that matched the path, and a path may have one route per method (PUT and
    GET /events/{eventId}): RFC 9110 wants them all."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500, "internal_error", "Internal error", "The server failed to handle this request"
    )

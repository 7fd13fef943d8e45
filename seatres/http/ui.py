"""The live seat map: an admin page that shows every seat of an event as free, held or
booked, with the counts, refreshed every two seconds.

A browser cannot put a bearer token on a page navigation, so the page is a static shell
with no data in it, served to anyone. Its script takes an admin token from the URL
fragment (`#token=...`, which the browser never sends to the server) or from a form, keeps
it in sessionStorage, and polls the JSON API with `Authorization: Bearer`: the event's
counts from `GET /events/{eventId}` and its seats from the admin-only
`GET /ui/events/{eventId}/seats`, which answers like `GET /events/{eventId}/seats` but
needs the admin scope. The page answers the same for every well-formed event id, so it
tells nobody without a token which events exist.

The script and the style sheet are files of their own (seatres/http/static), so the page
runs under a Content-Security-Policy that allows no inline code at all."""

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from seatres.domain import ids
from seatres.domain.errors import Forbidden
from seatres.http import render
from seatres.http.endpoint import route
from seatres.http.requests import app_state, caller, page_query

PAGE = "seat_map.html"
# Assets served under /ui/static/{name}, by name only: nothing else in the folder is.
ASSETS = {
    "seat_map.js": "text/javascript; charset=utf-8",
    "seat_map.css": "text/css; charset=utf-8",
}
DEFAULT_PAGE_SIZE = 1000

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
# On every answer of this module: nothing here is for caches, frames or sniffing.
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {
    **COMMON_HEADERS,
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class StaticFile:
    content: bytes
    etag: str


@cache
def static_file(name: str) -> StaticFile:
    content = resources.files("seatres.http").joinpath("static", name).read_bytes()
    return StaticFile(content, '"' + hashlib.sha256(content).hexdigest()[:32] + '"')


async def seat_map_page(request: Request) -> Response:
    ids.check_id(request.path_params["eventId"], "eventId")
    return Response(
        static_file(PAGE).content,
        media_type="text/html; charset=utf-8",
        headers=PAGE_HEADERS,
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "No such file")
    file = static_file(name)
    # Revalidated on every load (an upgrade shows at once), answered 304 when unchanged.
    headers = {**COMMON_HEADERS, "Cache-Control": "no-cache", "ETag": file.etag}
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.content, media_type=media_type, headers=headers)


async def admin_seats(request: Request) -> Response:
    """GET /events/{eventId}/seats for admins only: the seat map's data."""
    if not caller(request).is_admin:
        raise Forbidden("The seat map needs an admin token (scope seatres:admin)")
    event_id = request.path_params["eventId"]
    cursor, limit = page_query(request, DEFAULT_PAGE_SIZE)
    page = await app_state(request).service.seat_page(event_id, cursor, limit)
    return render.EncodedJSON(
        render.dump_json(render.seat_page(event_id, page)),
        headers={**COMMON_HEADERS, "Cache-Control": "no-store"},
    )


ROUTES = [
    route("/ui/events/{eventId}", seat_map_page, "GET"),
    route("/ui/events/{eventId}/seats", admin_seats, "GET"),
    route("/ui/static/{name}", asset, "GET"),
]

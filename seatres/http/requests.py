"""Reading a request: the caller from its bearer token, and a size-capped JSON body."""

import hashlib
import json
import re
from collections import Counter
from functools import cache
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from seatres.domain.errors import Unauthorized, ValidationFailed
from seatres.domain.models import Caller, IdempotencyKey
from seatres.domain.service import MAX_PAGE_SIZE
from seatres.http.schemas import Body
from seatres.http.state import STATE_KEY, AppState

B = TypeVar("B", bound=Body)

# int() alone also takes " 5", "+5", "1_0" and non-ASCII digits (U+0665), none of them
# an integer as the OpenAPI description (or any client) writes one. More than 18 digits
# are out of range anyway.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def app_state(request: Request) -> AppState:
    """From the request's scope, where the server put the lifespan's state: two dict
    lookups. app.state (a State object, whose __getattr__ is Python code) cost 0.56 µs a
    lookup, and a reserve makes four: 52.6 -> 48.7 µs of CPU per refused reserve
    in-process (alternating slices, median of 14 each)."""
    state: AppState = request.scope["state"][STATE_KEY]
    return state


def _header(request: Request, name: bytes) -> str | None:
    """The first value of a header (`name` in lower case, as ASGI gives names): what
    request.headers.get() answers, without a Headers object, a lower() and encode() of
    the name and a KeyError for an absent header on each of a request's lookups."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def caller(request: Request) -> Caller:
    header = _header(request, b"authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send Authorization: Bearer <token>")
    who = app_state(request).tokens.verify(token.strip())
    # for the access log (ObserveRequests); the scope's dict, not request.state, which
    # builds a State object on first use, on every request
    request.scope.setdefault("state", {})["customer_id"] = who.customer_id
    return who


async def json_body(request: Request, model: type[B]) -> B:
    content_type = _header(request, b"content-type")
    if content_type is None:  # absent is JSON; present and empty is not
        content_type = "application/json"
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(415, "Send the body as application/json")
    limit = app_state(request).settings.max_body_bytes
    declared = _header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"The body may be at most {limit} bytes")
    raw = await _read_body(request, limit)
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(_summarize(exc)) from None
    if _may_repeat_members(raw, model):
        _refuse_repeated_keys(raw)
    return body


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit`. ASGI messages read here
    rather than through request.stream(), an async generator: each one is registered
    with the event loop (a WeakSet insertion) and finalized, for a body that nearly
    always comes in one message."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"The body may be at most {limit} bytes")
        if not message.get("more_body", False):
            return b"".join(chunks)  # (one chunk, the usual case: that chunk, not a copy)


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _RepeatedKey(f"body: repeated member {', '.join(repeated)}")
    return members


@cache
def _quoted_members(model: type[Body]) -> tuple[bytes, ...]:
    return tuple(f'"{name}"'.encode() for name in model.model_fields)


def _may_repeat_members(raw: bytes, model: type[Body]) -> bool:
    """Whether a body that passed validation could hold a repeated member, without a
    second parse on the hot path. Unknown members are refused by validation, so every
    member is one of the model's, and a repeated one shows its quoted name twice in the
    raw bytes. An escape could spell a name differently: bodies with one get the full check,
    and so do bodies where a name recurs (even only as a value)."""
    return b"\\" in raw or any(raw.count(name) > 1 for name in _quoted_members(model))


def _refuse_repeated_keys(raw: bytes) -> None:
    """pydantic keeps the last of repeated members ({"seatId": "A1", "seatId": "A2"} holds
    A2); other parsers keep the first, so such a body means different things to different
    readers (a proxy, a log, this service): refused. Checked after validation, so the
    body is known to be valid, shallow JSON and the second parse is cheap."""
    try:
        json.loads(raw, object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        raise ValidationFailed(str(exc)) from None
    except (ValueError, RecursionError):
        raise ValidationFailed("body: Invalid JSON") from None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def idempotency(request: Request, body: Body | None = None) -> IdempotencyKey | None:
    """The Idempotency-Key header, with the fingerprint of the request it came with:
    method, path and the parsed body (so key order and whitespace do not matter)."""
    key = _header(request, b"idempotency-key")
    if key is None:
        return None
    canonical = body.model_dump_json().encode() if body is not None else b""
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + canonical)
    return IdempotencyKey(key=key, fingerprint=digest.hexdigest())


def page_query(request: Request, default_limit: int) -> tuple[str | None, int]:
    """`cursor` and `limit` of a seats page (the domain checks their values)."""
    raw = request.query_params.get("limit")
    if raw is None:
        limit = default_limit
    elif _INTEGER.fullmatch(raw):
        limit = int(raw)
    else:
        raise ValidationFailed(f"limit must be an integer between 1 and {MAX_PAGE_SIZE}")
    return request.query_params.get("cursor") or None, limit

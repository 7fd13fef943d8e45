"""Identifiers: what an event, seat or customer id may look like, and reservation ids.

A reservation id is `<base64url(eventId)>.<128 random bits>`: opaque and unguessable to
clients, URL-safe, and it names the event, so the service finds the event's keys (one
Redis Cluster slot) without a lookup in another slot."""

import base64
import binascii
import re
import secrets
from functools import lru_cache

from seatres.domain.errors import NotFound, ValidationFailed

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
ID_RULE = "1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
CUSTOMER_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")

_RANDOM_BYTES = 16
_RANDOM_CHARS = 22  # len(token_urlsafe(16))
_RANDOM_PATTERN = re.compile(rf"[A-Za-z0-9_\-]{{{_RANDOM_CHARS}}}")


def check_id(value: str, what: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ValidationFailed(f"{what} must be {ID_RULE}")
    return value


def check_customer_id(value: str) -> str:
    if not CUSTOMER_ID_PATTERN.fullmatch(value):
        raise ValidationFailed("customer id must be 1-128 printable ASCII characters")
    return value


def new_reservation_id(event_id: str) -> str:
    return f"{_encoded_event(event_id)}.{secrets.token_urlsafe(_RANDOM_BYTES)}"


@lru_cache(maxsize=4096)
def _encoded_event(event_id: str) -> str:
    return base64.urlsafe_b64encode(event_id.encode()).rstrip(b"=").decode()


def event_of_reservation(reservation_id: str) -> str:
    """The event a reservation id belongs to; NotFound for anything we never issued."""
    encoded, dot, random_part = reservation_id.partition(".")
    if not dot or not _RANDOM_PATTERN.fullmatch(random_part) or len(encoded) > 88:
        raise NotFound("Reservation not found")
    try:
        event_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound("Reservation not found") from None
    if not ID_PATTERN.fullmatch(event_id):
        raise NotFound("Reservation not found")
    return event_id

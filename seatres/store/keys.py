"""The whole Redis key schema, in one place (README.md "Key schema" documents it).

Every key of one event carries the hash tag {evt:<eventId>}, so each transition touches
keys of a single Redis Cluster slot. The sweep index spans events and lives in its own
slot ({sweep}); no script ever touches both."""

import hashlib
from functools import lru_cache
from typing import NamedTuple

PREFIX = "seatres"

# zset: eventId -> earliest time (ms) at which the event may have a due hold
SWEEP_DUE = f"{PREFIX}:{{sweep}}:due"
# zset: eventId -> time (ms) until which a running sweep owns the event
SWEEP_CLAIMED = f"{PREFIX}:{{sweep}}:claimed"
# hash: lastSuccess (ms), lastSeconds, lastExpired, runs, expired (totals) of the sweep
SWEEP_STATS = f"{PREFIX}:{{sweep}}:stats"
# set: every event id (for /metrics and `seatres inspect keys`; written after upserts)
EVENTS = f"{PREFIX}:{{index}}:events"


class EventKeys(NamedTuple):
    """In the order every event script receives them (seatres/lua/common.lua)."""

    meta: str  # hash: eventId, name, createdAt, updatedAt, held, booked
    seats: str  # zset: seat id -> 0 (all seats, ordered by id)
    claims: str  # hash: seat id -> id of the seat's active reservation
    reservations: str  # hash: reservation id -> reservation JSON
    holds: str  # zset: id of a RESERVED reservation -> expiresAt (ms)
    customers: str  # hash: customer id -> seats in the customer's active reservations
    log: str  # stream: every state change, capped with MAXLEN ~


def event_tag(event_id: str) -> str:
    return f"{PREFIX}:{{evt:{event_id}}}"


# Every transition names its event's seven keys; a burst names the same event over and over.
@lru_cache(maxsize=4096)
def event_keys(event_id: str) -> EventKeys:
    tag = event_tag(event_id)
    return EventKeys(
        meta=f"{tag}:meta",
        seats=f"{tag}:seats",
        claims=f"{tag}:claims",
        reservations=f"{tag}:reservations",
        holds=f"{tag}:holds",
        customers=f"{tag}:customers",
        log=f"{tag}:log",
    )


def claim_key(event_id: str, seat_id: str) -> str:
    """string: id of the reservation whose claim on the seat is live, expiring with its
    hold (none once booked). The scripts build it themselves, from the meta key's tag
    (seatres/lua/common.lua claim_key): they write it wherever they write the claims
    hash, and reserve.lua's early answer reads it alone."""
    return f"{event_tag(event_id)}:claim:{seat_id}"


def idempotency_key(event_id: str, customer_id: str, key: str) -> str:
    """string: the remembered answer of one customer's Idempotency-Key (with a TTL).
    Hashed, so that any printable key makes a short, safe key name."""
    digest = hashlib.sha256(f"{customer_id}\0{key}".encode()).hexdigest()[:32]
    return f"{event_tag(event_id)}:idem:{digest}"

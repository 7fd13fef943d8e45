"""`seatres inspect`: what an operator would otherwise dig out of Redis by hand.

Read-only, and safe on a big production keyspace: keys are enumerated with SCAN (MATCH,
COUNT; never KEYS) and hashes and streams are walked with HSCAN / XRANGE a page at a
time, always within a bound; besides those it uses only O(1) or O(log N) commands (HLEN,
ZCARD, XLEN, ZCOUNT, ZSCORE, TIME, short ranges) and the read-only scripts event_summary
and seat_page (one page of seats per call). Nothing here writes, and nothing here starts
an embedded Redis: it looks at SEATRES_REDIS_URL.

Each `*_report` function returns plain dataclasses (`to_json` makes them JSON with the
API's camelCase names and ISO 8601 UTC times); each `render_*` turns one into text."""

import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from seatres.clock import iso_time, redis_time_ms
from seatres.domain.errors import NotFound
from seatres.domain.ids import event_of_reservation
from seatres.domain.models import Reservation, SeatStatus
from seatres.domain.states import ReservationState
from seatres.settings import Settings
from seatres.store import keys, scripts
from seatres.store.connection import SyncClient, connect_sync
from seatres.store.redis_store import decode_reservation

# Seats per seat_page call while collecting the seats of each status.
SEAT_PAGE = 1000
# COUNT of each SCAN / HSCAN / XRANGE call.
SCAN_COUNT = 1000
# `inspect keys` stops counting a prefix after this many matching keys (then says ≥).
MAX_KEYS = 100_000
# ... and after SCAN has walked about this many keys per matching key it may count, so
# a huge keyspace with few seatres keys is not walked to the end either.
SCAN_FACTOR = 10
# `inspect reservation` reads at most this many log entries looking for its own.
MAX_LOG_SCAN = 1_000_000
# Slack (ms) around a reservation's history times when looking for its log entries.
LOG_SLACK_MS = 2_000


class InspectError(Exception):
    """What to tell the operator on stderr (exit status 1): unknown event or reservation,
    Redis unreachable, no SEATRES_REDIS_URL."""


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _as_json(name: str) -> Any:
    """A dataclass field whose JSON name is not the camelCase of its Python name."""
    return field(metadata={"json": name})


def to_json(value: Any) -> Any:
    """A report as JSON-able values: dataclasses become objects with camelCase keys."""
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.metadata.get("json", _json_name(f.name)): to_json(getattr(value, f.name))
            for f in fields(value)
        }
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def dumps(report: Any) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False)


def redact(url: str) -> str:
    """A Redis URL fit to print: its password replaced by ***. (The netloc is taken apart
    by hand: a cluster URL's host:port,host:port is no single host urlsplit can parse.)"""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


# Small helpers on the sync client (its replies are typed loosely: converted here)


def _now_ms(r: SyncClient, near: str) -> int:
    """Redis's clock; on a cluster the clock of the node that holds the key `near` (the
    one whose scripts decide what is due)."""
    if isinstance(r, RedisCluster):
        node = r.get_node_from_key(near)  # type: ignore[no-untyped-call]
        clock: Any = r.time(target_nodes=node)
    else:
        clock = r.time()
    return redis_time_ms(clock)


def _score(r: SyncClient, key: str, member: str) -> int | None:
    value: Any = r.zscore(key, member)
    return None if value is None else int(value)


def _seconds(ms: int) -> float:
    return round(ms / 1000, 3)


def _in(seconds: float) -> str:
    """`in 12.3s` or `12.3s ago`."""
    if seconds >= 0:
        return f"in {seconds:.1f}s"
    return f"{-seconds:.1f}s ago"


# Shared pieces


@dataclass(frozen=True)
class LogEntry:
    """One entry of an event's log stream (seatres/lua/common.lua `record`)."""

    id: str
    at: str
    reservation: str
    action: str
    from_state: str | None = _as_json("from")
    to_state: str = _as_json("to")
    by: str = ""
    customer: str = ""
    seat_ids: list[str] = field(default_factory=list)


def _log_entry(entry_id: str, data: dict[str, str]) -> LogEntry:
    at = data.get("at") or entry_id.partition("-")[0]
    seats = data.get("seats", "")
    return LogEntry(
        id=entry_id,
        at=iso_time(int(at)),
        reservation=data.get("reservation", ""),
        action=data.get("action", ""),
        from_state=data.get("from") or None,
        to_state=data.get("to", ""),
        by=data.get("by", ""),
        customer=data.get("customer", ""),
        seat_ids=seats.split(",") if seats else [],
    )


def _log_line(e: LogEntry) -> str:
    change = f"{e.from_state} -> {e.to_state}" if e.from_state else f"-> {e.to_state}"
    return (
        f"{e.at}  {e.action:<8} {change:<24} by {e.by:<12} {e.reservation}"
        f"  ({e.customer}: {', '.join(e.seat_ids)})"
    )


def _ids(seat_ids: Sequence[str]) -> str:
    return ", ".join(seat_ids) if seat_ids else "-"


# inspect event


@dataclass(frozen=True)
class SeatCounters:
    """As GET /events/{id} counts them (event_summary.lua), plus what the meta hash holds."""

    total: int
    free: int
    held: int
    booked: int
    # seats of holds already due but not swept yet: counted as free above
    due_not_swept: int
    # seats claimed by an active reservation (claims hash); held + due + booked
    claimed: int
    # seats with a claim key (seatres/lua/common.lua claim_key): claimed, hold not due
    claim_keys: int


@dataclass(frozen=True)
class SeatGroup:
    status: str
    count: int
    # ordered by id: the first ones (or all of them, with --all)
    seat_ids: list[str]


@dataclass(frozen=True)
class Hold:
    reservation_id: str
    customer_id: str | None
    seat_ids: list[str]
    expires_at: str
    expires_in_seconds: float  # negative once due
    due: bool  # past its time, not yet swept (counts as expired everywhere)


@dataclass(frozen=True)
class CustomerSeats:
    customer_id: str
    seats: int


@dataclass(frozen=True)
class SweepState:
    """The event's place in the sweep's index (seatres:{sweep}:due / :claimed)."""

    indexed: bool
    due_at: str | None
    due_in_seconds: float | None
    claimed: bool
    claimed_until: str | None
    # a claim whose lease has run out: its sweep died; the next run takes it over
    claim_lapsed: bool


@dataclass(frozen=True)
class EventReport:
    event_id: str
    name: str
    created_at: str | None
    updated_at: str | None
    now: str
    seats: SeatCounters
    seats_by_status: list[SeatGroup]
    all_seats: bool
    holds_total: int
    holds_due: int
    holds: list[Hold]  # the earliest ones
    customers_total: int
    customers: list[CustomerSeats]  # the most seats first
    log_length: int
    log: list[LogEntry]  # the latest ones, oldest first
    sweep: SweepState
    problems: list[str]  # broken invariants; empty when all is well


def _seat_groups(
    r: SyncClient, event_id: str, counts: dict[SeatStatus, int], limit: int | None
) -> dict[SeatStatus, list[str]]:
    """Seat ids by status in id order: the first `limit` of each, or all (limit None).
    Pages through seat_page.lua, and stops once every status has what it needs."""
    k = keys.event_keys(event_id)
    found: dict[SeatStatus, list[str]] = {status: [] for status in SeatStatus}

    def enough() -> bool:
        if limit is None:
            return False
        return all(len(found[s]) >= min(limit, counts[s]) for s in SeatStatus)

    cursor = ""
    while not enough():
        page: Any = scripts.run_sync(r, "seat_page", k, [cursor, SEAT_PAGE])
        if page and page[0] == -1:
            raise InspectError(f"event {event_id!r} not found")
        for i in range(0, len(page), 2):
            ids = found[SeatStatus(page[i + 1])]
            if limit is None or len(ids) < limit:
                ids.append(page[i])
        if len(page) < 2 * SEAT_PAGE:
            break
        cursor = page[-2]
    return found


def _claim_keys(r: SyncClient, event_id: str) -> tuple[int, list[str]]:
    """How many of the event's seats have a claim key, and the seats whose claim key
    names another reservation than the claims hash does (none, when all is well)."""
    k = keys.event_keys(event_id)
    present, stale = 0, list[str]()
    start = 0
    while True:
        seats: Any = r.zrange(k.seats, start, start + SEAT_PAGE - 1)
        if not seats:
            return present, stale
        holders: Any = r.hmget(k.claims, seats)
        named: Any = r.mget([keys.claim_key(event_id, seat) for seat in seats])
        present += sum(name is not None for name in named)
        stale += _astray(seats, holders, named)
        start += SEAT_PAGE


def _astray(seats: list[str], holders: list[str | None], named: list[str | None]) -> list[str]:
    """The seats whose claim key names another reservation than the claims hash does."""
    return [
        seat
        for seat, holder, name in zip(seats, holders, named, strict=True)
        if name is not None and name != holder
    ]


def _hscan(r: SyncClient, key: str) -> Iterator[tuple[str, str]]:
    cursor = 0
    while True:
        reply: Any = r.hscan(key, cursor, count=SCAN_COUNT)
        cursor, batch = int(reply[0]), reply[1]
        yield from batch.items()
        if cursor == 0:
            return


def _hold(rid: str, score: float, raw: str | None, now: int) -> Hold:
    data = orjson.loads(raw) if raw else {}
    expires = int(score)
    return Hold(
        reservation_id=rid,
        customer_id=data.get("customerId"),
        seat_ids=list(data.get("seatIds", [])),
        expires_at=iso_time(expires),
        expires_in_seconds=_seconds(expires - now),
        due=expires <= now,
    )


def _sweep_state(r: SyncClient, event_id: str, now: int) -> SweepState:
    due_at = _score(r, keys.SWEEP_DUE, event_id)
    claimed_until = _score(r, keys.SWEEP_CLAIMED, event_id)
    return SweepState(
        indexed=due_at is not None,
        due_at=None if due_at is None else iso_time(due_at),
        due_in_seconds=None if due_at is None else _seconds(due_at - now),
        claimed=claimed_until is not None,
        claimed_until=None if claimed_until is None else iso_time(claimed_until),
        claim_lapsed=claimed_until is not None and claimed_until <= now,
    )


def event_report(
    r: SyncClient, event_id: str, limit: int = 10, all_seats: bool = False
) -> EventReport:
    """Everything about one event; lists are cut to `limit` (seats: all with all_seats)."""
    k = keys.event_keys(event_id)
    meta: Any = r.hgetall(k.meta)
    if not meta:
        raise InspectError(f"event {event_id!r} not found")
    summary: Any = scripts.run_sync(r, "event_summary", k, [])
    if not summary:
        raise InspectError(f"event {event_id!r} not found")
    now = _now_ms(r, k.meta)
    name, total, held, booked = summary[0], int(summary[1]), int(summary[2]), int(summary[3])
    held_stored = int(meta.get("held", 0))
    claimed = int(r.hlen(k.claims))
    claim_keys, stale_claim_keys = _claim_keys(r, event_id)
    counters = SeatCounters(
        total=total,
        free=total - held - booked,
        held=held,
        booked=booked,
        due_not_swept=held_stored - held,
        claimed=claimed,
        claim_keys=claim_keys,
    )
    counts = {
        SeatStatus.FREE: counters.free,
        SeatStatus.HELD: counters.held,
        SeatStatus.BOOKED: counters.booked,
    }
    found = _seat_groups(r, event_id, counts, None if all_seats else limit)
    groups = [SeatGroup(s.value, counts[s], found[s]) for s in SeatStatus]

    earliest: Any = r.zrange(k.holds, 0, limit - 1, withscores=True)
    raws: Any = r.hmget(k.reservations, [rid for rid, _ in earliest]) if earliest else []
    holds = [_hold(rid, score, raw, now) for (rid, score), raw in zip(earliest, raws, strict=True)]

    customer_seats: Counter[str] = Counter()
    for customer, seats in _hscan(r, k.customers):
        customer_seats[customer] = int(seats)
    top = heapq.nsmallest(limit, customer_seats.items(), key=lambda item: (-item[1], item[0]))

    latest: Any = r.xrevrange(k.log, count=limit)
    log = [_log_entry(entry_id, data) for entry_id, data in reversed(latest)]

    holds_total = int(r.zcard(k.holds))
    sweep = _sweep_state(r, event_id, now)
    problems = []
    if claimed != held_stored + booked:
        problems.append(
            f"{claimed} seats claimed, but the counters say {held_stored} held (due ones "
            f"included) + {booked} booked"
        )
    if sum(customer_seats.values()) != claimed:
        problems.append(
            f"the customers hash adds up to {sum(customer_seats.values())} seats, "
            f"but {claimed} are claimed"
        )
    if stale_claim_keys:
        problems.append(
            f"{len(stale_claim_keys)} claim keys name a reservation the claims hash does not "
            f"(seats {_ids(stale_claim_keys[:5])}): each refuses its seat to every reserve"
        )
    if holds_total and not sweep.indexed and not sweep.claimed:
        problems.append(
            f"{holds_total} holds, but the event is neither in the sweep index nor claimed: "
            "the sweep will not expire them (lazy expiry still does when they are touched)"
        )
    created, updated = meta.get("createdAt"), meta.get("updatedAt")
    return EventReport(
        event_id=event_id,
        name=name,
        created_at=iso_time(int(created)) if created else None,
        updated_at=iso_time(int(updated)) if updated else None,
        now=iso_time(now),
        seats=counters,
        seats_by_status=groups,
        all_seats=all_seats,
        holds_total=holds_total,
        holds_due=int(r.zcount(k.holds, "-inf", now)),
        holds=holds,
        customers_total=len(customer_seats),
        customers=[CustomerSeats(c, n) for c, n in top],
        log_length=int(r.xlen(k.log)),
        log=log,
        sweep=sweep,
        problems=problems,
    )


def render_event(e: EventReport) -> str:
    c = e.seats
    lines = [
        f"event {e.event_id}: {e.name}",
        f"  created {e.created_at or '-'}, updated {e.updated_at or '-'} (now {e.now})",
        "",
        f"seats: {c.total} total, {c.free} free, {c.held} held, {c.booked} booked",
    ]
    if c.due_not_swept:
        lines.append(f"  ({c.due_not_swept} of the free ones are in holds due, not yet swept)")
    lines.append(f"  {c.claimed} claimed by an active reservation, {c.claim_keys} with a claim key")
    for g in e.seats_by_status:
        shown = len(g.seat_ids)
        more = "" if e.all_seats or shown >= g.count else f" ... ({g.count - shown} more)"
        lines.append(f"  {g.status:<7}{g.count:>8}  {_ids(g.seat_ids)}{more}")

    lines += ["", f"holds: {e.holds_total} (due, not yet swept: {e.holds_due})"]
    if e.holds:
        lines.append(f"  the {len(e.holds)} earliest:")
    for h in e.holds:
        when = (
            f"DUE {_in(h.expires_in_seconds)}" if h.due else f"expires {_in(h.expires_in_seconds)}"
        )
        lines.append(
            f"  {h.reservation_id}  {h.customer_id or '?'}  [{_ids(h.seat_ids)}]  "
            f"{h.expires_at}  {when}"
        )

    lines += ["", f"customers with active seats: {e.customers_total}"]
    lines += [f"  {x.customer_id:<24}{x.seats:>6}" for x in e.customers]

    s = e.sweep
    lines += ["", "sweep:"]
    if s.indexed:
        lines.append(
            f"  in the due index: may have due holds from {s.due_at} ({_in(s.due_in_seconds or 0)})"
        )
    else:
        lines.append("  not in the due index")
    if s.claimed:
        state = "lapsed: the next run takes it over" if s.claim_lapsed else "a sweep is on it"
        lines.append(f"  claimed until {s.claimed_until} ({state})")
    else:
        lines.append("  not claimed")

    lines += ["", f"log: {e.log_length} entries"]
    if e.log:
        lines.append(f"  the latest {len(e.log)}:")
    lines += [f"  {_log_line(x)}" for x in e.log]

    lines += ["", "problems:" if e.problems else "problems: none"]
    lines += [f"  ! {p}" for p in e.problems]
    return "\n".join(lines) + "\n"


# inspect reservation


@dataclass(frozen=True)
class SeatClaim:
    seat_id: str
    in_event: bool
    # the reservation that claims the seat now (None: nobody does)
    claimed_by: str | None
    claimant_customer: str | None
    claimant_state: str | None
    by_this: bool


@dataclass(frozen=True)
class HistoryEntry:
    at: str
    action: str
    from_state: str | None = _as_json("from")
    to_state: str = _as_json("to")
    by: str = ""


@dataclass(frozen=True)
class ReservationReport:
    id: str
    event_id: str
    event_exists: bool
    customer_id: str
    seat_ids: list[str]
    state: str  # as stored
    effective_state: str  # as GET /reservations/{id} shows it
    due_not_swept: bool  # RESERVED past its time: expired, though not marked so yet
    created_at: str
    expires_at: str
    updated_at: str
    expires_in_seconds: float | None  # only for RESERVED
    in_holds: bool  # listed in the event's holds zset
    now: str
    seats: list[SeatClaim]
    history: list[HistoryEntry]
    log: list[LogEntry]
    log_scanned: int  # stream entries read looking for this reservation's
    stored: dict[str, Any]  # the stored JSON, history aside (times in ms)
    problems: list[str]


def _reservation_log(
    r: SyncClient, log_key: str, rid: str, res: Reservation
) -> tuple[list[LogEntry], int]:
    """The reservation's entries in the event's stream: read in pages over the span of its
    history (stream ids are the Redis time in ms of each change), at most MAX_LOG_SCAN."""
    times = [c.at_ms for c in res.history] or [res.created_at_ms, res.updated_at_ms]
    start, end = min(times) - LOG_SLACK_MS, max(times) + LOG_SLACK_MS
    low = f"{max(start, 0)}-0"
    found: list[LogEntry] = []
    scanned = 0
    while scanned < MAX_LOG_SCAN:
        page: Any = r.xrange(log_key, min=low, max=f"{end}-18446744073709551615", count=SCAN_COUNT)
        scanned += len(page)
        found += [_log_entry(i, data) for i, data in page if data.get("reservation") == rid]
        if len(page) < SCAN_COUNT:
            break
        low = f"({page[-1][0]}"
    return found, scanned


def reservation_report(r: SyncClient, reservation_id: str) -> ReservationReport:
    try:
        event_id = event_of_reservation(reservation_id)
    except NotFound:
        raise InspectError(f"{reservation_id!r} is not a reservation id seatres makes") from None
    k = keys.event_keys(event_id)
    raw: Any = r.hget(k.reservations, reservation_id)
    if raw is None:
        raise InspectError(f"reservation {reservation_id!r} not found (event {event_id!r})")
    res = decode_reservation(raw)
    now = _now_ms(r, k.meta)
    state = res.effective_state(now)
    due = state is not res.state

    seats = list(res.seat_ids)
    holders: Any = r.hmget(k.claims, seats)
    named: Any = r.mget([keys.claim_key(event_id, seat) for seat in seats])
    in_event = [_score(r, k.seats, seat) is not None for seat in seats]
    others = sorted({h for h in holders if h and h != reservation_id})
    other_raw: Any = r.hmget(k.reservations, others) if others else []
    claimants = {
        rid: decode_reservation(o) if o else None for rid, o in zip(others, other_raw, strict=True)
    }
    claims = []
    for seat, holder, exists in zip(seats, holders, in_event, strict=True):
        owner = res if holder == reservation_id else claimants.get(holder) if holder else None
        claims.append(
            SeatClaim(
                seat_id=seat,
                in_event=exists,
                claimed_by=holder,
                claimant_customer=owner.customer_id if owner else None,
                claimant_state=owner.effective_state(now).value if owner else None,
                by_this=holder == reservation_id,
            )
        )

    in_holds = _score(r, k.holds, reservation_id) is not None
    problems = []
    if res.state.is_active:
        lost = [c.seat_id for c in claims if not c.by_this]
        if lost:
            problems.append(f"{res.state.value}, but does not claim {_ids(lost)}")
    else:
        kept = [c.seat_id for c in claims if c.by_this]
        if kept:
            problems.append(f"{res.state.value}, but still claims {_ids(kept)}")
    disagree = _astray(seats, holders, named)
    if disagree:
        problems.append(
            f"claim keys name another reservation than the claims hash: {_ids(disagree)}"
        )
    if (res.state is ReservationState.RESERVED) != in_holds:
        where = "missing from" if not in_holds else "still in"
        problems.append(f"{res.state.value}, but {where} the event's holds")

    log, scanned = _reservation_log(r, k.log, reservation_id, res)
    stored = {key: value for key, value in orjson.loads(raw).items() if key != "history"}
    return ReservationReport(
        id=res.id,
        event_id=event_id,
        event_exists=bool(r.exists(k.meta)),
        customer_id=res.customer_id,
        seat_ids=seats,
        state=res.state.value,
        effective_state=state.value,
        due_not_swept=due,
        created_at=iso_time(res.created_at_ms),
        expires_at=iso_time(res.expires_at_ms),
        updated_at=iso_time(res.updated_at_ms),
        expires_in_seconds=(
            _seconds(res.expires_at_ms - now) if res.state is ReservationState.RESERVED else None
        ),
        in_holds=in_holds,
        now=iso_time(now),
        seats=claims,
        history=[
            HistoryEntry(
                at=iso_time(c.at_ms),
                action=c.action,
                from_state=c.from_state.value if c.from_state else None,
                to_state=c.to_state.value,
                by=c.by,
            )
            for c in res.history
        ],
        log=log,
        log_scanned=scanned,
        stored=stored,
        problems=problems,
    )


def render_reservation(x: ReservationReport) -> str:
    state = x.effective_state
    if x.due_not_swept:
        due = _in(x.expires_in_seconds or 0)
        state = f"EXPIRED (stored RESERVED: past its time, due {due}, not yet swept)"
    elif x.expires_in_seconds is not None:
        state = f"{state} (expires {_in(x.expires_in_seconds)})"
    lines = [
        f"reservation {x.id}",
        f"  event       {x.event_id}{'' if x.event_exists else '  (the event is gone)'}",
        f"  customer    {x.customer_id}",
        f"  state       {state}",
        f"  seats       {_ids(x.seat_ids)}",
        f"  createdAt   {x.created_at}",
        f"  expiresAt   {x.expires_at}",
        f"  updatedAt   {x.updated_at}",
        f"  in holds    {'yes' if x.in_holds else 'no'}",
        f"  now         {x.now}",
    ]
    known = {"id", "eventId", "seatIds", "customerId", "state", "createdAt", "expiresAt"}
    known.add("updatedAt")
    lines += [f"  {key:<12}{value}" for key, value in x.stored.items() if key not in known]

    lines += ["", "seats:"]
    for c in x.seats:
        if c.by_this:
            who = "claimed by this reservation"
        elif c.claimed_by:
            owner = f"{c.claimant_customer or '?'}, {c.claimant_state or '?'}"
            who = f"claimed by {c.claimed_by} ({owner})"
        else:
            who = "not claimed (free)"
        lines.append(f"  {c.seat_id:<12}{who}{'' if c.in_event else '  (no longer in the event)'}")

    lines += ["", f"history: {len(x.history)} changes"]
    for h in x.history:
        change = f"{h.from_state} -> {h.to_state}" if h.from_state else f"-> {h.to_state}"
        lines.append(f"  {h.at}  {h.action:<8} {change:<24} by {h.by}")

    lines += ["", f"log: {len(x.log)} entries (of {x.log_scanned} read around its history)"]
    lines += [f"  {_log_line(e)}" for e in x.log]

    lines += ["", "problems:" if x.problems else "problems: none"]
    lines += [f"  ! {p}" for p in x.problems]
    return "\n".join(lines) + "\n"


# inspect keys


@dataclass(frozen=True)
class KeyPattern:
    pattern: str
    type: str
    holds: str
    keys: int
    # members / fields / entries, added up over every key counted (None: not counted)
    elements: int | None
    # types seen that are not `type` (checked on the first key of each pattern)
    unexpected_types: list[str]


@dataclass(frozen=True)
class SweepIndex:
    due_now: int  # events in seatres:{sweep}:due whose time has come
    claims_lapsed: int  # events in seatres:{sweep}:claimed whose lease has run out
    # the expiry job's record (seatres:{sweep}:stats), as stored
    stats: dict[str, str]
    last_success_seconds_ago: float | None


@dataclass(frozen=True)
class KeysReport:
    redis_url: str
    jobs_redis_url: str
    now: str
    db_size: int  # every key of the database (DBSIZE)
    complete: bool  # False: the counts below are lower bounds (--max-keys, scan bound)
    events: int  # events with a meta hash
    events_with_keys: int  # event ids with any key (idempotency records of unknown ones too)
    patterns: list[KeyPattern]  # the keys of each event
    singles: list[KeyPattern]  # the keys outside the events: sweep index, events index
    other_keys: int  # seatres:* keys that fit no pattern
    other_examples: list[str]
    sweep: SweepIndex
    rq_complete: bool
    rq_keys: int
    rq_by_prefix: dict[str, int]
    problems: list[str]


# The event keys (seatres/store/keys.py), by the part after the event's tag. Every field of
# EventKeys must be here (tests/test_inspect.py checks it).
EVENT_KEY_SCHEMA: dict[str, tuple[str, str]] = {
    "meta": ("hash", "eventId, name, createdAt, updatedAt (ms), held and booked counters"),
    "seats": ("zset", "every seat id, score 0 (ordered by id)"),
    "claims": ("hash", "seat id -> its active (RESERVED or CONFIRMED) reservation"),
    "reservations": ("hash", "reservation id -> reservation JSON (history included)"),
    "holds": ("zset", "RESERVED reservation id -> expiresAt (ms)"),
    "customers": ("hash", "customer id -> seats in the customer's active reservations"),
    "log": ("stream", "every change (reservation, action, from, to, by, ...), MAXLEN ~"),
}
IDEMPOTENCY_SCHEMA = ("string", "the remembered answer of one Idempotency-Key (with a TTL)")
CLAIM_KEY_SCHEMA = ("string", "id of the reservation whose claim on the seat is live")
# The keys outside the events, one of each.
SINGLE_KEY_SCHEMA: dict[str, tuple[str, str]] = {
    keys.SWEEP_DUE: ("zset", "eventId -> earliest time (ms) it may have a due hold"),
    keys.SWEEP_CLAIMED: ("zset", "eventId -> until when (ms) a running sweep owns it"),
    keys.SWEEP_STATS: ("hash", "the expiry job's last success (ms), runs, expired"),
    keys.EVENTS: ("set", "every event id (written after each upsert)"),
}
# Elements of a key, by type: only O(1) commands.
_SIZE: dict[str, Callable[[Any, str], Any]] = {
    "hash": lambda p, key: p.hlen(key),
    "zset": lambda p, key: p.zcard(key),
    "set": lambda p, key: p.scard(key),
    "stream": lambda p, key: p.xlen(key),
}
_TAG_START = keys.event_tag("")[: -len("}")]  # seatres:{evt:


def _classify(key: str) -> tuple[str, str] | None:
    """(event id, pattern name) of an event key: a field of EventKeys, 'claim' or 'idem'."""
    if not key.startswith(_TAG_START):
        return None
    event_id, sep, rest = key[len(_TAG_START) :].partition("}:")
    if not sep:
        return None
    if rest in EVENT_KEY_SCHEMA:
        return event_id, rest
    if rest.startswith("idem:"):
        return event_id, "idem"
    if rest.startswith("claim:"):
        return event_id, "claim"
    return None


def _scan(r: SyncClient, match: str, max_keys: int, count: int) -> tuple[list[str], bool]:
    """Keys matching `match`, SCAN by SCAN (on a cluster: every primary in turn):
    (keys, complete). Stops after `max_keys` matching keys or after about
    SCAN_FACTOR * max_keys keys walked (complete False)."""
    found: set[str] = set()
    calls = 0
    max_calls = max(1, SCAN_FACTOR * max_keys // count)
    nodes: list[Any] = [None]
    if isinstance(r, RedisCluster):
        nodes = r.get_primaries()  # type: ignore[no-untyped-call]
    for node in nodes:
        where = {} if node is None else {"target_nodes": node}
        cursor = 0
        while True:
            reply: Any = r.scan(cursor, match=match, count=count, **where)
            if isinstance(reply[0], dict):  # redis-py's cluster form: {node: cursor}
                cursor = int(next(iter(reply[0].values())))
            else:
                cursor = int(reply[0])
            found.update(reply[1])
            calls += 1
            if cursor == 0:
                break
            if len(found) >= max_keys or calls >= max_calls:
                return sorted(found), False
    return sorted(found), True


def _db_size(r: SyncClient) -> int:
    """Keys in the database; on a cluster, added up over the primaries."""
    if isinstance(r, RedisCluster):
        return int(r.dbsize(target_nodes=RedisCluster.PRIMARIES))
    return int(r.dbsize())


def _pipelined(r: SyncClient, command: Callable[[Any, str], Any], items: list[str]) -> list[Any]:
    """One cheap command per item, SCAN_COUNT of them per round trip; a failed one (a key
    of the wrong type) answers with its exception."""
    replies: list[Any] = []
    for start in range(0, len(items), SCAN_COUNT):
        pipe = r.pipeline(transaction=False)
        for item in items[start : start + SCAN_COUNT]:
            command(pipe, item)
        replies += pipe.execute(raise_on_error=False)
    return replies


def _pattern(r: SyncClient, pattern: str, kind: str, holds: str, found: list[str]) -> KeyPattern:
    size = _SIZE.get(kind)
    sizes = [] if size is None else _pipelined(r, size, found)
    elements = None if size is None else sum(int(n) for n in sizes if isinstance(n, int))
    seen = str(r.type(found[0])) if found else kind  # "none": gone since the SCAN
    unexpected = [] if seen in (kind, "none") else [seen]
    return KeyPattern(pattern, kind, holds, len(found), elements, unexpected)


def keys_report(
    r: SyncClient,
    jobs: SyncClient | None = None,
    max_keys: int = MAX_KEYS,
    scan_count: int = SCAN_COUNT,
    redis_url: str = "",
    jobs_redis_url: str = "",
) -> KeysReport:
    """The key schema with live counts. `jobs` is the rq Redis (None: the same as `r`)."""
    now = _now_ms(r, keys.SWEEP_DUE)
    found, complete = _scan(r, f"{keys.PREFIX}:*", max_keys, scan_count)

    by_pattern: dict[str, list[str]] = {name: [] for name in [*EVENT_KEY_SCHEMA, "claim", "idem"]}
    events_with_keys: set[str] = set()
    with_meta: list[str] = []
    other: list[str] = []
    for key in found:
        where = _classify(key)
        if where is None:
            if key not in SINGLE_KEY_SCHEMA:
                other.append(key)
            continue
        events_with_keys.add(where[0])
        by_pattern[where[1]].append(key)
        if where[1] == "meta":
            with_meta.append(where[0])

    example = keys.event_keys("<eventId>")._asdict()
    example["claim"] = keys.claim_key("<eventId>", "<seatId>")
    example["idem"] = f"{keys.event_tag('<eventId>')}:idem:<hash>"
    schema = {**EVENT_KEY_SCHEMA, "claim": CLAIM_KEY_SCHEMA, "idem": IDEMPOTENCY_SCHEMA}
    patterns = [
        _pattern(
            r,
            example[name],
            *schema[name],
            found_keys,
        )
        for name, found_keys in by_pattern.items()
    ]
    singles = []
    for key, (kind, holds) in SINGLE_KEY_SCHEMA.items():
        present = [key] if r.exists(key) else []
        singles.append(_pattern(r, key, kind, holds, present))

    problems = []
    indexed = _pipelined(r, lambda p, event_id: p.sismember(keys.EVENTS, event_id), with_meta)
    missing = [event_id for event_id, yes in zip(with_meta, indexed, strict=True) if yes != 1]
    if missing:
        problems.append(
            f"{len(missing)} events are not in {keys.EVENTS} (e.g. {_ids(missing[:5])}): "
            "an upsert of each puts it there"
        )
    events_index = int(r.scard(keys.EVENTS))
    if complete and events_index > len(with_meta) - len(missing):
        problems.append(
            f"{keys.EVENTS} has {events_index - len(with_meta) + len(missing)} event ids "
            "without a meta hash"
        )
    for p in [*patterns, *singles]:
        if p.unexpected_types:
            problems.append(f"a key of {p.pattern} is a {p.unexpected_types[0]}, not a {p.type}")

    stats: Any = r.hgetall(keys.SWEEP_STATS)
    last = stats.get("lastSuccess")
    jobs = jobs or r
    rq_found, rq_complete = _scan(jobs, "rq:*", max_keys, scan_count)
    rq_by_prefix = Counter(":".join(key.split(":")[:2]) for key in rq_found)
    return KeysReport(
        redis_url=redis_url,
        jobs_redis_url=jobs_redis_url or redis_url,
        now=iso_time(now),
        db_size=_db_size(r),
        complete=complete,
        events=len(with_meta),
        events_with_keys=len(events_with_keys),
        patterns=patterns,
        singles=singles,
        other_keys=len(other),
        other_examples=other[:5],
        sweep=SweepIndex(
            due_now=int(r.zcount(keys.SWEEP_DUE, "-inf", now)),
            claims_lapsed=int(r.zcount(keys.SWEEP_CLAIMED, "-inf", now)),
            stats=dict(stats),
            last_success_seconds_ago=_seconds(now - int(last)) if last else None,
        ),
        rq_complete=rq_complete,
        rq_keys=len(rq_found),
        rq_by_prefix=dict(sorted(rq_by_prefix.items())),
        problems=problems,
    )


def render_keys(x: KeysReport) -> str:
    at_least = "" if x.complete else "≥ "
    lines = [f"Redis {x.redis_url or '-'}: {x.db_size} keys in the database (now {x.now})"]
    if not x.complete:
        lines.append(
            "  (stopped counting early: the numbers marked ≥ are lower bounds; "
            "raise --max-keys for more)"
        )
    lines += [
        f"events: {at_least}{x.events} (keys of {at_least}{x.events_with_keys} event ids)",
        "",
        f"  {'keys':>10} {'elements':>12}  {'type':<7} key: what it holds",
    ]

    def row(p: KeyPattern, bound: str) -> str:
        elements = "" if p.elements is None else f"{bound}{p.elements}"
        return f"  {bound + str(p.keys):>10} {elements:>12}  {p.type:<7} {p.pattern}: {p.holds}"

    lines += [row(p, at_least) for p in x.patterns]
    lines.append("")
    lines += [row(p, "") for p in x.singles]
    s = x.sweep
    lines.append(
        f"  sweep: {s.due_now} events due now, {s.claims_lapsed} claims with a lapsed lease"
    )
    if s.last_success_seconds_ago is not None:
        lines.append(
            f"  last successful sweep {s.last_success_seconds_ago:.0f}s ago; "
            f"runs {s.stats.get('runs', '?')}, holds expired {s.stats.get('expired', '?')}"
        )
    else:
        lines.append("  no successful sweep recorded")
    if x.other_keys:
        lines += [
            "",
            f"other {keys.PREFIX}:* keys: {at_least}{x.other_keys} "
            f"(e.g. {', '.join(x.other_examples)})",
        ]
    rq_at_least = "" if x.rq_complete else "≥ "
    lines += ["", f"rq:* keys in {x.jobs_redis_url or '-'}: {rq_at_least}{x.rq_keys}"]
    lines += [f"  {rq_at_least + str(n):>10}  {prefix}:*" for prefix, n in x.rq_by_prefix.items()]
    lines += ["", "problems:" if x.problems else "problems: none"]
    lines += [f"  ! {p}" for p in x.problems]
    return "\n".join(lines) + "\n"


# The command


def run(
    settings: Settings,
    what: str,
    target: str = "",
    as_json: bool = False,
    limit: int = 10,
    all_seats: bool = False,
    max_keys: int = MAX_KEYS,
) -> str:
    """`seatres inspect WHAT [TARGET]`: the text (or JSON) to print; InspectError for what
    to say on stderr instead."""
    if settings.redis_url is None:
        raise InspectError(
            "set SEATRES_REDIS_URL to the Redis to inspect (inspect never starts an "
            "embedded Redis; the one `seatres dev` started prints its URL)"
        )
    url = redact(settings.redis_url)
    jobs_url = settings.effective_jobs_redis_url or settings.redis_url
    r: SyncClient | None = None
    jobs: SyncClient | None = None
    try:
        # (a cluster client reads the cluster's slots here already)
        r = connect_sync(settings.redis_url, settings.redis_timeout_seconds)
        if jobs_url != settings.redis_url:
            jobs = connect_sync(jobs_url, settings.redis_timeout_seconds)
        report: Any
        text: Callable[[Any], str]
        if what == "event":
            report = event_report(r, target, limit=limit, all_seats=all_seats)
            text = render_event
        elif what == "reservation":
            report = reservation_report(r, target)
            text = render_reservation
        elif what == "keys":
            report = keys_report(
                r, jobs, max_keys=max_keys, redis_url=url, jobs_redis_url=redact(jobs_url)
            )
            text = render_keys
        else:
            raise InspectError(f"nothing to inspect called {what!r}")
        return dumps(report) + "\n" if as_json else text(report)
    except (RedisError, RedisClusterException) as exc:
        raise InspectError(f"Redis at {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if r is not None:
            r.close()
        if jobs is not None:
            jobs.close()

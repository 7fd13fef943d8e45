"""RedisStore: the domain's store, one Lua script per transition.

Result codes of the scripts are mapped to domain errors here and nowhere else
(`_error_for`). Connection trouble becomes StoreUnavailable (503), never a 500.

The same code serves one Redis and a Redis Cluster (redis-py's RedisCluster): each script
gets the keys of one event (one hash slot) or of the sweep index (another), and the
writes to the cross-event indexes ({sweep}, {index}) are commands of their own."""

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from seatres.clock import redis_time_ms
from seatres.domain.errors import (
    DomainError,
    IdempotencyKeyMismatch,
    InvalidTransition,
    LimitExceeded,
    NotFound,
    ReservationExpired,
    SeatUnavailable,
    StoreUnavailable,
)
from seatres.domain.models import (
    Caller,
    Change,
    Claim,
    EventCounts,
    EventSummary,
    EventUpsert,
    IdempotencyKey,
    Outcome,
    Reservation,
    SeatCounts,
    SeatPage,
    SeatStatus,
    SweepBatch,
    SweepStats,
)
from seatres.domain.states import ReservationState, Transition
from seatres.store import keys, scripts
from seatres.store.batching import TickBatcher

log = logging.getLogger("seatres.store")

# Script result codes (see the header of each file in seatres/lua).
CREATED = 1
UNCHANGED = 2
REPLAYED = 3
EVENT_NOT_FOUND = -1
UNKNOWN_SEATS = -2
SEATS_TAKEN = -3
INVALID_TRANSITION = -4
EXPIRED = -5
NOT_OWNER = -6
LIMIT_EXCEEDED = -7
IDEMPOTENCY_MISMATCH = -8

# An event claimed by a sweep that died is handed to another sweep after this long.
SWEEP_LEASE_MS = 90_000
# A script call that hears NOSCRIPT loads the script and sends again, this many times in
# all: the load it joined may have reached a master of a cluster before that master's
# flush (SCRIPT FLUSH on each master in turn); a later one started after it ended, so
# after that flush. (Not seen yet: what CI saw was a finished load joined, see _load.)
NOSCRIPT_ATTEMPTS = 3


def _error_for(code: int, payload: Sequence[Any], what: str) -> DomainError:
    """The one place where a script's refusal becomes a domain error."""
    if code in (EVENT_NOT_FOUND, NOT_OWNER):
        return NotFound(f"{what} not found")
    if code == UNKNOWN_SEATS:
        return NotFound(f"Seats not found in this event: {', '.join(payload)}", seatIds=payload)
    if code == SEATS_TAKEN:
        return SeatUnavailable(list(payload))
    if code == INVALID_TRANSITION:
        state = decode_reservation(payload[0]).state.value
        return InvalidTransition(f"A {state} reservation cannot make this transition")
    if code == EXPIRED:
        return ReservationExpired("The hold expired; its seats are free again")
    if code == LIMIT_EXCEEDED:
        limit, unit = int(payload[0]), payload[1]
        detail = (
            f"A hold may last at most {limit} seconds"
            if unit == "seconds"
            else f"A customer may have at most {limit} seats active in this event"
        )
        return LimitExceeded(detail, limit=limit)
    if code == IDEMPOTENCY_MISMATCH:
        return IdempotencyKeyMismatch(
            "This Idempotency-Key was already used for a different request"
        )
    raise RuntimeError(f"unknown result code {code} from the store")


def _outcome(result: Sequence[Any], what: str) -> Outcome:
    """A transition script's reply as an Outcome, or its refusal raised as a domain error."""
    replayed = int(result[0]) == REPLAYED
    if replayed:
        result = result[1:]
    code = int(result[0])
    if code < 0:
        raise _refusal(code, result[1:], what, replayed)
    return Outcome(decode_reservation(result[1]), replayed)


def _refusal(code: int, payload: Sequence[Any], what: str, replayed: bool) -> DomainError:
    """Made here rather than in _outcome: an exception held by a local of a frame it is
    raised through is a reference cycle (exception, traceback, frame), and with it the
    whole request (its Request, closures, coroutines) waited for the garbage collector:
    about 50 objects per refused reserve."""
    error = _error_for(code, payload, what)
    error.replayed = replayed
    return error


# Value -> state: a dict lookup, several times cheaper than ReservationState(value), and
# decoding is on the path of every transition's answer.
_STATE = {state.value: state for state in ReservationState}


def decode_reservation(raw: str) -> Reservation:
    """A reservation as the scripts keep it (JSON in the event's reservations hash)."""
    data = orjson.loads(raw)
    return Reservation(
        id=data["id"],
        event_id=data["eventId"],
        seat_ids=tuple(data["seatIds"]),
        customer_id=data["customerId"],
        state=_STATE[data["state"]],
        created_at_ms=int(data["createdAt"]),
        expires_at_ms=int(data["expiresAt"]),
        updated_at_ms=int(data["updatedAt"]),
        history=tuple(_change(c) for c in data.get("history", ())),
    )


def _change(data: dict[str, Any]) -> Change:
    return Change(
        at_ms=int(data["at"]),
        action=data["action"],
        from_state=_STATE[data["from"]] if "from" in data else None,
        to_state=_STATE[data["to"]],
        by=data["by"],
    )


# Error codes of a Redis that cannot take the command now but may soon: at the start of
# the message, or after the "-" with which a script's error quotes them.
_TRANSIENT = re.compile(
    r"(?:^|-)(OOM|READONLY|MASTERDOWN|NOREPLICAS|LOADING|CLUSTERDOWN|TRYAGAIN) "
)


# A Redis Cluster that cannot serve now: no node answers, the slots are not all covered,
# or the nodes disagree about them (redis-py says so with a RedisClusterException, which
# it also uses for calls that could never work, such as cross-slot keys: those stay 500).
_CLUSTER_UNAVAILABLE = re.compile(r"cannot be connected|not covered|could not agree")


def _raised_in_a_redis_connection(exc: BaseException) -> bool:
    """The error came out of redis-py's connection code (a frame of the traceback is
    there): sending or reading on a socket that was closed under it."""
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("redis.asyncio.connection", "redis.connection")):
            return True
        tb = tb.tb_next
    return False


def _as_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The 503 for a Redis error that says "not now" (None for any other error)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError | ReadOnlyError):
        return StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}")
    if isinstance(exc, ClusterError | TryAgainError | AskError | SlotNotCoveredError):
        # CLUSTERDOWN, a failover under way, or redirections that did not settle within
        # redis-py's limit (a slot being moved): retry later
        return StoreUnavailable(f"Redis Cluster is unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, RedisClusterException):
        if _CLUSTER_UNAVAILABLE.search(str(exc)):
            return StoreUnavailable(f"Redis Cluster is unavailable: {exc}")
        return None
    if isinstance(exc, AttributeError | RuntimeError):
        # redis-py's cluster client, when it loses a node, closes every connection of the
        # client (aclose) to learn the topology again, also those other requests are using
        # at that moment: one caught halfway through connecting or sending fails with
        # "'NoneType' object has no attribute 'writelines'" (redis-py) or "unable to
        # perform operation on <TCPTransport closed=True ...>" (uvloop). A node is gone:
        # retry later.
        if _raised_in_a_redis_connection(exc):
            return StoreUnavailable(f"Redis connection closed while in use: {exc}")
        return None
    if isinstance(exc, NoScriptError):  # (after NOSCRIPT_ATTEMPTS: flushed again and again)
        return StoreUnavailable(f"Redis keeps losing its scripts: {exc}")
    if isinstance(exc, OutOfMemoryError):  # maxmemory with noeviction: nothing was written
        return StoreUnavailable(f"Redis is out of memory: {exc}")
    if isinstance(exc, ResponseError) and _TRANSIENT.search(str(exc)):
        # The same refusals raised inside a script arrive as a plain ResponseError:
        # "Error running script (...): @user_script:...: -OOM command not allowed ..."
        return StoreUnavailable(f"Redis refused the command: {exc}")
    return None


class _UnavailableOnFailure:
    """`with _unavailable_on_failure:` turns Redis errors that say "not now" into
    StoreUnavailable (503); other errors pass unchanged. A plain class, not a
    generator-based context manager: it wraps every call on the hot path."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is not None and not isinstance(exc, DomainError):
            unavailable = _as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc


_unavailable_on_failure = _UnavailableOnFailure()


class RedisStore:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        log_max_length: int = 100_000,
        idempotency_ttl_ms: int = 86_400_000,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """observe(operation, seconds) is told the time of every script call."""
        self._redis = redis
        self._batcher = TickBatcher(redis)
        self._observe = observe
        self._log_max_length = log_max_length
        self._idempotency_ttl_ms = idempotency_ttl_ms
        # On a single Redis the reserve script indexes a new hold's event for the sweep
        # itself (the index's key goes last in its KEYS): one command per new hold, and no
        # moment when the hold stands unindexed. On a cluster the index is in another slot.
        self._sweep_index_in_script = not isinstance(redis, RedisCluster)
        # script name -> its SCRIPT LOAD under way, shared by every caller that got NOSCRIPT
        self._loading: dict[str, asyncio.Future[Any]] = {}

    async def aclose(self) -> None:
        """Closes what the store opened itself (the batcher's connection); the Redis
        client it was given is its owner's to close."""
        await self._batcher.aclose()

    async def ping(self) -> None:
        with _unavailable_on_failure:
            if isinstance(self._redis, RedisCluster):
                # every primary: a cluster with a master unreachable cannot serve its slots
                await self._redis.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._redis.ping()
            if not await scripts.scripts_loaded(self._redis):
                await scripts.load_all(self._redis)

    async def _load(self, s: scripts.Script) -> None:
        """SCRIPT LOAD (on a cluster: on every primary), once for all the callers that
        got NOSCRIPT at the same moment: after a restart or a slot moved to a node with
        an empty script cache, a burst would otherwise send one load per request."""
        loading = self._loading.get(s.name)
        # A finished load whose callback has yet to drop it is not joined: a caller that
        # heard NOSCRIPT from a flush after it would send again into the same NOSCRIPT
        # (seen in CI: a 500 under SCRIPT FLUSH on a cluster).
        if loading is None or loading.done():
            loading = asyncio.ensure_future(self._redis.script_load(s.source))
            self._loading[s.name] = loading
            loading.add_done_callback(partial(self._loaded, s.name))
        await asyncio.shield(loading)

    def _loaded(self, name: str, loading: "asyncio.Future[Any]") -> None:
        if self._loading.get(name) is loading:
            del self._loading[name]

    async def _run(self, name: str, script_keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """EVALSHA through the tick batcher; NOSCRIPT loads the script and sends again."""
        s = scripts.script(name)
        call = ("EVALSHA", s.sha, len(script_keys), *script_keys, *args)
        started = time.perf_counter()
        with _unavailable_on_failure:
            for _ in range(NOSCRIPT_ATTEMPTS):
                (reply,) = await self._batcher.submit(call)
                if not isinstance(reply, NoScriptError):
                    break
                await self._load(s)
            if self._observe is not None:
                self._observe(name, time.perf_counter() - started)
            if isinstance(reply, Exception):
                raise reply
            return reply

    def _idempotency(
        self, event_id: str, caller_id: str, idempotency: IdempotencyKey | None
    ) -> tuple[list[str], list[str | int]]:
        """The extra key and the ARGV tail (fingerprint, ttl) of an idempotent call."""
        if idempotency is None:
            return [], ["", self._idempotency_ttl_ms]
        record = keys.idempotency_key(event_id, caller_id, idempotency.key)
        return [record], [idempotency.fingerprint, self._idempotency_ttl_ms]

    async def upsert_event(self, event_id: str, name: str, seat_ids: Sequence[str]) -> EventUpsert:
        result = await self._run(
            "upsert_event",
            keys.event_keys(event_id),
            [event_id, name, self._log_max_length, *seat_ids],
        )
        code = int(result[0])
        if code < 0:
            raise _error_for(code, result[1:], "Event")
        # the index of all events lives in its own slot: a command of its own
        with _unavailable_on_failure:
            await self._batcher.execute("SADD", keys.EVENTS, event_id)
        return EventUpsert(created=code == CREATED, added=int(result[1]), removed=int(result[2]))

    async def event_summary(self, event_id: str) -> EventSummary:
        result = await self._run("event_summary", keys.event_keys(event_id), [])
        if not result:
            raise NotFound("Event not found")
        name, total, held, booked = result[0], int(result[1]), int(result[2]), int(result[3])
        counts = SeatCounts(total=total, free=total - held - booked, held=held, booked=booked)
        return EventSummary(event_id=event_id, name=name, seats=counts)

    async def seat_page(self, event_id: str, cursor: str | None, limit: int) -> SeatPage:
        result = await self._run("seat_page", keys.event_keys(event_id), [cursor or "", limit])
        if result and result[0] == EVENT_NOT_FOUND:
            raise NotFound("Event not found")
        seats = tuple((result[i], SeatStatus(result[i + 1])) for i in range(0, len(result), 2))
        next_cursor = seats[-1][0] if len(seats) == limit else None
        return SeatPage(seats=seats, next_cursor=next_cursor)

    async def reserve(
        self,
        event_id: str,
        reservation_id: str,
        customer_id: str,
        seat_ids: Sequence[str],
        hold_ms: int,
        max_seats_per_customer: int = 0,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        extra_key, idempotency_args = self._idempotency(event_id, customer_id, idempotency)
        args = [
            reservation_id,
            customer_id,
            hold_ms,
            max_seats_per_customer,
            self._log_max_length,
            *idempotency_args,
            *seat_ids,
        ]
        script_keys = [*keys.event_keys(event_id), *extra_key]
        if self._sweep_index_in_script:
            script_keys.append(keys.SWEEP_DUE)
        result = await self._run("reserve", script_keys, args)
        if result == SEATS_TAKEN:  # reserve.lua's early answer: every seat asked is taken
            result = [SEATS_TAKEN, *seat_ids]
        outcome = _outcome(result, "Event")
        # on a cluster; a replay's first answer indexed the hold already
        if not self._sweep_index_in_script and not outcome.replayed:
            await self._index_hold(event_id, outcome.reservation.expires_at_ms)
        return outcome

    async def _index_hold(self, event_id: str, expires_at_ms: int) -> None:
        """On a Redis Cluster: tell the sweep the event has a hold due at expires_at_ms.
        The index lives in another slot, so this is its own command, after the script: a
        refused reserve changes nothing in Redis. If it fails, the hold stands (the client
        is told so); it still expires lazily, and with the event's next indexed hold."""
        try:
            with _unavailable_on_failure:
                await self._batcher.execute("ZADD", keys.SWEEP_DUE, "LT", expires_at_ms, event_id)
        except StoreUnavailable as exc:
            log.warning("hold of event %s not indexed for the sweep: %s", event_id, exc.detail)

    async def transition(
        self,
        event_id: str,
        reservation_id: str,
        transition: Transition,
        caller: Caller,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        if transition is Transition.EXPIRE:
            raise ValueError("expiry is the sweep's job: use expire_batch")
        return await self._change(
            transition.value, event_id, reservation_id, caller, idempotency, []
        )

    async def extend(
        self,
        event_id: str,
        reservation_id: str,
        caller: Caller,
        extra_ms: int,
        max_hold_ms: int,
        idempotency: IdempotencyKey | None = None,
    ) -> Outcome:
        return await self._change(
            "extend", event_id, reservation_id, caller, idempotency, [extra_ms, max_hold_ms]
        )

    async def _change(
        self,
        script: str,
        event_id: str,
        reservation_id: str,
        caller: Caller,
        idempotency: IdempotencyKey | None,
        extra_args: Sequence[int],
    ) -> Outcome:
        """confirm, cancel and extend share their calling convention (see their headers)."""
        extra_key, idempotency_args = self._idempotency(event_id, caller.customer_id, idempotency)
        # Tells a redis-py retry of this very call (same nonce) from a later replay.
        nonce = secrets.token_urlsafe(12)
        result = await self._run(
            script,
            [*keys.event_keys(event_id), *extra_key],
            [
                reservation_id,
                caller.customer_id,
                "1" if caller.is_admin else "0",
                self._log_max_length,
                nonce,
                *idempotency_args,
                *extra_args,
            ],
        )
        return _outcome(result, "Reservation")

    async def get_reservation(
        self, event_id: str, reservation_id: str
    ) -> tuple[Reservation | None, int]:
        k = keys.event_keys(event_id)
        raw, now_ms = await self._with_clock(("HGET", k.reservations, reservation_id))
        return (decode_reservation(raw) if raw else None), now_ms

    async def _with_clock(self, command: tuple[Any, ...]) -> tuple[Any, int]:
        """A read and Redis's clock (ms), in one round trip."""
        with _unavailable_on_failure:
            replies = await self._batcher.submit(command, ("TIME",))
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        raw, clock = replies
        return raw, redis_time_ms(clock)

    # The sweep's side (seatres.jobs.sweep)

    async def claim_due_events(self, limit: int) -> list[Claim]:
        result = await self._run(
            "claim_due_events", [keys.SWEEP_DUE, keys.SWEEP_CLAIMED], [SWEEP_LEASE_MS, limit]
        )
        lease_until = int(result[0])
        return [Claim(event_id, lease_until) for event_id in dict.fromkeys(result[1:])]

    async def expire_batch(self, event_id: str, batch_size: int) -> SweepBatch:
        result = await self._run(
            "expire", keys.event_keys(event_id), [batch_size, self._log_max_length]
        )
        next_due = int(result[2])
        return SweepBatch(
            expired_ids=tuple(result[3:]),
            more_due=bool(int(result[1])),
            next_due_ms=None if next_due < 0 else next_due,
        )

    async def release_event(self, claim: Claim, next_due_ms: int | None) -> None:
        await self._run(
            "release_event",
            [keys.SWEEP_DUE, keys.SWEEP_CLAIMED],
            [claim.event_id, claim.lease_until_ms, "" if next_due_ms is None else next_due_ms],
        )

    async def record_sweep(self, expired: int, seconds: float) -> None:
        """Kept for /metrics and /readyz: the API processes never see the rq worker."""
        await self._run("record_sweep", [keys.SWEEP_STATS], [expired, repr(seconds)])

    async def sweep_stats(self) -> tuple[SweepStats, int]:
        """The sweep's record and the store's clock (ms)."""
        raw, now_ms = await self._with_clock(("HGETALL", keys.SWEEP_STATS))
        last = raw.get("lastSuccess")
        stats = SweepStats(
            last_success_ms=int(last) if last else None,
            last_seconds=float(raw.get("lastSeconds", 0)),
            last_expired=int(raw.get("lastExpired", 0)),
            runs=int(raw.get("runs", 0)),
            expired=int(raw.get("expired", 0)),
        )
        return stats, now_ms

    async def event_counts(self, limit: int) -> list[EventCounts]:
        """Name and seat counters of up to `limit` events: O(limit), not O(seats), and
        SSCAN rather than SMEMBERS, so a huge events set costs no more."""
        with _unavailable_on_failure:
            event_ids: list[str] = []
            async for member in self._redis.sscan_iter(keys.EVENTS, count=limit):
                event_ids.append(str(member))
                if len(event_ids) >= limit:
                    break
            event_ids.sort()
            async with self._redis.pipeline(transaction=False) as pipe:
                for event_id in event_ids:
                    k = keys.event_keys(event_id)
                    pipe.hmget(k.meta, ["name", "held", "booked"])
                    pipe.zcard(k.seats)
                replies = await pipe.execute()
        counts = []
        for i, event_id in enumerate(event_ids):
            (name, held, booked), total = replies[2 * i], replies[2 * i + 1]
            if name is not None:
                counts.append(EventCounts(event_id, name, total, int(held), int(booked)))
        return counts

"""Scripts are safe when redis-py retries a command whose reply was lost.

A retried RESERVE must find the reservation its first run made (the id is chosen before
the store is called), and a retried CONFIRM or CANCEL must answer as the first run did.
The first half calls the store twice with the same arguments, as a retry does; the second
half makes redis-py really retry, through a TCP proxy that loses the reply of the first
EVALSHA after Redis has run it."""

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from seatres.domain import ids
from seatres.domain.errors import NotFound, ReservationExpired, SeatUnavailable
from seatres.domain.models import Caller, IdempotencyKey, Outcome, Reservation
from seatres.domain.states import ReservationState, Transition
from seatres.embedded import RedisServer
from seatres.store import keys
from seatres.store.connection import connect
from seatres.store.redis_store import RedisStore
from tests.conftest import Backend, make_settings

EVENT = "retry-show"
SEATS = ["A1", "A2", "A3"]
ALICE = Caller("alice")
HOLD_MS = 600_000


def _snapshot(sync: redis.Redis) -> dict[str, Any]:
    """Everything the store keeps about EVENT, plus the sweep index."""
    k = keys.event_keys(EVENT)
    return {
        "meta": sync.hgetall(k.meta),
        "seats": sync.zrange(k.seats, 0, -1, withscores=True),
        "claims": sync.hgetall(k.claims),
        "reservations": sync.hgetall(k.reservations),
        "holds": sync.zrange(k.holds, 0, -1, withscores=True),
        "due": sync.zrange(keys.SWEEP_DUE, 0, -1, withscores=True),
    }


def _counters(sync: redis.Redis) -> tuple[int, int]:
    held, booked = sync.hmget(keys.event_keys(EVENT).meta, "held", "booked")
    assert held is not None and booked is not None
    return int(held), int(booked)


def _stored(sync: redis.Redis, reservation_id: str) -> str:
    raw = sync.hget(keys.event_keys(EVENT).reservations, reservation_id)
    assert isinstance(raw, str)
    state: str = orjson.loads(raw)["state"]
    return state


async def _with_store(backend: Backend, body: Callable[[RedisStore], Any]) -> Any:
    client = backend.make_async()
    try:
        store = RedisStore(client)
        await store.upsert_event(EVENT, "Retry show", SEATS)
        return await body(store)
    finally:
        await client.aclose()


# The store called twice with the same arguments, as a retry after a lost reply does


def test_retried_reserve_answers_with_the_first_reservation(backend: Backend) -> None:
    rid = ids.new_reservation_id(EVENT)

    async def body(store: RedisStore) -> tuple[Reservation, Reservation]:
        first = (await store.reserve(EVENT, rid, "alice", ["A1", "A2"], HOLD_MS)).reservation
        await asyncio.sleep(0.005)  # a retry comes later: its clock must not matter
        second = (await store.reserve(EVENT, rid, "alice", ["A1", "A2"], HOLD_MS)).reservation
        return first, second

    first, second = asyncio.run(_with_store(backend, body))
    assert first == second
    assert first.id == rid
    assert first.state is ReservationState.RESERVED
    k = keys.event_keys(EVENT)
    assert backend.sync.hgetall(k.claims) == {"A1": rid, "A2": rid}
    assert list(backend.sync.hkeys(k.reservations)) == [rid]
    assert backend.sync.zrange(k.holds, 0, -1, withscores=True) == [
        (rid, float(first.expires_at_ms))
    ]
    assert _counters(backend.sync) == (2, 0)


def test_retried_reserve_with_other_seats_does_not_claim_them(backend: Backend) -> None:
    """The id names the request: a second call with it never claims anything more."""
    rid = ids.new_reservation_id(EVENT)

    async def body(store: RedisStore) -> tuple[Reservation, Reservation]:
        first = (await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)).reservation
        second = (await store.reserve(EVENT, rid, "alice", ["A2", "A3"], HOLD_MS)).reservation
        return first, second

    first, second = asyncio.run(_with_store(backend, body))
    assert second == first
    assert backend.sync.hgetall(keys.event_keys(EVENT).claims) == {"A1": rid}
    assert _counters(backend.sync) == (1, 0)


def test_retried_reserve_after_its_hold_ended(backend: Backend) -> None:
    """A retry finds its reservation by the seats' claims while the hold stands; once the
    hold has ended it still answers with it while the seats are free, and like any late
    request (the seat is taken, nothing written) once someone else holds them."""
    rid = ids.new_reservation_id(EVENT)
    alice = Caller("alice", False)
    before: dict[str, Any] = {}

    async def body(store: RedisStore) -> tuple[Reservation, Reservation]:
        await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)
        await store.transition(EVENT, rid, Transition.CANCEL, alice)
        freed = (await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)).reservation
        other = ids.new_reservation_id(EVENT)
        taken = (await store.reserve(EVENT, other, "bob", ["A1"], HOLD_MS)).reservation
        before.update(_snapshot(backend.sync))
        with pytest.raises(SeatUnavailable) as refused:
            await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)
        assert refused.value.seat_ids == ["A1"]
        return freed, taken

    freed, taken = asyncio.run(_with_store(backend, body))
    assert (freed.id, freed.state) == (rid, ReservationState.CANCELLED)
    assert taken.state is ReservationState.RESERVED
    assert _snapshot(backend.sync) == before
    assert backend.sync.hgetall(keys.event_keys(EVENT).claims) == {"A1": taken.id}


def test_reserve_with_an_id_of_another_customer_is_refused_and_changes_nothing(
    backend: Backend,
) -> None:
    rid = ids.new_reservation_id(EVENT)
    before: dict[str, Any] = {}

    async def body(store: RedisStore) -> None:
        await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)
        before.update(_snapshot(backend.sync))
        with pytest.raises(NotFound):
            await store.reserve(EVENT, rid, "bob", ["A1"], HOLD_MS)
        with pytest.raises(NotFound):
            await store.reserve(EVENT, rid, "bob", ["A2"], HOLD_MS)

    asyncio.run(_with_store(backend, body))
    assert _snapshot(backend.sync) == before
    assert backend.sync.hgetall(keys.event_keys(EVENT).claims) == {"A1": rid}
    assert _counters(backend.sync) == (1, 0)


@pytest.mark.parametrize(
    ("transition", "state", "counters"),
    [
        (Transition.CONFIRM, ReservationState.CONFIRMED, (0, 1)),
        (Transition.CANCEL, ReservationState.CANCELLED, (0, 0)),
    ],
)
def test_retried_transition_answers_as_the_first_did(
    backend: Backend,
    transition: Transition,
    state: ReservationState,
    counters: tuple[int, int],
) -> None:
    rid = ids.new_reservation_id(EVENT)

    async def body(store: RedisStore) -> tuple[Reservation, Reservation, Reservation]:
        made = (await store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)).reservation
        await asyncio.sleep(0.005)
        first = (await store.transition(EVENT, rid, transition, ALICE)).reservation
        await asyncio.sleep(0.005)
        second = (await store.transition(EVENT, rid, transition, ALICE)).reservation
        return made, first, second

    made, first, second = asyncio.run(_with_store(backend, body))
    assert first.state is state
    assert second == first  # same updatedAt: the retry changed nothing
    assert first.updated_at_ms > made.updated_at_ms
    assert _stored(backend.sync, rid) == state.value
    assert _counters(backend.sync) == counters
    k = keys.event_keys(EVENT)
    claims = {"A1": rid} if state is ReservationState.CONFIRMED else {}
    assert backend.sync.hgetall(k.claims) == claims
    assert backend.sync.zcard(k.holds) == 0


@pytest.mark.parametrize("transition", [Transition.CONFIRM, Transition.CANCEL])
def test_retried_transition_of_a_due_hold_expires_it_once(
    backend: Backend, transition: Transition
) -> None:
    rid = ids.new_reservation_id(EVENT)
    after_first: dict[str, Any] = {}

    async def body(store: RedisStore) -> None:
        await store.reserve(EVENT, rid, "alice", ["A1", "A2"], 1)
        await asyncio.sleep(0.01)
        with pytest.raises(ReservationExpired):
            await store.transition(EVENT, rid, transition, ALICE)
        after_first.update(_snapshot(backend.sync))
        with pytest.raises(ReservationExpired):
            await store.transition(EVENT, rid, transition, ALICE)

    asyncio.run(_with_store(backend, body))
    assert _snapshot(backend.sync) == after_first
    assert _stored(backend.sync, rid) == "EXPIRED"
    assert _counters(backend.sync) == (0, 0)  # freed once: never negative
    k = keys.event_keys(EVENT)
    assert backend.sync.hgetall(k.claims) == {}
    assert backend.sync.zcard(k.holds) == 0


# redis-py really retrying, through a proxy that loses a reply


class _Incomplete(Exception):
    pass


class _Error(bytes):
    """An error reply."""


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP value (commands are RESP arrays of bulk strings; replies any RESP2/3 type)
    starting at pos: (value, position after it). Raises _Incomplete if buf ends first."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, nxt = buf[pos : pos + 1], buf[pos + 1 : end], end + 2
    if kind in (b"$", b"=", b"!"):
        size = int(line)
        if size < 0:
            return None, nxt
        if len(buf) < nxt + size + 2:
            raise _Incomplete
        return buf[nxt : nxt + size], nxt + size + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(line)
        if count < 0:
            return None, nxt
        items = []
        for _ in range(count * (2 if kind in (b"%", b"|") else 1)):
            item, nxt = _parse(buf, nxt)
            items.append(item)
        return items, nxt
    if kind == b"-":
        return _Error(line), nxt
    return line, nxt  # + : _ , # (


class LossyProxy:
    """A TCP proxy to Redis that loses the reply to the first `drops` EVALSHA commands
    whose script ran: in mode "close" it closes the client's connection once Redis has
    answered, in mode "stall" it keeps the connection open and silent (the client's
    socket timeout fires). Counts the EVALSHA commands it forwarded."""

    def __init__(self, upstream_port: int, mode: str, drops: int = 1) -> None:
        assert mode in ("close", "stall")
        self.mode = mode
        self._upstream_port = upstream_port
        self._drops = drops
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.evalsha_forwarded = 0
        self.replies_lost = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            pending: deque[bytes] = deque()
            self._spawn(self._client_to_redis, client, upstream, pending)
            self._spawn(self._redis_to_client, upstream, client, pending)

    def _client_to_redis(
        self, client: socket.socket, upstream: socket.socket, pending: deque[bytes]
    ) -> None:
        buf = b""
        try:
            while chunk := client.recv(65536):
                buf += chunk
                # Record every command this chunk completes before Redis can answer it.
                while True:
                    try:
                        command, used = _parse(buf, 0)
                    except _Incomplete:
                        break
                    buf = buf[used:]
                    name = bytes(command[0]).upper()
                    pending.append(name)
                    if name == b"EVALSHA":
                        with self._lock:
                            self.evalsha_forwarded += 1
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _shut(client, upstream)

    def _redis_to_client(
        self, upstream: socket.socket, client: socket.socket, pending: deque[bytes]
    ) -> None:
        buf = b""
        silent = False
        try:
            while chunk := upstream.recv(65536):
                if silent:
                    continue  # stall: Redis has answered, the client never hears it
                buf += chunk
                forward = 0
                while True:
                    try:
                        reply, used = _parse(buf, forward)
                    except _Incomplete:
                        break
                    name = pending.popleft()
                    if name == b"EVALSHA" and not isinstance(reply, _Error) and self._take_drop():
                        silent = True
                        break
                    forward = used
                if forward:
                    client.sendall(buf[:forward])
                    buf = buf[forward:]
                if silent and self.mode == "close":
                    return
        except OSError:
            pass
        finally:
            _shut(client, upstream)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops <= 0:
                return False
            self._drops -= 1
            self.replies_lost += 1
            return True

    def close(self) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)  # no connection is accepted after this
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        _shut(*sockets)
        for thread in threads:
            thread.join(timeout=5)
        self._listener.close()
        for s in sockets:
            s.close()
        stuck = [t for t in [self._acceptor, *threads] if t.is_alive()]
        assert not stuck, "proxy threads did not stop"


def _shut(*sockets: socket.socket) -> None:
    for s in sockets:
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as sync:
        sync.flushall()
        yield sync
        sync.flushall()


@contextmanager
def lossy_proxy(redis_server: RedisServer, mode: str) -> Iterator[LossyProxy]:
    proxy = LossyProxy(redis_server.port, mode)
    try:
        yield proxy
    finally:
        proxy.close()


SOCKET_TIMEOUT = 0.5


def connect_client(url: str) -> AsyncRedis:
    """The service's own client (seatres.http.app.connect), pointed at the proxy."""
    return connect(make_settings(redis_url=url, redis_timeout_seconds=SOCKET_TIMEOUT))


async def _through(client: AsyncRedis, body: Callable[[RedisStore], Any]) -> Any:
    try:
        return await asyncio.wait_for(body(RedisStore(client)), timeout=10)
    finally:
        await client.aclose()
        await client.connection_pool.disconnect()


def _prepare(redis_server: RedisServer) -> None:
    """The event, and the scripts already loaded: the lost reply is a script's answer,
    not a NOSCRIPT error."""

    async def prepare(store: RedisStore) -> None:
        await store.ping()  # loads the scripts
        await store.upsert_event(EVENT, "Retry show", SEATS)

    asyncio.run(_direct_store(redis_server, prepare))


async def _direct_store(redis_server: RedisServer, body: Callable[[RedisStore], Any]) -> Any:
    """body run on a store that talks to Redis without the proxy."""
    client = AsyncRedis(port=redis_server.port, decode_responses=True)
    try:
        return await body(RedisStore(client))
    finally:
        await client.aclose()


MODES = ["close", "stall"]


async def _reserved(call: Awaitable[Outcome]) -> Reservation:
    return (await call).reservation


@pytest.mark.parametrize("mode", MODES)
def test_reserve_survives_a_lost_reply(
    redis_server: RedisServer, direct: redis.Redis, mode: str
) -> None:
    _prepare(redis_server)
    rid = ids.new_reservation_id(EVENT)
    started = time.monotonic()
    with lossy_proxy(redis_server, mode) as proxy:
        made: Reservation = asyncio.run(
            _through(
                connect_client(proxy.url),
                lambda store: _reserved(store.reserve(EVENT, rid, "alice", ["A1", "A2"], HOLD_MS)),
            )
        )
        assert proxy.replies_lost == 1
        assert proxy.evalsha_forwarded == 2  # the first run, and redis-py's retry
    if mode == "stall":
        assert time.monotonic() - started >= SOCKET_TIMEOUT  # the timeout path, really
    assert made.id == rid
    assert made.state is ReservationState.RESERVED
    k = keys.event_keys(EVENT)
    assert direct.hkeys(k.reservations) == [rid]
    assert direct.hgetall(k.claims) == {"A1": rid, "A2": rid}
    assert direct.zrange(k.holds, 0, -1) == [rid]
    assert _counters(direct) == (2, 0)
    assert direct.zrange(keys.SWEEP_DUE, 0, -1) == [EVENT]
    # What the caller was told is what the first run stored.
    stored = _read(redis_server, rid)
    assert stored == made


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("transition", "state", "counters"),
    [
        (Transition.CONFIRM, ReservationState.CONFIRMED, (0, 1)),
        (Transition.CANCEL, ReservationState.CANCELLED, (0, 0)),
    ],
)
def test_transition_survives_a_lost_reply(
    redis_server: RedisServer,
    direct: redis.Redis,
    mode: str,
    transition: Transition,
    state: ReservationState,
    counters: tuple[int, int],
) -> None:
    _prepare(redis_server)
    rid = ids.new_reservation_id(EVENT)
    asyncio.run(
        _direct_store(
            redis_server,
            lambda store: _reserved(store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)),
        )
    )
    with lossy_proxy(redis_server, mode) as proxy:
        answer: Reservation = asyncio.run(
            _through(
                connect_client(proxy.url),
                lambda store: _reserved(store.transition(EVENT, rid, transition, ALICE)),
            )
        )
        assert proxy.replies_lost == 1
        assert proxy.evalsha_forwarded == 2
    assert answer.state is state
    assert _stored(direct, rid) == state.value
    assert _counters(direct) == counters
    stored = _read(redis_server, rid)
    assert stored == answer  # same updatedAt: the retry answered as the first run did


def _read(redis_server: RedisServer, rid: str) -> Reservation | None:
    async def read(store: RedisStore) -> Reservation | None:
        reservation, _now = await store.get_reservation(EVENT, rid)
        return reservation

    result: Reservation | None = asyncio.run(_direct_store(redis_server, read))
    return result


@pytest.mark.parametrize("mode", MODES)
def test_extension_survives_a_lost_reply_and_extends_once(
    redis_server: RedisServer, direct: redis.Redis, mode: str
) -> None:
    _prepare(redis_server)
    rid = ids.new_reservation_id(EVENT)
    made = asyncio.run(
        _direct_store(
            redis_server,
            lambda store: _reserved(store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS)),
        )
    )
    with lossy_proxy(redis_server, mode) as proxy:
        answer: Reservation = asyncio.run(
            _through(
                connect_client(proxy.url),
                lambda store: _reserved(store.extend(EVENT, rid, ALICE, 60_000, 10 * HOLD_MS)),
            )
        )
        assert proxy.replies_lost == 1
        assert proxy.evalsha_forwarded == 2
    assert answer.expires_at_ms == made.expires_at_ms + 60_000  # once, not twice
    assert [c.action for c in answer.history] == ["reserve", "extend"]
    assert direct.zscore(keys.event_keys(EVENT).holds, rid) == answer.expires_at_ms
    assert _read(redis_server, rid) == answer


@pytest.mark.parametrize("mode", MODES)
def test_idempotent_reserve_retried_by_redis_py_is_not_a_replay(
    redis_server: RedisServer, direct: redis.Redis, mode: str
) -> None:
    """The retry of the very call that made the reservation answers as that call did:
    created, not 'replayed' (that is for a second request with the same key)."""
    _prepare(redis_server)
    rid = ids.new_reservation_id(EVENT)
    key = IdempotencyKey("order-1", "fingerprint-1")
    with lossy_proxy(redis_server, mode) as proxy:
        outcome: Outcome = asyncio.run(
            _through(
                connect_client(proxy.url),
                lambda store: store.reserve(EVENT, rid, "alice", ["A1"], HOLD_MS, 0, key),
            )
        )
        assert proxy.evalsha_forwarded == 2
    assert not outcome.replayed
    assert outcome.reservation.id == rid
    assert direct.hkeys(keys.event_keys(EVENT).reservations) == [rid]

"""RespPipe: one Redis connection of our own, speaking RESP through hiredis, on which
whole batches of commands are written at once and their replies handed back in order.

Why: TickBatcher already sends the commands of one event-loop tick as one pipeline, but
redis-py's pipeline machinery (a pool checkout, an awaited read with its own timeout for
every reply, response callbacks, the Retry wrapper) cost about 16 µs of CPU per request
in a profile of the reserve hot path. shared/guide/performance.md measured the design
below ~9 % faster than the redis-py batcher: an asyncio Protocol that feeds whatever
the socket delivers to a hiredis.Reader and pops complete replies off a FIFO of
(future, number of replies) -- Redis answers in order, so several batches may be in
flight on the one connection at once and no per-reply await is needed.

What stays as with redis-py, so that callers cannot tell the difference:
- the address, credentials, database, TLS options and timeouts are read from a redis-py
  connection built from the client's pool options (`for_client`);
- commands are packed by hiredis (seatres.store.packing), byte for byte as redis-py does;
- an error reply is an instance of the class redis-py's parser would raise
  (BaseParser.parse_error: NoScriptError, OutOfMemoryError, ReadOnlyError, ...), left
  in the list of replies; a reply of a ConnectionError class (LOADING, NOAUTH, "max
  number of clients") fails the whole batch, as it does in redis-py's pipeline;
- a batch that fails with redis.exceptions.ConnectionError or TimeoutError is re-sent
  on a new connection by the same redis-py Retry policy (every script of this service
  answers a second run for one request as it answered the first).

Measured against redis-py's pipeline in TickBatcher, all else equal: CPU per request of
the ASGI app in-process against a real Redis, reserve about 102 -> 79 µs and confirm
69 -> 58 µs (means of four runs); bench/burst.py, reserve req/s +10 %, +12 % and +54 %
in three before/after pairs (noisy: GET /healthz, which never touches Redis, moved 3-8 %).

Timeouts: the connection's watchdog task sleeps until the oldest batch in flight is due
(or for one timeout when nothing is): one timer per connection, none per command or
batch. A batch not fully answered within the timeout closes the connection, and every
batch in flight on it fails with TimeoutError; a lost connection fails them all with
ConnectionError. The watchdog also ties the socket's life to the event loop: when the
loop shuts down (asyncio.run and uvicorn cancel the tasks left), the connection closes,
so a pipe nobody closed with aclose() leaves no open socket behind.

Replies are as hiredis parses them, in the RESP version the redis-py client uses (3 by
default in redis-py 8); redis-py's response callbacks (TIME's pair of ints, ...) are not
applied here, TickBatcher applies them."""

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.credentials import CredentialProvider, UsernamePasswordCredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from seatres.store.packing import HiredisPacking

Command = tuple[Any, ...]

# What hiredis.Reader.gets() returns while a reply is incomplete (None is a reply: nil).
_INCOMPLETE = object()


@dataclass(frozen=True)
class RespTarget:
    """Where and how to connect: the settings of a redis-py connection."""

    where: str  # host:port or the socket's path, for messages
    host: str
    port: int
    path: str | None  # a unix socket instead of host:port
    tls: ssl.SSLContext | None  # rediss://
    keepalive: Mapping[int, int | bytes] | None  # TCP keepalive on, with these options
    protocol: int  # RESP version: redis-py 8's default is 3
    db: int
    credentials: CredentialProvider | None
    client_name: str | None
    encoding: str | None  # None: replies as bytes
    encoding_errors: str
    connect_timeout: float | None
    timeout: float | None  # for a whole batch's replies
    retry: Retry


def _plain(cls: type[AbstractConnection]) -> bool:
    """redis-py's own TCP, TLS or unix-socket connection class; not a subclass that
    changes how it talks (fakeredis, Sentinel)."""
    return cls in (Connection, SSLConnection, UnixDomainSocketConnection)


def target_of(connection: AbstractConnection) -> RespTarget | None:
    """The settings of a (never connected) redis-py connection; None when it is not one
    of redis-py's plain connection classes."""
    if not _plain(type(connection)):
        return None
    credentials = connection.credential_provider
    if credentials is None and (connection.username or connection.password):
        credentials = UsernamePasswordCredentialProvider(connection.username, connection.password)
    keepalive: Mapping[int, int | bytes] | None = None
    if isinstance(connection, UnixDomainSocketConnection):
        host, port, path, where = "", 0, connection.path, connection.path
    else:
        assert isinstance(connection, Connection)
        host, port, path = connection.host, int(connection.port), None
        where = f"{host}:{port}"
        if connection.socket_keepalive:
            options = connection.socket_keepalive_options
            keepalive = options if isinstance(options, Mapping) else {}
    encoder = connection.encoder
    return RespTarget(
        where=where,
        host=host,
        port=port,
        path=path,
        tls=connection.ssl_context.get() if isinstance(connection, SSLConnection) else None,
        keepalive=keepalive,
        protocol=int(connection.protocol),
        db=int(connection.db or 0),
        credentials=credentials,
        client_name=connection.client_name,
        encoding=encoder.encoding if encoder.decode_responses else None,
        encoding_errors=encoder.encoding_errors,
        connect_timeout=connection.socket_connect_timeout,
        timeout=connection.socket_timeout,
        retry=connection.retry,
    )


class _Batch:
    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: "asyncio.Future[list[Any]]", count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    """One socket: batches written whole, replies read as they come, in order."""

    def __init__(self, target: RespTarget) -> None:
        self._target = target
        options: dict[str, Any] = {"encoding": target.encoding} if target.encoding else {}
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            notEnoughData=_INCOMPLETE,
            errors=target.encoding_errors,
            **options,
        )
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[_Batch] = deque()
        self._watchdog: asyncio.Task[None] | None = None
        self._gone: asyncio.Future[None] = self._loop.create_future()
        # set once: why this connection takes no more batches
        self.broken: Exception | None = None

    def send(self, packed: bytes, count: int) -> "asyncio.Future[list[Any]]":
        """The replies of `count` commands packed into `packed`, once all have come."""
        if self.broken is not None:
            raise self.broken
        assert self._transport is not None
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        timeout = self._target.timeout
        deadline = self._loop.time() + timeout if timeout is not None else float("inf")
        self._waiting.append(_Batch(future, count, deadline))
        self._transport.write(packed)
        return future

    def keep_alive(self, options: Mapping[int, int | bytes]) -> None:
        """TCP keepalive as redis-py sets it (SO_KEEPALIVE, then its TCP options)."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in options.items():
                sock.setsockopt(socket.SOL_TCP, option, value)

    async def close(self) -> None:
        self.fail(RedisConnectionError(f"Connection to {self._target.where} closed"))
        await asyncio.shield(self._gone)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self._transport = cast(asyncio.Transport, transport)
        self._watchdog = self._loop.create_task(self._watch())

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while waiting:
                batch = waiting[0]
                replies = batch.replies
                while len(replies) < batch.count:
                    reply = reader.gets()
                    if reply is _INCOMPLETE:
                        return
                    if type(reply) is hiredis.PushNotification:
                        continue  # RESP3 push: not a reply (none is asked for here)
                    replies.append(reply)
                waiting.popleft()
                for reply in replies:
                    # redis-py's parser raises these (LOADING, NOAUTH, max clients): its
                    # pipeline drops the connection and its Retry sends the batch again
                    if isinstance(reply, RedisConnectionError):
                        waiting.appendleft(batch)  # fails with the others, and first
                        self.fail(reply)
                        return
                if not batch.future.done():  # done: its caller was cancelled
                    batch.future.set_result(replies)
            while (reply := reader.gets()) is not _INCOMPLETE:
                if type(reply) is not hiredis.PushNotification:
                    raise InvalidResponse("Redis sent a reply to no command")
        except InvalidResponse as exc:  # the stream cannot be trusted any more
            self.fail(exc)

    def eof_received(self) -> bool:
        self.fail(RedisConnectionError(f"Connection closed by server ({self._target.where})"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self.fail(RedisConnectionError(f"Connection to {self._target.where} lost{reason}"))
        if not self._gone.done():
            self._gone.set_result(None)

    def fail(self, error: Exception) -> None:
        """Fail every batch in flight with `error` and drop the socket (once)."""
        if self.broken is not None:
            return
        self.broken = error
        waiting, self._waiting = self._waiting, deque()
        for batch in waiting:
            if not batch.future.done():
                batch.future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()  # no goodbye: unread replies must not be waited for
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()

    async def _watch(self) -> None:
        """Fails the connection when its oldest batch is overdue; closes it when the task
        is cancelled (the loop shutting down)."""
        timeout = self._target.timeout
        try:
            if timeout is None:
                await asyncio.shield(self._gone)
                return
            while self.broken is None:
                if not self._waiting:
                    # a batch sent during this sleep is due after its end
                    await asyncio.sleep(timeout)
                    continue
                left = self._waiting[0].deadline - self._loop.time()
                if left > 0:
                    await asyncio.sleep(left)
                    continue
                self.fail(RedisTimeoutError(f"Timeout reading from {self._target.where}"))
        finally:
            self.fail(RedisConnectionError(f"Connection to {self._target.where} closed"))


class RespPipe:
    """Batches of commands on one Redis connection, opened on first use and again after
    a loss. `execute` may be called by many tasks at once: their batches share the
    connection, each gets its own replies."""

    def __init__(self, target: RespTarget) -> None:
        self._target = target
        self._packer = HiredisPacking()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def for_client(cls, redis: Redis) -> "RespPipe | None":
        """A pipe to the Redis of `redis` with its connection options, or None when its
        connections are not plain redis-py ones (fakeredis, Sentinel, ...)."""
        pool = redis.connection_pool
        if not _plain(pool.connection_class):
            return None  # (not even made: a foreign class may do things when made)
        target = target_of(pool.connection_class(**pool.connection_kwargs))
        return None if target is None else cls(target)

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of `commands`, in order; an error reply is an exception in the
        list, not raised. Raises redis-py's ConnectionError or TimeoutError when the
        batch could not be answered, retries included."""
        if not commands:
            return []
        packed = self._packer.pack_commands(commands)[0]
        count = len(commands)
        replies: list[Any] = await self._target.retry.call_with_retry(
            lambda: self._attempt(packed, count), self._after_failure
        )
        return replies

    async def aclose(self) -> None:
        """Close the connection; a later execute opens a new one."""
        if self._connecting is not None:
            await asyncio.gather(asyncio.shield(self._connecting), return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    @property
    def connected(self) -> bool:
        """Whether a connection is open: what `send_now` writes on."""
        return self._live() is not None

    def _live(self) -> "_Connection | None":
        connection = self._connection
        return connection if connection is not None and connection.broken is None else None

    def send_now(self, commands: Sequence[Command]) -> "asyncio.Future[list[Any]] | None":
        """Writes `commands` at once on the open connection and returns the future of
        their replies (failed with ConnectionError or TimeoutError if the connection is
        lost first, with no retry); None when no connection is open: `execute` opens one."""
        connection = self._live()
        if connection is None or not commands:
            return None
        return connection.send(self._packer.pack_commands(commands)[0], len(commands))

    async def _attempt(self, packed: bytes, count: int) -> list[Any]:
        connection = self._live() or await self._connect()
        return await connection.send(packed, count)

    async def _after_failure(self, error: Exception) -> None:
        pass  # the connection already dropped itself if it had to

    async def _connect(self) -> _Connection:
        # one connection attempt for all the batches that find none
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        connection = await self._dial()
        try:
            await self._handshake(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    async def _dial(self) -> _Connection:
        target, loop = self._target, asyncio.get_running_loop()
        connection = _Connection(target)
        try:
            async with asyncio.timeout(target.connect_timeout):
                if target.path is not None:
                    await loop.create_unix_connection(lambda: connection, target.path)
                else:
                    await loop.create_connection(
                        lambda: connection, target.host, target.port, ssl=target.tls
                    )
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout connecting to {target.where}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {target.where}: {exc}") from exc
        if target.keepalive is not None:
            connection.keep_alive(target.keepalive)
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        """What redis-py sends on a new connection, in one round trip: HELLO (RESP3,
        with the credentials) or AUTH, then CLIENT SETNAME and SELECT when set."""
        target = self._target
        credentials: tuple[str, ...] = ()
        if target.credentials is not None:
            credentials = tuple(await target.credentials.get_credentials_async())
        commands: list[Command] = []
        if target.protocol == 3:
            if len(credentials) == 1:
                credentials = ("default", *credentials)
            commands.append(("HELLO", 3, *(("AUTH", *credentials) if credentials else ())))
        elif credentials:
            commands.append(("AUTH", *credentials))
        if target.client_name:
            commands.append(("CLIENT", "SETNAME", target.client_name))
        if target.db:
            commands.append(("SELECT", target.db))
        if not commands:
            return
        packed = self._packer.pack_commands(commands)[0]
        replies = await connection.send(packed, len(commands))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        hello = replies[0]
        if target.protocol == 3 and 3 not in (hello.get("proto"), hello.get(b"proto")):
            raise RedisConnectionError("Invalid RESP version")


def as_redis_py_would(
    callbacks: Mapping[Any, Any], commands: Sequence[Command], replies: list[Any]
) -> list[Any]:
    """A RespPipe's replies as redis-py's own pipelines give them: its response callbacks
    (str_if_bytes, TIME's pair of ints, ...) applied to every reply but an error."""
    for i, command in enumerate(commands):
        callback = callbacks.get(command[0])
        if callback is not None and not isinstance(replies[i], Exception):
            replies[i] = callback(replies[i])
    return replies

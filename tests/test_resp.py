"""RespPipe (seatres.store.resp) against a real redis-server: replies in order with many
batches in flight, redis-py's error classes, the connection handshake (AUTH, ACL user,
SELECT, unix socket), timeouts, connection loss, reconnection and retries.

Misbehaving servers are played by `Relay`: a TCP server in the test's own event loop in
front of the real Redis, whose n-th accepted connection relays, stalls, drops the
connection after the first write, or answers every command with LOADING."""

import asyncio
import gc
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import hiredis
import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from seatres.embedded import EmbeddedRedisError, RedisServer, free_port
from seatres.store import resp
from seatres.store.resp import RespPipe

T = TypeVar("T")


def pipe_for(url: str, timeout: float = 2.0, retries: int = 0) -> RespPipe:
    """The pipe TickBatcher makes for a redis-py client of `url` (which never connects)."""
    client = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), retries),
    )
    pipe = RespPipe.for_client(client)
    assert pipe is not None
    return pipe


def using(pipe: RespPipe, body: Callable[[RespPipe], Awaitable[T]]) -> T:
    async def run() -> T:
        try:
            return await body(pipe)
        finally:
            await pipe.aclose()

    return asyncio.run(run())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, free to reconfigure, stop and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


# replies


def test_replies_come_back_in_order_with_many_batches_in_flight(
    redis_server: RedisServer, store: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight: list[int] = []
    real_send = resp._Connection.send

    def counting_send(self: Any, packed: bytes, count: int) -> Any:
        future = real_send(self, packed, count)
        in_flight.append(len(self._waiting))
        return future

    monkeypatch.setattr(resp._Connection, "send", counting_send)

    def batch(i: int) -> list[tuple[Any, ...]]:
        return [
            ("SET", f"k{i}", i),
            ("INCR", f"k{i}"),
            ("GET", f"k{i}"),
            ("GET", f"missing{i}"),
            ("EVAL", "return {KEYS[1], ARGV[1], 7}", 1, f"k{i}", f"a{i}"),
            ("RPUSH", f"l{i}", *range(i % 5 + 1)),
            ("SCRIPT LOAD", "return 1"),  # a first argument with a space is split
        ]

    async def body(pipe: RespPipe) -> list[list[Any]]:
        await pipe.execute([("PING",)])  # connected: the batches below leave at once
        return await asyncio.gather(*(pipe.execute(batch(i)) for i in range(200)))

    replies = using(pipe_for(redis_server.url), body)
    sha = store.script_load("return 1")
    for i, got in enumerate(replies):
        assert got == ["OK", i + 1, str(i + 1), None, [f"k{i}", f"a{i}", 7], i % 5 + 1, sha]
    assert max(in_flight) == 200  # all written before the first reply was read


def test_error_replies_are_redis_py_s_exception_instances(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    commands: list[tuple[Any, ...]] = [
        ("SET", "text", "abc"),
        ("EVALSHA", "0" * 40, 0),
        ("LPUSH", "text", "x"),  # WRONGTYPE
        ("EVAL", "return redis.error_reply('MINE went wrong')", 0),
        ("EVAL", "return redis.call('INCR', KEYS[1])", 1, "text"),  # error inside a script
        ("EVAL", "return {1, redis.error_reply('ERR inner')}", 0),
        ("EVAL", "syntax error(", 0),
        ("GET", "text"),
    ]

    async def through_redis_py() -> list[Any]:
        client = Redis.from_url(redis_server.url, decode_responses=True)
        async with client, client.pipeline(transaction=False) as pipeline:
            for command in commands:
                pipeline.execute_command(*command)
            replies: list[Any] = await pipeline.execute(raise_on_error=False)
            return replies

    async def body(pipe: RespPipe) -> list[Any]:
        return await pipe.execute(commands)

    ours = using(pipe_for(redis_server.url), body)
    theirs = asyncio.run(through_redis_py())
    assert ours[0] == "OK" and ours[-1] == "abc"  # errors leave the other replies alone
    assert type(ours[1]) is NoScriptError
    assert type(ours[2]) is ResponseError and str(ours[2]).startswith("WRONGTYPE")
    assert type(ours[3]) is ResponseError and str(ours[3]) == "MINE went wrong"
    assert type(ours[4]) is ResponseError and "not an integer" in str(ours[4])
    assert ours[5][0] == 1 and type(ours[5][1]) is ResponseError
    assert type(ours[6]) is ResponseError

    def shape(reply: Any) -> Any:
        if isinstance(reply, Exception):
            return (type(reply), str(reply))
        if isinstance(reply, list):
            return [shape(r) for r in reply]
        return reply

    # (not SET's reply: redis-py's callback makes it True; TickBatcher applies those)
    assert [shape(r) for r in ours[1:]] == [shape(r) for r in theirs[1:]]


def test_out_of_memory_is_out_of_memory_error(own_redis: RedisServer) -> None:
    with redis.Redis(port=own_redis.port) as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)

    async def body(pipe: RespPipe) -> list[Any]:
        return await pipe.execute([("SET", "k", "v"), ("GET", "k")])

    written, read = using(pipe_for(own_redis.url), body)
    assert type(written) is OutOfMemoryError
    assert read is None


# the connection's handshake


@pytest.mark.parametrize("protocol", [2, 3])
def test_password_acl_user_and_database_from_the_url(own_redis: RedisServer, protocol: int) -> None:
    """RESP3 authenticates with HELLO 3 AUTH, RESP2 with AUTH (redis-py 8 uses RESP3)."""
    with redis.Redis(port=own_redis.port, decode_responses=True) as admin:
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+alice-pw"], keys="*", commands=["+@all"]
        )
        admin.config_set("requirepass", "default-pw")
    server = f"127.0.0.1:{own_redis.port}"
    by_password = f"redis://:default-pw@{server}/3?protocol={protocol}"
    by_user = f"redis://alice:alice-pw@{server}/5?protocol={protocol}"

    def whoami(url: str) -> str:
        replies = asyncio.run(using_async(pipe_for(url), [("SET", "k", url), ("ACL", "WHOAMI")]))
        assert replies[0] == "OK"
        user: str = replies[1]
        return user

    assert whoami(by_password) == "default"
    assert whoami(by_user) == "alice"
    for db, url in ((0, None), (3, by_password), (5, by_user)):
        with redis.Redis(port=own_redis.port, db=db, password="default-pw") as r:
            assert r.get("k") == (url.encode() if url else None)
    with pytest.raises(AuthenticationError):  # WRONGPASS
        whoami(f"redis://alice:wrong@{server}/0?protocol={protocol}")
    with pytest.raises(AuthenticationError):  # NOAUTH
        whoami(f"redis://{server}/0?protocol={protocol}")


async def using_async(pipe: RespPipe, commands: list[tuple[Any, ...]]) -> list[Any]:
    try:
        return await pipe.execute(commands)
    finally:
        await pipe.aclose()


def test_unix_socket(tmp_path: Path) -> None:
    # a short path: unix socket paths are limited to about 100 bytes
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        path = f"{folder}/redis.sock"
        server = RedisServer(tmp_path / "redis", extra_args=("--unixsocket", path))
        try:
            server.start()
        except EmbeddedRedisError as exc:
            pytest.skip(f"this redis-server does not listen on a unix socket: {exc}")
        try:
            url = f"unix://{path}?db=2"
            replies = asyncio.run(
                using_async(pipe_for(url), [("SET", "k", "v"), ("CLIENT", "INFO")])
            )
            assert replies[0] == "OK"
            assert "db=2" in replies[1] and path in replies[1]  # addr=<path>:0
            with redis.Redis(port=server.port, db=2, decode_responses=True) as r:
                assert r.get("k") == "v"
        finally:
            server.stop()


# failures


class Relay:
    """A stand-in server: its n-th connection does plan[n] ("relay" once the plan is
    used up): "relay" to Redis, "stall" (reads, never answers), "drop" (closes the
    connection after the first bytes came), "loading" (-LOADING to every command)."""

    def __init__(self, upstream_port: int, plan: list[str]) -> None:
        self.upstream_port = upstream_port
        self.plan = plan
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0?protocol=2"  # no HELLO: commands come first

    async def __aenter__(self) -> "Relay":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        mode = self.plan[self.connections] if self.connections < len(self.plan) else "relay"
        self.connections += 1
        try:
            if mode == "relay":
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
                try:
                    await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
                finally:
                    up_writer.close()
            elif mode == "stall":
                while await reader.read(65536):
                    pass
            elif mode == "drop":
                await reader.read(65536)
            elif mode == "loading":
                commands = hiredis.Reader()
                while data := await reader.read(65536):
                    commands.feed(data)
                    while commands.gets() is not False:
                        writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_a_stalled_server_times_out_every_batch_in_flight(redis_server: RedisServer) -> None:
    async def run(retries: int) -> tuple[list[Any], float, int]:
        async with Relay(redis_server.port, ["stall", "stall"]) as relay:
            pipe = pipe_for(relay.url, timeout=0.3, retries=retries)
            started = time.monotonic()
            try:
                results: list[Any] = await asyncio.gather(
                    pipe.execute([("PING",)]),
                    pipe.execute([("SET", "a", 1), ("GET", "a")]),
                    return_exceptions=True,
                )
            finally:
                await pipe.aclose()
            return results, time.monotonic() - started, relay.connections

    results, seconds, connections = asyncio.run(run(retries=0))
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert 0.25 < seconds < 2.5 and connections == 1  # (upper bound: it did not hang)
    # retried once, on a new connection: twice the timeout
    results, seconds, connections = asyncio.run(run(retries=1))
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert 0.55 < seconds < 4.0 and connections == 2


def test_a_dead_port_is_a_connection_error() -> None:
    pipe = pipe_for(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        asyncio.run(using_async(pipe, [("PING",)]))
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize(
    ("fault", "commands", "answered", "error"),
    [
        # the connection drops after the write: the batch is sent again on a new one
        ("drop", [("INCR", "n"), ("GET", "n")], [1, "1"], RedisConnectionError),
        # LOADING is a ConnectionError in redis-py (BusyLoadingError): its pipeline drops
        # the connection and retries; so does the pipe
        ("loading", [("SET", "k", "v"), ("GET", "k")], ["OK", "v"], BusyLoadingError),
    ],
)
def test_a_failed_batch_is_sent_again_on_a_new_connection(
    redis_server: RedisServer,
    store: redis.Redis,
    retries: int,
    fault: str,
    commands: list[tuple[Any, ...]],
    answered: list[Any],
    error: type[Exception],
) -> None:
    async def run() -> tuple[Any, int]:
        async with Relay(redis_server.port, [fault]) as relay:
            pipe = pipe_for(relay.url, retries=retries)
            replies: Any
            try:
                replies = await pipe.execute(commands)
            except error as exc:
                replies = exc
            finally:
                await pipe.aclose()
            return replies, relay.connections

    replies, connections = asyncio.run(run())
    if retries:
        assert replies == answered and connections == 2
    else:
        assert isinstance(replies, error) and connections == 1


def test_reconnects_after_redis_restarted(own_redis: RedisServer) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        pipe = pipe_for(own_redis.url, retries=0)  # a new connection, not a retry
        try:
            before = await pipe.execute([("SET", "k", "v")])
            own_redis.stop()
            await asyncio.sleep(0.2)  # the pipe sees its connection go
            own_redis.start()
            after = await pipe.execute([("GET", "k")])
            return before, after
        finally:
            await pipe.aclose()

    assert asyncio.run(run()) == (["OK"], ["v"])  # appendfsync always: kept


def test_a_cancelled_caller_leaves_the_replies_in_step(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    async def run() -> list[Any]:
        pipe = pipe_for(redis_server.url)
        try:
            await pipe.execute([("PING",)])
            first = asyncio.ensure_future(pipe.execute([("SET", "a", "1"), ("INCR", "a")]))
            await asyncio.sleep(0)  # written, not yet answered
            first.cancel()
            return await pipe.execute([("GET", "a")])
        finally:
            await pipe.aclose()

    assert asyncio.run(run()) == ["2"]


def test_left_open_the_connection_closes_with_the_loop(redis_server: RedisServer) -> None:
    """No aclose(): the end of the loop (asyncio.run cancels the tasks left) closes the
    socket, so no ResourceWarning (an error in this suite) comes when it is collected."""
    pipe = pipe_for(redis_server.url)

    async def run(pipe: RespPipe) -> list[Any]:
        return await pipe.execute([("PING",)])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(run(pipe)) == ["PONG"]
        connection = pipe._connection
        assert connection is not None and connection.broken is not None
        del pipe, connection
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []

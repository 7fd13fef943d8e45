"""The tick batcher: one pipeline per loop tick, each caller its own reply or error."""

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from seatres.store.batching import PIPE_BATCH, TickBatcher
from seatres.store.resp import RespPipe
from tests.conftest import Backend, count_pipelines


def test_one_round_trip_for_a_tick_of_calls(
    backend: Backend, resp_writes: list[tuple[str, int]]
) -> None:
    """fakeredis: one redis-py pipeline for the whole tick (a real Redis and a cluster
    have connections of the batcher's own: next test)."""
    if backend.name != "fake":
        pytest.skip("the batcher's own connections: next test")

    async def run() -> tuple[list[Any], int]:
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        pipelines = count_pipelines(redis)
        try:
            replies = await asyncio.gather(*(batcher.execute("INCR", "n") for _ in range(100)))
        finally:
            await batcher.aclose()
            await redis.aclose()
        return replies, len(pipelines)

    replies, pipelines = asyncio.run(run())
    assert sorted(replies) == list(range(1, 101))
    assert (resp_writes, pipelines) == ([], 1)


def test_a_tick_of_calls_leaves_in_writes_of_pipe_batch(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Redis, one server or a cluster (here every call on one key: one node): once
    the batcher's connection is open, a tick's commands leave in writes of PIPE_BATCH,
    each written as soon as it is full, the rest at the end of the tick; no redis-py
    pipeline."""
    if backend.name == "fake":
        pytest.skip("fakeredis has no RespPipe")
    submitted = 0
    writes: list[tuple[int, int]] = []  # (commands written at once, calls submitted by then)
    real_send_now = RespPipe.send_now

    def counting_send_now(pipe: RespPipe, commands: Any) -> Any:
        sent = real_send_now(pipe, commands)
        if sent is not None:
            writes.append((len(commands), submitted))
        return sent

    monkeypatch.setattr(RespPipe, "send_now", counting_send_now)

    async def run() -> tuple[list[Any], int]:
        nonlocal submitted
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        pipelines = count_pipelines(redis)
        await batcher.execute("GET", "n")  # the connection opens: later batches go at once
        writes.clear()
        real_submit = batcher.submit

        async def counting_submit(*commands: Any) -> list[Any]:
            nonlocal submitted
            submitted += 1
            return await real_submit(*commands)

        batcher.submit = counting_submit  # type: ignore[method-assign]
        try:
            replies = await asyncio.gather(*(batcher.execute("INCR", "n") for _ in range(100)))
        finally:
            await batcher.aclose()
            await redis.aclose()
        return replies, len(pipelines)

    replies, pipelines = asyncio.run(run())
    assert sorted(replies) == list(range(1, 101))
    full = [(PIPE_BATCH, PIPE_BATCH * (i + 1)) for i in range(100 // PIPE_BATCH)]
    assert (writes, pipelines) == ([*full, (100 % PIPE_BATCH, 100)], 0)


@pytest.mark.single_redis("the RespPipe serves one redis-server only")
def test_a_batch_written_at_once_is_sent_again_when_its_connection_is_lost(
    backend: Backend,
) -> None:
    """The batch written by the tick (no task, no Retry around it) whose connection is
    killed while Redis holds it goes again on a new connection, under the Retry policy."""
    if backend.name != "real":
        pytest.skip("fakeredis has no RespPipe")

    async def run() -> list[Any]:
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        try:
            (client_id,) = await batcher.submit(("CLIENT", "ID"))
            # blocked in Redis until the value below comes; its connection is killed first
            waiting = asyncio.ensure_future(batcher.execute("BLPOP", "queue", 5))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            assert await redis.execute_command("CLIENT", "KILL", "ID", client_id) == 1
            await asyncio.sleep(0.2)  # the retry's BLPOP, on a new connection, is waiting
            await redis.rpush("queue", "v")
            result: list[Any] = await asyncio.wait_for(waiting, 5)
            return result
        finally:
            await batcher.aclose()
            await redis.aclose()

    assert list(asyncio.run(run())) == ["queue", "v"]


def test_large_bursts_are_split(backend: Backend) -> None:
    async def run() -> list[Any]:
        redis = backend.make_async()
        batcher = TickBatcher(redis, max_batch=7)
        try:
            return await asyncio.gather(*(batcher.execute("INCR", "n") for _ in range(50)))
        finally:
            await redis.aclose()

    assert sorted(asyncio.run(run())) == list(range(1, 51))


def test_an_error_reply_reaches_only_its_caller(backend: Backend) -> None:
    backend.sync.set("text", "not a number")

    async def run() -> list[Any]:
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        try:
            return await asyncio.gather(
                batcher.execute("INCR", "n"),
                batcher.execute("INCR", "text"),
                batcher.submit(("INCR", "n"), ("INCR", "text")),
                return_exceptions=True,
            )
        finally:
            await redis.aclose()

    ok, failed, pair = asyncio.run(run())
    assert ok == 1
    assert isinstance(failed, ResponseError)
    assert pair[0] == 2 and isinstance(pair[1], ResponseError)


def test_a_failed_round_trip_reaches_every_caller() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def run() -> list[Any]:
        redis = Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        batcher = TickBatcher(redis)
        try:
            return await asyncio.gather(
                *(batcher.execute("PING") for _ in range(3)), return_exceptions=True
            )
        finally:
            await redis.aclose()

    for result in asyncio.run(run()):
        assert isinstance(result, RedisConnectionError)


@pytest.mark.parametrize("n", [1, 3])
def test_submit_keeps_replies_in_order(backend: Backend, n: int) -> None:
    async def run() -> list[Any]:
        redis = backend.make_async()
        try:
            return await TickBatcher(redis).submit(*(("INCR", f"k{i}") for i in range(n)))
        finally:
            await redis.aclose()

    assert asyncio.run(run()) == [1] * n


def test_replies_are_what_redis_py_makes_of_them(backend: Backend) -> None:
    """Whatever carries the batch (a RespPipe on a real Redis), redis-py's response
    callbacks apply: TIME is a pair of ints, SET and PING are True."""

    async def run() -> list[Any]:
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        try:
            return await batcher.submit(("TIME",), ("SET", "k", "v"), ("PING",), ("GET", "k"))
        finally:
            await batcher.aclose()
            await redis.aclose()

    clock, written, pong, value = asyncio.run(run())
    assert isinstance(clock, tuple) and all(type(part) is int for part in clock)
    assert (written, pong, value) == (True, True, "v")

"""The tick batcher: one pipeline per loop tick, each caller its own reply or error."""

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from seatres.store.batching import TickBatcher
from tests.conftest import Backend


def test_one_round_trip_for_a_tick_of_calls(backend: Backend) -> None:
    async def run() -> tuple[list[Any], int]:
        redis = backend.make_async()
        batcher = TickBatcher(redis)
        round_trips = 0
        # a real single Redis: the batcher's RespPipe; fakeredis, a cluster: redis-py's pipeline
        pipe = batcher._pipe
        owner: Any = pipe if pipe is not None else redis
        name = "execute" if pipe is not None else "pipeline"
        real = getattr(owner, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal round_trips
            round_trips += 1
            return real(*args, **kwargs)

        setattr(owner, name, counting)
        try:
            replies = await asyncio.gather(*(batcher.execute("INCR", "n") for _ in range(100)))
        finally:
            await batcher.aclose()
            await redis.aclose()
        return replies, round_trips

    replies, round_trips = asyncio.run(run())
    assert sorted(replies) == list(range(1, 101))
    assert round_trips == 1


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

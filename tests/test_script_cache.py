"""A script call that hears NOSCRIPT (a restart, SCRIPT FLUSH, a slot moved to a node
with an empty cache) loads the script again and sends again: the caller never sees it.
Under load, on a cluster whose masters are flushed one after the other, see
tests/test_cluster_load.py."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import NoScriptError

from seatres.domain.errors import StoreUnavailable
from seatres.store import scripts
from seatres.store.redis_store import NOSCRIPT_ATTEMPTS, RedisStore
from tests.conftest import Backend

EVENT = "cache-show"


async def _on_store(backend: Backend, body: Callable[[RedisStore, Any], Any]) -> Any:
    """body(store, client) on a store whose event exists and whose script cache was
    flushed since."""
    client = backend.make_async()
    store = RedisStore(client)
    try:
        await store.upsert_event(EVENT, "Cache show", ["A1", "A2"])
        backend.sync.script_flush()
        return await body(store, client)
    finally:
        await store.aclose()
        await client.aclose()


def _count_loads(client: Any, after_load: Callable[[], None] | None = None) -> list[str]:
    """Makes the client note each SCRIPT LOAD (the script's first line); after_load runs
    when a load has been answered, before its callers go on."""
    loads: list[str] = []
    real = client.script_load

    async def counting(source: str) -> Any:
        loads.append(source.splitlines()[0])
        sha = await real(source)
        if after_load is not None:
            after_load()
        return sha

    client.script_load = counting
    return loads


def test_a_burst_that_hears_noscript_loads_the_script_once(backend: Backend) -> None:
    async def body(store: RedisStore, client: Any) -> None:
        loads = _count_loads(client)
        summaries = await asyncio.gather(*(store.event_summary(EVENT) for _ in range(50)))
        assert {s.seats.total for s in summaries} == {2}
        assert loads == [scripts.script("event_summary").source.splitlines()[0]]

    asyncio.run(_on_store(backend, body))


def test_a_flush_after_the_load_a_caller_waited_for_is_loaded_again(backend: Backend) -> None:
    """The load a caller waited for reached the node before that node's next flush, so
    its second call hears NOSCRIPT too: a third follows a new load."""

    async def body(store: RedisStore, client: Any) -> None:
        flushes = [1]  # the first load is flushed as soon as it is answered

        def flush_once() -> None:
            if flushes:
                flushes.pop()
                backend.sync.script_flush()

        loads = _count_loads(client, flush_once)
        summary = await store.event_summary(EVENT)
        assert summary.seats.total == 2
        assert len(loads) == 2

    asyncio.run(_on_store(backend, body))


def test_a_finished_load_not_yet_forgotten_is_not_joined(backend: Backend) -> None:
    """A load whose done-callback has not run yet is over: joining it loads nothing."""

    async def body(store: RedisStore, client: Any) -> None:
        finished: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        finished.set_result("an earlier load")
        store._loading["event_summary"] = finished
        loads = _count_loads(client)
        assert (await store.event_summary(EVENT)).seats.total == 2
        assert len(loads) == 1

    asyncio.run(_on_store(backend, body))


def test_scripts_lost_at_every_attempt_answer_unavailable(backend: Backend) -> None:
    """NOSCRIPT after every load (a cache flushed again and again) is a 503, not a 500."""

    async def body(store: RedisStore, client: Any) -> None:
        loads = _count_loads(client, backend.sync.script_flush)
        with pytest.raises(StoreUnavailable, match="losing its scripts") as raised:
            await store.event_summary(EVENT)
        assert isinstance(raised.value.__cause__ or raised.value.__context__, NoScriptError)
        assert len(loads) == NOSCRIPT_ATTEMPTS

    asyncio.run(_on_store(backend, body))

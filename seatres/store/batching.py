"""TickBatcher: the Redis commands issued during one event-loop tick leave in one
non-transactional pipeline, and each caller gets its own reply.

On a burst, dozens of requests reach their Redis call in the same tick; sending them
as one write and reading the replies in one go costs one round trip and one syscall
pair instead of dozens (shared/guide/performance.md: the largest lever measured on the
reserve hot path). Each command is still a separate, atomic EVALSHA: batching changes
how they travel, not what they do. A pipeline that redis-py retries re-sends every
command in it; every script is safe to run twice for one request.

On a single Redis the pipeline is a RespPipe (seatres.store.resp): one connection of the
worker's own with hiredis parsing, cheaper per request than redis-py's pipeline, with
the same error classes, timeouts and Retry policy, and redis-py's response callbacks
applied here to its replies (TIME as a pair of ints, as redis-py gives it). A client
whose connections are not redis-py's plain ones (fakeredis in tests) keeps redis-py's
pipeline.

On a Redis Cluster the pipeline is redis-py's ClusterPipeline: it splits the batch by
node (a command's node from its keys: EVALSHA's after numkeys), sends each node its part
at the same time, and re-sends a command answered MOVED, ASK or TRYAGAIN on its own,
following the redirection. Two things are added here: no more batches in flight than
each node has connections (redis-py's cluster client raises when a node has none free,
and its pipeline then drops every connection of the client to start over), and a TIME
sent together with a keyed read goes to that key's node, so the read and the clock come
from the same server."""

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from seatres.store.resp import RespPipe

MAX_BATCH = 512
# Share of a cluster node's connections that batches may hold at once; the rest serve
# the calls that do not go through the batcher (script loads, /readyz, /metrics).
CLUSTER_IN_FLIGHT_SHARE = 0.75

Command = tuple[Any, ...]


class TickBatcher:
    def __init__(self, redis: Redis | RedisCluster, max_batch: int = MAX_BATCH) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._pending_commands = 0
        self._sending: set[asyncio.Task[None]] = set()
        self._cluster: RedisCluster | None = None
        self._pipe: RespPipe | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._wait_seconds = 2.0
        if isinstance(redis, RedisCluster):
            self._cluster = redis
            options = redis.get_connection_kwargs()
            per_node = int(options.get("max_connections") or 100)
            self._in_flight = asyncio.Semaphore(max(1, int(per_node * CLUSTER_IN_FLIGHT_SHARE)))
            # as long as the single Redis's blocking pool waits for a connection
            self._wait_seconds = float(options.get("socket_timeout") or 2.0)
        else:
            self._pipe = RespPipe.for_client(redis)

    async def aclose(self) -> None:
        """Close the batcher's own connection, if it has one (RespPipe): the redis-py
        client's aclose() does not know it. Left open, it closes when the loop ends."""
        if self._pipe is not None:
            await self._pipe.aclose()

    async def execute(self, *command: Any) -> Any:
        """One command's reply; a Redis error reply is raised here, for this caller only."""
        (reply,) = await self.submit(command)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def submit(self, *commands: Command) -> list[Any]:
        """The replies of a few commands that travel together (in order, in the same
        pipeline); an error reply comes back as an exception object, not raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((list(commands), future))
        self._pending_commands += len(commands)
        if self._pending_commands >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending, self._pending_commands = self._pending, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            if self._cluster is not None:
                replies = await self._send_to_cluster(self._cluster, batch)
            elif self._pipe is not None:
                replies = await self._send_on_pipe(self._pipe, batch)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for commands, _ in batch:
                        for command in commands:
                            pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the whole round trip failed: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for commands, future in batch:
            end = start + len(commands)
            if not future.done():  # done: the caller went away (cancelled)
                future.set_result(replies[start:end])
            start = end

    async def _send_on_pipe(
        self, pipe: RespPipe, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]
    ) -> list[Any]:
        commands = [command for commands, _ in batch for command in commands]
        replies = await pipe.execute(commands)
        # what redis-py's pipeline would have made of them (str_if_bytes, TIME's ints)
        callbacks = self._redis.response_callbacks
        for i, command in enumerate(commands):
            callback = callbacks.get(command[0])
            if callback is not None and not isinstance(replies[i], Exception):
                replies[i] = callback(replies[i])
        return replies

    async def _send_to_cluster(
        self, cluster: RedisCluster, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]
    ) -> list[Any]:
        assert self._in_flight is not None
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._in_flight.acquire()
        except TimeoutError:
            raise RedisConnectionError("no free cluster connection (batches in flight)") from None
        try:
            await cluster.initialize()  # at once when done: the slot map below needs it
            async with cluster.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    node = None
                    for command in commands:
                        if command[0] != "TIME":
                            pipe.execute_command(*command)
                            continue
                        if node is None:
                            node = _node_of(cluster, commands)
                        if node is None:
                            pipe.execute_command(*command)
                        else:
                            pipe.execute_command(*command, target_nodes=node)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies
        finally:
            self._in_flight.release()


def _node_of(cluster: RedisCluster, commands: list[Command]) -> Any:
    """The node of the first keyed command among `commands` (None: none has a key, or
    its slot is not known now)."""
    for command in commands:
        name = str(command[0]).upper()
        if name in ("EVAL", "EVALSHA"):
            key = command[3] if len(command) > 3 and int(command[2]) > 0 else None
        else:
            key = command[1] if len(command) > 1 and name != "TIME" else None
        if key is not None:
            try:
                return cluster.get_node_from_key(key)
            except SlotNotCoveredError:
                return None
    return None

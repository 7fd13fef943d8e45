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
applied here to its replies (TIME as a pair of ints, as redis-py gives it). There a
tick's commands leave in writes of PIPE_BATCH, each made the moment it is full (the
last one at the end of the tick), so that Redis works while the worker does (see
PIPE_BATCH). A client whose connections are not redis-py's plain ones (fakeredis in
tests) keeps redis-py's pipeline.

On a Redis Cluster a batch goes to each primary over a connection of the batcher's own
too (seatres.store.cluster_pipes: each caller's commands to the node of their keys),
written the same way, in writes of PIPE_BATCH callers each made the moment it is full
(each to the nodes its callers concern), once those connections are open; what a node
cannot answer (a redirection, a lost connection) goes again through
redis-py's ClusterPipeline, which follows MOVED, ASK and TRYAGAIN and learns the slot
map anew. Two things are added to that pipeline here: no more batches in flight than
each node has connections (redis-py's cluster client raises when a node has none free,
and its pipeline then drops every connection of the client to start over), and a TIME
sent together with a keyed read goes to that key's node, so the read and the clock come
from the same server."""

import asyncio
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from seatres.store.cluster_pipes import ClusterPipes, Written, node_of, per_caller
from seatres.store.resp import RespPipe, as_redis_py_would

MAX_BATCH = 512
# On the worker's own connection (RespPipe) a batch is written the moment it holds this
# many commands, not at the end of the tick: Redis starts on it while the worker is
# still preparing the rest of the tick's requests, and its replies are back by the time
# the worker is ready for them. Sent whole at the end of the tick, a tick's 30-odd
# requests travelled as one convoy: the worker idle while Redis ran them, then Redis
# idle while the worker answered them, and 28-39 % of the two cores unused during
# confirm and cancel (18-24 % now). Measured with bench phases alternated in one run
# (bench/FINDINGS.md): writes of 2 cost reserve a quarter of its rate, of 16 kept
# little of the gain.
PIPE_BATCH = 8
# Share of a cluster node's connections that batches may hold at once; the rest serve
# the calls that do not go through the batcher (script loads, /readyz, /metrics).
CLUSTER_IN_FLIGHT_SHARE = 0.75

Command = tuple[Any, ...]
Batch = list[tuple[list[Command], "asyncio.Future[list[Any]]"]]


class TickBatcher:
    def __init__(self, redis: Redis | RedisCluster, max_batch: int | None = None) -> None:
        self._redis = redis
        self._pending: Batch = []
        self._pending_commands = 0
        self._sending: set[asyncio.Task[None]] = set()
        self._cluster_pipes: ClusterPipes | None = None
        self._tick_waits = False  # a cluster batch of this tick could not be written at once
        self._pipe: RespPipe | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._wait_seconds = 2.0
        if isinstance(redis, RedisCluster):
            self._cluster_pipes = ClusterPipes(redis, self._pipeline_to_cluster)
            options = redis.get_connection_kwargs()
            per_node = int(options.get("max_connections") or 100)
            self._in_flight = asyncio.Semaphore(max(1, int(per_node * CLUSTER_IN_FLIGHT_SHARE)))
            # as long as the single Redis's blocking pool waits for a connection
            self._wait_seconds = float(options.get("socket_timeout") or 2.0)
        else:
            self._pipe = RespPipe.for_client(redis)
        if max_batch is None:
            own = self._pipe is not None or self._cluster_pipes is not None
            max_batch = PIPE_BATCH if own else MAX_BATCH
        self._max_batch = max_batch

    async def aclose(self) -> None:
        """Close the batcher's own connection, if it has one (RespPipe): the redis-py
        client's aclose() does not know it. Left open, it closes when the loop ends."""
        if self._pipe is not None:
            await self._pipe.aclose()
        if self._cluster_pipes is not None:
            await self._cluster_pipes.aclose()

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
            self._flush(full=True)
        return await future

    def _flush(self, full: bool = False) -> None:
        """Sends what is pending: `full`, a batch filled in the middle of the tick; else
        the rest of the tick, at its end. Written now on the open connections; by a task
        (which connects first) otherwise."""
        if self._cluster_pipes is not None:
            self._flush_to_cluster(self._cluster_pipes, full)
            return
        if not self._pending:
            return
        batch, self._pending, self._pending_commands = self._pending, [], 0
        if self._pipe is not None:
            commands = _commands(batch)
            sent = self._pipe.send_now(commands)
            if sent is not None:
                sent.add_done_callback(partial(self._sent, batch, commands))
                return
        self._start_send(batch)

    def _flush_to_cluster(self, pipes: ClusterPipes, full: bool) -> None:
        """A batch that cannot be written at once (a primary without its open connection,
        a slot not in the map) does not leave in the middle of the tick: the tick's calls
        go together at its end, through ClusterPipes.send, which brings the slot map up to
        date first, as every batch on a cluster did before they were written as they
        filled (so a failover is learnt as soon as before, and its fallbacks are one
        cluster pipeline a tick, not one a batch)."""
        if not full:
            self._tick_waits = False  # the tick's end, even with nothing left to send
        if not self._pending:
            return
        may_wait = full and self._pending_commands < MAX_BATCH
        if may_wait and self._tick_waits:
            return
        written = pipes.send_now([commands for commands, _ in self._pending])
        if written is None and may_wait:
            self._tick_waits = True
            return
        batch, self._pending, self._pending_commands = self._pending, [], 0
        self._start_send(batch, written)

    def _start_send(self, batch: Batch, written: Written | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch, written))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _sent(self, batch: Batch, commands: list[Command], sent: "asyncio.Future[Any]") -> None:
        """A batch written by _flush has its replies, or lost its connection: then it goes
        again through _send, whose RespPipe.execute connects anew under the Retry policy."""
        error = None if sent.cancelled() else sent.exception()
        if sent.cancelled() or isinstance(error, RedisConnectionError | RedisTimeoutError):
            self._start_send(batch)
            return
        if error is not None:
            _fail(batch, error)
            return
        _answer(batch, as_redis_py_would(self._redis.response_callbacks, commands, sent.result()))

    async def _send(self, batch: Batch, written: Written | None = None) -> None:
        """Sends the batch (a cluster's: unless _flush has `written` it) and answers its
        callers."""
        try:
            if self._cluster_pipes is not None:
                if written is None:
                    parts = await self._cluster_pipes.send([commands for commands, _ in batch])
                else:
                    parts = await self._cluster_pipes.replies(written)
                replies = [reply for part in parts for reply in part]
            elif self._pipe is not None:
                commands = _commands(batch)
                replies = await self._pipe.execute(commands)
                replies = as_redis_py_would(self._redis.response_callbacks, commands, replies)
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
            _fail(batch, exc)
            return
        _answer(batch, replies)

    async def _pipeline_to_cluster(self, groups: list[list[Command]]) -> list[list[Any]]:
        """Callers' commands through redis-py's cluster pipeline (what ClusterPipes sends
        when a node's own connection cannot answer): each caller's replies, in order.

        A connection that breaks while its replies are read (one opened to a node that
        died since) gives each of its commands a ConnectionError reply, which redis-py's
        pipeline, asked for replies rather than raised errors, does not retry; it does
        ask for a slot map refresh. Those callers go again, as many times as the
        client's retry policy allows, each time after that refresh once it is due:
        without this a worker idle during a failover answered its first request to the
        failed master's events 503, seconds after the replica had taken over. (Timeouts
        are not sent again here: a node that hangs already costs a caller the socket
        timeout twice, see ClusterPipes.)"""
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        results = await self._cluster_pipeline(groups)
        for _ in range(cluster.retry.get_retries()):
            again = [i for i, replies in enumerate(results) if any(map(_broke, replies))]
            if not again:
                break
            retried = await self._cluster_pipeline([groups[i] for i in again])
            for i, replies in zip(again, retried, strict=True):
                results[i] = replies
        return results

    async def _cluster_pipeline(self, groups: list[list[Command]]) -> list[list[Any]]:
        """One cluster pipeline of callers' commands: each caller's replies."""
        cluster, in_flight = self._redis, self._in_flight
        assert isinstance(cluster, RedisCluster) and in_flight is not None
        try:
            async with asyncio.timeout(self._wait_seconds):
                await in_flight.acquire()
        except TimeoutError:
            raise RedisConnectionError("no free cluster connection (batches in flight)") from None
        try:
            await cluster.initialize()  # at once when done: the slot map below needs it
            async with cluster.pipeline(transaction=False) as pipe:
                for commands in groups:
                    node = None
                    for command in commands:
                        if command[0] != "TIME":
                            pipe.execute_command(*command)
                            continue
                        if node is None:
                            node = node_of(cluster, commands)
                        if node is None:
                            pipe.execute_command(*command)
                        else:
                            pipe.execute_command(*command, target_nodes=node)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        finally:
            in_flight.release()
        return per_caller(groups, replies)


def _broke(reply: Any) -> bool:
    """A reply that says the node's connection failed (not that the pool or the server
    refused one, which another try at once would not change)."""
    return isinstance(reply, RedisConnectionError) and not isinstance(
        reply, RedisCluster.NOT_NODE_FAILURE_ERRORS
    )


def _commands(batch: Batch) -> list[Command]:
    """Every caller's commands, in the order they travel."""
    return [command for commands, _ in batch for command in commands]


def _answer(batch: Batch, replies: list[Any]) -> None:
    """Each caller its own replies, in the order its commands were sent."""
    start = 0
    for commands, future in batch:
        end = start + len(commands)
        if not future.done():  # done: the caller went away (cancelled)
            future.set_result(replies[start:end])
        start = end


def _fail(batch: Batch, error: BaseException) -> None:
    """The whole round trip failed: every caller hears it."""
    for _, future in batch:
        if not future.done():
            future.set_exception(error)

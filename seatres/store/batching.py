"""TickBatcher: the Redis commands issued during one event-loop tick leave in one
non-transactional pipeline, and each caller gets its own reply.

On a burst, dozens of requests reach their Redis call in the same tick; sending them
as one write and reading the replies in one go costs one round trip and one syscall
pair instead of dozens (shared/guide/performance.md: the largest lever measured on the
reserve hot path). Each command is still a separate, atomic EVALSHA: batching changes
how they travel, not what they do. A pipeline that redis-py retries re-sends every
command in it; every script is safe to run twice for one request."""

import asyncio
from typing import Any

from redis.asyncio import Redis

MAX_BATCH = 512

Command = tuple[Any, ...]


class TickBatcher:
    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._pending_commands = 0
        self._sending: set[asyncio.Task[None]] = set()

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

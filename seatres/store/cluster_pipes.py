"""ClusterPipes: a Redis Cluster batch over connections of the batcher's own, one RespPipe
per primary, with redis-py's cluster pipeline behind them for whatever they cannot answer.

Why: on a cluster, TickBatcher sent every batch through redis-py's ClusterPipeline, whose
machinery cost the workers 130-168 µs of CPU per burst request in bench/burst.py
--cluster, against 92-94 on one server. With this module, 97-99 µs: two pairs of runs,
old and new code one after the other, each way round, burst 11,731 -> 14,504 and 9,878
-> 14,242 req/s (bench/FINDINGS.md).

How: each caller's commands go to the primary that holds their keys' slot, as redis-py
would route them (a TIME sent with a keyed read goes with it, so the read and the clock
come from one server), on that node's RespPipe, all nodes at once. When the nodes'
connections are open, `send_now` writes a batch before it returns, as RespPipe.send_now
does on one server, so that TickBatcher can write a tick's batches as they fill. What a
node does not answer goes again, together, through redis-py's cluster pipeline, which
follows the redirection, learns the slot map anew and retries under the client's policy,
exactly as every batch did before:
- a reply that says the slot is not served there now: MOVED, ASK, TRYAGAIN, CLUSTERDOWN;
- every command of a node whose connection failed, timed out or sent what could not be
  read (the node pipes do not retry on their own: the cluster client's policy decides);
- a caller whose commands have no key, keys on two nodes, or a slot the map does not
  cover.
Sending a command again is safe: a redirected one did not run, and one whose connection
was lost may have, which every script of this service answers as it did the first time
(the batcher's rule). A node that hangs costs its callers the socket timeout twice (the
node pipe's, then the cluster pipeline's) before they hear of it.

Replies are given as redis-py's cluster client gives them: its response callbacks are
applied (TIME as a pair of ints)."""

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ClusterDownError, SlotNotCoveredError, TryAgainError

from seatres.store.resp import Command, RespPipe, as_redis_py_would, target_of

# Replies that mean "not here, not now": the command did not run on that node, or (a
# script's own TRYAGAIN, a claim key in motion) ran its guards and changed nothing.
_ELSEWHERE = (AskError, TryAgainError, ClusterDownError)  # AskError covers MOVED

SendSlowly = Callable[[list[list[Command]]], Awaitable[list[list[Any]]]]
_ByNode = dict[str, tuple[RespPipe, list[int]]]


@dataclasses.dataclass(frozen=True)
class Written:
    """A batch on its way: each node's callers (indexes in `groups`) with what their
    replies will come in, and the callers that go through the cluster pipeline."""

    groups: Sequence[list[Command]]
    by_node: _ByNode
    sent: Sequence[Awaitable[list[Any]]]
    slow: list[int]


class ClusterPipes:
    def __init__(self, cluster: RedisCluster, slow: SendSlowly) -> None:
        """`slow`: sends callers' commands through redis-py's cluster pipeline and
        returns each caller's replies."""
        self._cluster = cluster
        self._slow = slow
        self._pipes: dict[str, RespPipe | None] = {}  # by node name; None: not a plain one

    async def aclose(self) -> None:
        pipes, self._pipes = self._pipes, {}
        await asyncio.gather(*(p.aclose() for p in pipes.values() if p is not None))

    async def send(self, groups: Sequence[list[Command]]) -> list[list[Any]]:
        """The replies of each caller's commands (a group), in order; error replies are
        exception objects in the lists."""
        await self._cluster.initialize()  # at once when done: routing needs the slot map
        by_node, slow = self._route(groups)
        sent = [pipe.execute(_joined(groups, callers)) for pipe, callers in by_node.values()]
        return await self.replies(Written(groups, by_node, sent, slow))

    def send_now(self, groups: Sequence[list[Command]]) -> Written | None:
        """As `send`, with the commands written before it returns, on the connections
        already open (as RespPipe.send_now on one server): `replies` then waits for
        their replies. None, with nothing written, when a node it would write to has no
        open connection or no caller has a node (a slot map not learnt yet): `send`
        connects first."""
        by_node, slow = self._route(groups)
        if not by_node or not all(pipe.connected for pipe, _ in by_node.values()):
            return None
        sent = []
        for pipe, callers in by_node.values():
            future = pipe.send_now(_joined(groups, callers))
            assert future is not None  # (connected, as checked above)
            sent.append(future)
        return Written(groups, by_node, sent, slow)

    def _route(self, groups: Sequence[list[Command]]) -> tuple[_ByNode, list[int]]:
        """Callers (their indexes in `groups`) by the node pipe that serves them, and
        those that go through the cluster pipeline."""
        by_node: _ByNode = {}
        slow: list[int] = []
        for i, commands in enumerate(groups):
            node = node_of(self._cluster, commands)
            pipe = self._pipe(node) if node is not None else None
            if node is None or pipe is None:
                slow.append(i)
            else:
                by_node.setdefault(node.name, (pipe, []))[1].append(i)
        return by_node, slow

    async def replies(self, written: Written) -> list[list[Any]]:
        """Each caller's replies from its node, and through the cluster pipeline for
        the callers no node serves and those their node did not answer."""
        groups, by_node, slow = written.groups, written.by_node, list(written.slow)
        results: list[list[Any]] = [[] for _ in groups]
        callbacks = self._cluster.response_callbacks
        outcomes = await asyncio.gather(*written.sent, return_exceptions=True)
        for (_, callers), outcome in zip(by_node.values(), outcomes, strict=True):
            if isinstance(outcome, Exception):  # (a lost connection, a garbled stream)
                slow += callers
                continue
            if isinstance(outcome, BaseException):  # (cancelled)
                raise outcome
            split = per_caller([groups[i] for i in callers], outcome)
            for i, replies in zip(callers, split, strict=True):
                if any(isinstance(reply, _ELSEWHERE) for reply in replies):
                    slow.append(i)
                else:
                    results[i] = as_redis_py_would(callbacks, groups[i], replies)
        if slow:
            slow.sort()
            for i, replies in zip(slow, await self._slow([groups[i] for i in slow]), strict=True):
                results[i] = replies
        return results

    def _pipe(self, node: ClusterNode) -> RespPipe | None:
        if node.name in self._pipes:
            return self._pipes[node.name]
        target = target_of(node.connection_class(**node.connection_kwargs))
        pipe = None
        if target is not None:
            # no retry of its own: a failure goes to the cluster pipeline at once
            pipe = RespPipe(dataclasses.replace(target, retry=Retry(NoBackoff(), 0)))
        self._pipes[node.name] = pipe
        return pipe


def _joined(groups: Sequence[list[Command]], callers: list[int]) -> list[Command]:
    return [command for i in callers for command in groups[i]]


def per_caller(groups: Sequence[list[Command]], replies: list[Any]) -> list[list[Any]]:
    """Flat replies (of `groups`' commands, joined in order) split back by caller."""
    split, start = [], 0
    for commands in groups:
        split.append(replies[start : start + len(commands)])
        start += len(commands)
    return split


def node_of(cluster: RedisCluster, commands: list[Command]) -> ClusterNode | None:
    """The primary that holds the slot of every keyed command among `commands` (None: no
    command has a key, the keys are on two nodes, or a slot is not covered now)."""
    node: ClusterNode | None = None
    for command in commands:
        key = _key_of(command)
        if key is None:
            continue
        try:
            found = cluster.get_node_from_key(key)
        except SlotNotCoveredError:
            return None
        if found is None or (node is not None and found.name != node.name):
            return None
        node = found
    return node


def _key_of(command: Command) -> Any:
    """The first key of a command as the service sends them (EVALSHA's after numkeys;
    None for TIME and for a script without keys)."""
    name = str(command[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        return command[3] if len(command) > 3 and int(command[2]) > 0 else None
    return command[1] if len(command) > 1 and name != "TIME" else None

"""Lua scripts shipped as package data: each is common.lua followed by the script's own
file (common.lua goes at the script's `-- @common` line instead, when the script has an
early answer that needs none of the helpers), loaded once per Redis and called by SHA
(RedisStore loads a script again when Redis answers NOSCRIPT: after a restart, a SCRIPT
FLUSH or a failover).

On a Redis Cluster every primary has a script cache of its own: scripts are loaded on
every primary (redis-py sends SCRIPT LOAD and SCRIPT EXISTS to all of them), and a node
that gets a slot later (a resharding, a replica promoted, a restart) answers NOSCRIPT
until the script is loaded again, which RedisStore does on that answer."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.cluster
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

COMMON_MARK = "-- @common\n"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


@cache
def script(name: str) -> Script:
    package = resources.files("seatres.lua")
    common = package.joinpath("common.lua").read_text(encoding="utf-8")
    own = package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    head, mark, body = own.partition(COMMON_MARK)
    source = f"{head}{common}\n{body}" if mark else f"{common}\n{own}"
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPT_NAMES = (
    "reserve",
    "confirm",
    "cancel",
    "extend",
    "expire",
    "upsert_event",
    "event_summary",
    "seat_page",
    "claim_due_events",
    "release_event",
    "record_sweep",
)


async def load_all(client: Redis | RedisCluster) -> None:
    """Every script, in one round trip (on a cluster: one per primary, all at once)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        async with client.pipeline(transaction=False) as pipe:
            # SCRIPT LOAD goes to every primary, which a cluster pipeline refuses to do
            # for one command: one command per primary, each sent to its node.
            for node in client.get_primaries():
                for name in SCRIPT_NAMES:
                    pipe.execute_command("SCRIPT LOAD", script(name).source, target_nodes=node)
            await pipe.execute()
        return
    async with client.pipeline(transaction=False) as pipe:
        for name in SCRIPT_NAMES:
            pipe.script_load(script(name).source)
        await pipe.execute()


async def scripts_loaded(client: Redis | RedisCluster) -> bool:
    """Every script is in the cache (on a cluster: of every primary)."""
    shas = [script(name).sha for name in SCRIPT_NAMES]
    return all(await client.script_exists(*shas))


def run_sync(
    r: "redis.Redis | redis.cluster.RedisCluster",
    name: str,
    keys: Sequence[str],
    args: Sequence[Any],
) -> Any:
    """A script on a sync client (command-line tools), by SHA, loaded first if need be.
    (RedisStore does the same on the async client, through its batcher.)"""
    s = script(name)
    try:
        return r.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        r.script_load(s.source)
        return r.evalsha(s.sha, len(keys), *keys, *args)

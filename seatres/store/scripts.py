"""Lua scripts shipped as package data: each is common.lua followed by the script's own
file, loaded once per Redis and called by SHA (RedisStore loads a script again when
Redis answers NOSCRIPT: after a restart, a SCRIPT FLUSH or a failover)."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError


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
    source = f"{common}\n{own}"
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
)


async def load_all(client: Redis) -> None:
    """Every script, in one round trip."""
    async with client.pipeline(transaction=False) as pipe:
        for name in SCRIPT_NAMES:
            pipe.script_load(script(name).source)
        await pipe.execute()


async def scripts_loaded(client: Redis) -> bool:
    shas = [script(name).sha for name in SCRIPT_NAMES]
    return all(await client.script_exists(*shas))


def run_sync(r: "redis.Redis", name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """A script on a sync client (command-line tools), by SHA, loaded first if need be.
    (RedisStore does the same on the async client, through its batcher.)"""
    s = script(name)
    try:
        return r.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        r.script_load(s.source)
        return r.evalsha(s.sha, len(keys), *keys, *args)

"""Lua scripts shipped as package data: each is common.lua followed by the script's own
file, loaded once per Redis and called by SHA (RedisStore loads a script again when
Redis answers NOSCRIPT: after a restart, a SCRIPT FLUSH or a failover)."""

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from redis.asyncio import Redis


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


async def load_all(redis: Redis) -> None:
    for name in SCRIPT_NAMES:
        await redis.script_load(script(name).source)


async def scripts_loaded(redis: Redis) -> bool:
    shas = [script(name).sha for name in SCRIPT_NAMES]
    return all(await redis.script_exists(*shas))

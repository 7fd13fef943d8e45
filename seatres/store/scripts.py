"""Lua scripts shipped as package data: loaded once, called by SHA.

Each script is common.lua followed by the script's own file. EVALSHA is sent first; a
NOSCRIPT answer (Redis restarted, SCRIPT FLUSH, a new replica) loads the script and
sends the same call once more."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

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
)


async def load_all(redis: Redis) -> None:
    for name in SCRIPT_NAMES:
        await redis.script_load(script(name).source)


async def scripts_loaded(redis: Redis) -> bool:
    shas = [script(name).sha for name in SCRIPT_NAMES]
    return all(await redis.script_exists(*shas))


async def run(redis: Redis, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
    s = script(name)
    try:
        return await redis.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        await redis.script_load(s.source)
        return await redis.evalsha(s.sha, len(keys), *keys, *args)

"""Commands packed by hiredis (C) instead of redis-py's asyncio connection, which packs
every argument in Python even when hiredis is installed: on the reserve hot path that
packing was about 5 % of an API worker's time in a profile (py-spy, wrk burst)."""

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError


class HiredisPacking:
    """Mixin for a redis-py asyncio connection class; same output as its pack_command:
    a first argument with spaces ("SCRIPT LOAD") is split, everything else is sent as
    given (str as UTF-8, int and float as their text)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            if " " in first:
                args = (*first.split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # e.g. None or a bool, which redis-py refuses too
            raise DataError(str(exc)) from None

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(self.pack_command(*command)[0] for command in commands)]


_made: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def with_hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain TCP, TLS or unix socket, as the URL chose) packing with
    hiredis; one class each, made once."""
    made = _made.get(connection_class)
    if made is None:
        name = f"Hiredis{connection_class.__name__}"
        made = _made[connection_class] = type(name, (HiredisPacking, connection_class), {})
    return made

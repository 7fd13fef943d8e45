"""Commands packed by hiredis (C): what the batches' connection (seatres.store.resp) writes.
redis-py's asyncio connection packs every argument in Python even when hiredis is
installed: on the reserve hot path that packing was about 5 % of an API worker's time in
a profile (py-spy, wrk burst); hiredis is about 6x cheaper per command."""

from typing import Any

import hiredis
from redis.exceptions import DataError


class HiredisPacking:
    """Same output as redis-py's pack_command: a first argument with spaces ("SCRIPT
    LOAD") is split, everything else is sent as given (str as UTF-8, int and float as
    their text)."""

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

"""Times as the service shows them: Redis's clock in milliseconds, ISO 8601 in UTC."""

import time
from collections.abc import Sequence
from functools import lru_cache


def redis_time_ms(reply: Sequence[int | str]) -> int:
    """Milliseconds from a Redis TIME reply (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def iso_time(ms: int) -> str:
    """e.g. 2026-11-25T10:00:00.123Z (every reservation answer carries three of these)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_utc_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=256)
def _utc_second(seconds: int) -> str:
    # the times of one answer, and of answers given close together, share their second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))

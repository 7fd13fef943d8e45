"""Times as the service shows them: Redis's clock in milliseconds, ISO 8601 in UTC."""

from collections.abc import Sequence
from datetime import UTC, datetime


def redis_time_ms(reply: Sequence[int | str]) -> int:
    """Milliseconds from a Redis TIME reply (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def iso_time(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

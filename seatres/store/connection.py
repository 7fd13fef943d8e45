"""Redis clients from the settings: the service's pooled async client, and a plain sync
one for command-line tools."""

import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from seatres.settings import Settings


def connect(settings: Settings) -> Redis:
    """The async client of the API and the sweep (SEATRES_REDIS_URL)."""
    if settings.redis_url is None:
        raise RuntimeError("SEATRES_REDIS_URL is unset: start the service with `seatres serve`")
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        decode_responses=True,
        # redis-py retries a command after a timeout or dropped connection, and every
        # script is written so that running it twice for one request answers as the first
        # run did. Few, quick retries: with Redis down a request gets its 503 in well under
        # a second. The policy must be the pool's (its connections are what retry):
        # Redis(connection_pool=pool, retry=...) ignores its retry argument.
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), settings.redis_retries),
    )
    # from_pool: the client owns the pool, so aclose() closes it too.
    return Redis.from_pool(pool)


def connect_sync(url: str, timeout_seconds: float) -> "redis.Redis":
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
    )

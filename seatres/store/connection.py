"""Redis clients from the settings: the service's pooled async client, and a plain sync
one for command-line tools. SEATRES_REDIS_URL with redis+cluster:// gives redis-py's
cluster clients instead (redis.asyncio.cluster.RedisCluster, redis.cluster.RedisCluster):
they route every command by its keys' slot and follow MOVED / ASK themselves."""

from typing import TypeAlias

import redis
import redis.cluster
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as SyncRetry

from seatres.settings import Settings, is_cluster_url, parse_cluster_url

# The service's client: one Redis, or a Redis Cluster.
AsyncClient: TypeAlias = Redis | AsyncRedisCluster
SyncClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster


def _retry(settings: Settings) -> Retry:
    # redis-py retries a command after a timeout or dropped connection, and every
    # script is written so that running it twice for one request answers as the first
    # run did. Few, quick retries: with Redis down a request gets its 503 in well under
    # a second.
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), settings.redis_retries)


def connect(settings: Settings) -> AsyncClient:
    """The async client of the API and the sweep (SEATRES_REDIS_URL)."""
    if settings.redis_url is None:
        raise RuntimeError("SEATRES_REDIS_URL is unset: start the service with `seatres serve`")
    if is_cluster_url(settings.redis_url):
        return connect_cluster(settings.redis_url, settings)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        decode_responses=True,
        # The policy must be the pool's (its connections are what retry):
        # Redis(connection_pool=pool, retry=...) ignores its retry argument.
        retry=_retry(settings),
    )
    # from_pool: the client owns the pool, so aclose() closes it too.
    return Redis.from_pool(pool)


def connect_cluster(url: str, settings: Settings) -> AsyncRedisCluster:
    """redis-py's async cluster client. Its retry policy applies to the whole cluster
    call: after a connection error or CLUSTERDOWN it learns the slots again and resends.
    max_connections is per node (redis-py raises instead of waiting when a node's are
    all in use: TickBatcher keeps the batches in flight below it)."""
    parsed = parse_cluster_url(url)
    client: AsyncRedisCluster = AsyncRedisCluster.from_url(
        parsed.node_url,
        startup_nodes=[AsyncClusterNode(host, port) for host, port in parsed.seeds[1:]],
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        decode_responses=True,
        retry=_retry(settings),
        # A MOVED answer names the slot's new owner: redis-py patches its slot map with
        # it. Not also a full refresh every few MOVED (its default): that refresh starts
        # with aclose(), which drops the connections other requests are using at that
        # moment, and until it is done new commands are sent to random nodes.
        reinitialize_steps=0,
    )
    return client


def connect_sync(url: str, timeout_seconds: float) -> SyncClient:
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        return redis.cluster.RedisCluster.from_url(
            parsed.node_url,
            startup_nodes=[
                redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in parsed.seeds[1:]
            ],
            decode_responses=True,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=SyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 2),
        )
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
    )


def is_cluster(client: object) -> bool:
    return isinstance(client, AsyncRedisCluster | redis.cluster.RedisCluster)

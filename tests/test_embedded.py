"""The embedded Redis's unix socket, and `seatres serve` reaching its Redis through it."""

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import redis

from seatres.embedded import MAX_SOCKET_PATH, RedisServer, free_port
from tests.processes import seatres_env, seatres_process, wait_for


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder whose socket path fits the kernel's limit whatever the test's name."""
    path = Path(tempfile.mkdtemp(prefix="seatres-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _socket_clients(r: "redis.Redis[bytes]") -> list[str]:
    """Addresses of the clients connected through a unix socket (they begin with its path)."""
    return [c["addr"] for c in r.client_list() if c["addr"].startswith("/")]


def test_the_socket_is_the_owners_alone_and_serves_as_the_port_does(short_dir: Path) -> None:
    with RedisServer(short_dir / "redis", unix_socket=True) as server:
        assert server.socket_path is not None
        mode = server.socket_path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o700
        assert server.local_url == f"unix://{server.socket_path}?db=0"
        with (
            redis.Redis.from_url(server.local_url) as by_socket,
            redis.Redis.from_url(server.url) as by_port,
        ):
            by_socket.set("k", "v")
            assert by_port.get("k") == b"v"
            assert _socket_clients(by_port) == [f"{server.socket_path}:0"]


def test_without_the_socket_or_with_a_path_too_long_the_port_is_the_way_in(
    short_dir: Path,
) -> None:
    assert RedisServer(short_dir).socket_path is None  # not asked for
    deep = short_dir / ("d" * (MAX_SOCKET_PATH - len(os.fsencode(short_dir))))
    server = RedisServer(deep, unix_socket=True)
    assert server.socket_path is None
    with server:
        assert server.local_url == server.url
        with redis.Redis.from_url(server.local_url) as r:
            assert r.ping()
    # the longest path that fits is used
    fitting = short_dir / ("d" * (MAX_SOCKET_PATH - len(os.fsencode(short_dir)) - 12))
    assert len(os.fsencode(fitting / "redis.sock")) == MAX_SOCKET_PATH
    assert RedisServer(fitting, unix_socket=True).socket_path == fitting / "redis.sock"


@pytest.mark.parametrize("unix_socket", [True, False])
def test_serve_reaches_its_embedded_redis_through_the_socket_unless_told_not_to(
    short_dir: Path, unix_socket: bool
) -> None:
    env = seatres_env("", data_dir=str(short_dir), embedded_redis_unix_socket=str(unix_socket))
    del env["SEATRES_REDIS_URL"]  # the embedded Redis
    port = free_port()
    log = short_dir / "serve.log"
    with seatres_process(["serve", "--port", str(port)], env, log) as proc:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("seatres serve", ready, 30, [log])
        first_line = log.read_text().splitlines()[0]
        tcp_url = first_line.split("redis://", 1)[1].split()[0].rstrip(",")
        with redis.Redis.from_url(f"redis://{tcp_url}") as r:
            clients = _socket_clients(r)
        socket = short_dir / "redis" / "redis.sock"
        if unix_socket:
            assert first_line.startswith(f"seatres: embedded Redis at unix://{socket}?db=0, and ")
            assert clients and all(addr == f"{socket}:0" for addr in clients)
        else:
            assert first_line.startswith("seatres: embedded Redis at redis://127.0.0.1:")
            assert clients == []
            assert not socket.exists()

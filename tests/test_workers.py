"""`seatres serve --workers N`: every worker accepts on its own SO_REUSEPORT socket, so a
burst of connections opened at once is spread over all of them, and a worker that dies
is replaced. And each worker freezes its start-up objects out of the garbage collector's
sight."""

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import fakeredis
import httpx2 as httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from seatres.embedded import RedisServer, free_port
from seatres.http.app import create_app
from seatres.settings import Settings
from seatres.workers import reuse_port_socket
from tests.conftest import make_settings
from tests.processes import api_server, child_pids, seatres_env, seatres_process

CONNECTIONS = 40


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    workers = []
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            if b"--multiprocessing-fork" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local port `port` in `state` (01 established,
    0A listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _wait_listening(port: int, workers: list[int], deadline: float) -> None:
    """Until every worker listens on the port: each does once its app has started."""
    while True:
        listening = _sockets(port, "0A")
        if all(_sockets_of(pid, listening) == 1 for pid in workers):
            return
        assert time.monotonic() < deadline, "not every worker listens"
        time.sleep(0.05)


def _sockets_of(pid: int, inodes: set[str]) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:[") and link[8:-1] in inodes:
                count += 1
    return count


def _wait_ready(base: str, deadline: float) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, "seatres serve did not answer"
        time.sleep(0.1)


def _healthz_on(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_connections_are_spread_over_workers_and_a_dead_worker_is_replaced(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = seatres_env(redis_server.url)
    args = ["serve", "--port", str(port), "--workers", "2"]
    with seatres_process(args, env, tmp_path / "serve.log") as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, time.monotonic() + 30)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        # /healthz answered from one worker; the other may still be starting its app
        _wait_listening(port, workers, time.monotonic() + 30)

        # A flash sale's connections arrive together: open them all, then use each once.
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        try:
            for sock in sockets:
                _healthz_on(sock)
            inodes = _sockets(port, "01")
            spread = [_sockets_of(pid, inodes) for pid in workers]
        finally:
            for sock in sockets:
                sock.close()
        assert sum(spread) == CONNECTIONS, spread
        # the kernel hashes connections over the two sockets: fewer than 8 of 40 on one
        # worker is a 4-sigma event; a shared socket routinely gives 40 + 0
        assert min(spread) >= 8, spread

        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            current = _workers(proc.pid)
            if len(current) == 2 and workers[0] not in current:
                break
            assert time.monotonic() < deadline, f"no replacement worker: {current}"
            time.sleep(0.2)
        _wait_ready(base, deadline)
        for _ in range(20):  # new connections reach both workers, old and new
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert proc.poll() is None


def test_a_worker_listens_only_once_its_app_has_started() -> None:
    """A worker's socket is bound but not listening until uvicorn has run the app's
    lifespan startup, so the kernel sends no connection to a worker still starting."""

    async def main() -> None:
        started = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()
                await started.wait()  # the app's start-up, held until the test lets go
                await send({"type": "lifespan.startup.complete"})
                await receive()
                await send({"type": "lifespan.shutdown.complete"})

        port = free_port()
        sock = reuse_port_socket("127.0.0.1", port)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        await asyncio.sleep(0.3)  # uvicorn is waiting on the lifespan startup
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        started.set()
        for _ in range(500):  # up to 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        server.should_exit = True
        await serving

    asyncio.run(main())


def test_a_taken_port_is_refused_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        args = ["serve", "--port", str(port), "--workers", "2"]
        env = seatres_env(redis_server.url)
        with seatres_process(args, env, tmp_path / "serve.log") as proc:
            assert proc.wait(timeout=30) != 0
    assert "Address already in use" in (tmp_path / "serve.log").read_text()


def test_a_port_another_seatres_serves_is_refused_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its workers listen with SO_REUSEPORT, as the second server's would: without the
    check, both would run and the kernel would split the connections between them."""
    with api_server(redis_server.url, tmp_path / "first.log", workers=2) as base:
        port = base.rsplit(":", 1)[1]
        args = ["serve", "--port", port, "--workers", "2"]
        second_log = tmp_path / "second.log"
        with seatres_process(args, seatres_env(redis_server.url), second_log) as second:
            assert second.wait(timeout=30) != 0
        assert "Address already in use" in second_log.read_text()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


def test_the_app_freezes_what_it_built_at_start_out_of_the_collectors_sight() -> None:
    server = fakeredis.FakeServer()
    app = create_app(
        make_settings(gc_freeze=True),
        redis_factory=lambda _s: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
    )
    gc.unfreeze()
    try:
        with TestClient(app) as client:
            assert gc.get_freeze_count() > 0
            assert client.get("/healthz").status_code == 200
    finally:
        gc.unfreeze()  # the rest of the suite runs with a normal collector
    off = create_app(make_settings(), redis_factory=lambda _s: fakeredis.FakeAsyncRedis())
    with TestClient(off):
        assert gc.get_freeze_count() == 0


def test_the_app_sets_the_collectors_young_threshold_at_start() -> None:
    before = gc.get_threshold()
    server = fakeredis.FakeServer()
    app = create_app(
        make_settings(gc_threshold=12_345),
        redis_factory=lambda _s: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
    )
    try:
        with TestClient(app) as client:
            assert gc.get_threshold() == (12_345, *before[1:])
            assert client.get("/healthz").status_code == 200
    finally:
        gc.set_threshold(*before)
    kept = create_app(make_settings(), redis_factory=lambda _s: fakeredis.FakeAsyncRedis())
    with TestClient(kept):
        assert gc.get_threshold() == before
    assert Settings.model_fields["gc_threshold"].default == 10_000

"""The HTTP protocol of `seatres serve`: uvicorn's httptools protocol writing what a loop
iteration answers on a connection in one write, run here on a transport that records
its writes, and through `seatres serve`."""

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from seatres.embedded import RedisServer
from seatres.http.protocol import DeferredWritesTransport, HttpProtocol
from tests.processes import api_server


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _serve_one(app: Any, transport: RecordingTransport) -> None:
    """Feeds one GET to a fresh HttpProtocol on `transport`; returns once it answered."""
    config = uvicorn.Config(app=app, http=HttpProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol.cycle is not None
    for _ in range(100):
        if protocol.cycle.response_complete:
            break
        await asyncio.sleep(0)
    assert protocol.cycle.response_complete
    await asyncio.sleep(0)  # a lone write's flush


async def _a_response_goes_out_in_one_write_at_the_end_of_the_loop_iteration() -> None:
    transport = RecordingTransport()
    writes_after_body: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})
        writes_after_body.append(len(transport.writes))

    await _serve_one(app, transport)
    assert writes_after_body == [0]  # held while the task still runs
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"hello"


async def _writes_of_one_iteration_go_out_joined_in_order() -> None:
    transport = RecordingTransport()
    deferred = DeferredWritesTransport(transport, asyncio.get_running_loop())
    deferred.write(b"a")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"a"]
    for data in (b"b", b"c", b"d"):
        deferred.write(data)
    assert transport.writes == [b"a"]
    await asyncio.sleep(0)
    assert transport.writes == [b"a", b"bcd"]
    await asyncio.sleep(0)
    assert transport.writes == [b"a", b"bcd"]


async def _close_writes_what_is_held_first_and_nothing_goes_to_a_closed_transport() -> None:
    transport = RecordingTransport()
    deferred = DeferredWritesTransport(transport, asyncio.get_running_loop())
    deferred.write(b"last ")
    deferred.write(b"words")
    deferred.close()
    assert transport.writes == [b"last words"] and transport.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing to write
    assert transport.writes == [b"last words"]
    deferred.write(b"late")  # held, then dropped: the transport is closing
    await asyncio.sleep(0)
    assert transport.writes == [b"last words"]


async def _a_streamed_body_keeps_its_order() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"two,", "more_body": True})
        await send({"type": "http.response.body", "body": b"three"})

    transport = RecordingTransport()
    await _serve_one(app, transport)
    data = b"".join(transport.writes)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in data
    body = data.partition(b"\r\n\r\n")[2]
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


def _data_segments_received(conn: socket.socket) -> int:
    """tcp_info's tcpi_data_segs_in (Linux 4.6+): segments that carried data."""
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= 156, "no tcpi_data_segs_in in this kernel's tcp_info"
    return int(struct.unpack_from("I", info, 152)[0])


def test_serve_answers_in_one_tcp_segment(redis_server: RedisServer, tmp_path: Path) -> None:
    """Through `seatres serve`, over a real connection: one data segment per answer,
    three answers on one keep-alive connection."""
    with api_server(redis_server.url, tmp_path / "api.log") as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            for n in range(1, 4):
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b'{"status":"ok"}'):
                    chunk = conn.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
                assert _data_segments_received(conn) == n


@pytest.mark.parametrize(
    "case",
    [
        _a_response_goes_out_in_one_write_at_the_end_of_the_loop_iteration,
        _writes_of_one_iteration_go_out_joined_in_order,
        _close_writes_what_is_held_first_and_nothing_goes_to_a_closed_transport,
        _a_streamed_body_keeps_its_order,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_deferred_writes(case: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(case())

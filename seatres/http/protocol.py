"""The HTTP protocol `seatres serve` runs under uvicorn: its httptools protocol, with what
a connection is answered in one loop iteration written to the socket at its end, in one
system call.

uvicorn writes the status line and headers on `http.response.start` and the body on
`http.response.body`: two system calls and two TCP segments per answer, and the client
wakes up for each. Here a connection's writes wait for the end of the loop iteration
(a callback, `call_soon`) and go out joined: one segment per answer, and the answers of
a busy iteration leave together instead of one by one between the handlers that make
them, so the client and the server wake each other less. Two `seatres serve --workers
2` side by side on one Redis (bench/ab.py, 6 rounds, medians): /healthz 28,795 ->
36,223 req/s, the reserve burst 11,350 -> 12,926 req/s; CPU per burst request, workers
109.3 -> 101.0 µs and wrk 30.0 -> 20.9 µs. Writing only each head with its body, at once
(no wait for the iteration's end), gained /healthz less (+14 %) and lost the burst 8 %."""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeferredWritesTransport:
    """A transport whose writes go out once a loop iteration, joined (everything else is
    the wrapped transport's)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()  # what was written goes out before the FIN, as with the transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        deferred = DeferredWritesTransport(transport, self.loop)
        super().connection_made(deferred)  # type: ignore[arg-type]

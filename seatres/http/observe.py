"""Per-request observation as one pure ASGI middleware: a request id (the client's
X-Request-ID when it is sane, a new one otherwise, echoed in the response), the access
log line and the request metrics. Pure ASGI rather than BaseHTTPMiddleware: it adds no
task and no body copy to the hot path."""

import logging
import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seatres.metrics import Metrics

log = logging.getLogger("seatres.access")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class ObserveRequests:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # the message is made for this one send: add to it rather than copy it
                message.setdefault("headers", []).append((REQUEST_ID_HEADER, request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, request_id, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        self.metrics.count_request(route, method, status, seconds)
        if self.access_log and log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "requestId": request_id,
                "method": method,
                "route": route,
                "status": status,
                "latencyMs": round(seconds * 1000, 3),
                "customerId": scope["state"].get("customer_id"),
            }
            log.info("%s %s %d", method, route, status, extra=fields)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SANE_ID.fullmatch(value):
            return str(value.decode())
    # 64 random bits tell requests apart; they need not be unguessable, so no
    # os.urandom system call on every request
    return f"{random.getrandbits(64):016x}"

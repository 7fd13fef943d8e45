"""Redis goes away under a running service and comes back (script cache gone,
connections dropped): the service answers 503 problem+json meanwhile, never a 500, and
recovers by itself; what it acknowledged before is still there (appendfsync always)."""

import time
from pathlib import Path

import httpx2 as httpx

from seatres.embedded import RedisServer
from tests.conftest import ADMIN, ALICE, BOB
from tests.processes import api_server


def _reserve(base: str, seat: str, who: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{base}/reservations", json={"eventId": "r", "seatId": seat}, headers=who, timeout=10
    )


def test_service_survives_a_redis_restart(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        with api_server(redis.url, tmp_path / "api.log", workers=1) as base:
            seats = {"name": "Restart", "seats": ["A1", "A2", "A3"]}
            assert httpx.put(f"{base}/events/r", json=seats, headers=ADMIN).status_code == 201
            first = _reserve(base, "A1", ALICE)
            assert first.status_code == 201

            redis.stop(kill=True)
            down = _reserve(base, "A2", ALICE)
            assert down.status_code == 503
            assert down.headers["content-type"].startswith("application/problem+json")
            assert down.json()["code"] == "store_unavailable"
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200

            redis.start()  # same port, same append-only file, empty script cache
            deadline = time.monotonic() + 20
            while (again := _reserve(base, "A2", ALICE)).status_code == 503:
                assert time.monotonic() < deadline, "the service did not recover"
                time.sleep(0.2)
            assert again.status_code == 201, again.text
            # what was acknowledged before the crash is still there
            rid = first.json()["id"]
            kept = httpx.get(f"{base}/reservations/{rid}", headers=ALICE, timeout=10)
            assert kept.json()["state"] == "RESERVED"
            assert _reserve(base, "A1", BOB).status_code == 409
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        redis.stop()

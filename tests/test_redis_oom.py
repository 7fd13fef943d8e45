"""Redis at maxmemory with noeviction: a write is refused cleanly (503 problem+json),
nothing is half written, and reads still answer."""

from pathlib import Path

import httpx2 as httpx
import redis as redis_py

from seatres.embedded import RedisServer
from tests.conftest import ADMIN, ALICE
from tests.processes import api_server


def test_writes_refuse_cleanly_at_maxmemory(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "redis",
        appendfsync="everysec",
        extra_args=("--maxmemory", "8mb", "--maxmemory-policy", "noeviction"),
    ).start()
    direct = redis_py.Redis(port=server.port, decode_responses=True)
    try:
        with api_server(server.url, tmp_path / "api.log", workers=1) as base:
            seats = {"name": "Full", "seats": ["A1", "A2"]}
            assert httpx.put(f"{base}/events/f", json=seats, headers=ADMIN).status_code == 201
            # fill Redis up to its limit, with smaller and smaller values
            i = 0
            for size in (100_000, 1_000, 10):
                while True:
                    try:
                        direct.set(f"filler:{i}", "x" * size)
                    except redis_py.exceptions.OutOfMemoryError:
                        break
                    i += 1
            # Full now, but only just: a few KB freed (a client's query buffer trimmed by
            # Redis's cron, seen with Redis 7) would let the next write in. A limit 1 MB
            # below what is in use keeps Redis over it for the rest of the test.
            used = int(direct.info("memory")["used_memory"])
            direct.config_set("maxmemory", used - 1_000_000)
            before = {k: direct.dump(k) for k in direct.scan_iter("seatres:*")}

            refused = httpx.post(
                f"{base}/reservations",
                json={"eventId": "f", "seatId": "A1"},
                headers=ALICE,
                timeout=10,
            )
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "store_unavailable"
            after = {k: direct.dump(k) for k in direct.scan_iter("seatres:*")}
            assert after == before  # nothing half written
            event = httpx.get(f"{base}/events/f", headers=ALICE, timeout=10)
            assert event.json()["seats"]["free"] == 2  # reads still work

            # once there is room again, writes go through
            direct.delete(*(f"filler:{n}" for n in range(i + 1)))
            made = httpx.post(
                f"{base}/reservations",
                json={"eventId": "f", "seatId": "A1"},
                headers=ALICE,
                timeout=10,
            )
            assert made.status_code == 201
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        direct.close()
        server.stop()

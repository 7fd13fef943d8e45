"""kill -9 of Redis under load, with appendonly yes and appendfsync always (the embedded
default): after a restart every reservation the API acknowledged is there, in the
acknowledged state, and no seat has two active reservations."""

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx2 as httpx
import redis

from seatres.embedded import RedisServer
from seatres.store import keys
from tests.conftest import ADMIN, bearer
from tests.processes import api_server

SEATS = [f"S{i:03d}" for i in range(300)]
CUSTOMERS = [bearer(f"c{i}") for i in range(20)]


async def _load(base: str, stop: threading.Event) -> dict[str, str]:
    """Reserve and confirm until `stop`; returns every acknowledged id -> state."""
    acked: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:

        async def one(n: int) -> None:
            seat = SEATS[n % len(SEATS)]
            who = CUSTOMERS[n % len(CUSTOMERS)]
            try:
                made = await http.post(
                    "/reservations", json={"eventId": "k", "seatId": seat}, headers=who
                )
                if made.status_code != 201:
                    return
                rid = made.json()["id"]
                acked[rid] = "RESERVED"
                if n % 2:
                    done = await http.post(f"/reservations/{rid}/confirm", headers=who)
                    if done.status_code == 200:
                        acked[rid] = "CONFIRMED"
            except httpx.HTTPError:
                pass  # no answer: nothing was acknowledged

        n = 0
        while not stop.is_set() and n < 5000:
            await asyncio.gather(*(one(n + i) for i in range(16)))
            n += 16
    return acked


def test_acknowledged_reservations_survive_kill_9(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        with api_server(server.url, tmp_path / "api.log", max_seats_per_customer="0") as base:
            seats = {"name": "Kill", "seats": SEATS}
            assert httpx.put(f"{base}/events/k", json=seats, headers=ADMIN).status_code == 201
            stop = threading.Event()
            result: dict[str, dict[str, str]] = {}
            loader = threading.Thread(
                target=lambda: result.update(acked=asyncio.run(_load(base, stop)))
            )
            loader.start()
            time.sleep(1.0)
            server.stop(kill=True)  # SIGKILL, mid-load
            time.sleep(0.5)
            stop.set()
            loader.join(timeout=30)
            assert not loader.is_alive()
            acked = result["acked"]
            assert len(acked) > 20, "the load did not get going before the kill"

            server.start()
            direct = redis.Redis(port=server.port, decode_responses=True)
            try:
                k = keys.event_keys("k")
                stored = {
                    rid: json.loads(raw) for rid, raw in direct.hgetall(k.reservations).items()
                }
                claims = direct.hgetall(k.claims)
            finally:
                direct.close()
    finally:
        server.stop()

    for rid, state in acked.items():
        assert rid in stored, f"acknowledged {rid} lost"
        assert stored[rid]["state"] == state, (rid, state, stored[rid]["state"])
    # the invariant: every claim is one active reservation's, and every active
    # reservation claims its seats
    active = {rid: r for rid, r in stored.items() if r["state"] in ("RESERVED", "CONFIRMED")}
    for seat, rid in claims.items():
        assert rid in active and seat in active[rid]["seatIds"]
    for rid, r in active.items():
        for seat in r["seatIds"]:
            assert claims.get(seat) == rid

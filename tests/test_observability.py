"""Metrics, request ids, structured access logs and readiness."""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from seatres.embedded import RedisServer
from seatres.http.state import STATE_KEY
from seatres.logs import JsonFormatter
from seatres.store.redis_store import RedisStore
from tests.conftest import ADMIN, ALICE, BOB, Backend, put_event
from tests.processes import api_server


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def test_metrics_count_requests_transitions_conflicts_and_replays(client: TestClient) -> None:
    put_event(client, "m", ["A1", "A2"])
    key = {"Idempotency-Key": "k1"}
    made = client.post("/reservations", json={"eventId": "m", "seatId": "A1"}, headers=ALICE)
    client.post("/reservations", json={"eventId": "m", "seatIds": ["A1", "A2"]}, headers=BOB)
    client.post("/reservations", json={"eventId": "m", "seatId": "A2"}, headers={**BOB, **key})
    client.post("/reservations", json={"eventId": "m", "seatId": "A2"}, headers={**BOB, **key})
    client.post(f"/reservations/{made.json()['id']}/confirm", headers=ALICE)

    text = client.get("/metrics").text
    route = {"route": "/reservations", "method": "POST"}
    assert sample(text, "seatres_http_requests_total", **route, status="201") == 3
    assert sample(text, "seatres_http_requests_total", **route, status="409") == 1
    assert sample(text, "seatres_http_request_duration_seconds_count", **route) == 4
    assert (
        sample(text, "seatres_reservation_transitions_total", transition="reserve", result="ok")
        == 3
    )
    assert (
        sample(
            text,
            "seatres_reservation_transitions_total",
            transition="reserve",
            result="seat_unavailable",
        )
        == 1
    )
    assert (
        sample(text, "seatres_reservation_transitions_total", transition="confirm", result="ok")
        == 1
    )
    assert sample(text, "seatres_seat_conflicts_total") == 1
    assert sample(text, "seatres_idempotent_replays_total", transition="reserve") == 1
    assert sample(text, "seatres_redis_call_duration_seconds_count", operation="reserve") == 4
    # numbers read from Redis: seats of the event by status
    assert sample(text, "seatres_event_seats", event="m", status="booked") == 1
    assert sample(text, "seatres_event_seats", event="m", status="held") == 1
    assert sample(text, "seatres_event_seats", event="m", status="free") == 0


def test_sweep_metrics_come_from_the_jobs_record(client: TestClient, backend: Backend) -> None:
    async def record() -> None:
        redis = backend.make_async()
        try:
            await RedisStore(redis).record_sweep(expired=7, seconds=0.25)
            await RedisStore(redis).record_sweep(expired=3, seconds=0.5)
        finally:
            await redis.aclose()

    before = client.get("/metrics").text
    assert sample(before, "seatres_sweep_last_success_timestamp_seconds") == 0
    asyncio.run(record())
    text = client.get("/metrics").text
    assert abs(sample(text, "seatres_sweep_last_success_timestamp_seconds") - time.time()) < 60
    assert sample(text, "seatres_sweep_last_duration_seconds") == 0.5
    assert sample(text, "seatres_sweep_last_expired_holds") == 3
    assert sample(text, "seatres_sweep_runs_total") == 2
    assert sample(text, "seatres_sweep_expired_holds_total") == 10


def test_request_id_is_taken_or_made_and_echoed(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 16
    insane = client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert insane.headers["x-request-id"] != "a b\tc" + "x" * 200
    problem = client.get("/nowhere", headers={"X-Request-ID": "r-404"})
    assert problem.headers["x-request-id"] == "r-404"


def test_access_log_is_json_with_ids_and_no_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    put_event(client, "m", ["A1"])
    with caplog.at_level(logging.INFO, logger="seatres.access"):
        client.post(
            "/reservations",
            json={"eventId": "m", "seatId": "A1"},
            headers={**ALICE, "X-Request-ID": "req-42"},
        )
    (record,) = [r for r in caplog.records if r.name == "seatres.access"]
    line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["requestId"] == "req-42"
    assert entry["route"] == "/reservations"
    assert entry["method"] == "POST"
    assert entry["status"] == 201
    assert entry["customerId"] == "alice"
    assert entry["latencyMs"] > 0
    assert entry["level"] == "info"
    token = ALICE["Authorization"].split()[1]
    assert token not in line and "Bearer" not in line


def _stats(backend: Backend, last_success_ms: int) -> None:
    backend.sync.hset("seatres:{sweep}:stats", mapping={"lastSuccess": last_success_ms})


def test_readyz_fails_when_the_last_sweep_is_too_old(client: TestClient, backend: Backend) -> None:
    now_ms = int(time.time() * 1000)
    _stats(backend, now_ms - 10_000)
    assert client.get("/readyz").status_code == 200
    _stats(backend, now_ms - 181_000)  # default SEATRES_SWEEP_MAX_AGE_SECONDS is 180
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == "sweep_stale"
    assert response.headers["content-type"].startswith("application/problem+json")


def test_readyz_without_any_sweep_fails_only_after_the_max_age(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200  # just started
    state = client.app_state[STATE_KEY]
    object.__setattr__(state, "started_at", time.monotonic() - 181)
    assert client.get("/readyz").json()["code"] == "sweep_stale"


def test_metrics_add_up_every_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    with api_server(redis_server.url, tmp_path / "api.log", workers=2) as base:
        # fresh connections each time, so that both workers answer some
        for _ in range(60):
            httpx.get(f"{base}/healthz", timeout=10)
        text = httpx.get(f"{base}/metrics", timeout=10).text
    count = sample(
        text, "seatres_http_requests_total", route="/healthz", method="GET", status="200"
    )
    assert count == 60
    log_lines = (tmp_path / "api.log").read_text().splitlines()
    access: list[dict[str, Any]] = [
        orjson.loads(line) for line in log_lines if '"seatres.access"' in line
    ]
    healthz = [entry for entry in access if entry["route"] == "/healthz"]
    assert len(healthz) == 60
    assert len({entry["pid"] for entry in healthz}) == 2  # both workers served, both counted


def test_event_gauges_are_per_event(client: TestClient) -> None:
    put_event(client, "g1", ["A1", "A2", "A3"])
    put_event(client, "g2", ["B1"])
    client.post("/reservations", json={"eventId": "g1", "seatId": "A1"}, headers=ADMIN)
    text = client.get("/metrics").text
    assert sample(text, "seatres_event_seats", event="g1", status="free") == 2
    assert sample(text, "seatres_event_seats", event="g1", status="held") == 1
    assert sample(text, "seatres_event_seats", event="g2", status="free") == 1

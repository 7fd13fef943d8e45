"""Metrics counted in the process and written to prometheus-client once per loop tick
(seatres/metrics.py): the exposition must be what prometheus-client gives for the same
observations made one by one."""

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from seatres.metrics import LATENCY_BUCKETS, REDIS_BUCKETS, Metrics

# Durations on and around bucket bounds (a bound belongs to its own bucket), below the
# first, above the last (+Inf) and zero.
DURATIONS = [0.0, 0.0001, 0.001, 0.0010001, 0.0025, 0.004, 0.05, 2.5, 2.6, 30.0]


def _direct_exposition() -> bytes:
    """The same metrics fed straight to prometheus-client."""
    r = CollectorRegistry()
    requests = Counter("seatres_http_requests", "x", ["route", "method", "status"], registry=r)
    request_seconds = Histogram(
        "seatres_http_request_duration_seconds",
        "x",
        ["route", "method"],
        buckets=LATENCY_BUCKETS,
        registry=r,
    )
    transitions = Counter(
        "seatres_reservation_transitions", "x", ["transition", "result"], registry=r
    )
    conflicts = Counter("seatres_seat_conflicts", "x", registry=r)
    replays = Counter("seatres_idempotent_replays", "x", ["transition"], registry=r)
    redis_seconds = Histogram(
        "seatres_redis_call_duration_seconds",
        "x",
        ["operation"],
        buckets=REDIS_BUCKETS,
        registry=r,
    )
    for i, seconds in enumerate(DURATIONS):
        status = "409" if i % 3 else "201"
        requests.labels("/reservations", "POST", status).inc()
        request_seconds.labels("/reservations", "POST").observe(seconds)
        transitions.labels("reserve", "ok" if status == "201" else "seat_unavailable").inc()
        conflicts.inc(i % 3)
        replays.labels("reserve").inc()
        redis_seconds.labels("reserve").observe(seconds / 10)
    return _samples(generate_latest(r))


def _count_all(metrics: Metrics) -> None:
    for i, seconds in enumerate(DURATIONS):
        status = 409 if i % 3 else 201
        metrics.count_request("/reservations", "POST", status, seconds)
        metrics.count_transition("reserve", "ok" if status == 201 else "seat_unavailable")
        metrics.count_seat_conflicts(i % 3)
        metrics.count_replay("reserve")
        metrics.time_store_call("reserve", seconds / 10)


def _samples(exposition: bytes) -> bytes:
    """Sample lines only (no HELP text, no _created timestamps)."""
    lines = exposition.splitlines()
    return b"\n".join(sorted(x for x in lines if not x.startswith(b"#") and b"_created" not in x))


def test_counts_made_in_a_loop_reach_prometheus_at_the_end_of_the_tick() -> None:
    async def scenario() -> tuple[bytes, bytes, bytes]:
        metrics = Metrics()
        _count_all(metrics)
        during_tick = _samples(generate_latest(metrics.registry))
        await asyncio.sleep(0)  # the loop runs the flush scheduled by the first count
        after_tick = _samples(generate_latest(metrics.registry))
        return during_tick, after_tick, _samples(generate_latest(metrics.collecting_registry()))

    during_tick, after_tick, scraped = asyncio.run(scenario())
    expected = _direct_exposition()
    assert during_tick != expected  # nothing written yet: one write per child, later
    assert after_tick == expected
    assert scraped == expected


def test_a_scrape_writes_what_its_own_tick_counted() -> None:
    async def scenario() -> bytes:
        metrics = Metrics()
        _count_all(metrics)
        return _samples(generate_latest(metrics.collecting_registry()))

    assert asyncio.run(scenario()) == _direct_exposition()


def test_counts_made_outside_a_loop_are_written_at_once() -> None:
    metrics = Metrics()
    _count_all(metrics)
    assert _samples(generate_latest(metrics.registry)) == _direct_exposition()

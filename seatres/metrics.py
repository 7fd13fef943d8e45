"""Prometheus metrics of the API process(es).

With several uvicorn workers, prometheus-client runs in multiprocess mode: `seatres
serve` sets PROMETHEUS_MULTIPROC_DIR before the workers start, each worker writes its
samples there, and /metrics adds them up. Numbers that live in Redis (seat counts, the
sweep's runs, which happen in the rq worker) are read at scrape time instead."""

import asyncio
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from seatres.domain.models import EventCounts, SweepStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REDIS_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    """One set per app. In single-process mode (tests, one worker) they live in the app's
    own registry; in multiprocess mode their samples go to files whatever the registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "seatres_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "seatres_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "seatres_reservation_transitions",
            "Reservation requests by transition and result (ok, unchanged, or an error code)",
            ["transition", "result"],
            registry=r,
        )
        self.seat_conflicts = Counter(
            "seatres_seat_conflicts",
            "Seats refused because another active reservation holds them (in 409 answers)",
            registry=r,
        )
        self.replays = Counter(
            "seatres_idempotent_replays",
            "Answers given again for a reused Idempotency-Key, by transition",
            ["transition"],
            registry=r,
        )
        self.redis_seconds = Histogram(
            "seatres_redis_call_duration_seconds",
            "Time of one store call (one round trip, batched with others), by operation",
            ["operation"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )

        # Children by label values: labels() validates and locks on every call, and the
        # hot path counts every request. The label sets are few (routes x methods x
        # statuses, transitions x results, store operations).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Counts not yet written to prometheus-client, by child: one write per child and
        # loop tick (see _flush_soon).
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}  # per bucket, then the sum
        self._flush_scheduled = False

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._add(self._child(self.requests, route, method, str(status)))
        self._observe(self._child(self.request_seconds, route, method), seconds)

    def count_transition(self, transition: str, result: str) -> None:
        self._add(self._child(self.transitions, transition, result))

    def count_seat_conflicts(self, seats: int) -> None:
        self._add(self.seat_conflicts, seats)

    def count_replay(self, transition: str) -> None:
        self._add(self._child(self.replays, transition))

    def time_store_call(self, operation: str, seconds: float) -> None:
        self._observe(self._child(self.redis_seconds, operation), seconds)

    def _add(self, counter: Any, amount: float = 1) -> None:
        self._counts[counter] = self._counts.get(counter, 0) + amount
        self._flush_soon()

    def _observe(self, histogram: Any, seconds: float) -> None:
        slots = self._observed.get(histogram)
        if slots is None:
            slots = self._observed[histogram] = [0.0] * (len(histogram._upper_bounds) + 1)
        # the bucket Histogram.observe picks: the first upper bound >= seconds
        slots[bisect_left(histogram._upper_bounds, seconds)] += 1
        slots[-1] += seconds
        self._flush_soon()

    def _flush_soon(self) -> None:
        """In multiprocess mode every prometheus-client increment is a locked write to
        the worker's mmap file, and a refused reserve made 7 of them: with no metrics at
        all it took 45.7 µs of CPU rather than 57.4 (in-process against a real Redis,
        alternating slices). Counted here, they reach prometheus-client once per child
        at the end of the loop tick, so a burst's tick of 30-odd requests makes a dozen
        writes instead of 200: 50.0 µs. A scrape flushes first, and no count waits
        longer than the tick it was made in."""
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # counted outside a loop: nothing would run the flush
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the pending counts to prometheus-client (its files, in multiprocess mode)."""
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        self._flush_scheduled = False
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, slots in observed.items():
            # Histogram has no way to add many observations at once: its sum and bucket
            # values are written as observe() writes them (tests/test_metrics.py compares)
            histogram._sum.inc(slots[-1])
            for bucket, n in zip(histogram._buckets, slots[:-1], strict=True):
                if n:
                    bucket.inc(n)

    def collecting_registry(self) -> CollectorRegistry:
        """What /metrics exposes: every worker's samples in multiprocess mode."""
        self.flush()
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry


class _Prepared:
    """A collector for families already read (from Redis) at scrape time."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def store_families(counts: list[EventCounts], sweep: SweepStats) -> bytes:
    """Exposition of the numbers that live in Redis: seats by status per event, and the
    expiry job's record (it runs in the rq worker, not in this process)."""
    seats = GaugeMetricFamily(
        "seatres_event_seats", "Seats of an event by status", labels=["event", "status"]
    )
    for c in counts:
        free = c.total - c.held - c.booked
        for status, value in (("free", free), ("held", c.held), ("booked", c.booked)):
            seats.add_metric([c.event_id, status], value)
    families: list[Metric] = [
        seats,
        GaugeMetricFamily(
            "seatres_sweep_last_success_timestamp_seconds",
            "When the expiry job last finished without error (0: never)",
            value=(sweep.last_success_ms or 0) / 1000,
        ),
        GaugeMetricFamily(
            "seatres_sweep_last_duration_seconds",
            "How long the last successful expiry run took",
            value=sweep.last_seconds,
        ),
        GaugeMetricFamily(
            "seatres_sweep_last_expired_holds",
            "Holds the last successful expiry run expired",
            value=sweep.last_expired,
        ),
        CounterMetricFamily("seatres_sweep_runs", "Successful expiry runs", value=sweep.runs),
        CounterMetricFamily(
            "seatres_sweep_expired_holds", "Holds expired by the expiry job", value=sweep.expired
        ),
    ]
    registry = CollectorRegistry()
    registry.register(_Prepared(families))
    return generate_latest(registry)

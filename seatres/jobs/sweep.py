"""The expiry sweep: every due hold becomes EXPIRED and its seats free again.

Work grows with the number of due holds, never with seats or events: the sweep claims
only the events of the `{sweep}:due` index whose time has come, expires each one's due
holds in bounded batches (one short script call each), and gives the event back with the
expiry of its earliest remaining hold.

Safe to run twice at once (two schedulers, two workers, an rq retry): the expire script
re-checks every reservation inside Redis, so each hold is expired by exactly one call, and
a hold confirmed or cancelled a moment before is left as it is. A sweep that dies keeps
its events claimed until the store's lease runs out; a later sweep then takes them over."""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from seatres.domain.errors import StoreUnavailable
from seatres.domain.models import Claim
from seatres.domain.ports import ExpiryStore
from seatres.settings import Settings
from seatres.store.connection import connect
from seatres.store.redis_store import RedisStore

log = logging.getLogger("seatres.jobs")

# A run stops after this long (well inside the store's sweep lease and rq's job timeout);
# what is left stays indexed or claimed and is picked up by a later run.
MAX_SWEEP_SECONDS = 30.0
# Events claimed per round trip.
EVENT_LIMIT = 500
# The due time an event is given back with when it was not looked at: due at once.
DUE_NOW = 0

T = TypeVar("T")


@dataclass(frozen=True)
class SweepReport:
    expired: dict[str, int] = field(default_factory=dict)  # event id -> holds expired
    seconds: float = 0.0
    batches: int = 0  # expire script calls
    longest_call_seconds: float = 0.0  # the longest single store call, seen from here
    finished: bool = True  # False when the time bound stopped the run
    failed: tuple[str, ...] = ()  # events whose sweep raised; retried after their lease

    @property
    def total(self) -> int:
        return sum(self.expired.values())

    def as_dict(self) -> dict[str, Any]:
        """The rq job's result: plain JSON-able values."""
        return {
            "expired": self.total,
            "events": dict(self.expired),
            "seconds": round(self.seconds, 6),
            "batches": self.batches,
            "longestCallSeconds": round(self.longest_call_seconds, 6),
            "finished": self.finished,
            "failed": list(self.failed),
        }


class SweepFailed(RuntimeError):
    """Some events could not be swept (the others were): the rq job is marked failed."""


class _Sweep:
    def __init__(self, store: ExpiryStore, batch_size: int, max_seconds: float) -> None:
        self.store = store
        self.batch_size = batch_size
        self.start = time.perf_counter()
        self.deadline = self.start + max_seconds
        self.expired: dict[str, int] = {}
        self.failed: list[str] = []
        self.batches = 0
        self.longest = 0.0

    def time_left(self) -> bool:
        return time.perf_counter() < self.deadline

    async def timed(self, call: Awaitable[T]) -> T:
        t0 = time.perf_counter()
        result = await call
        self.longest = max(self.longest, time.perf_counter() - t0)
        return result

    async def event(self, claim: Claim) -> None:
        """Expires the event's due holds batch by batch, then gives the event back."""
        event_id = claim.event_id
        next_due: int | None = DUE_NOW
        while self.time_left():
            batch = await self.timed(self.store.expire_batch(event_id, self.batch_size))
            self.batches += 1
            if batch.expired_ids:
                self.expired[event_id] = self.expired.get(event_id, 0) + len(batch.expired_ids)
            next_due = batch.next_due_ms
            if not batch.more_due:
                break
        await self.timed(self.store.release_event(claim, next_due))

    async def run(self, event_limit: int) -> bool:
        """True when no due event was left; False when the time bound stopped it."""
        while self.time_left():
            claims = await self.timed(self.store.claim_due_events(event_limit))
            if not claims:
                return True
            for claim in claims:
                try:
                    await self.event(claim)
                except StoreUnavailable:
                    raise
                except Exception:
                    # Left claimed: retried once the lease runs out, and the other
                    # events are not held up by it.
                    log.exception("sweep of event %s failed", claim.event_id)
                    self.failed.append(claim.event_id)
        return False


async def sweep(
    store: ExpiryStore,
    batch_size: int,
    event_limit: int = EVENT_LIMIT,
    max_seconds: float = MAX_SWEEP_SECONDS,
) -> SweepReport:
    """Expires due holds until none is left or max_seconds have passed."""
    s = _Sweep(store, batch_size, max_seconds)
    finished = await s.run(event_limit)
    return SweepReport(
        expired=s.expired,
        seconds=time.perf_counter() - s.start,
        batches=s.batches,
        longest_call_seconds=s.longest,
        finished=finished,
        failed=tuple(s.failed),
    )


async def _sweep_redis(settings: Settings) -> SweepReport:
    redis = connect(settings)  # the reservations' Redis, as the API uses it
    try:
        store = RedisStore(redis, log_max_length=settings.log_max_length)
        report = await sweep(store, settings.sweep_batch_size)
        if not report.failed:
            await store.record_sweep(report.total, report.seconds)
        return report
    finally:
        await redis.aclose()


def expire_due_holds() -> dict[str, Any]:
    """The rq job (sync): one sweep of the reservations' Redis (SEATRES_REDIS_URL)."""
    report = asyncio.run(_sweep_redis(Settings()))
    for event_id, count in sorted(report.expired.items()):
        log.info("expired %d holds of event %s", count, event_id)
    log.info(
        "sweep %s: %d holds expired in %d events in %.3f s (%d batches, longest call %.1f ms)",
        "done" if report.finished else "stopped by its time bound",
        report.total,
        len(report.expired),
        report.seconds,
        report.batches,
        report.longest_call_seconds * 1000,
    )
    if report.failed:
        raise SweepFailed(f"{report.as_dict()}")
    return report.as_dict()

"""The expiry job under faults, with real `seatres worker` / `seatres scheduler` processes
on a real Redis: an rq worker SIGKILLed in the middle of a sweep, and two schedulers at once
(one of them SIGKILLed later). Afterwards every due hold is expired exactly once (one
`expire` entry in its event's log stream, EXPIRED, its seats free), nothing else changed,
and the counters, the customers' counts and the sweep index add up.

tests/test_sweep.py covers the same in-process (a claim left behind, two sweeps at once),
and tests/test_jobs_integration.py one hold through the API with two schedulers, and the
job enqueued twice for two workers."""

import asyncio
import os
import signal
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result

from seatres.clock import redis_time_ms
from seatres.domain import ids
from seatres.domain.models import Caller
from seatres.domain.states import Transition
from seatres.embedded import RedisServer
from seatres.jobs.runner import EXPIRE_JOB_ID, ExpiryScheduler, register_cron
from seatres.jobs.sweep import sweep
from seatres.store import keys
from seatres.store.redis_store import SWEEP_LEASE_MS, RedisStore
from tests.processes import seatres_env, seatres_process, wait_for
from tests.test_jobs_integration import SCHEDULED, wait_for_two_schedulers_with_one_job

QUEUE = "seatres-faults"
DUE_HOLD_MS = 1  # due as soon as it is made
LATER_HOLD_MS = 600_000  # not due during the test
CUSTOMERS = 40  # due holds are spread over this many customers per event


# Holds


@dataclass
class EventPlan:
    """What the test made in one event, and what must become of it."""

    event_id: str
    due: dict[str, list[str]] = field(default_factory=dict)  # rid -> seats, due at once
    later: str = ""  # a RESERVED hold that is not due: the sweep leaves it
    booked: str = ""  # a CONFIRMED reservation: the sweep leaves it
    untouched: dict[str, str] = field(default_factory=dict)  # rid -> stored JSON


async def _make(url: str, event_ids: list[str], per_event: int) -> list[EventPlan]:
    """per_event one-seat holds that are due at once, one three-seat one, plus a hold that
    is not due and a confirmed reservation, in each event, made the way the API makes them
    (RedisStore.reserve: the reserve script, then the sweep index)."""
    client = AsyncRedis.from_url(url, decode_responses=True)
    store = RedisStore(client)
    plans = []
    try:
        for event_id in event_ids:
            plan = EventPlan(event_id)
            seats = [f"S{i:04d}" for i in range(per_event + 6)]  # the last one stays free
            await store.upsert_event(event_id, "Faults", seats)
            wanted = [([seat], f"c{i % CUSTOMERS:02d}") for i, seat in enumerate(seats[:per_event])]
            wanted.append((seats[per_event : per_event + 3], "c-multi"))
            for start in range(0, len(wanted), 50):  # concurrently, within the connection pool
                chunk = wanted[start : start + 50]
                made = await asyncio.gather(
                    *(
                        store.reserve(
                            event_id, ids.new_reservation_id(event_id), who, s, DUE_HOLD_MS
                        )
                        for s, who in chunk
                    )
                )
                for outcome, (s, _who) in zip(made, chunk, strict=True):
                    plan.due[outcome.reservation.id] = s
            plan.later = ids.new_reservation_id(event_id)
            await store.reserve(event_id, plan.later, "c-later", [seats[-3]], LATER_HOLD_MS)
            plan.booked = ids.new_reservation_id(event_id)
            await store.reserve(event_id, plan.booked, "c-booked", [seats[-2]], LATER_HOLD_MS)
            await store.transition(event_id, plan.booked, Transition.CONFIRM, Caller("c-booked"))
            plans.append(plan)
    finally:
        await client.aclose()
    return plans


def make_holds(
    sync: redis.Redis, url: str, event_ids: list[str], per_event: int
) -> list[EventPlan]:
    plans = asyncio.run(_make(url, event_ids, per_event))
    for plan in plans:
        stored = sync.hgetall(keys.event_keys(plan.event_id).reservations)
        plan.untouched = {rid: stored[rid] for rid in (plan.later, plan.booked)}
    time.sleep(0.01)  # every 1 ms hold is due now
    return plans


# What Redis must show


def _reservations(sync: redis.Redis, event_id: str) -> dict[str, dict[str, Any]]:
    raw = sync.hgetall(keys.event_keys(event_id).reservations)
    return {rid: orjson.loads(value) for rid, value in raw.items()}


def _expire_log(sync: redis.Redis, event_id: str) -> Counter[str]:
    """Reservation id -> how many times the event's log stream says it expired."""
    entries = sync.xrange(keys.event_keys(event_id).log)
    return Counter(f["reservation"] for _, f in entries if f["action"] == "expire")


def _now_ms(sync: redis.Redis) -> int:
    return redis_time_ms(sync.time())


def assert_consistent(sync: redis.Redis, plans: list[EventPlan]) -> int:
    """What holds at any moment, even right after a sweep died: no hold expired twice,
    and the holds set, seat claims, counters and customers' counts agree with the
    reservations. Returns how many of the due holds are expired so far."""
    expired_total = 0
    for plan in plans:
        k = keys.event_keys(plan.event_id)
        stored = _reservations(sync, plan.event_id)
        log = _expire_log(sync, plan.event_id)
        assert all(n == 1 for n in log.values()), f"expired twice: {log.most_common(3)}"
        assert set(log) <= set(plan.due), set(log) - set(plan.due)
        expired = {rid for rid, r in stored.items() if r["state"] == "EXPIRED"}
        assert expired == set(log)  # expired <=> logged once
        for rid in expired:
            last = stored[rid]["history"][-1]
            assert (last["action"], last["from"], last["to"], last["by"]) == (
                "expire",
                "RESERVED",
                "EXPIRED",
                "system",
            )
        reserved = {rid for rid, r in stored.items() if r["state"] == "RESERVED"}
        active = reserved | {rid for rid, r in stored.items() if r["state"] == "CONFIRMED"}
        assert set(sync.zrange(k.holds, 0, -1)) == reserved
        claims = sync.hgetall(k.claims)
        assert claims == {seat: rid for rid in active for seat in stored[rid]["seatIds"]}
        held, booked = sync.hmget(k.meta, "held", "booked")
        assert int(held or 0) == sum(len(stored[rid]["seatIds"]) for rid in reserved)
        assert int(booked or 0) == 1
        customers: Counter[str] = Counter()
        for rid in active:
            customers[stored[rid]["customerId"]] += len(stored[rid]["seatIds"])
        assert {c: int(n) for c, n in sync.hgetall(k.customers).items()} == dict(customers)
        for rid, raw in plan.untouched.items():
            assert sync.hget(k.reservations, rid) == raw, "a bystander changed"
        expired_total += len(expired)
    return expired_total


def assert_all_expired_once(sync: redis.Redis, plans: list[EventPlan]) -> None:
    """The end state: every due hold expired exactly once, the bystanders as they were,
    no RESERVED hold past its time, and the sweep index holds only the hold still to come."""
    assert assert_consistent(sync, plans) == sum(len(p.due) for p in plans)
    now_ms = _now_ms(sync)
    due_index = dict(sync.zrange(keys.SWEEP_DUE, 0, -1, withscores=True))
    for plan in plans:
        assert _expire_log(sync, plan.event_id) == Counter(dict.fromkeys(plan.due, 1))
        stored = _reservations(sync, plan.event_id)
        assert all(r["expiresAt"] > now_ms for r in stored.values() if r["state"] == "RESERVED"), (
            "a hold is still RESERVED past its time"
        )
        k = keys.event_keys(plan.event_id)
        assert sync.zrange(k.holds, 0, -1) == [plan.later]
        assert sync.hmget(k.meta, "held", "booked") == ["1", "1"]
        assert due_index.pop(plan.event_id) == stored[plan.later]["expiresAt"]
    assert due_index == {}
    assert sync.zcard(keys.SWEEP_CLAIMED) == 0


def due_left(sync: redis.Redis, plans: list[EventPlan]) -> int:
    """Due holds not expired yet (each event's holds set less its one later hold)."""
    with sync.pipeline(transaction=False) as pipe:
        for plan in plans:
            pipe.zcard(keys.event_keys(plan.event_id).holds)
        return sum(int(n) - 1 for n in pipe.execute())


# Processes


def _env(redis_server: RedisServer, **settings: str) -> dict[str, str]:
    return seatres_env(
        redis_server.url, queue_name=QUEUE, scheduler_interval_seconds="1", **settings
    )


def enqueue_sweep(jobs: redis.Redis) -> Job:
    """The cron job as `seatres scheduler` registers it, put in the queue now."""
    job = register_cron(ExpiryScheduler(queue_name=QUEUE, connection=jobs, interval=1), QUEUE)
    Queue(QUEUE, connection=jobs).enqueue_job(job)
    return job


def _results(jobs: redis.Redis) -> list[Result]:
    if not jobs.exists(Job.key_for(EXPIRE_JOB_ID)):
        return []
    return Job.fetch(EXPIRE_JOB_ID, connection=jobs).results()


def _successes(jobs: redis.Redis) -> list[dict[str, Any]]:
    return [r.return_value for r in _results(jobs) if r.type == Result.Type.SUCCESSFUL]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _no_traceback(*logs: Path) -> None:
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# A worker killed in the middle of a sweep


EVENTS = [f"kill{e}" for e in range(6)]
PER_EVENT = 1000  # 6,000 due holds, one expire call each: a sweep of a few seconds


def _kill_mid_sweep(
    redis_server: RedisServer,
    store: redis.Redis,
    jobs: redis.Redis,
    tmp_path: Path,
    victims: str,
) -> tuple[list[EventPlan], int]:
    """Starts a worker on the sweep job (batch size 1, so each hold is one Redis call),
    and SIGKILLs, by PID, the work horse running the sweep (`victims="horse"`) or the
    horse and the worker itself (`"worker"`: the machine died) once a fifth of the due
    holds are expired. Returns the plans and the dead run's lease end (ms)."""
    plans = make_holds(store, redis_server.url, EVENTS, PER_EVENT)
    total = sum(len(p.due) for p in plans)
    assert due_left(store, plans) == total
    enqueue_sweep(jobs)
    log = tmp_path / "worker-killed.log"
    env = _env(redis_server, sweep_batch_size="1")
    with seatres_process(["worker", "--burst"], env, log) as worker:
        horses: list[psutil.Process] = []

        def sweeping() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            horses[:] = psutil.Process(worker.pid).children()
            return bool(horses) and due_left(store, plans) <= total * 4 // 5

        wait_for("the sweep to be under way", sweeping, 60, [log], interval=0.01)
        assert len(horses) == 1, horses  # rq forks one work horse per job
        horse = horses[0].pid
        os.kill(horse, signal.SIGKILL)
        if victims == "worker":
            os.kill(worker.pid, signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
        else:
            # The worker outlives its horse: it fails the job the rq way, and (burst) exits.
            assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
            assert "Work-horse terminated unexpectedly" in log.read_text()
            assert Job.fetch(EXPIRE_JOB_ID, connection=jobs).get_status() == JobStatus.FAILED
        wait_for("the horse to be gone", lambda: _gone(horse), 10, [log])

    # Mid-way indeed: some holds expired, some not, each at most once, all consistent.
    left = due_left(store, plans)
    assert 0 < left < total, (left, total)
    assert assert_consistent(store, plans) == total - left
    # The dead run gave back the events it finished; it still owns the others (one claim
    # call took them all), the one it was working on among them.
    claimed = dict(store.zrange(keys.SWEEP_CLAIMED, 0, -1, withscores=True))
    unfinished = [p.event_id for p in plans if store.zcard(keys.event_keys(p.event_id).holds) > 1]
    assert sorted(claimed) == unfinished and claimed
    (lease_until,) = set(claimed.values())
    assert lease_until - _now_ms(store) > SWEEP_LEASE_MS - 60_000
    return plans, int(lease_until)


def _sweep_in_process(url: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            return (await sweep(RedisStore(client), 100)).expired
        finally:
            await client.aclose()

    return asyncio.run(run())


def _during_the_lease(
    redis_server: RedisServer, store: redis.Redis, plans: list[EventPlan]
) -> None:
    """While the dead run's lease lasts another sweep leaves its events alone, except one
    that gets a new hold: that event is due again, so the sweep takes it and expires all
    its due holds, the dead run's leftovers with the new one, each once."""
    assert _sweep_in_process(redis_server.url) == {}
    claimed = store.zrange(keys.SWEEP_CLAIMED, 0, -1)
    fresh = next(p for p in plans if p.event_id in claimed)
    seat = f"S{PER_EVENT + 5:04d}"  # the free seat of that event
    more = make_holds_in(store, redis_server.url, fresh, [seat])
    left_before = store.zcard(keys.event_keys(fresh.event_id).holds) - 1
    assert _sweep_in_process(redis_server.url) == {fresh.event_id: left_before}
    assert store.zcard(keys.event_keys(fresh.event_id).holds) == 1
    assert more in _expire_log(store, fresh.event_id)
    assert_consistent(store, plans)
    assert store.zrange(keys.SWEEP_CLAIMED, 0, -1) == [e for e in claimed if e != fresh.event_id]


def make_holds_in(sync: redis.Redis, url: str, plan: EventPlan, seats: list[str]) -> str:
    """One more due hold in an existing event; added to its plan."""

    async def run() -> str:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            rid = ids.new_reservation_id(plan.event_id)
            await RedisStore(client).reserve(plan.event_id, rid, "c-late", seats, DUE_HOLD_MS)
            return rid
        finally:
            await client.aclose()

    rid = asyncio.run(run())
    plan.due[rid] = seats
    time.sleep(0.01)
    return rid


def _next_worker_finishes_the_job(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> dict[str, Any]:
    """A new worker runs the job (as the next cron run would): it takes over every event
    of the dead run and expires the rest."""
    before = len(_successes(jobs))
    enqueue_sweep(jobs)
    log = tmp_path / "worker-next.log"
    with seatres_process(["worker", "--burst"], _env(redis_server), log) as worker:
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
    _no_traceback(log)
    results = _successes(jobs)
    assert len(results) == before + 1, [r.type for r in _results(jobs)]
    result = results[-1]
    assert result["finished"] is True and result["failed"] == []
    return result


@pytest.mark.parametrize("victims", ["horse", "worker"])
def test_worker_killed_mid_sweep_every_due_hold_expires_once(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path, victims: str
) -> None:
    plans, _lease_until = _kill_mid_sweep(redis_server, store, jobs, tmp_path, victims)
    _during_the_lease(redis_server, store, plans)
    left = due_left(store, plans)
    assert left > 0

    # The lease runs out. claim_due_events compares each claim's lease end with Redis's
    # clock, so moving the ends into the past is what the next 90 s would do.
    claimed = store.zrange(keys.SWEEP_CLAIMED, 0, -1)
    store.zadd(keys.SWEEP_CLAIMED, dict.fromkeys(claimed, _now_ms(store) - 1), xx=True)

    result = _next_worker_finishes_the_job(redis_server, store, jobs, tmp_path)
    assert result["expired"] == left
    assert set(result["events"]) == set(claimed)
    assert_all_expired_once(store, plans)


@pytest.mark.slow
def test_worker_killed_mid_sweep_events_are_taken_over_when_the_real_lease_ends(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> None:
    """The same without moving the clock: a sweep run before the lease (90 s) has passed
    finds nothing to take, the first one after it finishes the dead run's work."""
    plans, lease_until = _kill_mid_sweep(redis_server, store, jobs, tmp_path, "worker")
    left = due_left(store, plans)

    while _now_ms(store) < lease_until - 5_000:
        time.sleep(1)
    assert _sweep_in_process(redis_server.url) == {}  # 5 s before: still the dead run's
    assert due_left(store, plans) == left
    while _now_ms(store) <= lease_until:
        time.sleep(0.2)

    result = _next_worker_finishes_the_job(redis_server, store, jobs, tmp_path)
    assert result["expired"] == left
    assert_all_expired_once(store, plans)


# Two schedulers at once


@pytest.mark.slow
def test_two_schedulers_and_a_worker_expire_every_due_hold_once_even_after_one_is_killed(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> None:
    """Two `seatres scheduler` and one `seatres worker`: the cron run expires every due
    hold once. Then one scheduler is SIGKILLed (no goodbye: its lock and registration
    simply lapse), new holds fall due, and the next cron run still expires each once."""
    env = _env(redis_server, sweep_batch_size="50")
    logs = [tmp_path / n for n in ("scheduler-1.log", "scheduler-2.log", "worker.log")]
    first = make_holds(store, redis_server.url, ["two0", "two1", "two2"], 300)
    with ExitStack() as stack:
        schedulers = [
            stack.enter_context(seatres_process(["scheduler"], env, log)) for log in logs[:2]
        ]
        stack.enter_context(seatres_process(["worker"], env, logs[2]))
        wait_for_two_schedulers_with_one_job(jobs, logs)

        # The next minute's run (the cron job runs on the minute).
        wait_for("the cron run", lambda: due_left(store, first) == 0, 90, logs)
        wait_for("its result", lambda: len(_successes(jobs)) >= 1, 30, logs)
        assert_all_expired_once(store, first)
        assert sum(r["expired"] for r in _successes(jobs)) == sum(len(p.due) for p in first)

        victim = schedulers[0]
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        second = make_holds(store, redis_server.url, ["two3", "two4"], 300)
        runs = len(_successes(jobs))
        wait_for("the next cron run", lambda: due_left(store, second) == 0, 90, logs)
        wait_for("its result", lambda: len(_successes(jobs)) > runs, 30, logs)
        assert schedulers[1].poll() is None
        assert [m.decode() for m in jobs.zrange(SCHEDULED, 0, -1)] == [EXPIRE_JOB_ID]
    assert_all_expired_once(store, first + second)
    expired = sum(r["expired"] for r in _successes(jobs))
    assert expired == sum(len(p.due) for p in first + second)
    _no_traceback(logs[1], logs[2])

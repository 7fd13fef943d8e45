"""The expiry job end to end: real Redis, real `seatres serve`, `seatres worker` and
`seatres scheduler` processes. A hold made through the API is expired in Redis by the
every-minute cron job (not lazily), the job's result is in rq's registries, two schedulers
register one cron job, and the job enqueued twice expires each hold once."""

import asyncio
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.results import Result

from seatres.embedded import RedisServer
from seatres.jobs.runner import (
    EXPIRE_CRON,
    EXPIRE_JOB_ID,
    ExpiryScheduler,
    ExpiryWorker,
    register_cron,
)
from seatres.store import keys
from seatres.store.redis_store import RedisStore
from tests.conftest import ADMIN, ALICE
from tests.processes import api_server, seatres_env, seatres_process, wait_for

pytestmark = pytest.mark.slow

QUEUE = "seatres-it"
SCHEDULED = "rq:scheduler:scheduled_jobs"
# The cron job runs on the minute: a hold made just before one is expired a minute later.
EXPIRY_TIMEOUT = 150


def _env(redis_server: RedisServer) -> dict[str, str]:
    return seatres_env(redis_server.url, queue_name=QUEUE, scheduler_interval_seconds="1")


def _stored(store: redis.Redis, event_id: str, rid: str) -> dict[str, Any]:
    raw = store.hget(keys.event_keys(event_id).reservations, rid)
    assert isinstance(raw, str)
    data: dict[str, Any] = orjson.loads(raw)
    return data


def _expire_log(store: redis.Redis, event_id: str) -> Counter[str]:
    entries = store.xrange(keys.event_keys(event_id).log)
    return Counter(f["reservation"] for _, f in entries if f["action"] == "expire")


def _results(jobs: redis.Redis) -> list[Result]:
    if not jobs.exists(Job.key_for(EXPIRE_JOB_ID)):
        return []
    return Job.fetch(EXPIRE_JOB_ID, connection=jobs).results()


def wait_for_two_schedulers_with_one_job(jobs: redis.Redis, logs: list[Path]) -> None:
    """Two rq-schedulers are running, and the expiry job is registered once."""
    wait_for(
        "two running schedulers",
        lambda: len(jobs.keys("rq:scheduler_instance:*")) == 2,
        30,
        logs,
    )
    assert [m.decode() for m in jobs.zrange(SCHEDULED, 0, -1)] == [EXPIRE_JOB_ID]


def test_cron_job_expires_a_hold_made_through_the_api(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> None:
    env = _env(redis_server)
    logs = [tmp_path / n for n in ("api.log", "worker.log", "scheduler-1.log", "scheduler-2.log")]
    with ExitStack() as stack:
        base = stack.enter_context(
            api_server(redis_server.url, logs[0], queue_name=QUEUE, hold_seconds="2")
        )
        for args, log in zip([["worker"], ["scheduler"], ["scheduler"]], logs[1:], strict=True):
            stack.enter_context(seatres_process(args, env, log))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=10))

        put = http.put(
            "/events/night", json={"name": "Night", "seats": ["A1", "A2"]}, headers=ADMIN
        )
        assert put.status_code == 201, put.text
        made = http.post("/reservations", json={"eventId": "night", "seatId": "A1"}, headers=ALICE)
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        assert _stored(store, "night", rid)["state"] == "RESERVED"

        # Only the job writes: nothing here touches the reservation again until it is done.
        holds = keys.event_keys("night").holds
        wait_for(
            "the job to expire the hold",
            lambda: _stored(store, "night", rid)["state"] == "EXPIRED",
            EXPIRY_TIMEOUT,
            logs,
        )

        stored = _stored(store, "night", rid)
        assert stored["history"][-1]["action"] == "expire"
        assert stored["history"][-1]["by"] == "system"
        assert store.zcard(holds) == 0
        assert store.hlen(keys.event_keys("night").claims) == 0
        assert store.hget(keys.event_keys("night").meta, "held") == "0"
        assert _expire_log(store, "night") == Counter({rid: 1})
        assert store.zscore(keys.SWEEP_DUE, "night") is None
        assert store.zcard(keys.SWEEP_CLAIMED) == 0

        # ...by the job: one of its results says so, and rq shows it finished.
        wait_for("the job's result", lambda: len(_results(jobs)) > 0, 30, logs)
        returned = [r.return_value for r in _results(jobs) if r.type == Result.Type.SUCCESSFUL]
        assert any(v["events"].get("night") == 1 for v in returned), returned
        assert sum(v["events"].get("night", 0) for v in returned) == 1
        assert EXPIRE_JOB_ID in FinishedJobRegistry(QUEUE, connection=jobs).get_job_ids()
        job = Job.fetch(EXPIRE_JOB_ID, connection=jobs)
        assert 0 < jobs.ttl(job.key) <= 86_400  # results are kept a day
        assert job.failure_ttl == 7 * 86_400

        # The API agrees, and the seat is free for someone else.
        shown = http.get(f"/reservations/{rid}", headers=ALICE)
        assert shown.json()["state"] == "EXPIRED"
        seats = http.get("/events/night/seats", headers=ALICE).json()
        assert seats["seats"] == [
            {"seatId": "A1", "status": "free"},
            {"seatId": "A2", "status": "free"},
        ]
        # Two schedulers ran all along: still one registration.
        assert [m.decode() for m in jobs.zrange(SCHEDULED, 0, -1)] == [EXPIRE_JOB_ID]
    for log in logs[1:]:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_two_schedulers_register_one_cron_job(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> None:
    env = _env(redis_server)
    logs = [tmp_path / f"scheduler-{i}.log" for i in range(3)]
    with seatres_process(["scheduler"], env, logs[0]):
        wait_for("a registration", lambda: jobs.zcard(SCHEDULED) == 1, 30, logs)
        first_due = jobs.zscore(SCHEDULED, EXPIRE_JOB_ID)
        with seatres_process(["scheduler"], env, logs[1]):
            wait_for_two_schedulers_with_one_job(jobs, logs)
            job = Job.fetch(EXPIRE_JOB_ID, connection=jobs)
            assert job.meta["cron_string"] == EXPIRE_CRON
            assert job.origin == QUEUE
            assert job.func_name == "seatres.jobs.sweep.expire_due_holds"
            assert abs((jobs.zscore(SCHEDULED, EXPIRE_JOB_ID) or 0) - (first_due or 0)) <= 60
    # A scheduler started again (a restart) replaces the registration too.
    with seatres_process(["scheduler", "--burst"], env, logs[2]) as proc:
        assert proc.wait(timeout=30) == 0, logs[2].read_text()
    assert [m.decode() for m in jobs.zrange(SCHEDULED, 0, -1)] == [EXPIRE_JOB_ID]
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_scheduler_puts_back_a_cron_job_that_went_missing(
    redis_server: RedisServer, jobs: redis.Redis, tmp_path: Path
) -> None:
    jobs.flushall()
    scheduler = ExpiryScheduler(queue_name=QUEUE, connection=jobs, interval=1)
    register_cron(scheduler, QUEUE)
    jobs.delete(Job.key_for(EXPIRE_JOB_ID))  # its hash expired: rq-scheduler would drop it
    scheduler.enqueue_jobs()
    assert [m.decode() for m in jobs.zrange(SCHEDULED, 0, -1)] == [EXPIRE_JOB_ID]
    assert Job.fetch(EXPIRE_JOB_ID, connection=jobs).meta["cron_string"] == EXPIRE_CRON


def test_jobs_redis_and_reservations_redis_can_differ(
    redis_server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    async def hold() -> None:
        client = AsyncRedis.from_url(redis_server.url, decode_responses=True)
        try:
            s = RedisStore(client)
            await s.upsert_event("split", "Split", ["A1"])
            await s.reserve("split", "split-r1", "alice", ["A1"], hold_ms=1)
        finally:
            await client.aclose()

    asyncio.run(hold())
    jobs_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    with redis.Redis.from_url(jobs_url) as jobs_db:
        jobs_db.flushdb()
        job = register_cron(
            ExpiryScheduler(queue_name=QUEUE, connection=jobs_db, interval=1), QUEUE
        )
        Queue(QUEUE, connection=jobs_db).enqueue_job(job)
        env = _env(redis_server) | {"SEATRES_JOBS_REDIS_URL": jobs_url}
        with seatres_process(["worker", "--burst"], env, tmp_path / "worker.log") as proc:
            assert proc.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        result = Job.fetch(EXPIRE_JOB_ID, connection=jobs_db).latest_result()
        jobs_db.flushdb()
    assert result is not None and result.return_value["events"] == {"split": 1}
    assert _stored(store, "split", "split-r1")["state"] == "EXPIRED"
    assert store.keys("rq:*") == []  # rq kept to its own database


def test_job_enqueued_twice_and_run_by_two_workers_expires_each_hold_once(
    redis_server: RedisServer, store: redis.Redis, jobs: redis.Redis, tmp_path: Path
) -> None:
    events, per_event = 4, 150

    async def holds() -> None:
        client = AsyncRedis.from_url(redis_server.url, decode_responses=True)
        s = RedisStore(client)
        try:
            for e in range(events):
                seats = [f"S{i:03d}" for i in range(per_event)]
                await s.upsert_event(f"ev{e}", "Twice", seats)
                for seat in seats:
                    await s.reserve(f"ev{e}", f"ev{e}-{seat}", f"c{seat}", [seat], hold_ms=1)
        finally:
            await client.aclose()

    asyncio.run(holds())
    time.sleep(0.05)
    # What rq-scheduler does when it enqueues the cron job twice: its id, twice in the queue.
    job = register_cron(ExpiryScheduler(queue_name=QUEUE, connection=jobs, interval=1), QUEUE)
    queue = Queue(QUEUE, connection=jobs)
    queue.enqueue_job(job)
    queue.enqueue_job(job)
    assert [m.decode() for m in jobs.lrange(queue.key, 0, -1)] == [EXPIRE_JOB_ID] * 2

    env = _env(redis_server)
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with ExitStack() as stack:
        procs = [stack.enter_context(seatres_process(["worker", "--burst"], env, p)) for p in logs]
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]

    results = [r for r in _results(jobs) if r.type == Result.Type.SUCCESSFUL]
    assert len(results) == 2, [r.type for r in _results(jobs)]
    assert sum(r.return_value["expired"] for r in results) == events * per_event
    for e in range(events):
        event_id = f"ev{e}"
        assert store.zcard(keys.event_keys(event_id).holds) == 0
        assert store.hlen(keys.event_keys(event_id).claims) == 0
        expired = _expire_log(store, event_id)
        assert len(expired) == per_event and set(expired.values()) == {1}
    assert store.zcard(keys.SWEEP_DUE) == 0 and store.zcard(keys.SWEEP_CLAIMED) == 0


@pytest.mark.parametrize(
    "worker_class",
    [
        ExpiryWorker,
        pytest.param(Worker, marks=pytest.mark.xfail(strict=True, reason="rq's 60 s wait")),
    ],
)
def test_a_worker_stops_listening_for_commands_at_once(
    jobs: redis.Redis, worker_class: type[Worker]
) -> None:
    """The teardown of a worker (after --burst, on SIGTERM) ends its command-channel
    thread, and redis-py waits for the thread: one that had already read the UNSUBSCRIBE
    reply and gone back to waiting for a message held the worker for that whole wait
    (rq's own Worker: 60 s). Here that order is forced: UNSUBSCRIBE, a pause for the
    thread to read its reply, then the stop."""
    worker = worker_class([Queue(QUEUE, connection=jobs)], connection=jobs)
    worker.subscribe()
    thread = worker.pubsub_thread
    assert thread is not None
    try:
        worker.pubsub.unsubscribe()
        time.sleep(0.5)
        thread.stop(timeout=10)
        assert not thread.is_alive()
    finally:
        thread.stop(timeout=0)
        worker.pubsub.close()

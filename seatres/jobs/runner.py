"""`seatres worker` and `seatres scheduler`: rq and rq-scheduler wired to the expiry job.

Both use the jobs' Redis (SEATRES_JOBS_REDIS_URL, by default SEATRES_REDIS_URL); the job
itself sweeps the reservations' Redis (SEATRES_REDIS_URL). rq and rq-scheduler do not
support Redis Cluster: with a cluster for the reservations, the jobs get a plain Redis.
The cron job has a fixed id, so registering it again (a restart, a second scheduler)
replaces it instead of adding one."""

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq_scheduler import Scheduler

from seatres import logs
from seatres.jobs.sweep import MAX_SWEEP_SECONDS, expire_due_holds
from seatres.settings import Settings

log = logging.getLogger("seatres.jobs")

EXPIRE_JOB_ID = "seatres-expire-due-holds"
EXPIRE_CRON = "* * * * *"
# A run stops itself after MAX_SWEEP_SECONDS; rq kills one stuck far longer than that.
JOB_TIMEOUT_SECONDS = int(MAX_SWEEP_SECONDS) * 4
RESULT_TTL_SECONDS = 86_400
FAILURE_TTL_SECONDS = 7 * 86_400
# How long the worker's command-channel thread waits for a message at a time (rq: 60 s).
PUBSUB_WAIT_SECONDS = 1.0


@contextmanager
def _quiet_crontab() -> Iterator[None]:
    """rq-scheduler calls crontab's next() the way crontab >= 0.22 warns about."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning
        )
        yield


def jobs_redis(settings: Settings) -> Redis:
    url = settings.effective_jobs_redis_url
    if url is None and settings.redis_cluster:
        sys.exit(
            "SEATRES_JOBS_REDIS_URL must be set: SEATRES_REDIS_URL is a Redis Cluster, and "
            "rq and rq-scheduler need a plain Redis of their own"
        )
    if url is None:
        sys.exit("SEATRES_REDIS_URL (or SEATRES_JOBS_REDIS_URL) must be set for rq")
    # rq stores pickled bytes: no decode_responses here. (The worker raises the socket
    # timeout itself to outlast its blocking dequeue.)
    return Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )


def register_cron(scheduler: Scheduler, queue_name: str) -> Job:
    """Registers the every-minute expiry job under its fixed id, replacing an earlier one."""
    with _quiet_crontab():
        job: Job = scheduler.cron(
            EXPIRE_CRON,
            func=expire_due_holds,
            id=EXPIRE_JOB_ID,
            queue_name=queue_name,
            result_ttl=RESULT_TTL_SECONDS,
            timeout=JOB_TIMEOUT_SECONDS,
            description="expire due holds (seatres sweep)",
        )
    job.failure_ttl = FAILURE_TTL_SECONDS
    job.save()
    return job


class ExpiryScheduler(Scheduler):  # type: ignore[misc]  # rq-scheduler has no type hints
    """rq-scheduler that puts the expiry job back if it went missing (its job hash
    expired while no worker ran for longer than the result TTL, or someone removed it)."""

    def enqueue_jobs(self) -> Any:
        if EXPIRE_JOB_ID not in self or not self.connection.exists(Job.key_for(EXPIRE_JOB_ID)):
            log.warning("the expiry job was not scheduled: registering it again")
            register_cron(self, self.queue_name)
        with _quiet_crontab():
            return super().enqueue_jobs()


class ExpiryWorker(Worker):
    """rq's Worker, whose command channel (rq's "stop this job", "shut down") is read in
    a thread that waits PUBSUB_WAIT_SECONDS for a message at a time rather than 60.
    redis-py 8.2's PubSubWorkerThread.stop() waits for that thread to end, and when the
    thread had read the UNSUBSCRIBE reply of the worker's teardown before stop() told it
    to end, it went back to a 60-second wait: a worker took up to a minute to exit after
    a --burst run or a SIGTERM (seen as a 60 s timeout in tests/test_jobs_integration.py)."""

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # rq: None
            sleep_time=PUBSUB_WAIT_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )


def run_worker(settings: Settings, burst: bool = False) -> None:
    logs.configure(settings.log_level)
    connection = jobs_redis(settings)
    queue = Queue(settings.queue_name, connection=connection)
    worker = ExpiryWorker([queue], connection=connection, default_result_ttl=RESULT_TTL_SECONDS)
    log.info("rq worker on queue %s", settings.queue_name)
    worker.work(burst=burst, logging_level=settings.log_level.upper())


def run_scheduler(settings: Settings, burst: bool = False) -> None:
    logs.configure(settings.log_level)
    connection = jobs_redis(settings)
    scheduler = ExpiryScheduler(
        queue_name=settings.queue_name,
        connection=connection,
        interval=settings.scheduler_interval_seconds,
    )
    register_cron(scheduler, settings.queue_name)
    log.info(
        "expiry job %s registered (%s) on queue %s; polling every %d s",
        EXPIRE_JOB_ID,
        EXPIRE_CRON,
        settings.queue_name,
        settings.scheduler_interval_seconds,
    )
    scheduler.run(burst=burst)

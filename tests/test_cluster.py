"""seatres on a Redis Cluster, besides the contract tests (which run on the cluster through
the `backend` fixture): the URL convention, one slot per script call, the expiry sweep,
rq / rq-scheduler on a plain Redis of their own, and every CLI command, against the
session's local 3-master cluster (tests/cluster.py), with events on every master."""

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import redis
import redis.cluster
from pydantic import ValidationError
from redis.crc import key_slot
from rq import Queue
from rq.job import Job
from starlette.testclient import TestClient

from seatres import inspection
from seatres.domain.ids import new_reservation_id
from seatres.embedded import free_port
from seatres.embedded_cluster import LocalCluster
from seatres.http.app import create_app
from seatres.jobs.runner import EXPIRE_JOB_ID, ExpiryScheduler, register_cron
from seatres.jobs.sweep import _sweep_redis
from seatres.settings import Settings, describe, parse_cluster_url
from seatres.store import cluster_pipes, keys, scripts
from seatres.store.batching import PIPE_BATCH, TickBatcher
from seatres.store.cluster_pipes import ClusterPipes
from seatres.store.connection import connect, connect_sync
from seatres.store.redis_store import RedisStore
from seatres.store.resp import RespPipe
from tests.cluster import (
    events_on_every_master,
    flush,
    masters_by_port,
    port_of_event,
    sync_client,
)
from tests.conftest import ADMIN, ALICE, SECRET, count_pipelines, make_settings, put_event
from tests.processes import alive, child_pids, seatres_env, seatres_process

pytestmark = pytest.mark.cluster

QUEUE = "seatres-cluster"


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> Iterator[LocalCluster]:
    flush(redis_cluster)
    yield redis_cluster
    flush(redis_cluster)


@pytest.fixture
def store(cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = sync_client(cluster)
    yield client
    client.close()


# The URL convention


def test_cluster_urls_name_every_seed() -> None:
    parsed = parse_cluster_url("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]/0")
    assert parsed.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 6379))
    assert parsed.node_url == "redis://app:s3cret@10.0.0.1:7000/0"
    tls = parse_cluster_url("rediss+cluster://h1:7000,h2:7000?ssl_cert_reqs=none")
    assert tls.node_url == "rediss://h1:7000/0?ssl_cert_reqs=none"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "at least one cluster node"),
        ("redis+cluster://h1:7000,h2:99999", "bad port"),
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("memcached://h1:11211", "must start with one of"),
    ],
)
def test_bad_cluster_urls_stop_the_service_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        make_settings(redis_url=url)
    text = describe(error.value)
    assert "SEATRES_REDIS_URL" in text and message in text, text


def test_cluster_urls_are_printed_without_their_password() -> None:
    assert (
        inspection.redact("redis+cluster://app:s3cret@h1:7000,h2:7001/0")
        == "redis+cluster://app:***@h1:7000,h2:7001/0"
    )
    assert inspection.redact("redis+cluster://h1:7000,h2:7001") == "redis+cluster://h1:7000,h2:7001"


def test_jobs_need_a_plain_redis_of_their_own() -> None:
    cluster = make_settings(redis_url="redis+cluster://h1:7000,h2:7000")
    assert cluster.redis_cluster
    assert cluster.effective_jobs_redis_url is None  # never the cluster
    split = make_settings(redis_url="redis+cluster://h1:7000", jobs_redis_url="redis://j:6379/0")
    assert split.effective_jobs_redis_url == "redis://j:6379/0"
    with pytest.raises(ValidationError) as error:
        make_settings(jobs_redis_url="redis+cluster://h1:7000")
    assert "SEATRES_JOBS_REDIS_URL" in describe(error.value)
    assert "do not support Redis Cluster" in describe(error.value)
    plain = make_settings(redis_url="redis://r:6379/0")
    assert not plain.redis_cluster and plain.effective_jobs_redis_url == "redis://r:6379/0"


# One slot per script call


def test_every_script_call_touches_one_slot() -> None:
    """The keys RedisStore hands each script share one hash slot: an event's keys (with
    any idempotency record) with each other, the sweep index's with each other."""
    for event_id in ("gala", "e1", "x" * 64, "A-b_9"):
        event_keys = [
            *keys.event_keys(event_id),
            keys.idempotency_key(event_id, "bob", "k"),
            keys.claim_key(event_id, "A1"),  # built by the scripts themselves
        ]
        assert len({key_slot(k.encode()) for k in event_keys}) == 1, event_id
    assert key_slot(keys.SWEEP_DUE.encode()) == key_slot(keys.SWEEP_CLAIMED.encode())
    # the stats record is a script of its own with one key
    own = resources.files("seatres.lua").joinpath("record_sweep.lua").read_text()
    assert "KEYS[1]" in own and "KEYS[2]" not in own
    assert "record_sweep" in scripts.SCRIPT_NAMES


def test_events_spread_over_every_master(cluster: LocalCluster) -> None:
    events = events_on_every_master(cluster, "spread")
    client = TestClient(
        create_app(make_settings(redis_url=cluster.url), redis_factory=connect),
        raise_server_exceptions=False,
    )
    with client:
        for event in events:
            put_event(client, event, ["A1", "A2"])
            assert (
                client.post(
                    "/reservations", json={"eventId": event, "seatId": "A1"}, headers=ALICE
                ).status_code
                == 201
            )
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    for port, event in zip(cluster.master_ports(), events, strict=True):
        with cluster.client(port) as node:
            assert node.exists(keys.event_keys(event).meta) == 1, (event, port)
        assert f'seatres_event_seats{{event="{event}",status="held"}} 1.0' in metrics


# The expiry sweep


def _due_holds(cluster: LocalCluster, events: list[str], per_event: int) -> dict[str, str]:
    """per_event one-seat holds of 1 ms in each event, made through RedisStore on the
    cluster. Returns reservation id -> event."""

    async def make() -> dict[str, str]:
        client = connect(make_settings(redis_url=cluster.url))
        s = RedisStore(client)
        made: dict[str, str] = {}
        try:
            for event in events:
                seats = [f"S{i:03d}" for i in range(per_event)]
                await s.upsert_event(event, event, seats)
                holds = [
                    s.reserve(event, f"{event}-{seat}", f"c-{seat}", [seat], hold_ms=1)
                    for seat in seats
                ]
                for outcome in await asyncio.gather(*holds):
                    made[outcome.reservation.id] = event
        finally:
            await client.aclose()
        return made

    made = asyncio.run(make())
    time.sleep(0.01)
    return made


def _state(store: redis.cluster.RedisCluster, event: str, rid: str) -> str:
    raw: Any = store.hget(keys.event_keys(event).reservations, rid)
    state: str = orjson.loads(raw)["state"]
    return state


def test_the_sweep_expires_due_holds_on_every_master(
    cluster: LocalCluster, store: redis.cluster.RedisCluster
) -> None:
    events = events_on_every_master(cluster, "sweep")
    made = _due_holds(cluster, events, per_event=120)
    settings = make_settings(redis_url=cluster.url, sweep_batch_size=50)
    report = asyncio.run(_sweep_redis(settings))
    assert report.expired == dict.fromkeys(events, 120) and not report.failed
    # O(due holds): three batches of 50 per event (the last one finds nothing left)
    assert report.batches == 3 * len(events)
    assert all(_state(store, event, rid) == "EXPIRED" for rid, event in made.items())
    assert store.zcard(keys.SWEEP_DUE) == store.zcard(keys.SWEEP_CLAIMED) == 0
    assert store.hget(keys.SWEEP_STATS, "lastExpired") == str(3 * 120)
    again = asyncio.run(_sweep_redis(settings))
    assert again.total == 0 and again.batches == 0


def test_worker_and_scheduler_keep_rq_on_the_jobs_redis(
    cluster: LocalCluster, store: redis.cluster.RedisCluster, jobs_url: str, tmp_path: Path
) -> None:
    events = events_on_every_master(cluster, "rq")
    made = _due_holds(cluster, events, per_event=5)
    env = seatres_env(cluster.url, queue_name=QUEUE, jobs_redis_url=jobs_url)
    # the scheduler registers the cron job in the jobs' Redis
    with seatres_process(["scheduler", "--burst"], env, tmp_path / "scheduler.log") as proc:
        assert proc.wait(timeout=60) == 0, (tmp_path / "scheduler.log").read_text()[-3000:]
    with redis.Redis.from_url(jobs_url) as jobs:
        assert jobs.zscore("rq:scheduler:scheduled_jobs", EXPIRE_JOB_ID) is not None
        job = register_cron(ExpiryScheduler(queue_name=QUEUE, connection=jobs), QUEUE)
        Queue(QUEUE, connection=jobs).enqueue_job(job)
        with seatres_process(["worker", "--burst"], env, tmp_path / "worker.log") as proc:
            assert proc.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        result = Job.fetch(EXPIRE_JOB_ID, connection=jobs).latest_result()
    assert result is not None
    assert result.return_value["events"] == dict.fromkeys(events, 5)
    assert all(_state(store, event, rid) == "EXPIRED" for rid, event in made.items())
    # nothing of rq's on the cluster
    assert not list(store.scan_iter(match="rq:*"))


def test_worker_without_a_jobs_redis_says_what_to_set(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    for command in (["worker", "--burst"], ["scheduler", "--burst"]):
        log = tmp_path / f"{command[0]}.log"
        with seatres_process(command, seatres_env(cluster.url), log) as proc:
            assert proc.wait(timeout=60) == 1
        assert "SEATRES_JOBS_REDIS_URL must be set" in log.read_text()


def test_dev_runs_api_worker_and_scheduler_against_the_cluster(
    cluster: LocalCluster, jobs_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = seatres_env(cluster.url, queue_name=QUEUE, jobs_redis_url=jobs_url)
    log = tmp_path / "dev.log"
    with seatres_process(["dev", "--port", str(port)], env, log) as proc:
        # the scheduler and the worker are two processes: either may register first
        deadline = time.monotonic() + 60
        registered, workers = False, set()
        while not (registered and workers):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"job registered: {registered}, rq workers: {workers}\n" + log.read_text()[-3000:]
            )
            time.sleep(0.2)
            with redis.Redis.from_url(jobs_url) as jobs:
                registered = jobs.zscore("rq:scheduler:scheduled_jobs", EXPIRE_JOB_ID) is not None
                workers = jobs.smembers("rq:workers")
        base = f"http://127.0.0.1:{port}"
        put = httpx.put(f"{base}/events/dev", json={"name": "D", "seats": ["A1"]}, headers=ADMIN)
        assert put.status_code == 201, put.text
        reserve = httpx.post(
            f"{base}/reservations",
            json={"eventId": "dev", "seatId": "A1"},
            headers=ALICE,
        )
        assert reserve.status_code == 201, reserve.text
        assert httpx.get(f"{base}/readyz").status_code == 200
        children = child_pids(proc.pid)
        assert len(children) >= 2, children  # the worker and the scheduler
    # stopped with SIGTERM, dev stops its worker and scheduler too
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, [p for p in children if alive(p)]
        time.sleep(0.2)


# The CLI


def _seatres(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seatres.cli", *args],
        env=seatres_env(cluster.url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_inspect_sees_every_master(cluster: LocalCluster) -> None:
    events = events_on_every_master(cluster, "cli")
    client = TestClient(create_app(make_settings(redis_url=cluster.url), redis_factory=connect))
    with client:
        rids = []
        for event in events:
            put_event(client, event, ["A1", "A2", "A3"])
            reserved = client.post(
                "/reservations", json={"eventId": event, "seatIds": ["A1", "A2"]}, headers=ALICE
            )
            assert reserved.status_code == 201, reserved.text
            rids.append(reserved.json()["id"])
        client.post(f"/reservations/{rids[0]}/confirm", headers=ADMIN)

    done = _seatres(cluster, "inspect", "keys", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["events"] == 3 and report["complete"] and report["problems"] == []
    patterns = {p["pattern"]: p for p in report["patterns"]}
    assert patterns[keys.event_keys("<eventId>").meta]["keys"] == 3
    assert patterns[keys.event_keys("<eventId>").reservations]["elements"] == 3
    # DBSIZE added up over the masters: at least the keys counted above
    assert report["dbSize"] >= sum(p["keys"] for p in report["patterns"])
    assert "redis+cluster://127.0.0.1:" in report["redisUrl"]

    for event, rid in zip(events, rids, strict=True):
        shown = _seatres(cluster, "inspect", "event", event, "--json")
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert data["problems"] == [] and data["sweep"]["indexed"]
        res = _seatres(cluster, "inspect", "reservation", rid, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["problems"] == []
    assert (
        json.loads(_seatres(cluster, "inspect", "event", events[0], "--json").stdout)["seats"][
            "booked"
        ]
        == 2
    )
    missing = _seatres(cluster, "inspect", "event", "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_token_and_an_unreachable_cluster(tmp_path: Path) -> None:
    url = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    env = seatres_env(url)
    token = subprocess.run(
        [sys.executable, "-m", "seatres.cli", "token", "--sub", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
    inspect = subprocess.run(
        [sys.executable, "-m", "seatres.cli", "inspect", "keys"],
        env=env | {"SEATRES_REDIS_TIMEOUT_SECONDS": "0.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 1 and "seatres inspect: Redis at" in inspect.stderr
    assert "Traceback" not in inspect.stderr
    # the API answers 503, not 500, while no node answers
    settings = make_settings(redis_url=url, redis_timeout_seconds=0.2)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 503
        reserve = c.post("/reservations", json={"eventId": "e", "seatId": "A1"}, headers=ALICE)
        assert reserve.status_code == 503, reserve.text


def test_secret_is_required_with_a_cluster_too() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, redis_url="redis+cluster://h:7000")  # type: ignore[call-arg]
    assert SECRET


def test_sync_and_async_clients_from_one_url(cluster: LocalCluster) -> None:
    sync = connect_sync(cluster.url, 5)
    assert isinstance(sync, redis.cluster.RedisCluster)
    assert {n.port for n in sync.get_primaries()} == set(cluster.master_ports())
    sync.close()
    assert port_of_event(cluster, "x") in cluster.master_ports()


# The batcher on a cluster


@pytest.fixture(params=["own connections", "cluster pipeline"])
def batcher_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which way the batcher's batches go: its own connection to each node, or redis-py's
    cluster pipeline, what it falls back to (forced here: no node has a connection)."""
    if request.param == "cluster pipeline":
        monkeypatch.setattr(ClusterPipes, "_pipe", lambda self, node: None)
    return str(request.param)


def _incr_in_one_tick(
    cluster: LocalCluster, names: list[str], writes: list[tuple[str, int]] | None = None
) -> tuple[list[Any], int]:
    """INCR of each key, all in one tick of a TickBatcher on a new cluster client, once a
    GET of each key has opened the batcher's connections: the replies, and how many
    redis-py cluster pipelines the client made for the tick (`writes`, the resp_writes
    fixture's list, is emptied before it)."""

    async def run() -> tuple[list[Any], int]:
        client = connect(make_settings(redis_url=cluster.url))
        batcher = TickBatcher(client)
        try:
            await asyncio.gather(*(batcher.execute("GET", name) for name in set(names)))
            if writes is not None:
                writes.clear()
            pipelines = count_pipelines(client)
            replies = await asyncio.gather(*(batcher.execute("INCR", n) for n in names))
            return replies, len(pipelines)
        finally:
            await batcher.aclose()
            await client.aclose()

    return asyncio.run(run())


def test_a_tick_of_calls_goes_to_each_node_as_its_batches_fill(
    cluster: LocalCluster, resp_writes: list[tuple[str, int]]
) -> None:
    """Each caller's command goes to the master of its key, on the batcher's own
    connection to it: once those are open, every PIPE_BATCH calls of a tick are written
    at once, one write per master they concern (as on one server), and no redis-py
    pipeline is made."""
    events = events_on_every_master(cluster, "tick")
    names = [keys.event_keys(events[i % 3]).meta + ":n" for i in range(300)]
    replies, pipelines = _incr_in_one_tick(cluster, names, resp_writes)
    assert sorted(replies) == sorted(list(range(1, 101)) * 3)
    expected = []
    for first in range(0, 300, PIPE_BATCH):
        callers = range(first, min(first + PIPE_BATCH, 300))
        by_master = Counter(i % 3 for i in callers)  # (in the order of their first caller)
        expected += [("now", n) for n in by_master.values()]
    assert (resp_writes, pipelines) == (expected, 0)


def test_a_call_sent_to_the_wrong_node_goes_again_through_the_cluster_pipeline(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master that does not hold the slot answers MOVED (the batcher's slot map is out
    of date) to calls written at once: they go again through redis-py's cluster
    pipeline, which follows the redirection. Each call runs once, on the right master."""
    event = events_on_every_master(cluster, "moved")[0]
    key = keys.event_keys(event).meta + ":n"
    home = port_of_event(cluster, event)

    def elsewhere(client: Any, commands: Any) -> Any:
        # (None before the client has learnt the slot map, as node_of answers then)
        return next((n for n in client.get_primaries() if int(n.port) != home), None)

    monkeypatch.setattr(cluster_pipes, "node_of", elsewhere)
    replies, pipelines = _incr_in_one_tick(cluster, [key] * 20)
    assert sorted(replies) == list(range(1, 21))
    assert pipelines == -(-20 // PIPE_BATCH)  # one for each batch of the tick
    with cluster.client(home) as node:
        assert node.get(key) == "20"


def test_a_node_that_cannot_be_reached_is_served_through_the_cluster_pipeline(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher's own connection to a master fails (here: it dials a closed port):
    its calls go through redis-py's cluster pipeline, whose retry policy decides; as no
    batch of the tick could be written at once, the tick's calls go together, at its end,
    in one such pipeline."""
    event = events_on_every_master(cluster, "unreachable")[0]
    key = keys.event_keys(event).meta + ":n"
    real_pipe = ClusterPipes._pipe
    closed = free_port()

    def dead_pipe(self: ClusterPipes, node: Any) -> RespPipe | None:
        pipe = real_pipe(self, node)
        assert pipe is not None
        pipe._target = dataclasses.replace(pipe._target, port=closed, where=f"port {closed}")
        return pipe

    monkeypatch.setattr(ClusterPipes, "_pipe", dead_pipe)
    replies, pipelines = _incr_in_one_tick(cluster, [key] * 20)
    assert sorted(replies) == list(range(1, 21))
    assert pipelines == 1  # no batch could be written at once: the tick's went together


def test_batches_in_flight_stay_below_each_nodes_connections(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client raises (and drops every connection) when a node has no
    free connection: the batcher keeps the batches it sends through redis-py's cluster
    pipeline (here all of them: no node has a connection of the batcher's own) below
    max_connections."""
    monkeypatch.setattr(ClusterPipes, "_pipe", lambda self, node: None)
    events = events_on_every_master(cluster, "conn")

    async def run() -> list[Any]:
        client = connect(make_settings(redis_url=cluster.url, redis_max_connections=4))
        batcher = TickBatcher(client, max_batch=2)  # many small pipelines at once
        try:
            calls = [
                batcher.execute("INCR", keys.event_keys(events[i % 3]).meta + ":n")
                for i in range(300)
            ]
            return await asyncio.gather(*calls)
        finally:
            await client.aclose()

    replies = asyncio.run(run())
    assert sorted(replies)[-1] == 100 and len(replies) == 300


def test_a_read_and_its_clock_come_from_the_same_master(
    cluster: LocalCluster, batcher_path: str
) -> None:
    """GET /reservations/{id} reads the reservation and Redis's clock in one batch: the
    TIME goes to the master of the event, not to redis-py's default node."""
    events = events_on_every_master(cluster, "clock")

    async def read(event: str) -> None:
        client = connect(make_settings(redis_url=cluster.url))
        try:
            await scripts.load_all(client)
            await RedisStore(client).get_reservation(event, "nope")
        finally:
            await client.aclose()

    for event in events:
        home = port_of_event(cluster, event)
        for port in cluster.master_ports():
            with cluster.client(port) as node:
                node.config_resetstat()
        asyncio.run(read(event))
        for port in cluster.master_ports():
            with cluster.client(port) as node:
                calls = node.info("commandstats").get("cmdstat_time", {}).get("calls", 0)
            assert calls == (1 if port == home else 0), (event, port, home)


def test_a_connection_closed_under_a_request_is_503_not_500() -> None:
    """What redis-py's cluster client does to requests in flight when it drops every
    connection to learn a new topology: the error that comes out of its connection code
    means 'retry later'; the same error from anywhere else stays a bug (500)."""
    from redis.asyncio.connection import Connection

    from seatres.domain.errors import StoreUnavailable
    from seatres.store.redis_store import _unavailable_on_failure

    async def closed_under_us() -> None:
        with _unavailable_on_failure:
            await Connection()._send_packed_command([b"PING"])  # its writer is gone

    async def our_own_bug() -> None:
        with _unavailable_on_failure:
            None.writelines([])  # type: ignore[attr-defined]

    with pytest.raises(StoreUnavailable):
        asyncio.run(closed_under_us())
    with pytest.raises(AttributeError):
        asyncio.run(our_own_bug())


def test_a_slot_being_moved_keeps_each_script_whole(cluster: LocalCluster) -> None:
    """While an event's slot migrates, its node refuses a script any claim key it does not
    hold. A script that would write one answers TRYAGAIN before its first write, so it
    changes nothing; a conflict is still answered, from the claims hash if need be."""
    event = "moving"
    k = keys.event_keys(event)
    slot = key_slot(k.meta.encode())
    ids = masters_by_port(cluster)
    from_port = port_of_event(cluster, event)
    to_port = next(port for port in ids if port != from_port)
    source, target = cluster.client(from_port), cluster.client(to_port)

    def reserve(rid: str, customer: str, seat: str, hold_ms: int = 60_000) -> Any:
        args = [rid, customer, hold_ms, 0, 1000, "", 60_000, seat]
        return scripts.run_sync(source, "reserve", k, args)

    def stored() -> tuple[Any, ...]:
        return (
            source.hgetall(k.claims),
            source.hgetall(k.reservations),
            source.zrange(k.holds, 0, -1, withscores=True),
            source.hgetall(k.meta),
            source.xlen(k.log),
        )

    try:
        assert scripts.run_sync(source, "upsert_event", k, [event, "E", 1000, "A1", "A2"])[0] == 1
        alice = new_reservation_id(event)
        assert reserve(alice, "alice", "A1")[0] == 1
        assert reserve(new_reservation_id(event), "carol", "A2", hold_ms=1)[0] == 1
        time.sleep(0.01)  # carol's hold is due, its claim key gone
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[from_port])
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
        before = stored()

        # A2 is free (carol's hold is due): its claim key is missing, so it may be on
        # the target already; so may those of the due hold the sweep or an upsert would end
        with pytest.raises(redis.exceptions.TryAgainError):
            reserve(new_reservation_id(event), "bob", "A2")
        with pytest.raises(redis.exceptions.TryAgainError):
            scripts.run_sync(source, "expire", k, [100, 1000])
        with pytest.raises(redis.exceptions.TryAgainError):
            scripts.run_sync(source, "upsert_event", k, [event, "E", 1000, "A1"])
        # A1's claim key is here: the early answer
        assert reserve(new_reservation_id(event), "bob", "A1") == -3
        # A1's claim key moved: the full script answers from the claims hash
        claim = keys.claim_key(event, "A1")
        source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", claim)
        assert reserve(new_reservation_id(event), "bob", "A1") == [-3, "A1"]
        # ending alice's hold would delete that key: nothing happens
        with pytest.raises(redis.exceptions.TryAgainError):
            scripts.run_sync(source, "cancel", k, [alice, "alice", "0", 1000, "n1", "", 60_000])
        assert stored() == before
    finally:
        for node in (source, target):
            node.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        source.close()
        target.close()

"""How long the expiry sweep takes, and how long it blocks Redis.

For each persistence mode and batch size, starts a fresh redis-server of its own
(seatres.embedded, in a temporary directory), loads EVENTS x SEATS one-seat holds with
the reserve script (all due), runs one sweep and prints a table:

  sweep s        wall time of the sweep, client side
  holds/s        holds expired per second
  client max ms  the longest single store call of the sweep, seen from the client
  server max ms  the longest expire script run inside Redis (SLOWLOG)
  ≥ 5 ms         expire script runs that blocked Redis for 5 ms or more (SLOWLOG)
  µs/call        mean EVALSHA time inside Redis (INFO commandstats, claims included)
  forks          forks during the sweep (an AOF rewrite: fork + copy-on-write stalls)

SLOWLOG logs from SLOWLOG_US up: Redis 6.2 also logs every command a script calls, so a
threshold of 0 would log (and pay for) about ten entries per hold and distort the run.
Persistence "off" is a Redis without AOF; "everysec" and "always" are appendfsync modes.

Goal: 100,000 holds in under 2 s, and no single call blocking Redis for 5 ms or more.

    python bench/sweep_bench.py [--events 100] [--seats 1000] [--batch-sizes 100,200,500]
                                [--persistence off,everysec,always] [--no-aof-rewrite]
                                [--json]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from seatres.embedded import RedisServer
from seatres.jobs.sweep import SweepReport, sweep
from seatres.store import keys, scripts
from seatres.store.redis_store import RedisStore

GOAL_SECONDS = 2.0
GOAL_CALL_MS = 5.0
PIPELINE = 1000  # reserve calls per round trip while loading
LOG_MAX = 1_000_000
SLOWLOG_US = 500


def load_due_holds(r: redis.Redis, events: int, seats: int) -> int:
    """events x seats one-seat holds of 1 ms, made by the reserve script; each event is
    indexed for the sweep as RedisStore.reserve does after a hold."""
    upsert, reserve = scripts.script("upsert_event"), scripts.script("reserve")
    r.script_load(upsert.source)
    r.script_load(reserve.source)
    made = 0
    for e in range(events):
        event_id = f"bench{e:04d}"
        k = keys.event_keys(event_id)
        seat_ids = [f"S{i:05d}" for i in range(seats)]
        r.evalsha(upsert.sha, len(k), *k, event_id, "Bench", LOG_MAX, *seat_ids)
        for start in range(0, seats, PIPELINE):
            pipe = r.pipeline(transaction=False)
            for seat in seat_ids[start : start + PIPELINE]:
                rid = f"{event_id}-{seat}"
                pipe.evalsha(reserve.sha, len(k), *k, rid, f"c{seat}", 1, 0, LOG_MAX, "", 0, seat)
            made += sum(1 for reply in pipe.execute() if int(reply[0]) == 1)
        r.zadd(keys.SWEEP_DUE, {event_id: int(time.time() * 1000) + 1}, lt=True)
    time.sleep(0.05)  # every hold is due
    return made


async def timed_sweep(url: str, batch_size: int) -> SweepReport:
    client = AsyncRedis.from_url(url, decode_responses=True)
    try:
        store = RedisStore(client, log_max_length=LOG_MAX)
        await store.ping()  # scripts loaded before the clock starts
        return await sweep(store, batch_size, max_seconds=600)
    finally:
        await client.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _server(tmp: Path, persistence: str, aof_rewrite: bool) -> RedisServer:
    extra: tuple[str, ...] = ()
    if persistence == "off":
        extra = ("--appendonly", "no")
    elif not aof_rewrite:
        extra = ("--auto-aof-rewrite-percentage", "0")
    fsync = "everysec" if persistence == "off" else persistence
    return RedisServer(tmp, appendfsync=fsync, extra_args=extra)


def one_run(url: str, persistence: str, batch_size: int, events: int, seats: int) -> dict[str, Any]:
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        t0 = time.perf_counter()
        holds = load_due_holds(r, events, seats)
        print(f"  loaded {holds:,} due holds in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        r.config_set("slowlog-log-slower-than", SLOWLOG_US)
        r.config_set("slowlog-max-len", 100_000)
        r.slowlog_reset()
        r.config_resetstat()
        forks_before = int(r.info("stats").get("total_forks", 0))

        report = asyncio.run(timed_sweep(url, batch_size))

        forks = int(r.info("stats").get("total_forks", 0)) - forks_before
        expire_sha = scripts.script("expire").sha
        expire_us = sorted(
            int(e["duration"])
            for e in r.slowlog_get(100_000)
            if _text(e["command"]).lower().startswith(f"evalsha {expire_sha}")
        )
        stats = r.info("commandstats").get("cmdstat_evalsha", {})
        left = sum(r.zcard(keys.event_keys(f"bench{e:04d}").holds) for e in range(events))
    finally:
        r.close()
    if report.total != holds or left:
        raise SystemExit(f"sweep expired {report.total} of {holds} holds, {left} left")
    # Nothing in the slowlog: every run was shorter than its threshold.
    server_max_ms = (expire_us[-1] if expire_us else SLOWLOG_US) / 1000
    return {
        "persistence": persistence,
        "batchSize": batch_size,
        "holds": holds,
        "events": events,
        "sweepSeconds": round(report.seconds, 4),
        "holdsPerSecond": round(holds / report.seconds),
        "batches": report.batches,
        "clientMaxCallMs": round(report.longest_call_seconds * 1000, 3),
        "serverMaxCallMs": round(server_max_ms, 3),
        "callsOverGoal": sum(1 for us in expire_us if us >= GOAL_CALL_MS * 1000),
        "evalshaUsecPerCall": stats.get("usec_per_call"),
        "forksDuringSweep": forks,
        "meetsGoal": report.seconds < GOAL_SECONDS and server_max_ms < GOAL_CALL_MS,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("persistence", "persistence", "{}"),
        ("batch", "batchSize", "{}"),
        ("holds", "holds", "{:,}"),
        ("sweep s", "sweepSeconds", "{:.3f}"),
        ("holds/s", "holdsPerSecond", "{:,}"),
        ("batches", "batches", "{}"),
        ("client max ms", "clientMaxCallMs", "{:.2f}"),
        ("server max ms", "serverMaxCallMs", "{:.2f}"),
        ("≥ 5 ms", "callsOverGoal", "{}"),
        ("µs/call", "evalshaUsecPerCall", "{:.0f}"),
        ("forks", "forksDuringSweep", "{}"),
        ("goal", "meetsGoal", "{}"),
    ]
    cells = [[fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    widths = [
        max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)
    ]
    print("  ".join(title.rjust(w) for (title, _, _), w in zip(columns, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
    print(f"goal: < {GOAL_SECONDS} s in all, and no expire call of {GOAL_CALL_MS} ms or more")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--seats", type=int, default=1000, help="due holds per event")
    p.add_argument("--batch-sizes", default="100,200,500")
    p.add_argument("--persistence", default="off,everysec,always")
    p.add_argument("--no-aof-rewrite", action="store_true", help="auto-aof-rewrite-percentage 0")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = p.parse_args()

    rows = []
    for persistence in args.persistence.split(","):
        for size in (int(s) for s in args.batch_sizes.split(",")):
            print(f"persistence {persistence}, batch size {size}", file=sys.stderr)
            with (
                tempfile.TemporaryDirectory(prefix="seatres-bench-") as tmp,
                _server(Path(tmp), persistence, not args.no_aof_rewrite) as server,
            ):
                rows.append(one_run(server.url, persistence, size, args.events, args.seats))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()

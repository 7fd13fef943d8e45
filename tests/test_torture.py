"""The concurrency torture test (issue 7): client OS processes with many connections each
hammer reserve / confirm / cancel / extend on a few hot seats through a real
`seatres serve --workers 2` and a real Redis, with one-second holds, while a child process
runs the expiry job every 200 ms. Afterwards the checker (tests/torture.py) judges the
run from every answer, every event's log stream and the final Redis state.

200,000 requests by default, 1,000,000 with --long. The checker's own tests (at the end)
feed it doctored histories: it must be able to fail."""

import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx2 as httpx
import orjson
import pytest
import redis

from seatres.clock import iso_time
from seatres.embedded import RedisServer
from seatres.store import keys
from tests import torture
from tests.conftest import ADMIN, SECRET, bearer
from tests.processes import api_server
from tests.torture import Answer, EventSnapshot, LoadPlan, LogEntry, Rules

OPS = 200_000
LONG_OPS = 1_000_000
CLIENT_PROCESSES = 3
CONNECTIONS = 32  # per client process
# The load stops at this point even short of its quota (the test then fails on the count).
DEADLINE_SECONDS = 300
LONG_DEADLINE_SECONDS = 1800
SWEEP_INTERVAL = 0.2
STARTUP_SECONDS = 3.0  # spawned clients import and connect before the common start
DRAIN_SECONDS = torture.MAX_HOLD_SECONDS + 15  # the sweep expires what the load left


@contextmanager
def _processes(procs: list[Any]) -> Iterator[None]:
    """Starts multiprocessing children; stops any still running by its PID on the way out."""
    try:
        for p in procs:
            p.start()
        yield
    finally:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM to p.pid
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()


def _snapshot(r: redis.Redis, event_id: str, summary: dict[str, int]) -> EventSnapshot:
    k = keys.event_keys(event_id)
    log: list[LogEntry] = []
    low = "-"
    while True:  # the whole stream, a page at a time
        page = cast(list[tuple[str, dict[str, str]]], r.xrange(k.log, low, "+", count=10_000))
        log.extend(LogEntry.parse(sid, f) for sid, f in page)
        if len(page) < 10_000:
            break
        low = "(" + page[-1][0]
    raw = cast(dict[str, str], r.hgetall(k.reservations))
    held, booked = cast(list[str], r.hmget(k.meta, ["held", "booked"]))
    customers = cast(dict[str, str], r.hgetall(k.customers))
    return EventSnapshot(
        event_id=event_id,
        seats=cast(list[str], r.zrange(k.seats, 0, -1)),
        log=log,
        reservations={rid: orjson.loads(v) for rid, v in raw.items()},
        claims=cast(dict[str, str], r.hgetall(k.claims)),
        holds=dict(cast(list[tuple[str, float]], r.zrange(k.holds, 0, -1, withscores=True))),
        customers={c: int(n) for c, n in customers.items()},
        held=int(held),
        booked=int(booked),
        summary=summary,
    )


def _left_to_sweep(r: redis.Redis, events: list[str]) -> tuple[int, int, int]:
    """Holds in all events, events in the sweep's due index, events claimed by a sweep."""
    with r.pipeline(transaction=False) as pipe:
        for event_id in events:
            pipe.zcard(keys.event_keys(event_id).holds)
        pipe.zcard(keys.SWEEP_DUE)
        pipe.zcard(keys.SWEEP_CLAIMED)
        *holds, due, claimed = pipe.execute()
    return sum(holds), due, claimed


@dataclass
class Run:
    answers: list[Answer]
    seconds: float  # from the common start until the last client was done
    sweeper: dict[str, Any]  # the sweep process's totals
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def _create_events(base: str, events: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=30, headers=ADMIN) as http:
        for event_id in events:
            body = {"name": "Torture", "seats": torture.seat_ids()}
            put = http.put(f"/events/{event_id}", json=body)
            assert put.status_code == 201, put.text


def _hammer(
    base: str,
    redis_url: str,
    r: redis.Redis,
    events: list[str],
    target: int,
    limit: float,
    out: Path,
) -> Run:
    """The load and the sweep at once; then the sweep alone until nothing is left due."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
    stop = ctx.Event()
    sweeper_out = out / "sweeper.json"
    sweeper = ctx.Process(
        target=torture.sweeper_main,
        args=(redis_url, SECRET, SWEEP_INTERVAL, stop, str(sweeper_out)),
        name="torture-sweeper",
    )
    start = time.time() + STARTUP_SECONDS
    plan = LoadPlan(
        host="127.0.0.1",
        port=int(base.rsplit(":", 1)[1]),
        secret=SECRET,
        events=events,
        seats=torture.seat_ids(),
        start=start,
        deadline=start + limit,
        ops=-(-target // CLIENT_PROCESSES),
        connections=CONNECTIONS,
        out_dir=str(out),
        seed=7,
    )
    clients = [
        ctx.Process(target=torture.client_main, args=(plan, i), name=f"torture-{i}")
        for i in range(CLIENT_PROCESSES)
    ]
    with _processes([sweeper, *clients]):
        for p in clients:
            p.join(limit + STARTUP_SECONDS + 60)
            assert p.exitcode == 0, f"client {p.name} exited with {p.exitcode}"
        seconds = time.time() - start
        # The sweep really ran during the load (its own record, as /metrics shows it).
        during = r.hgetall(keys.SWEEP_STATS)
        assert int(during.get("runs", 0)) > 10 and int(during.get("expired", 0)) > 0, during
        # No request touches the holds any more: the sweep alone must end them all and
        # leave its index empty (an event stays due until its last hold's time).
        drained = time.monotonic()
        while any(_left_to_sweep(r, events)) and time.monotonic() < drained + DRAIN_SECONDS:
            time.sleep(0.2)
        holds, due, claimed = _left_to_sweep(r, events)
        assert (holds, due, claimed) == (0, 0, 0), "the sweep left work behind"
        drain_seconds = time.monotonic() - drained
        stop.set()
        sweeper.join(30)
        assert sweeper.exitcode == 0, "the sweep process failed"
    answers = torture.load_answers(out / f"answers-{i}.json" for i in range(CLIENT_PROCESSES))
    run = Run(answers, seconds, orjson.loads(sweeper_out.read_bytes()))
    run.timings["drain"] = drain_seconds
    return run


def _print_summary(run: Run, stats: dict[str, int], lazy: int) -> None:
    ops, seconds = len(run.answers), run.seconds
    print(f"\ntorture: {ops:,} requests in {seconds:.1f} s = {ops / seconds:,.0f} requests/s")
    answers = {k: n for k, n in stats.items() if k.split(" ")[0] in torture.ALLOWED_OPS}
    for name, n in sorted(answers.items()):
        print(f"  {name:40} {n:>9,}")
    logged = ", ".join(
        f"{k.split(' ')[1]} {n:,}" for k, n in sorted(stats.items()) if k.startswith("log ")
    )
    print(f"  log stream: {logged}")
    print(f"  replayed answers {stats['replayed']:,}; reservations {stats['reservations']:,}")
    sweeper = run.sweeper
    print(
        f"  sweep: {sweeper['runs']:,} runs expired {sweeper['expired']:,} holds "
        f"(longest call {sweeper['longestCall'] * 1000:.1f} ms); lazily expired {lazy:,}"
    )
    print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items()))


# What a run must have exercised, or it proves little.
EXERCISED = [
    "reserve 201",
    "reserve 409 seat_unavailable",
    "reserve 400 limit_exceeded",
    "reserve 422 idempotency_key_mismatch",
    "confirm 200",
    "confirm 400 reservation_expired",
    "confirm 400 invalid_transition",
    "cancel 200",
    "cancel 400 reservation_expired",
    "cancel 400 invalid_transition",
    "extend 200",
    "extend 400 reservation_expired",
    "extend 400 invalid_transition",
    "extend 400 limit_exceeded",
    "log expire",
    "replayed",
]


@pytest.mark.slow
@pytest.mark.timeout(LONG_DEADLINE_SECONDS + 1200)
def test_torture(redis_server: RedisServer, long_mode: bool, tmp_path: Path) -> None:
    target = LONG_OPS if long_mode else OPS
    limit = LONG_DEADLINE_SECONDS if long_mode else DEADLINE_SECONDS
    events = torture.event_ids(int(limit / torture.PHASE_SECONDS) + 2)
    settings = {
        "hold_seconds": str(torture.HOLD_SECONDS),
        "max_hold_seconds": str(torture.MAX_HOLD_SECONDS),
        "max_seats_per_customer": str(torture.MAX_SEATS_PER_CUSTOMER),
        "log_max_length": str(torture.LOG_MAX_LENGTH),
        "access_log": "false",  # a line per request would only cost CPU
    }
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.flushall()
    try:
        with api_server(redis_server.url, tmp_path / "api.log", workers=2, **settings) as base:
            t0 = time.monotonic()
            _create_events(base, events)
            created = time.monotonic() - t0
            run = _hammer(base, redis_server.url, r, events, target, limit, tmp_path)
            with httpx.Client(base_url=base, timeout=30, headers=bearer("auditor")) as http:
                summaries = {e: http.get(f"/events/{e}").json()["seats"] for e in events}
        t0 = time.monotonic()
        snapshots = [_snapshot(r, e, summaries[e]) for e in events]
        assert all(len(s.log) < torture.LOG_MAX_LENGTH for s in snapshots)  # never trimmed
        verdict = torture.check(Rules(), snapshots, run.answers)
        run.timings = {"create events": created, **run.timings, "check": time.monotonic() - t0}
        lazy = verdict.stats["log expire"] - run.sweeper["expired"]
        _print_summary(run, verdict.stats, lazy)
        assert not verdict.problems, "\n".join(
            [f"{len(verdict.problems)} problems, the first:", *verdict.problems[:40]]
        )
        assert len(run.answers) >= target, f"only {len(run.answers):,} requests in {limit} s"
        for needed in EXERCISED:
            assert verdict.stats[needed] > 0, f"the run never saw {needed}"
        assert lazy > 0 and run.sweeper["expired"] > 0
    finally:
        r.flushall()
        r.close()


# --- the checker must be able to fail ------------------------------------------------------

EVENT = "e"
RULES = Rules(hold_ms=1000, extend_ms=1000, max_hold_ms=2500, max_seats_per_customer=4)


def _e(
    n: int, rid: str, action: str, frm: str, to: str, by: str, who: str, seats: str, at: int
) -> LogEntry:
    return LogEntry(f"{at}-{n}", rid, action, frm, to, by, who, tuple(seats.split(",")), at)


def _clean_log() -> list[LogEntry]:
    """r1: alice A1, confirmed. r2: bob A2+A3, extended, expired by the sweep. r3: bob A2
    right after, cancelled by an admin."""
    return [
        _e(0, "r1", "reserve", "", "RESERVED", "alice", "alice", "A1", 1000),
        _e(1, "r2", "reserve", "", "RESERVED", "bob", "bob", "A2,A3", 1000),
        _e(0, "r1", "confirm", "RESERVED", "CONFIRMED", "alice", "alice", "A1", 1100),
        _e(0, "r2", "extend", "RESERVED", "RESERVED", "bob", "bob", "A2,A3", 1500),
        _e(0, "r2", "expire", "RESERVED", "EXPIRED", "system", "bob", "A2,A3", 3000),
        _e(1, "r3", "reserve", "", "RESERVED", "bob", "bob", "A2", 3000),
        _e(0, "r3", "cancel", "RESERVED", "CANCELLED", "admin", "bob", "A2", 3100),
    ]


def _stored(log: list[LogEntry]) -> dict[str, dict[str, Any]]:
    """The reservations hash that goes with a log (what the scripts write)."""
    out: dict[str, dict[str, Any]] = {}
    for e in log:
        r = out.setdefault(
            e.reservation,
            {
                "id": e.reservation,
                "eventId": EVENT,
                "seatIds": list(e.seats),
                "customerId": e.customer,
                "createdAt": e.at,
                "expiresAt": e.at + RULES.hold_ms,
                "history": [],
            },
        )
        entry = {"at": e.at, "action": e.action, "to": e.to_state, "by": e.by}
        if e.from_state:
            entry["from"] = e.from_state
        r["history"].append(entry)
        r["state"] = e.to_state
        r["updatedAt"] = e.at
        if e.action == "extend":
            r["expiresAt"] += RULES.extend_ms
    return out


def _snapshot_of(log: list[LogEntry]) -> EventSnapshot:
    return EventSnapshot(
        event_id=EVENT,
        seats=["A1", "A2", "A3"],
        log=log,
        reservations=_stored(log),
        claims={"A1": "r1"},
        holds={},
        customers={"alice": 1},
        held=0,
        booked=1,
        summary={"total": 3, "free": 2, "held": 0, "booked": 1},
    )


def _answer(
    op: str, target: str, who: str, status: int, at: int, rid: str = "", **fields: Any
) -> Answer:
    """An answer in flight from at-10 to at+10 (ms). 2xx bodies are r's at that moment."""
    stored = _stored(_clean_log()).get(rid or target, {})
    values: dict[str, Any] = {
        "proc": 0, "op": op, "target": target, "seats": [], "customer": who,
        "owner": stored.get("customerId", who), "key": "", "role": "", "status": status,
        "code": "", "replayed": False, "rid": "", "state": "", "created": "", "expires": "",
        "updated": "", "body_seats": [], "sent": at - 10.0, "received": at + 10.0,
    }  # fmt: skip
    if status in (200, 201):
        values |= {
            "rid": rid or target,
            "state": {"reserve": "RESERVED", "confirm": "CONFIRMED", "cancel": "CANCELLED"}.get(
                op, "RESERVED"
            ),
            "created": iso_time(stored["createdAt"]),
            "expires": iso_time(stored["createdAt"] + RULES.hold_ms),
            "updated": iso_time(at),
            "body_seats": stored["seatIds"],
        }
        if op == "reserve":
            values["seats"] = stored["seatIds"]
    values.update(fields)
    return Answer(**values)


def _clean_answers() -> list[Answer]:
    return [
        _answer("reserve", EVENT, "alice", 201, 1000, rid="r1"),
        _answer("reserve", EVENT, "bob", 201, 1000, rid="r2"),
        _answer("confirm", "r1", "alice", 200, 1100),
        _answer("extend", "r2", "bob", 200, 1500, expires=iso_time(3000)),
        _answer("reserve", EVENT, "bob", 201, 3000, rid="r3"),
        _answer("cancel", "r3", "admin", 200, 3100),
        _answer("cancel", "r1", "alice", 400, 1200, code="invalid_transition"),
        _answer("confirm", "r2", "bob", 400, 3050, code="reservation_expired"),
        _answer(
            "reserve",
            EVENT,
            "carol",
            409,
            1200,
            seats=["A1", "A3"],
            body_seats=["A1", "A3"],
            code="seat_unavailable",
        ),
        _answer(
            "confirm", "r1", "alice", 200, 1300, key="k1", role="first", updated=iso_time(1100)
        ),
        _answer(
            "confirm",
            "r1",
            "alice",
            200,
            1400,
            key="k1",
            role="replay",
            replayed=True,
            updated=iso_time(1100),
        ),
        _answer(
            "cancel",
            "r1",
            "alice",
            422,
            1500,
            key="k1",
            role="mismatch",
            code="idempotency_key_mismatch",
        ),
    ]


def test_checker_accepts_a_clean_history() -> None:
    verdict = torture.check(RULES, [_snapshot_of(_clean_log())], _clean_answers())
    assert verdict.problems == []
    assert verdict.stats["log entries"] == 7 and verdict.stats["reservations"] == 3


def _overlap(snap: EventSnapshot, answers: list[Answer]) -> None:
    # carol gets A1 while r1 has it confirmed (and her reservation looks right everywhere)
    extra = _e(2, "r4", "reserve", "", "RESERVED", "carol", "carol", "A1", 1200)
    snap.log.insert(3, extra)
    snap.reservations["r4"] = _stored([extra])["r4"] | {"state": "CANCELLED"}
    snap.log.insert(4, _e(3, "r4", "cancel", "RESERVED", "CANCELLED", "carol", "carol", "A1", 1300))
    snap.reservations["r4"]["history"].append(
        {"at": 1300, "action": "cancel", "from": "RESERVED", "to": "CANCELLED", "by": "carol"}
    )


def _illegal(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.log.append(_e(9, "r1", "cancel", "CONFIRMED", "CANCELLED", "alice", "alice", "A1", 3200))


def _from_terminal(snap: EventSnapshot, answers: list[Answer]) -> None:
    # an entry that claims to start from RESERVED, but r2 had expired already
    snap.log.append(_e(9, "r2", "confirm", "RESERVED", "CONFIRMED", "bob", "bob", "A2,A3", 3200))


def _early_expiry(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.log[4] = snap.log[4]._replace(at=2500)


def _late_confirm(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.log[2] = snap.log[2]._replace(at=2100)  # r1's hold ended at 2000


def _wrong_actor(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.log[2] = snap.log[2]._replace(by="mallory")


def _trimmed(snap: EventSnapshot, answers: list[Answer]) -> None:
    del snap.log[0]


def _booked_counter(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.booked = 2


def _customer_count(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.customers = {"alice": 1, "bob": 1}


def _claims(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.claims["A2"] = "r3"


def _summary(snap: EventSnapshot, answers: list[Answer]) -> None:
    snap.summary = {"total": 3, "free": 3, "held": 0, "booked": 0}


def _confirm_of_nothing(snap: EventSnapshot, answers: list[Answer]) -> None:
    # a 200 confirm of r2, which was never confirmed
    answers.append(_answer("confirm", "r2", "bob", 200, 1600, state="CONFIRMED"))


def _unanswered(snap: EventSnapshot, answers: list[Answer]) -> None:
    del answers[2]  # nobody was told about r1's confirm


def _second_201(snap: EventSnapshot, answers: list[Answer]) -> None:
    answers.append(_answer("reserve", EVENT, "alice", 201, 1005, rid="r1"))


def _answered_early(snap: EventSnapshot, answers: list[Answer]) -> None:
    answers[2] = answers[2]._replace(sent=900.0, received=950.0)  # before the confirm at 1100


def _free_seat_conflict(snap: EventSnapshot, answers: list[Answer]) -> None:
    answers.append(
        _answer(
            "reserve",
            EVENT,
            "dave",
            409,
            3500,
            seats=["A3"],
            body_seats=["A3"],
            code="seat_unavailable",
        )
    )


def _bad_replay(snap: EventSnapshot, answers: list[Answer]) -> None:
    answers[10] = answers[10]._replace(status=400, code="invalid_transition", rid="")


def _server_error(snap: EventSnapshot, answers: list[Answer]) -> None:
    answers.append(_answer("cancel", "r2", "bob", 500, 2000, code="internal_error"))


Doctor = Callable[[EventSnapshot, list[Answer]], None]


@pytest.mark.parametrize(
    ("doctor", "expected"),
    [
        (_overlap, "seat A1 had two active reservations at once: r1 and r4"),
        (_illegal, "illegal transition of r1: CONFIRMED -[cancel]-> CANCELLED"),
        (_from_terminal, "illegal transition of r2: EXPIRED -[confirm]-> CONFIRMED"),
        (_early_expiry, "r2 expired at 2500, before its hold ended at 3000"),
        (_late_confirm, "confirm of r1 at 2100, after its hold ended at 2000"),
        (_wrong_actor, "confirm of r1 by mallory"),
        (_trimmed, "confirm of r1 (1100-0) has no reserve entry"),
        (_trimmed, "7 history entries but 6 log entries"),
        (_booked_counter, "counters say held 0 booked 2, the reservations 0 and 1"),
        (_customer_count, "per-customer seat counts differ"),
        (_claims, "claims differ from the active reservations"),
        (_summary, "GET /events says"),
        (_confirm_of_nothing, "no confirm of r2 at 1600 in its log"),
        (_unanswered, "confirm of r1 at 1100 has no 200 answer"),
        (_second_201, "r1 was reserved once but got 2 new 201 answers"),
        (_answered_early, "answered before the change at 1100 happened"),
        (_free_seat_conflict, "seat A3 was free all the time the request was in flight"),
        (_bad_replay, "a resent request got another answer than the first"),
        (_server_error, "500 internal_error: unexpected answer"),
    ],
)
def test_checker_reports_a_doctored_history(doctor: Doctor, expected: str) -> None:
    snap = _snapshot_of(_clean_log())
    answers = _clean_answers()
    doctor(snap, answers)
    problems = torture.check(RULES, [snap], answers).problems
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (Rules(1000, 1000, 2500, max_seats_per_customer=1), "customer bob had 2 active seats"),
        (Rules(1000, 1000, 1500, 4), "r2 extended past the longest hold"),
        (Rules(1000, 1000, 5000, 4), "refused an extension that fits the longest hold"),
    ],
)
def test_checker_applies_the_rules(rules: Rules, expected: str) -> None:
    answers = _clean_answers()
    # r2 was refused a second extension (3 s in all: longer than RULES allow)
    answers.append(_answer("extend", "r2", "bob", 400, 1600, code="limit_exceeded"))
    assert torture.check(RULES, [_snapshot_of(_clean_log())], answers).problems == []
    problems = torture.check(rules, [_snapshot_of(_clean_log())], answers).problems
    assert any(expected in p for p in problems), problems

"""The moving parts of the concurrency torture test (tests/test_torture.py).

- The load: client OS processes (multiprocessing, spawn), each with many keep-alive
  HTTP/1.1 connections spoken by hand over asyncio streams (a full HTTP client costs more
  CPU per request than the server on this 2-core machine). They reserve, confirm, cancel
  and extend on a few hot seats, with multi-seat reservations and Idempotency-Keys, and
  record every answer with the wall-clock window in which it was in flight.
- The sweep: a child process that runs the real expiry job function
  (seatres.jobs.sweep.expire_due_holds) every ~200 ms during the load.
- The checker: judges a run from the recorded answers, every event's log stream and the
  final Redis state, and returns the problems it found (an empty list: the run is sound).
  It takes plain data, so tests can feed it doctored histories.

The hot seats are the SEATS_PER_EVENT seats of the current event, which changes every
PHASE_SECONDS (most reserves go to it, the rest to the two before it, whose holds are
falling due meanwhile): a confirmed seat is booked for good, so a single event's seats
would soon all be booked, leaving nothing but 409s to fight over."""

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path
from typing import Any, NamedTuple

import orjson

# --- the run's rules, shared by the server's settings, the clients and the checker ------

HOLD_SECONDS = 1
MAX_HOLD_SECONDS = 3  # two extensions of EXTEND_SECONDS fit, the third is refused
EXTEND_SECONDS = 1  # every extension asks for this much: the checker replays expiresAt
MAX_SEATS_PER_CUSTOMER = 3  # low, so that limit_exceeded happens too (3-seat requests)
LOG_MAX_LENGTH = 100_000_000  # the largest the settings allow: no trimming in any run
SEATS_PER_EVENT = 64
PHASE_SECONDS = 0.5
# Share of reserves that go to the current event, the one before, and the one before that
# (a hold made there may be due by now: it expires lazily or by the sweep).
EVENT_WEIGHTS = (0.55, 0.25, 0.2)
ADMIN = "admin"
SYSTEM = "system"

# Answers and log entries are compared on two clocks of one machine (the client's
# time.time() and Redis's TIME, in ms): this much slack covers their rounding.
CLOCK_SLACK_MS = 5.0

# What a connection does next (probabilities).
P_RESERVE = 0.9  # else an action on a recent reservation of this process
P_ABANDON = 0.3  # a fresh hold nobody touches again
P_LATE = 0.015  # ...or only its owner, after its time (the connection waits meanwhile)
P_SEATS = (0.7, 0.9)  # 1 seat below the first, 2 below the second, else 3
P_KEYED = 0.25  # the request carries an Idempotency-Key
P_REPLAY = 0.3  # ...and is sent again as is (its answer must be replayed)
P_MISMATCH = 0.05  # ...or the key is reused for another request (422)
P_ADMIN = 0.1  # confirm / cancel with the admin token
RECENT = 48  # reservations of a process that its connections act upon (races)
REQUEST_TIMEOUT = 30.0
IDLE_SECONDS = 2.0  # a connection unused this long is opened again before a request

RESERVE, CONFIRM, CANCEL, EXTEND = "reserve", "confirm", "cancel", "extend"
ALLOWED_OPS = (RESERVE, CONFIRM, CANCEL, EXTEND)
# Pairs of transitions sent at once on one fresh hold.
RACES = [(CONFIRM, CANCEL)] * 4 + [(EXTEND, CANCEL)] * 4 + [(CANCEL, CANCEL), (CONFIRM, CONFIRM)]
# What a connection does to a recent reservation of its process (confirms are rare: each
# books its seats for good).
ACTS = [CONFIRM] + [CANCEL] * 3 + [EXTEND] * 3
RESERVED, CONFIRMED, CANCELLED, EXPIRED = "RESERVED", "CONFIRMED", "CANCELLED", "EXPIRED"
TERMINAL = frozenset({CONFIRMED, CANCELLED, EXPIRED})
ENDED = frozenset({CONFIRMED, CANCELLED})  # what an extension refused as invalid found
ACTIVE = frozenset({RESERVED, CONFIRMED})
# (action, from, to) of every change the log may show after a reservation's `reserve`.
ALLOWED = frozenset(
    {
        (CONFIRM, RESERVED, CONFIRMED),
        (CANCEL, RESERVED, CANCELLED),
        ("expire", RESERVED, EXPIRED),
        (EXTEND, RESERVED, RESERVED),
    }
)


def event_ids(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


def seat_ids() -> list[str]:
    return [f"S{i:02d}" for i in range(SEATS_PER_EVENT)]


# --- what the clients record ------------------------------------------------------------


class Answer(NamedTuple):
    """One request and its answer. Times are ISO strings as the API gave them (the
    checker converts them); sent / received are the client's wall clock in ms."""

    proc: int
    op: str  # reserve, confirm, cancel, extend
    target: str  # the event id (reserve) or the reservation id
    seats: list[str]  # the seats asked for (reserve)
    customer: str  # the token's subject: the owner, or ADMIN
    owner: str  # the reservation's customer (reserve: the one asking)
    key: str  # Idempotency-Key, '' without
    role: str  # with a key: 'first', 'replay' (sent again) or 'mismatch' (another request)
    status: int  # 0: no answer (connection error or timeout; code says which)
    code: str  # the problem's code
    replayed: bool  # Idempotent-Replayed: true
    rid: str  # the reservation in the body
    state: str
    created: str
    expires: str
    updated: str
    body_seats: list[str]  # seatIds of the reservation, or the conflicting seats of a 409
    sent: float
    received: float


@dataclass(frozen=True)
class LoadPlan:
    """Everything a client process needs (picklable: sent to spawned processes)."""

    host: str
    port: int
    secret: str
    events: list[str]
    seats: list[str]
    start: float  # wall clock: every client starts then; event phases count from it
    deadline: float  # wall clock: stop even if the quota is not done
    ops: int  # requests this process sends (at least)
    connections: int
    out_dir: str
    seed: int


# --- a bare HTTP/1.1 keep-alive connection ------------------------------------------------


class HttpConnection:
    """Just enough HTTP/1.1 for this API: POST with a JSON body, Content-Length
    framed answers (what uvicorn sends for these routes)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.last_used = time.monotonic()

    async def reopen(self) -> None:
        if self.writer is not None:
            self.writer.close()
        await self.open()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(self, path: str, headers: bytes, body: bytes) -> tuple[int, bool, Any]:
        if time.monotonic() - self.last_used > IDLE_SECONDS:
            # uvicorn closes a keep-alive connection idle for 5 s; a request sent just as
            # it does would be lost (and resending a POST is no option here)
            await self.reopen()
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode(), headers, len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, replayed = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"idempotent-replayed":
                replayed = value.strip() == b"true"
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked answers are not expected from this API")
        if length < 0:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        data = await self.reader.readexactly(length)
        self.last_used = time.monotonic()
        return status, replayed, orjson.loads(data) if data else {}


# --- the client process -------------------------------------------------------------------


class Client:
    """One process's load: `connections` tasks that share its quota and its recent
    reservations (so that confirm, cancel and extend of one reservation race)."""

    def __init__(self, plan: LoadPlan, proc: int) -> None:
        from seatres import tokens  # in the child: jwt only, none of the test suite

        self.plan, self.proc = plan, proc
        self.answers: list[Answer] = []
        self.recent: list[tuple[str, str]] = []  # (reservation id, owner), a ring
        self.sent = 0
        self.keys = 0
        ttl = int(plan.deadline - time.time()) + 3600
        self.customers = [
            [f"p{proc}k{conn}c{j}" for j in range(2)] for conn in range(plan.connections)
        ]
        self.auth = {
            sub: b"Authorization: Bearer %s\r\n"
            % tokens.mint(plan.secret, sub, admin=sub == ADMIN, ttl_seconds=ttl).encode()
            for sub in [ADMIN, *(c for cs in self.customers for c in cs)]
        }

    def more(self) -> bool:
        return self.sent < self.plan.ops and time.time() < self.plan.deadline

    def new_key(self) -> str:
        self.keys += 1
        return f"p{self.proc}-{self.keys}"

    def event(self, rng: random.Random) -> str:
        """The hot event of the current phase, or one of the two before it (whose holds
        fall due meanwhile: expired lazily by a reserve, or by the sweep)."""
        phase = max(0, int((time.time() - self.plan.start) / PHASE_SECONDS))
        back = rng.choices(range(len(EVENT_WEIGHTS)), EVENT_WEIGHTS)[0]
        return self.plan.events[max(0, phase - back) % len(self.plan.events)]

    def remember(self, rid: str, owner: str) -> None:
        if len(self.recent) < RECENT:
            self.recent.append((rid, owner))
        else:
            self.recent[self.sent % RECENT] = (rid, owner)

    async def send(
        self,
        http: HttpConnection,
        op: str,
        target: str,
        seats: list[str],
        customer: str,
        owner: str,
        body: dict[str, Any] | None,
        key: str = "",
        role: str = "",
    ) -> Answer:
        path = "/reservations" if op == RESERVE else f"/reservations/{target}/{op}"
        headers = self.auth[customer]
        if body is not None:
            headers += b"Content-Type: application/json\r\n"
        if key:
            headers += b"Idempotency-Key: %s\r\n" % key.encode()
        payload = orjson.dumps(body) if body is not None else b""
        self.sent += 1
        sent = time.time() * 1000
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, replayed, data = await http.post(path, headers, payload)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            # Recorded, not retried: the checker reports it (and any change it made).
            status, replayed, data = 0, False, {"code": type(exc).__name__}
            await http.reopen()
        received = time.time() * 1000
        if 200 <= status < 300:
            answer = Answer(
                self.proc, op, target, seats, customer, owner, key, role, status, "",
                replayed, data["id"], data["state"], data["createdAt"], data["expiresAt"],
                data["updatedAt"], data["seatIds"], sent, received,
            )  # fmt: skip
        else:
            answer = Answer(
                self.proc, op, target, seats, customer, owner, key, role, status,
                data.get("code", ""), replayed, "", "", "", "", "", data.get("seatIds", []),
                sent, received,
            )  # fmt: skip
        self.answers.append(answer)
        return answer

    async def reserve_flow(
        self, http: HttpConnection, side: HttpConnection, rng: random.Random, conn: int
    ) -> None:
        customer = rng.choice(self.customers[conn])
        event = self.event(rng)
        u = rng.random()
        n = 1 if u < P_SEATS[0] else 2 if u < P_SEATS[1] else 3
        seats = rng.sample(self.plan.seats, n)
        body: dict[str, Any] = {"eventId": event, "seatIds": seats}
        if n == 1 and rng.random() < 0.5:
            body = {"eventId": event, "seatId": seats[0]}
        key = self.new_key() if rng.random() < P_KEYED else ""
        first = await self.send(
            http, RESERVE, event, seats, customer, customer, body, key, "first" if key else ""
        )
        if key:
            u = rng.random()
            if u < P_REPLAY:
                await self.send(
                    http, RESERVE, event, seats, customer, customer, body, key, "replay"
                )
            elif u < P_REPLAY + P_MISMATCH:
                other = [s for s in self.plan.seats if s not in seats][:1]
                await self.send(
                    http, RESERVE, event, other, customer, customer,
                    {"eventId": event, "seatIds": other}, key, "mismatch",
                )  # fmt: skip
        if first.status == 201:
            self.remember(first.rid, customer)
            await self.fate(http, side, rng, first.rid, customer)

    async def fate(
        self, http: HttpConnection, side: HttpConnection, rng: random.Random, rid: str, owner: str
    ) -> None:
        """What becomes of a fresh hold. Few are confirmed: a confirmed seat is booked
        for good, and the hot seats must stay in play."""
        u = rng.random()
        if u < P_ABANDON:
            return  # expires: lazily when its seat is asked for again, or by the sweep
        u -= P_ABANDON
        if u < P_LATE:
            # just past its time: found due (and expired) by this very call, or expired
            # by the sweep already; 400 reservation_expired unless another connection
            # got to it first
            await asyncio.sleep(HOLD_SECONDS + rng.uniform(0.01, 0.4))
            await self.act(http, rng, rid, owner, rng.choice((CONFIRM, CANCEL, EXTEND)))
            return
        u -= P_LATE
        if u < 0.02:
            await self.act(http, rng, rid, owner, CONFIRM)
        elif u < 0.38:
            await self.act(http, rng, rid, owner, CANCEL)
        elif u < 0.53:
            await self.act(http, rng, rid, owner, EXTEND)
            v = rng.random()
            if v < 0.5:
                await self.act(http, rng, rid, owner, CANCEL)
            elif v < 0.6:
                await self.act(http, rng, rid, owner, CONFIRM)
        else:  # two transitions of one hold at once, over two connections
            first, second = rng.choice(RACES)
            await asyncio.gather(
                self.act(http, rng, rid, owner, first), self.act(side, rng, rid, owner, second)
            )

    async def act(
        self, http: HttpConnection, rng: random.Random, rid: str, owner: str, op: str
    ) -> None:
        # extend is the owner's decision only (an admin token gets 404 there)
        customer = ADMIN if op != EXTEND and rng.random() < P_ADMIN else owner
        body = {"seconds": EXTEND_SECONDS} if op == EXTEND else None
        key = self.new_key() if rng.random() < P_KEYED else ""
        await self.send(http, op, rid, [], customer, owner, body, key, "first" if key else "")
        if key:
            u = rng.random()
            if u < P_REPLAY:
                await self.send(http, op, rid, [], customer, owner, body, key, "replay")
            elif u < P_REPLAY + P_MISMATCH:
                # the same key on another transition of the same reservation
                other = CANCEL if op != CANCEL else CONFIRM
                await self.send(http, other, rid, [], customer, owner, None, key, "mismatch")

    async def connection(self, conn: int) -> None:
        rng = random.Random(self.plan.seed * 1_000_003 + self.proc * 1009 + conn)
        http = HttpConnection(self.plan.host, self.plan.port)
        side = HttpConnection(self.plan.host, self.plan.port)  # for races
        await http.open()
        await side.open()
        await asyncio.sleep(max(0.0, self.plan.start - time.time()))
        try:
            while self.more():
                if not self.recent or rng.random() < P_RESERVE:
                    await self.reserve_flow(http, side, rng, conn)
                else:  # someone's recent reservation: live, or long decided
                    rid, owner = rng.choice(self.recent)
                    await self.act(http, rng, rid, owner, rng.choice(ACTS))
        finally:
            http.close()
            side.close()

    async def run(self) -> None:
        await asyncio.gather(*(self.connection(c) for c in range(self.plan.connections)))


def client_main(plan: LoadPlan, proc: int) -> None:
    """A client process: runs its share of the load, then writes its answers."""
    client = Client(plan, proc)
    try:
        import uvloop  # uvicorn[standard] brings it: a cheaper event loop for the load

        uvloop.run(client.run())
    except ImportError:
        asyncio.run(client.run())
    out = Path(plan.out_dir) / f"answers-{proc}.json"
    out.write_bytes(orjson.dumps([list(a) for a in client.answers]))


def load_answers(paths: Iterable[Path]) -> list[Answer]:
    return [Answer(*row) for p in paths for row in orjson.loads(p.read_bytes())]


# --- the sweep process --------------------------------------------------------------------


def sweeper_main(redis_url: str, secret: str, interval: float, stop: StopEvent, out: str) -> None:
    """Runs the expiry job function (what `seatres worker` runs for the cron job) every
    `interval` seconds until `stop` is set; writes its totals to `out`."""
    for name in [k for k in os.environ if k.startswith("SEATRES_")]:
        del os.environ[name]
    os.environ.update(
        {
            "SEATRES_REDIS_URL": redis_url,
            "SEATRES_JWT_SECRET": secret,
            # the sweep's expire script appends to the same streams: the same cap
            "SEATRES_LOG_MAX_LENGTH": str(LOG_MAX_LENGTH),
        }
    )
    from seatres.jobs.sweep import expire_due_holds

    runs, expired, longest, busy = 0, 0, 0.0, 0.0
    while not stop.is_set():
        report = expire_due_holds()  # raises SweepFailed when an event failed
        runs += 1
        expired += int(report["expired"])
        longest = max(longest, float(report["longestCallSeconds"]))
        busy += float(report["seconds"])
        stop.wait(interval)
    Path(out).write_bytes(
        orjson.dumps({"runs": runs, "expired": expired, "longestCall": longest, "busy": busy})
    )


# --- the checker --------------------------------------------------------------------------


class LogEntry(NamedTuple):
    stream_id: str
    reservation: str
    action: str
    from_state: str  # '' for reserve
    to_state: str
    by: str
    customer: str
    seats: tuple[str, ...]
    at: int

    @classmethod
    def parse(cls, stream_id: str, f: dict[str, str]) -> "LogEntry":
        return cls(
            stream_id, f["reservation"], f["action"], f["from"], f["to"], f["by"],
            f["customer"], tuple(f["seats"].split(",")), int(f["at"]),
        )  # fmt: skip


@dataclass
class EventSnapshot:
    """One event as Redis holds it after the run, plus GET /events/{id}'s counts."""

    event_id: str
    seats: list[str]
    log: list[LogEntry]
    reservations: dict[str, dict[str, Any]]  # the reservations hash, decoded
    claims: dict[str, str]
    holds: dict[str, float]
    customers: dict[str, int]
    held: int
    booked: int
    summary: dict[str, int] | None = None  # {"total", "free", "held", "booked"}


@dataclass(frozen=True)
class Rules:
    hold_ms: int = HOLD_SECONDS * 1000
    extend_ms: int = EXTEND_SECONDS * 1000
    max_hold_ms: int = MAX_HOLD_SECONDS * 1000
    max_seats_per_customer: int = MAX_SEATS_PER_CUSTOMER


@dataclass
class Timeline:
    """A reservation as its log entries tell it, replayed in stream order."""

    rid: str
    event_id: str
    customer: str
    seats: tuple[str, ...]
    created_at: int
    expires_at: int
    state: str = RESERVED
    entries: list[LogEntry] = field(default_factory=list)
    # extend at -> expiresAt after it (two extensions can land in one millisecond)
    expiry_after: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    ended_at: int | None = None  # when it stopped being active (cancel, expire)
    live_until: float = 0.0  # when its seats stopped being taken (computed after replay)


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    def add(self, problem: str) -> None:
        self.problems.append(problem)


def iso_ms(value: str) -> int:
    """An ISO time of the API (millisecond precision) as ms since the epoch."""
    return round(datetime.fromisoformat(value).timestamp() * 1000)


def check(rules: Rules, events: Sequence[EventSnapshot], answers: Sequence[Answer]) -> Verdict:
    """Every problem of a run: the log replayed against the state machine and the
    one-active-reservation rule, the final Redis state against the replay, and every
    answer against the history."""
    v = Verdict()
    for event in events:
        _final_state(event, _replay(rules, event, v), v)
    _answers(rules, answers, v)
    return v


def _replay(rules: Rules, event: EventSnapshot, v: Verdict) -> dict[str, Timeline]:
    """Replays one event's log stream in stream order: allowed transitions only, none out
    of a terminal state, times consistent with the hold, and each seat's occupancy
    intervals (reserve up to cancel / expire; confirmed: for good) never overlapping."""
    known_seats = set(event.seats)
    timelines: dict[str, Timeline] = {}
    active: Counter[str] = Counter()  # customer -> seats in active reservations
    intervals: dict[str, list[tuple[int, float, str]]] = defaultdict(list)  # seat -> spans
    opened: dict[tuple[str, str], int] = {}  # (seat, rid) -> index of its open span
    where = f"event {event.event_id}"
    for pos, e in enumerate(event.log):
        v.stats[f"log {e.action}"] += 1
        t = timelines.get(e.reservation)
        if e.action == RESERVE:
            if t is not None:
                v.add(f"{where}: {e.reservation} reserved a second time ({e.stream_id})")
                continue
            if (e.from_state, e.to_state, e.by) != ("", RESERVED, e.customer):
                v.add(f"{where}: malformed reserve entry {e}")
            if unknown := [s for s in e.seats if s not in known_seats]:
                v.add(f"{where}: {e.reservation} reserved seats not in the event: {unknown}")
            t = Timeline(
                e.reservation, event.event_id, e.customer, e.seats, e.at, e.at + rules.hold_ms
            )
            t.entries.append(e)
            timelines[e.reservation] = t
            for seat in e.seats:
                opened[seat, e.reservation] = len(intervals[seat])
                intervals[seat].append((pos, float("inf"), e.reservation))
            active[e.customer] += len(e.seats)
            limit = rules.max_seats_per_customer
            if limit and active[e.customer] > limit:
                v.add(
                    f"{where}: customer {e.customer} had {active[e.customer]} active seats "
                    f"(limit {limit}) after {e.reservation} ({e.stream_id})"
                )
            continue
        if t is None:
            v.add(
                f"{where}: {e.action} of {e.reservation} ({e.stream_id}) has no reserve "
                "entry before it (a trimmed stream, or a change of nothing)"
            )
            continue
        if (e.customer, e.seats) != (t.customer, t.seats):
            v.add(f"{where}: {e.stream_id} names another customer or seats than {t.rid}'s")
        if (e.action, e.from_state, e.to_state) not in ALLOWED or e.from_state != t.state:
            v.add(
                f"{where}: illegal transition of {t.rid}: {t.state} -[{e.action}]-> "
                f"{e.to_state} (entry says from {e.from_state or '-'}, {e.stream_id})"
            )
            continue
        expected_by = {"expire": {SYSTEM}, EXTEND: {t.customer}}.get(e.action, {t.customer, ADMIN})
        if e.by not in expected_by:
            v.add(f"{where}: {e.action} of {t.rid} by {e.by} ({e.stream_id})")
        if e.action == "expire":
            if e.at < t.expires_at:
                v.add(
                    f"{where}: {t.rid} expired at {e.at}, before its hold ended at "
                    f"{t.expires_at} ({e.stream_id})"
                )
        elif e.at >= t.expires_at:
            v.add(
                f"{where}: {e.action} of {t.rid} at {e.at}, after its hold ended at "
                f"{t.expires_at} ({e.stream_id})"
            )
        t.entries.append(e)
        t.state = e.to_state
        if e.action == EXTEND:
            t.expires_at += rules.extend_ms
            t.expiry_after[e.at].append(t.expires_at)
            if t.expires_at - t.created_at > rules.max_hold_ms:
                v.add(f"{where}: {t.rid} extended past the longest hold ({e.stream_id})")
        elif e.action != CONFIRM:  # cancel, expire: the seats are free again
            t.ended_at = e.at
            active[t.customer] -= len(t.seats)
            for seat in t.seats:
                i = opened.pop((seat, t.rid))
                start, _, rid = intervals[seat][i]
                intervals[seat][i] = (start, pos, rid)
    for seat, spans in sorted(intervals.items()):
        spans.sort()
        latest_end, holder = -1.0, ""
        for start, end, rid in spans:
            if start < latest_end:
                v.add(
                    f"{where}: seat {seat} had two active reservations at once: {holder} "
                    f"and {rid} (log entry {event.log[start].stream_id})"
                )
            if end > latest_end:
                latest_end, holder = end, rid
    for t in timelines.values():
        if t.state == CONFIRMED:
            t.live_until = float("inf")
        elif t.state == CANCELLED:
            t.live_until = float(t.ended_at or 0)
        else:  # a hold is taken until its time is up, expired yet or not
            t.live_until = float(t.expires_at)
    v.timelines.update(timelines)
    v.stats["log entries"] += len(event.log)
    return timelines


def _final_state(event: EventSnapshot, mine: dict[str, Timeline], v: Verdict) -> None:
    """Redis after the run agrees with the replayed log (`mine`: the event's timelines),
    and the log is complete: each reservation's own history is in the stream, in order."""
    where = f"event {event.event_id}"
    if set(event.reservations) != set(mine):
        only_hash = sorted(set(event.reservations) - set(mine))[:5]
        only_log = sorted(set(mine) - set(event.reservations))[:5]
        v.add(f"{where}: reservations hash and log disagree: {only_hash} / {only_log}")
    history_entries = 0
    for rid, r in event.reservations.items():
        history_entries += len(r.get("history", []))
        t = mine.get(rid)
        if t is None:
            continue
        seen = (r["state"], tuple(r["seatIds"]), r["customerId"], r["createdAt"], r["expiresAt"])
        replayed = (t.state, t.seats, t.customer, t.created_at, t.expires_at)
        if seen != replayed:
            v.add(f"{where}: {rid} is {seen} in Redis, {replayed} by its log")
        history = [
            (h["action"], h.get("from", ""), h["to"], h["by"], h["at"]) for h in r["history"]
        ]
        logged = [(e.action, e.from_state, e.to_state, e.by, e.at) for e in t.entries]
        if history != logged:
            v.add(f"{where}: {rid}'s history {history} differs from its log {logged}")
    if history_entries != len(event.log):
        v.add(
            f"{where}: {history_entries} history entries but {len(event.log)} log entries "
            "(the stream was trimmed, or a change was not logged)"
        )
    claims = {s: rid for rid, t in mine.items() if t.state in ACTIVE for s in t.seats}
    if event.claims != claims:
        diff = sorted(set(event.claims.items()) ^ set(claims.items()))[:5]
        v.add(f"{where}: claims differ from the active reservations: {diff}")
    holds = {rid: float(t.expires_at) for rid, t in mine.items() if t.state == RESERVED}
    if event.holds != holds:
        v.add(f"{where}: holds set {len(event.holds)} entries, {len(holds)} RESERVED by the log")
    customers: Counter[str] = Counter()
    for t in mine.values():
        if t.state in ACTIVE:
            customers[t.customer] += len(t.seats)
    if event.customers != {c: n for c, n in customers.items() if n}:
        v.add(f"{where}: per-customer seat counts differ from the active reservations")
    held = sum(len(t.seats) for t in mine.values() if t.state == RESERVED)
    booked = sum(len(t.seats) for t in mine.values() if t.state == CONFIRMED)
    if (event.held, event.booked) != (held, booked):
        v.add(
            f"{where}: counters say held {event.held} booked {event.booked}, the "
            f"reservations {held} and {booked}"
        )
    if event.summary is not None:
        total = len(event.seats)
        # the run ends with every hold expired: nothing is held any more
        expected = {"total": total, "free": total - booked, "held": 0, "booked": booked}
        if event.summary != expected:
            v.add(f"{where}: GET /events says {event.summary}, the reservations {expected}")
    v.stats["reservations"] += len(event.reservations)


def _window(a: Answer) -> tuple[float, float]:
    return a.sent - CLOCK_SLACK_MS, a.received + CLOCK_SLACK_MS


def _answers(rules: Rules, answers: Sequence[Answer], v: Verdict) -> None:
    """Every answer against the replayed history: 201s and 200s correspond to changes
    that happened while they were in flight (or before), refusals to states that held."""
    judge = _AnswerJudge(rules, v)
    for a in answers:
        judge.answer(a)
    judge.every_change_answered()


class _AnswerJudge:
    def __init__(self, rules: Rules, v: Verdict) -> None:
        self.rules, self.v, self.timelines = rules, v, v.timelines
        self.created: Counter[str] = Counter()  # rid -> 201s that were not replays
        self.changed: dict[tuple[str, int], list[Answer]] = defaultdict(list)  # (rid, at)
        self.firsts: dict[tuple[str, str], Answer] = {}  # (customer, key) -> first answer
        # (event, seat) -> the reservations that ever had it
        self.holders: dict[tuple[str, str], list[Timeline]] = defaultdict(list)
        for t in self.timelines.values():
            for seat in t.seats:
                self.holders[t.event_id, seat].append(t)

    def bad(self, a: Answer, why: str) -> None:
        self.v.add(f"{a.op} {a.target} by {a.customer} -> {a.status} {a.code}: {why}")

    def answer(self, a: Answer) -> None:
        stats = self.v.stats
        stats[f"{a.op} {a.status} {a.code}".rstrip()] += 1
        stats["requests"] += 1
        stats["replayed"] += a.replayed
        if a.role == "first":
            self.firsts[a.customer, a.key] = a
            if a.replayed:
                self.bad(a, "the first request with a key was answered as a replay")
        elif a.role == "replay":
            first = self.firsts.get((a.customer, a.key))
            same = first is not None and first._replace(
                role="", replayed=True, sent=0, received=0
            ) == a._replace(role="", sent=0, received=0)
            if not same:
                self.bad(a, f"a resent request got another answer than the first: {first}")
            return  # the first answer is judged on its own
        elif a.role == "mismatch":
            if (a.status, a.code) != (422, "idempotency_key_mismatch"):
                self.bad(a, "a key reused for another request was not refused")
            return
        if a.status == 0:
            self.bad(a, "no answer")
        elif a.status == 201 and a.op == RESERVE:
            self.reserved(a)
        elif a.status == 200 and a.op != RESERVE:
            self.transitioned(a)
        elif (a.status, a.op, a.code) == (409, RESERVE, "seat_unavailable"):
            self.conflict(a)
        elif (a.status, a.code) == (400, "limit_exceeded") and a.op in (RESERVE, EXTEND):
            self.over_limit(a)
        elif (a.status, a.code) == (400, "reservation_expired") and a.op != RESERVE:
            self.refused(a, {EXPIRED})
        elif (a.status, a.code) == (400, "invalid_transition") and a.op != RESERVE:
            self.refused(a, {CONFIRM: {CANCELLED}, CANCEL: {CONFIRMED}}.get(a.op, ENDED))
        else:
            self.bad(a, "unexpected answer")

    def body(self, a: Answer) -> Timeline | None:
        """The reservation of a 2xx body, if its body agrees with the log."""
        t = self.timelines.get(a.rid)
        if t is None:
            self.bad(a, f"{a.rid} has no reserve in any log")
            return None
        if iso_ms(a.created) != t.created_at or a.body_seats != list(t.seats):
            self.bad(a, f"the body disagrees with {a.rid}'s log")
        if iso_ms(a.updated) > _window(a)[1]:
            self.bad(a, f"answered before the change at {iso_ms(a.updated)} happened")
        return t

    def reserved(self, a: Answer) -> None:
        t = self.body(a)
        if t is None:
            return
        if (a.state, t.customer, a.seats) != (RESERVED, a.customer, list(t.seats)):
            self.bad(a, "not a new RESERVED reservation of these seats for the customer")
        if iso_ms(a.expires) != t.created_at + self.rules.hold_ms:
            self.bad(a, "the hold's length differs from the rules")
        if not a.replayed:
            self.created[a.rid] += 1
            lo, hi = _window(a)
            if not lo <= t.created_at <= hi:
                self.bad(a, f"{a.rid} was created at {t.created_at}, not while in flight")

    def transitioned(self, a: Answer) -> None:
        t = self.body(a)
        if t is None:
            return
        updated = iso_ms(a.updated)
        target = {CONFIRM: CONFIRMED, CANCEL: CANCELLED, EXTEND: RESERVED}[a.op]
        entry = next((e for e in t.entries if e.action == a.op and e.at == updated), None)
        if a.state != target or a.rid != a.target or entry is None:
            self.bad(a, f"no {a.op} of {a.rid} at {updated} in its log ({t.state} now)")
            return
        if a.op == EXTEND and iso_ms(a.expires) not in t.expiry_after[updated]:
            self.bad(a, f"expiresAt differs from the {t.expiry_after[updated]} of its log")
        if a.op != EXTEND and t.state != target:
            self.bad(a, f"{a.rid} ended {t.state}")
        if not a.replayed:
            self.changed[a.rid, updated].append(a)

    def conflict(self, a: Answer) -> None:
        if not a.body_seats or not set(a.body_seats) <= set(a.seats):
            self.bad(a, f"conflicting seats {a.body_seats} are not the seats asked for")
        lo, hi = _window(a)
        for seat in a.body_seats:
            # some reservation had it, live, at a moment while the request was in flight
            holders = self.holders[a.target, seat]
            if not any(h.created_at <= hi and lo < h.live_until for h in holders):
                self.bad(a, f"seat {seat} was free all the time the request was in flight")

    def over_limit(self, a: Answer) -> None:
        if a.op == RESERVE:
            return  # depends on the customer's live holds at that moment: not replayed
        t = self.timelines.get(a.target)
        # holds only grow longer: if the refused extension fits even the last expiresAt,
        # it fitted when it was refused
        if (
            t is None
            or t.expires_at + self.rules.extend_ms - t.created_at <= self.rules.max_hold_ms
        ):
            self.bad(a, "refused an extension that fits the longest hold")

    def refused(self, a: Answer, ended: frozenset[str] | set[str]) -> None:
        """A refusal because the reservation had ended: it did, and before the answer."""
        t = self.timelines.get(a.target)
        if t is None or t.state not in ended or t.entries[-1].at > _window(a)[1]:
            state = t.state if t is not None else "unknown"
            self.bad(a, f"{a.target} was not {'/'.join(sorted(ended))} by then ({state})")

    def every_change_answered(self) -> None:
        """Every reserve, confirm, cancel and extend in the logs was answered to the
        client that asked for it, while its request was in flight."""
        for t in self.timelines.values():
            if self.created[t.rid] != 1:
                self.v.add(
                    f"{t.rid} was reserved once but got {self.created[t.rid]} new 201 answers"
                )
            for e in t.entries[1:]:
                if e.action == "expire":
                    continue
                answered = self.changed.get((t.rid, e.at), [])
                if not any(_window(a)[0] <= e.at <= _window(a)[1] for a in answered):
                    self.v.add(f"{e.action} of {t.rid} at {e.at} has no 200 answer sent before it")

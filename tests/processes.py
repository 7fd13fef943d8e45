"""Starting real `seatres` processes for tests, and stopping them by PID."""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

from seatres.embedded import free_port
from tests.conftest import SECRET


def seatres_env(redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of a child `seatres` process: this one's, with SEATRES_* replaced."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEATRES_")}
    env["SEATRES_REDIS_URL"] = redis_url
    env["SEATRES_JWT_SECRET"] = SECRET
    for key, value in settings.items():
        env[f"SEATRES_{key.upper()}"] = value
    return env


@contextmanager
def seatres_process(
    args: list[str], env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m seatres.cli ARGS` with output to log_path; terminated (then killed) by PID."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seatres.cli", *args],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def api_server(redis_url: str, log_path: Path, workers: int = 1, **settings: str) -> Iterator[str]:
    """A real `seatres serve` on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    env = seatres_env(redis_url, **settings)
    args = ["serve", "--port", str(port), "--workers", str(workers)]
    with seatres_process(args, env, log_path) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seatres serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float,
    logs: Sequence[Path] = (),
    interval: float = 0.05,
) -> None:
    """Polls `check` until it is true; on timeout fails with the tails of the logs of the
    processes involved."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(interval)

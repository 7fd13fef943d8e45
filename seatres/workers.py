"""Several uvicorn workers on one port, each accepting on a socket of its own.

uvicorn's own `--workers` shares one listening socket among its processes, and whichever
worker wakes first takes the connection: when a flash sale opens dozens of connections
at once, one worker can end up with nearly all of them while the other idles (the bench
saw 60 + 4 of 64). With SO_REUSEPORT every worker listens on its own socket bound to the
same port and the kernel spreads new connections over them evenly, by a hash of the
client's address and port.

The supervisor here is deliberately small: it starts the workers, restarts one that dies,
and passes SIGINT / SIGTERM on (each uvicorn server shuts down gracefully by itself)."""

import logging
import multiprocessing
import os
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("seatres.workers")

# A worker that exits with this code failed before serving (bad app, bad settings): a
# restart would fail the same way, so the supervisor stops instead of looping.
STARTUP_FAILURE = 3


@dataclass(frozen=True)
class WorkerSpec:
    host: str
    port: int
    uvicorn_options: dict[str, Any]  # uvicorn.Config keyword arguments (picklable)


def _bound_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """Bound, not yet listening: uvicorn listens on it once the worker's app has started
    (its lifespan startup ran). The kernel hands a connection only to a listening
    socket of the port, so none waits in the queue of a worker still importing and
    starting the app (about a second: at start-up, or while a dead worker is replaced),
    and a worker that fails to start never held any."""
    return _bound_socket(host, port)


def _worker_main(spec: WorkerSpec) -> None:
    import uvicorn

    try:
        sock = reuse_port_socket(spec.host, spec.port)
        config = uvicorn.Config(**spec.uvicorn_options)
    except Exception:
        logging.getLogger("seatres.workers").exception("worker could not start")
        raise SystemExit(STARTUP_FAILURE) from None
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def check_port(host: str, port: int) -> None:
    """Fails now, in the supervisor, when anything listens on the port, another
    `seatres serve` included: the probe does not set SO_REUSEPORT, so it cannot share the
    port with that server's workers, as theirs would (the kernel would then split the
    connections between two servers without a word). It never listens, so no connection
    is ever queued on it, and it is closed before the workers bind."""
    _bound_socket(host, port, reuse_port=False).close()


def run(spec: WorkerSpec, workers: int) -> None:
    """Runs `workers` uvicorn processes until SIGINT or SIGTERM; returns when all stopped."""
    check_port(spec.host, spec.port)
    context = multiprocessing.get_context("spawn")  # a clean interpreter per worker
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start() -> BaseProcess:
        process = context.Process(target=_worker_main, args=(spec,), name="seatres-worker")
        process.start()
        log.info("started worker %s", process.pid)
        return process

    processes = [start() for _ in range(workers)]
    try:
        while not stop.wait(0.5):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping", process.pid)
                    stop.set()
                    break
                log.warning(
                    "worker %s died (exit %s), starting another", process.pid, process.exitcode
                )
                processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(p.exitcode == STARTUP_FAILURE for p in processes):
        raise SystemExit(STARTUP_FAILURE)

"""Redis's CPU per call over TCP on 127.0.0.1 and over its unix socket, alternated.

    .venv/bin/python bench/transport.py [--rounds 4] [--calls 600000] [--pipeline 4]

Starts one embedded Redis listening on both (seatres.embedded.RedisServer with
unix_socket, as `seatres serve` and `seatres dev` start it) and runs redis-benchmark
GETs through each in turn, 64 connections, `--pipeline` commands a write (the service's
batches hold up to 8). Prints, for each run, Redis's CPU µs per call (from /proc) and
calls/s, then the medians. Why it matters: Redis runs every request of the service one
after the other, so what each call costs it outside the script bounds them all."""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import burst

from seatres.embedded import RedisServer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/transport.py", description=__doc__)
    p.add_argument("--rounds", type=int, default=4, help="runs of each transport (4)")
    p.add_argument("--calls", type=int, default=600_000, help="GETs a run (600000)")
    p.add_argument("--pipeline", type=int, default=4, help="commands a write (4)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    burst.ensure_tools()
    folder = Path(tempfile.mkdtemp(prefix="seatres-transport-"))
    server = RedisServer(folder, appendfsync="everysec", unix_socket=True).start()
    if server.socket_path is None:
        print("no unix socket: the temporary folder's path is too long", file=sys.stderr)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        return 2
    where = {
        "tcp": ["-h", "127.0.0.1", "-p", str(server.port)],
        "unix": ["-s", str(server.socket_path)],
    }
    runs: dict[str, list[tuple[float, float]]] = {"tcp": [], "unix": []}
    try:
        assert server.process is not None
        for r in range(args.rounds):
            for transport in ("tcp", "unix") if r % 2 == 0 else ("unix", "tcp"):
                cpu = burst.cpu_seconds(server.process.pid)
                started = time.monotonic()
                cmd = ["redis-benchmark", *where[transport], "-c", "64", "-n", str(args.calls)]
                cmd += ["-P", str(args.pipeline), "-q", "GET", "k"]
                subprocess.run(cmd, check=True, capture_output=True)
                seconds = time.monotonic() - started
                us = (burst.cpu_seconds(server.process.pid) - cpu) / args.calls * 1e6
                rate = args.calls / seconds
                runs[transport].append((us, rate))
                print(f"{transport:4}  Redis CPU {us:5.2f} µs a call  {rate:9,.0f} calls/s")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    for transport, rows in runs.items():
        us = statistics.median(row[0] for row in rows)
        rate = statistics.median(row[1] for row in rows)
        print(f"{transport:4}  medians: {us:.2f} µs a call, {rate:,.0f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

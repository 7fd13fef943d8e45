"""The `seatres` command."""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError

from seatres import logs, tokens
from seatres import workers as seatres_workers
from seatres.domain.ids import CUSTOMER_ID_PATTERN
from seatres.embedded import EmbeddedRedisError, RedisServer
from seatres.settings import Settings, describe, local_secret


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        sys.exit(describe(exc))


@contextmanager
def _redis_for(settings: Settings) -> Iterator[Settings]:
    """The settings to run with: as given, or pointing at a freshly started embedded Redis
    (children started from here inherit the URL and the secret through the environment)."""
    if settings.redis_url is not None:
        yield settings
        return
    server = RedisServer(
        settings.data_dir / "redis",
        port=settings.embedded_redis_port,
        unix_socket=settings.embedded_redis_unix_socket,
    )
    try:
        server.start()
    except EmbeddedRedisError as exc:
        sys.exit(f"seatres: {exc}")
    os.environ["SEATRES_REDIS_URL"] = server.local_url
    os.environ["SEATRES_JWT_SECRET"] = local_secret(settings.data_dir)
    also = "" if server.socket_path is None else f", and {server.url}"
    print(
        f"seatres: embedded Redis at {server.local_url}{also} (data in {server.data_dir})",
        flush=True,
    )
    try:
        yield _settings()
    finally:
        server.stop()


@contextmanager
def _metrics_dir() -> Iterator[None]:
    """prometheus-client's multiprocess mode: every uvicorn worker writes its samples to
    files in a folder of this server's own, and /metrics adds them up."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # the operator chose one
        yield
        return
    with tempfile.TemporaryDirectory(prefix="seatres-metrics-") as path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _run_api(settings: Settings, host: str, port: int, workers: int) -> None:
    options: dict[str, object] = {
        "app": "seatres.http.app:create_app",
        "factory": True,
        "log_level": settings.log_level,
        "log_config": logs.dict_config(settings.log_level),
        # seatres logs each request itself (seatres/http/observe.py), with its request id
        "access_log": False,
        # nothing in seatres reads the client's address: skip uvicorn's X-Forwarded-*
        # middleware, one layer less on every request
        "proxy_headers": False,
        # uvicorn's httptools protocol, with a connection's writes joined once a loop
        # iteration: one system call and one TCP segment per answer
        "http": "seatres.http.protocol:HttpProtocol",
    }
    with _metrics_dir():
        if workers == 1:
            import uvicorn

            uvicorn.run(host=host, port=port, **options)  # type: ignore[arg-type]
        else:
            seatres_workers.run(seatres_workers.WorkerSpec(host, port, options), workers)


@contextmanager
def _children(commands: Sequence[str]) -> Iterator[None]:
    """`seatres <command>` child processes, stopped by PID on the way out."""
    procs = [subprocess.Popen([sys.executable, "-m", "seatres.cli", c]) for c in commands]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cmd_serve(args: argparse.Namespace) -> None:
    base = _settings()
    with _redis_for(base) as settings:
        _run_api(
            settings,
            args.host or settings.host,
            args.port if args.port is not None else settings.port,
            args.workers or settings.workers,
        )


def cmd_dev(args: argparse.Namespace) -> None:
    base = _settings()
    with _redis_for(base) as settings:
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        secret = settings.secret()
        day = 86_400
        print(f"seatres dev: API on http://{host}:{port}  (OpenAPI: /openapi.json)")
        print(f"  admin token: {tokens.mint(secret, 'admin', admin=True, ttl_seconds=day)}")
        for customer in ("alice", "bob"):
            print(f"  {customer} token: {tokens.mint(secret, customer, ttl_seconds=day)}")
        print("  (tokens last 24 h; more with `seatres token --sub NAME [--admin]`)", flush=True)
        with _children(["worker", "scheduler"]):
            _run_api(settings, host, port, 1)


def cmd_token(args: argparse.Namespace) -> None:
    settings = _settings()
    print(tokens.mint(settings.secret(), args.sub, admin=args.admin, ttl_seconds=args.ttl))


def cmd_worker(args: argparse.Namespace) -> None:
    from seatres.jobs.runner import run_worker

    run_worker(_settings(), burst=args.burst)


def cmd_scheduler(args: argparse.Namespace) -> None:
    from seatres.jobs.runner import run_scheduler

    run_scheduler(_settings(), burst=args.burst)


def cmd_inspect(args: argparse.Namespace) -> None:
    from seatres import inspection

    try:
        output = inspection.run(
            _settings(),
            args.what,
            getattr(args, "target", ""),
            as_json=args.json,
            limit=getattr(args, "limit", 10),
            all_seats=getattr(args, "all", False),
            max_keys=getattr(args, "max_keys", inspection.MAX_KEYS),
        )
    except inspection.InspectError as exc:
        sys.exit(f"seatres inspect: {exc}")
    sys.stdout.write(output)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


def _customer_id(text: str) -> str:
    if not CUSTOMER_ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError("1-128 printable ASCII characters, no spaces")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seatres", description="Redis-backed seat reservations")
    sub = p.add_subparsers(dest="command", required=True)

    def server_flags(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--host", help="default: SEATRES_HOST or 127.0.0.1")
        cmd.add_argument("--port", type=_port, help="default: SEATRES_PORT or 8000")

    serve = sub.add_parser(
        "serve", help="run the HTTP API (embedded Redis if SEATRES_REDIS_URL is unset)"
    )
    server_flags(serve)
    serve.add_argument("--workers", type=_positive, help="default: SEATRES_WORKERS or 1")
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser(
        "dev", help="embedded Redis + API + expiry worker and scheduler, with tokens"
    )
    server_flags(dev)
    dev.set_defaults(func=cmd_dev)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--sub", required=True, type=_customer_id, help="customer id")
    token.add_argument("--admin", action="store_true", help="add scope seatres:admin")
    token.add_argument(
        "--ttl", type=_positive, default=3600, help="lifetime in seconds (default 3600)"
    )
    token.set_defaults(func=cmd_token)

    worker = sub.add_parser("worker", help="run an rq worker for the expiry job")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser(
        "scheduler", help="register the every-minute expiry job and run rq-scheduler"
    )
    scheduler.add_argument("--burst", action="store_true", help="one pass, then exit")
    scheduler.set_defaults(func=cmd_scheduler)

    inspect = sub.add_parser(
        "inspect", help="read-only look at the reservations' Redis (SEATRES_REDIS_URL)"
    )
    inspect.set_defaults(func=cmd_inspect)
    what = inspect.add_subparsers(dest="what", required=True)
    event = what.add_parser(
        "event", help="counters, seats by status, holds due soon, top customers, log, sweep"
    )
    event.add_argument("target", metavar="eventId")
    event.add_argument("--limit", type=_positive, default=10, help="entries per list (default 10)")
    event.add_argument("--all", action="store_true", help="list every seat of each status")
    reservation = what.add_parser(
        "reservation", help="every field, effective state, seat claims, history, log entries"
    )
    reservation.add_argument("target", metavar="reservationId")
    keys = what.add_parser("keys", help="the key schema with live counts (SCAN, bounded)")
    keys.add_argument(
        "--max-keys",
        type=_positive,
        default=100_000,
        help="stop counting a prefix after this many keys (default 100000)",
    )
    for cmd in (event, reservation, keys):
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every `with` block gets to stop what it started
    # (dev's worker and scheduler, the embedded Redis). Without a handler of ours the
    # default one kills the process outright: uvicorn shuts down gracefully on SIGTERM,
    # then raises the signal again with the handler that was there before it.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args.func(args)


if __name__ == "__main__":
    main()

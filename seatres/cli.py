"""The `seatres` command."""

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError

from seatres import tokens
from seatres.embedded import RedisServer
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
    server = RedisServer(settings.data_dir / "redis", port=settings.embedded_redis_port)
    server.start()
    os.environ["SEATRES_REDIS_URL"] = server.url
    os.environ["SEATRES_JWT_SECRET"] = local_secret(settings.data_dir)
    print(f"seatres: embedded Redis at {server.url} (data in {server.data_dir})", flush=True)
    try:
        yield _settings()
    finally:
        server.stop()


def _run_api(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "seatres.http.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
    )


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seatres", description="Redis-backed seat reservations")
    sub = p.add_subparsers(dest="command", required=True)

    def server_flags(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--host", help="default: SEATRES_HOST or 127.0.0.1")
        cmd.add_argument("--port", type=int, help="default: SEATRES_PORT or 8000")

    serve = sub.add_parser(
        "serve", help="run the HTTP API (embedded Redis if SEATRES_REDIS_URL is unset)"
    )
    server_flags(serve)
    serve.add_argument("--workers", type=int, help="default: SEATRES_WORKERS or 1")
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser(
        "dev", help="embedded Redis + API + expiry worker and scheduler, with tokens"
    )
    server_flags(dev)
    dev.set_defaults(func=cmd_dev)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--sub", required=True, help="customer id")
    token.add_argument("--admin", action="store_true", help="add scope seatres:admin")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.set_defaults(func=cmd_token)

    worker = sub.add_parser("worker", help="run an rq worker for the expiry job")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser(
        "scheduler", help="register the every-minute expiry job and run rq-scheduler"
    )
    scheduler.add_argument("--burst", action="store_true", help="one pass, then exit")
    scheduler.set_defaults(func=cmd_scheduler)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if getattr(args, "ttl", 1) <= 0:
        sys.exit("--ttl must be positive")
    args.func(args)


if __name__ == "__main__":
    main()

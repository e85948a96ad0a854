"""The Redis Cluster test harness, with real processes: three masters formed from Python share the
slots, serve every key, and a master killed and restarted keeps its keys (AOF) and rejoins; a
cluster that cannot form stops every node it started and says which log to read."""

from __future__ import annotations

import socket
from typing import cast

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from saga.errors import SagaError
from saga.testing import RedisCluster

KEYS = [f"k:{i}" for i in range(100)]


def _state(url: str) -> str:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return cast(dict[str, str], client.cluster("INFO"))["cluster_state"]


def _primary(owner: dict[str, object]) -> int:
    """The port of the master in one entry of CLUSTER SLOTS."""
    return cast(tuple[str, int], owner["primary"])[1]


def test_three_masters_serve_every_key_and_a_restarted_master_keeps_its_keys() -> None:
    with RedisCluster(3, appendonly=True) as cluster:
        ports = [node.port for node in cluster.nodes]
        assert len(cluster.urls) == 3 and cluster.url == cluster.urls[0] == f"redis://127.0.0.1:{ports[0]}/0"
        assert all(port + 10000 <= 65535 for port in ports)
        assert [_state(url) for url in cluster.urls] == ["ok"] * 3

        client = ClusterClient.from_url(cluster.url, decode_responses=True)
        try:
            for key in KEYS:
                assert client.set(key, f"value of {key}")
            assert [client.get(key) for key in KEYS] == [f"value of {key}" for key in KEYS]

            # three distinct masters hold slots, all 16384 of them between them
            slots = cast(dict[tuple[int, int], dict[str, object]], client.cluster_slots())
            owners = {_primary(owner) for owner in slots.values()}
            assert owners == set(ports)
            assert sum(end - start + 1 for start, end in slots) == 16384
            masters = cast(dict[str, dict[str, object]], client.cluster_nodes())
            assert sorted(int(address.rsplit(":", 1)[1]) for address in masters) == sorted(ports)
            assert all("master" in cast(str, node["flags"]) for node in masters.values())

            # the keys land on every master
            by_port: dict[int, list[str]] = {}
            for key in KEYS:
                slot = key_slot(key.encode())
                (port,) = [_primary(o) for (start, end), o in slots.items() if start <= slot <= end]
                by_port.setdefault(port, []).append(key)
            assert set(by_port) == set(ports)
        finally:
            client.close()

        # SIGKILL: only what the AOF (appendfsync always) holds survives
        victim = 1
        cluster.restart_node(victim, kill=True)
        assert [_state(url) for url in cluster.urls] == ["ok"] * 3
        mine = by_port[ports[victim]]
        with redis.Redis.from_url(cluster.urls[victim], decode_responses=True) as node:
            assert node.dbsize() == len(mine)
            assert [node.get(key) for key in mine] == [f"value of {key}" for key in mine]

        client = ClusterClient.from_url(cluster.url, decode_responses=True)
        try:
            assert [client.get(key) for key in KEYS] == [f"value of {key}" for key in KEYS]
            assert client.set("k:after", "written after the restart")
        finally:
            client.close()


def test_a_cluster_that_cannot_form_stops_every_node_and_names_the_log() -> None:
    cluster = RedisCluster(3)
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", cluster.nodes[2].port + 10000))  # node 2's cluster bus port
        blocker.listen()
        with pytest.raises(SagaError) as raised:
            cluster.start(timeout=10)
        message = str(raised.value)
        assert "\n" not in message and cluster.nodes[2].log in message
        assert all(node.process is None for node in cluster.nodes)
    finally:
        blocker.close()
        cluster.close()

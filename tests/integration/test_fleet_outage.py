"""A Redis outage is no instance's death: after a restart longer than the instance lease, no instance
claims another and every one keeps serving (issue 27: all three of a fleet stopped within 22 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from lingua_grpc.app import Scheduler
from tests.conftest import RedisClusterServers, start_redis_server, stop_redis_server, wait_until
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration

AOF = ("--appendonly", "yes", "--appendfsync", "always")  # the restart keeps the data, expiries included


async def test_a_redis_restart_longer_than_the_lease_leaves_every_instance_running(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path, None, *AOF)
    fleet = [
        Scheduler(
            fast_settings(
                server.url,
                "outage:",
                instance_id=name,
                instance_heartbeat_ms=100,
                instance_lease_ms=300,
                redis_backoff_max_ms=100,
            )
        )
        for name in ("sched-a", "sched-b", "sched-c")
    ]
    try:
        for scheduler in fleet:
            await scheduler.start()
        stop_redis_server(server)
        await asyncio.sleep(1.5)  # the outage itself: five leases long
        server = start_redis_server(tmp_path, server.port, *AOF)

        def recovered() -> float:
            return float(sum(s.metrics.recovered.labels("instances")._value.get() for s in fleet))

        async def all_renewed() -> bool:
            return all(s.metrics.redis_up._value.get() == 1 for s in fleet)

        await wait_until(all_renewed, timeout_s=20, what="every instance reaching Redis again")
        # A survivor that claimed would do it within a lease and a sweep of the restart: watch ten leases.
        for _ in range(30):
            await asyncio.sleep(0.1)
            assert recovered() == 0, "an instance was claimed as dead after a Redis restart"
            assert not any(s._stopped.is_set() for s in fleet), "an instance stopped"
    finally:
        for scheduler in fleet:
            await scheduler.stop(grace_s=0)
        stop_redis_server(server)


async def test_a_cluster_master_holding_an_instance_s_inbox_away_is_not_that_instance_s_death(
    redis_cluster: RedisClusterServers,
) -> None:
    """On a Redis Cluster an instance's inbox lives in a hash slot of its own, often on another master than
    the registry. That master away (paused here for 2 s, six leases) must not get the instance claimed by a
    survivor that still reads the registry: its record there is renewed all the same. (The soak's cluster
    mode found instances declared dead after one master's restart.)"""
    seed = RedisCluster.from_url(redis_cluster.url)
    try:
        await seed.initialize()
        registry = seed.get_node_from_key("{registry}")
        name = next(
            f"sched-{i}" for i in range(100) if seed.get_node_from_key(f"{{i:sched-{i}}}") != registry
        )
        inbox_master = seed.get_node_from_key(f"{{i:{name}}}")
        assert inbox_master is not None
    finally:
        await seed.aclose()
    settings = dict(
        redis_cluster=True,
        instance_heartbeat_ms=100,
        instance_lease_ms=300,
        redis_socket_timeout_ms=200,
        redis_backoff_max_ms=100,
    )
    fleet = [
        Scheduler(fast_settings(redis_cluster.url, "shard-outage:", instance_id=n, **settings))
        for n in (name, "survivor")
    ]
    try:
        for scheduler in fleet:
            await scheduler.start()
        master = Redis(host=inbox_master.host, port=int(inbox_master.port))
        try:
            await master.client_pause(2000, all=True)  # that master answers nobody
        finally:
            await master.aclose()

        def recovered() -> float:
            return float(sum(s.metrics.recovered.labels("instances")._value.get() for s in fleet))

        for _ in range(30):  # the pause, then a second more
            await asyncio.sleep(0.1)
            assert recovered() == 0, "an instance was claimed while only its inbox's master was away"
            assert not any(s._stopped.is_set() for s in fleet), "an instance stopped"
    finally:
        for scheduler in fleet:
            await scheduler.stop(grace_s=0)

"""Scheduler instances sharing one Redis see each other: each records itself with a lease, its address and
what it holds; a clean stop removes it, a dead one shows as not alive."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc
from lingua_grpc.registry import LanguagePair
from lingua_grpc.store import RegistryKeys
from node_agent.agent import AgentConfig, NodeAgent
from node_agent.engines import SyntheticEngine
from tests.audio import tone
from tests.conftest import RedisServer, wait_until
from tests.e2e._procs import start_scheduler
from tests.integration._fleet import Fleet, answers, capabilities, collect
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration


async def list_instances(address: str) -> list[registry_pb2.SchedulerInstance]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).ListInstances(
            registry_pb2.ListInstancesRequest()
        )
    return list(reply.instances)


async def test_instances_on_one_redis_list_each_other_with_what_they_hold(
    redis_server: RedisServer, key_prefix: str
) -> None:
    settings = fast_settings(redis_server.url, key_prefix, instance_heartbeat_ms=50, instance_lease_ms=300)
    a = Scheduler(settings.with_overrides(instance_id="sched-a"))
    b = Scheduler(settings.with_overrides(instance_id="sched-b", advertise_address="sched-b.internal:443"))
    a_addr, b_addr = (await a.start()).grpc, (await b.start()).grpc
    fleet = Fleet(a_addr)
    try:
        await fleet.add("gpu-1")

        async def b_sees_the_node() -> bool:
            assert b.cache is not None
            return b.cache.current.serves(LanguagePair("en", "es"))

        await wait_until(b_sees_the_node, what="the node of sched-a in sched-b's snapshot")
        async with LinguaClient(b_addr) as client:
            session = await client.start_session("en", "es")

            async def both_report_their_holdings() -> bool:
                seen = {i.instance_id: i for i in await list_instances(b_addr)}
                return (
                    set(seen) == {"sched-a", "sched-b"}
                    and seen["sched-a"].nodes_connected == 1
                    and seen["sched-b"].sessions_open == 1
                )

            await wait_until(both_report_their_holdings, what="both instances listed with what they hold")
            listed = {i.instance_id: i for i in await list_instances(a_addr)}
            assert listed["sched-a"].address == a_addr
            assert listed["sched-b"].address == "sched-b.internal:443"
            assert all(
                i.alive and i.lease_remaining_ms > 0 and i.started_unix_ms > 0 for i in listed.values()
            )
            await session.end()
        await b.stop(grace_s=0.5)  # a clean stop leaves the list at once
        assert [i.instance_id for i in await list_instances(a_addr)] == ["sched-a"]
    finally:
        await fleet.stop()
        await a.stop(grace_s=0.5)
        await b.stop(grace_s=0.5)


async def test_an_instance_killed_with_9_is_listed_not_alive_once_its_lease_lapses(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    lease = ("--instance-heartbeat-ms", "50", "--instance-lease-ms", "300")
    a = Scheduler(
        fast_settings(
            redis_server.url,
            key_prefix,
            instance_id="sched-a",
            instance_heartbeat_ms=50,
            instance_lease_ms=300,
        )
    )
    a_addr = (await a.start()).grpc
    b = await start_scheduler(
        tmp_path,
        "--redis-url",
        redis_server.url,
        "--key-prefix",
        key_prefix,
        "--instance-id",
        "sched-b",
        *lease,
    )
    try:

        async def listed(alive: bool) -> bool:
            seen = {i.instance_id: i for i in await list_instances(a_addr)}
            if not alive and "sched-b" not in seen:
                return bool(a.metrics.recovered.labels("instances")._value.get() == 1)  # taken over already
            return "sched-b" in seen and seen["sched-b"].alive is alive

        await wait_until(lambda: listed(alive=True), what="sched-b listed alive")
        b.send(signal.SIGKILL)  # no renewal, no deregistration
        # Not alive once its lease lapsed; sched-a, a survivor, may take it over (and remove it) at once.
        await wait_until(lambda: listed(alive=False), what="sched-b listed not alive after its lease")
        redis = Redis.from_url(redis_server.url)
        try:  # and its record expires in time (or is gone already: sched-a took it over), never kept for good
            assert await redis.pttl(RegistryKeys(key_prefix).instance("sched-b")) != -1
        finally:
            await redis.aclose()
    finally:
        b.send(signal.SIGKILL)
        await a.stop(grace_s=0.5)


async def test_a_node_given_two_schedulers_moves_to_the_second_when_the_first_goes(
    redis_server: RedisServer, key_prefix: str
) -> None:
    settings = fast_settings(redis_server.url, key_prefix)
    a = Scheduler(settings.with_overrides(instance_id="sched-a"))
    b = Scheduler(settings.with_overrides(instance_id="sched-b"))
    a_addr, b_addr = (await a.start()).grpc, (await b.start()).grpc
    agent = NodeAgent(
        AgentConfig(f"{a_addr},{b_addr}", "gpu-1", capabilities(2), reconnect_initial_s=0.05),
        SyntheticEngine(),
    )
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.registered.wait(), 5)
        assert b.cache is not None

        async def held_by(instance: str) -> bool:
            assert b.cache is not None
            node = (await b.cache.refresh()).nodes.get("gpu-1")
            return node is not None and node.instance_id == instance

        await wait_until(lambda: held_by("sched-a"), what="gpu-1 on sched-a")
        await a.stop(grace_s=0.2)  # the node's stream ends: it goes to the next scheduler of its list
        await wait_until(lambda: held_by("sched-b"), what="gpu-1 moved to sched-b")
        async with LinguaClient(b_addr) as client:
            session = await client.start_session("en", "es")
            await session.send_audio(tone(400), is_final=True)
            await session.end()
            assert answers(await collect(session)) == [(0, "result")]
    finally:
        agent.drain("test over")
        await asyncio.wait_for(running, 10)
        await a.stop(grace_s=0.2)
        await b.stop(grace_s=0.2)

"""What a survivor does with a dead owner's jobs, on a real Redis with an in-process scheduler as the
survivor: jobs stay for their sessions' resume, except an attempt that never reached its node."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from lingua_grpc.app import Scheduler
from lingua_grpc.fleet import Holdings, InstanceRegistry
from lingua_grpc.jobs import JobSpec, JobState, JobStore
from lingua_grpc.registry import LanguagePair, NodeRegistry
from lingua_grpc.sessions import SessionOptions, SessionStore
from lingua_grpc.store import InstanceKeys, JobKeys, RegistryKeys, ScriptBook
from tests.conftest import RedisServer, wait_until
from tests.integration.test_lua_scripts import registration
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration

OPTIONS = SessionOptions(600, 200, 15000, 10000, True, -45, 5000)


async def test_an_attempt_assigned_just_before_its_owner_died_is_put_back_once_due_and_its_slot_freed(
    redis_server: RedisServer, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """The dead owner started the attempt (ASSIGNED, slot reserved) and died before handing it to the node.
    The survivor's takeover comes before an accept timeout passed, so it cannot tell yet; once it passed,
    the attempt goes back to CREATED for the session's resume and the slot is freed."""
    scripts = ScriptBook(redis)
    await NodeRegistry(redis, keys, scripts).register(registration("gpu-1"), "elsewhere", "c", 60_000)
    jobs = JobKeys(key_prefix)
    dead = "sched-dead"
    store = JobStore(redis, jobs, keys, scripts, 60_000, 60_000, instance=InstanceKeys(key_prefix, dead))
    await SessionStore(redis, jobs, scripts, dead, 60_000).open(
        "s1", LanguagePair("en", "es"), 16000, OPTIONS, "anonymous", "test"
    )
    await store.session_opened("s1")
    spec = JobSpec("s1", 0, LanguagePair("en", "es"), 16000, True, b"\x00\x01" * 800)
    assert (await store.reserve_and_start("gpu-1", spec, 0))[1] == 1
    await InstanceRegistry(redis, keys, scripts).heartbeat(dead, "x:1", 1, 60_000, 0, Holdings(0, 1, 1))
    survivor = Scheduler(
        fast_settings(
            redis_server.url,
            key_prefix,
            instance_id="sched-b",
            instance_heartbeat_ms=50,
            instance_lease_ms=300,
            accept_timeout_ms=1000,
        )
    )
    await survivor.start()
    try:

        async def taken_over() -> bool:
            return bool(survivor.metrics.recovered.labels("instances")._value.get() == 1)

        await wait_until(taken_over, what="the survivor took the dead owner over")
        record = await store.get(spec.job_id)
        assert record is not None and record.state is JobState.ASSIGNED, "too young to judge at the takeover"

        async def put_back() -> bool:
            r = await store.get(spec.job_id)
            return (
                r is not None and r.state is JobState.CREATED and not await redis.scard(keys.slots("gpu-1"))
            )

        await wait_until(put_back, what="the attempt back to CREATED and its slot freed")
        assert int(await redis.hget(keys.node("gpu-1"), "reserved") or 0) == 0
        assert await store.audio("s1", 0) == spec.audio, "kept for the resume"
    finally:
        await survivor.stop(grace_s=0.2)


async def test_a_job_left_running_for_a_resume_on_a_node_that_never_answers_frees_its_slot_at_the_deadline(
    redis_server: RedisServer, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """The client goes while its job runs: the job is kept for a resume, but no session watches it. A node
    that never answers must not hold the slot for good: at the job deadline the attempt is cancelled on the
    node, the job waits CREATED (its audio kept) and the slot is free."""
    from lingua_grpc.client import LinguaClient, Reconnect
    from node_agent.engines import SyntheticEngine
    from tests.audio import silence, tone
    from tests.integration._fleet import Fleet

    scheduler = Scheduler(fast_settings(redis_server.url, key_prefix, job_deadline_ms=500))
    await scheduler.start()
    assert scheduler.endpoints is not None and scheduler.dispatcher is not None
    fleet = Fleet(scheduler.endpoints.grpc)
    try:
        await fleet.add("gpu-1", SyntheticEngine(mt_latency_s=3600))  # accepts, never answers
        async with LinguaClient(scheduler.endpoints.grpc, reconnect=Reconnect(within_s=0)) as client:
            session = await client.start_session("en", "es")
            await session.send_audio(tone(400) + silence(1000))
            dispatcher = scheduler.dispatcher

            async def running() -> bool:
                return dispatcher.running == 1

            await wait_until(running, what="the job running on the node")
            session.cancel()
        store = JobStore(redis, JobKeys(key_prefix), keys, ScriptBook(redis), 60_000, 60_000)

        async def put_back() -> bool:
            r = await store.get(f"{session.session_id}:0")
            return (
                r is not None and r.state is JobState.CREATED and not await redis.scard(keys.slots("gpu-1"))
            )

        await wait_until(put_back, what="the unanswered attempt ended at its deadline, its slot free")
        agent, _ = fleet.agents["gpu-1"]
        assert agent.running_jobs == 0, "cancelled on the node"
    finally:
        await fleet.stop()
        await scheduler.stop(grace_s=0.2)

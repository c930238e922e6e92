"""Fencing and reservations against real Redis and a real scheduler, with test-driven node streams."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator

import grpc
import pytest
from redis.asyncio import Redis

from lingua_grpc._grpc import read_message
from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient
from lingua_grpc.jobs import JobState, JobStore, Reservation
from lingua_grpc.pb import node_pb2, node_pb2_grpc
from lingua_grpc.registry import NodeRegistry
from lingua_grpc.store import JobKeys, RegistryKeys, ScriptBook
from tests.audio import silence, tone
from tests.conftest import RedisServer, wait_until
from tests.integration.test_lua_scripts import LEASE_MS, registration
from tests.integration.test_scheduler_grpc import Call, connect, fast_settings, register_request

pytestmark = pytest.mark.integration


async def test_two_reservations_race_for_the_last_slot_and_exactly_one_wins(
    redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    scripts = ScriptBook(redis)
    await NodeRegistry(redis, keys, scripts).register(
        registration("gpu-1", max_concurrency=1), "i", "c", LEASE_MS
    )
    store = JobStore(redis, JobKeys(key_prefix), keys, scripts, job_ttl_ms=60_000, audio_ttl_ms=60_000)
    outcomes = await asyncio.gather(*(store.reserve("gpu-1", f"s:{i}", 1) for i in range(8)))
    assert sorted(o.value for o in outcomes) == [0] * 7 + [1]
    assert outcomes.count(Reservation.RESERVED) == 1
    winner = outcomes.index(Reservation.RESERVED)
    assert await store.reserve("gpu-1", f"s:{winner}", 1) is Reservation.ALREADY_HELD, (
        "idempotent per attempt"
    )
    assert await store.release("gpu-1", f"s:{winner}", 1)
    assert not await store.release("gpu-1", f"s:{winner}", 1), "released once"
    assert int(await redis.hget(keys.node("gpu-1"), "reserved") or -1) == 0


@pytest.fixture
async def scheduler(redis_server: RedisServer, key_prefix: str) -> AsyncIterator[Scheduler]:
    s = Scheduler(fast_settings(redis_server.url, key_prefix, accept_timeout_ms=300, job_deadline_ms=300))
    await s.start()
    yield s
    await s.stop(grace_s=0.5)


async def next_assignment(call: Call) -> node_pb2.AssignJob:
    while True:
        message: node_pb2.ConnectResponse = await asyncio.wait_for(read_message(call), 10)
        if message.WhichOneof("kind") == "assign_job":
            return message.assign_job


def result_for(a: node_pb2.AssignJob, text: str) -> node_pb2.ConnectRequest:
    return node_pb2.ConnectRequest(
        job_result=node_pb2.JobResult(
            job_id=a.job_id, attempt=a.attempt, source_text=text, translated_text=text
        )
    )


_WRITE_LOCKS: weakref.WeakKeyDictionary[Call, asyncio.Lock] = weakref.WeakKeyDictionary()


async def send(call: Call, message: node_pb2.ConnectRequest) -> None:
    """One write at a time per stream: gRPC refuses a write while another is in flight on the same call
    (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS), and the heartbeat task writes beside the test."""
    async with _WRITE_LOCKS.setdefault(call, asyncio.Lock()):
        await call.write(message)


async def heartbeat_forever(call: Call) -> None:
    while True:
        await send(call, node_pb2.ConnectRequest(heartbeat=node_pb2.Heartbeat()))
        await asyncio.sleep(0.1)  # the heartbeat interval the scheduler asked for


async def test_a_zombie_result_of_an_old_attempt_is_refused(scheduler: Scheduler) -> None:
    assert scheduler.endpoints is not None
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        zombie, _ = await connect(channel, "zombie", max_concurrency=1)
        beats = [asyncio.create_task(heartbeat_forever(zombie))]
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        first = await next_assignment(zombie)  # attempt 1: accepted, then silence past the deadline
        await send(
            zombie, node_pb2.ConnectRequest(job_accepted=node_pb2.JobAccepted(job_id=first.job_id, attempt=1))
        )

        healthy, _ = await connect(channel, "healthy", max_concurrency=1)
        beats.append(asyncio.create_task(heartbeat_forever(healthy)))
        second = await next_assignment(healthy)
        assert (second.job_id, second.attempt) == (first.job_id, 2)

        await send(zombie, result_for(first, "zombie"))  # the old attempt wakes up with an answer
        await send(healthy, result_for(second, "healthy"))
        await session.end()
        messages = [m async for m in session]
        got = [m.result for m in messages if m.HasField("result")]
        assert [(r.utterance_index, r.source_text, r.attempt, r.node_id) for r in got] == [
            (0, "healthy", 2, "healthy")
        ]
        for task in beats:
            task.cancel()

        async def zombie_result_counted_as_fenced() -> bool:
            # The two results arrive on two streams: the healthy one may reach the client before the
            # scheduler has read the zombie's.
            return scheduler.metrics.registry.get_sample_value("lingua_results_fenced_total") == 1

        await wait_until(zombie_result_counted_as_fenced, what="the zombie's result refused (fenced)")
        zombie.cancel()
        healthy.cancel()


async def test_losing_an_old_connection_of_a_node_leaves_jobs_on_its_new_one_alone(
    scheduler: Scheduler,
) -> None:
    assert scheduler.endpoints is not None and scheduler.dispatcher is not None
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        node, _ = await connect(channel, "gpu-1", max_concurrency=1)
        beat = asyncio.create_task(heartbeat_forever(node))
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        job = await next_assignment(node)
        await send(
            node, node_pb2.ConnectRequest(job_accepted=node_pb2.JobAccepted(job_id=job.job_id, attempt=1))
        )
        scheduler.dispatcher.node_lost("gpu-1", "an-older-connection-of-gpu-1")  # its detach comes late
        await send(node, result_for(job, "kept"))
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        assert [(r.source_text, r.attempt) for r in got] == [("kept", 1)]
        beat.cancel()
        node.cancel()


async def test_a_job_that_finds_its_node_full_waits_recorded_created_then_runs_on_the_next_attempt(
    scheduler: Scheduler, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """The first try reserves and starts in one round trip; when the node turns out full (a slot taken
    behind the snapshot's back), that attempt number is spent, the job waits recorded CREATED with no node,
    and runs under the next attempt once the slot frees. The client is told the attempts that reached a
    node (one), not the fencing number."""
    assert scheduler.endpoints is not None
    store = JobStore(
        redis, JobKeys(key_prefix), keys, ScriptBook(redis), job_ttl_ms=60_000, audio_ttl_ms=60_000
    )
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        node, _ = await connect(channel, "gpu-1", max_concurrency=1)
        beat = asyncio.create_task(heartbeat_forever(node))
        assert await store.reserve("gpu-1", "elsewhere:0", 1) is Reservation.RESERVED
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        job_id = f"{session.session_id}:0"

        async def waiting_without_a_node() -> bool:
            record = await store.get(job_id)
            return record is not None and (record.state, record.attempt, record.node_id) == (
                JobState.CREATED,
                1,
                "",
            )

        await wait_until(waiting_without_a_node, what="job recorded CREATED after its node was full")
        assert await store.release("gpu-1", "elsewhere:0", 1)
        job = await next_assignment(node)
        assert (job.job_id, job.attempt) == (job_id, 2)
        await send(node, result_for(job, "after the wait"))
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        # The fencing number 1 was spent on the full node, but the job reached a node once: the client and
        # the record say attempt 1 (issue 19: "attempt 2" for a job that ran once).
        assert [(r.source_text, r.attempt) for r in got] == [("after the wait", 1)]
        record = await store.get(job_id)
        assert record is not None and (record.state, record.attempt) == (JobState.COMPLETED, 2)
        assert record.fields.get("attempts") == "1"
        beat.cancel()
        node.cancel()


async def test_a_result_whose_job_record_was_lost_runs_the_job_again_instead_of_losing_it(
    scheduler: Scheduler, redis: Redis, key_prefix: str
) -> None:
    """Redis lost the job's record (restart without data) while the node ran it: the result cannot be
    recorded, so the job runs again (recorded anew) and the client still gets exactly one answer."""
    assert scheduler.endpoints is not None
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        node, _ = await connect(channel, "gpu-1", max_concurrency=2)
        beat = asyncio.create_task(heartbeat_forever(node))
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        first = await next_assignment(node)
        assert await redis.delete(JobKeys(key_prefix).job(session.session_id, 0)) == 1
        await send(node, result_for(first, "unrecorded"))
        again = await next_assignment(node)
        assert again.job_id == first.job_id
        await send(node, result_for(again, "recorded"))
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        assert [r.source_text for r in got] == ["recorded"]
        beat.cancel()
        node.cancel()


async def test_a_client_leaving_while_its_job_is_being_placed_leaves_the_job_running_and_no_slot_held(
    redis_server: RedisServer, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """The client leaves while the scheduler waits on Redis to reserve a slot for its job (Redis is held
    with CLIENT PAUSE): the session lives on for a resume, so the placement completes and the job runs on;
    its result is recorded for the resume, and its slot is freed then (a slot was held for good once)."""
    scheduler = Scheduler(fast_settings(redis_server.url, key_prefix, heartbeat_interval_ms=2000))
    await scheduler.start()
    assert scheduler.endpoints is not None
    store = JobStore(
        redis, JobKeys(key_prefix), keys, ScriptBook(redis), job_ttl_ms=60_000, audio_ttl_ms=60_000
    )
    try:
        async with (
            grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
            LinguaClient(scheduler.endpoints.grpc) as client,
        ):
            node, _ = await connect(channel, "gpu-1", max_concurrency=1)
            session = await client.start_session("en", "es")
            trips = scheduler.metrics.registry.get_sample_value
            before = trips("lingua_redis_round_trips_total", {"operation": "reserve_start"}) or 0.0
            await redis.client_pause(400, all=False)  # write commands (scripts too) wait 400 ms
            await session.send_audio(tone(300) + silence(100), is_final=True)

            async def placing() -> bool:
                now = trips("lingua_redis_round_trips_total", {"operation": "reserve_start"}) or 0.0
                return now > before

            await wait_until(placing, what="the job's reservation sent while Redis is paused")
            session.cancel()  # the client leaves mid-placement
            assignment = await next_assignment(node)
            await send(node, result_for(assignment, "recorded for the resume"))

            async def settled() -> bool:
                record = await store.get(f"{session.session_id}:0")
                reserved = int(await redis.hget(keys.node("gpu-1"), "reserved") or 0)
                return record is not None and record.state is JobState.COMPLETED and reserved == 0

            await wait_until(settled, what="job COMPLETED and its slot free")
            record = await store.get(f"{session.session_id}:0")
            assert record is not None and record.fields["source_text"] == "recorded for the resume"
            assert await redis.scard(keys.slots("gpu-1")) == 0
            node.cancel()
    finally:
        await scheduler.stop(grace_s=0.5)


async def test_a_result_that_cannot_be_recorded_runs_again_and_its_slot_is_freed_once_redis_answers(
    redis_server: RedisServer, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """Redis refuses the scheduler's scripts while a node's result comes in (an ACL change stands in for an
    outage): the job is not lost, it runs again once Redis answers, and the slot of the unrecorded attempt
    is freed by the release that kept retrying."""
    scheduler = Scheduler(fast_settings(redis_server.url, key_prefix, heartbeat_interval_ms=2000))
    await scheduler.start()
    assert scheduler.endpoints is not None
    try:
        async with (
            grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
            LinguaClient(scheduler.endpoints.grpc) as client,
        ):
            node, _ = await connect(channel, "gpu-1", max_concurrency=2)
            beat = asyncio.create_task(heartbeat_forever(node))  # the node stays: its slots are not reset
            session = await client.start_session("en", "es")
            await session.send_audio(tone(300) + silence(100), is_final=True)
            first = await next_assignment(node)
            await redis.acl_setuser("default", enabled=True, nopass=True, commands=["-evalsha"])
            try:
                await send(node, result_for(first, "unrecorded"))
                sample = scheduler.metrics.registry.get_sample_value

                async def release_refused() -> bool:
                    sent_back = sample("lingua_job_redispatches_total") or 0
                    refused = sample("lingua_redis_errors_total", {"operation": "release"}) or 0
                    return sent_back >= 1 and refused >= 1

                await wait_until(release_refused, what="the job sent back, its slot's release refused")
            finally:
                await redis.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"])
            again = await next_assignment(node)
            assert again.job_id == first.job_id
            await send(node, result_for(again, "recorded"))
            await session.end()
            got = [m.result for m in [m async for m in session] if m.HasField("result")]
            assert [r.source_text for r in got] == ["recorded"]

            async def slots_free() -> bool:
                return await redis.scard(keys.slots("gpu-1")) == 0

            await wait_until(slots_free, what="both attempts' slots freed")
            assert int(await redis.hget(keys.node("gpu-1"), "reserved") or -1) == 0, "node still registered"
            beat.cancel()
            node.cancel()
    finally:
        await scheduler.stop(grace_s=0.5)


def running(*jobs: node_pb2.AssignJob) -> list[node_pb2.RunningJob]:
    return [node_pb2.RunningJob(job_id=j.job_id, attempt=j.attempt) for j in jobs]


async def test_a_takeover_keeps_the_jobs_the_node_says_it_runs_and_reruns_the_rest(
    scheduler: Scheduler,
) -> None:
    """A node that opens a new stream while its old one is still up (it thinks the old one dead) keeps the
    attempts it lists in `running_jobs`; an attempt it does not list runs again elsewhere."""
    assert scheduler.endpoints is not None
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        old, _ = await connect(channel, "gpu-1", max_concurrency=2)
        beats = [asyncio.create_task(heartbeat_forever(old))]
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        kept = await next_assignment(old)
        await session.send_audio(tone(300) + silence(100), is_final=True)
        forgotten = await next_assignment(old)
        for job in (kept, forgotten):
            await send(
                old, node_pb2.ConnectRequest(job_accepted=node_pb2.JobAccepted(job_id=job.job_id, attempt=1))
            )

        request = register_request("gpu-1", max_concurrency=2)
        request.register.running_jobs.extend(running(kept))  # it still runs `kept` only
        new: Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
        await send(new, request)
        assert (await asyncio.wait_for(read_message(new), 5)).WhichOneof("kind") == "registered"
        beats.append(asyncio.create_task(heartbeat_forever(new)))
        other, _ = await connect(channel, "gpu-2", max_concurrency=1)
        beats.append(asyncio.create_task(heartbeat_forever(other)))

        rerun = await next_assignment(other)  # the unlisted attempt, run again
        assert (rerun.job_id, rerun.attempt) == (forgotten.job_id, 2)
        await send(other, result_for(rerun, "rerun"))
        await send(new, result_for(kept, "kept"))  # the listed one answers on the new stream
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        assert [(r.utterance_index, r.source_text, r.attempt, r.node_id) for r in got] == [
            (0, "kept", 1, "gpu-1"),
            (1, "rerun", 2, "gpu-2"),
        ]
        for task in beats:
            task.cancel()
        for call in (old, new, other):
            call.cancel()


async def test_a_takeover_listing_an_attempt_already_run_elsewhere_cancels_it_on_the_node(
    scheduler: Scheduler,
) -> None:
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel:
        request = register_request("gpu-1")
        request.register.running_jobs.append(node_pb2.RunningJob(job_id="gone-session:0", attempt=3))
        call: Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
        await call.write(request)
        assert (await asyncio.wait_for(read_message(call), 5)).WhichOneof("kind") == "registered"
        message: node_pb2.ConnectResponse = await asyncio.wait_for(read_message(call), 5)
        assert message.WhichOneof("kind") == "cancel_job"
        assert (message.cancel_job.job_id, message.cancel_job.attempt) == ("gone-session:0", 3)
        call.cancel()


async def test_a_node_that_rejects_or_fails_an_attempt_keeps_its_stream(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejection and a failure are about one attempt, not the node: its stream stays up and its
    registration stands while the job runs again elsewhere. (The log line of each once raised inside the
    stream's reader, logging's `message` key being reserved, and broke the node's stream.)"""
    assert scheduler.endpoints is not None and scheduler.cache is not None
    caplog.set_level(logging.INFO)  # the scheduler's default level: its info lines are written
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        rejecting, _ = await connect(channel, "gpu-1", max_concurrency=1)
        beats = [asyncio.create_task(heartbeat_forever(rejecting))]
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        first = await next_assignment(rejecting)
        rejected = node_pb2.JobRejected(
            job_id=first.job_id,
            attempt=first.attempt,
            reason=node_pb2.REJECT_REASON_UNSUPPORTED,
            message="not this one",
        )
        failing, _ = await connect(channel, "gpu-2", max_concurrency=1)
        beats.append(asyncio.create_task(heartbeat_forever(failing)))
        await send(rejecting, node_pb2.ConnectRequest(job_rejected=rejected))
        second = await next_assignment(failing)
        failed = node_pb2.JobFailed(
            job_id=second.job_id, attempt=second.attempt, retryable=True, message="oom"
        )
        healthy, _ = await connect(channel, "gpu-3", max_concurrency=1)
        beats.append(asyncio.create_task(heartbeat_forever(healthy)))
        await send(failing, node_pb2.ConnectRequest(job_failed=failed))
        third = await next_assignment(healthy)
        await send(healthy, result_for(third, "third time"))
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        assert [(r.source_text, r.attempt) for r in got] == [("third time", 3)]
        assert not rejecting.done() and not failing.done(), "both streams are still up"
        assert {"gpu-1", "gpu-2", "gpu-3"} <= set(scheduler.cache.current.nodes)
        for task in beats:
            task.cancel()


async def test_a_node_busy_for_a_moment_is_not_dropped_from_the_job(scheduler: Scheduler) -> None:
    """A node that rejects an attempt AT_CAPACITY (its slot still held by an attempt being cancelled there,
    while this instance already counts it free) is busy, not unable: the job waits its queue's next turn and
    runs there, attempt 1. (Before, the rejection excluded the node from the job: on the only node the
    utterance was skipped NO_CAPACITY; a flow-control resume test failed so one run in five.)"""
    assert scheduler.endpoints is not None
    async with (
        grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel,
        LinguaClient(scheduler.endpoints.grpc) as client,
    ):
        node, _ = await connect(channel, "gpu-1", max_concurrency=1)
        beat = asyncio.create_task(heartbeat_forever(node))
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        first = await next_assignment(node)
        busy = node_pb2.JobRejected(
            job_id=first.job_id,
            attempt=first.attempt,
            reason=node_pb2.REJECT_REASON_AT_CAPACITY,
            message="busy",
        )
        await send(node, node_pb2.ConnectRequest(job_rejected=busy))
        again = await next_assignment(node)
        assert again.job_id == first.job_id
        await send(node, result_for(again, "after a moment"))
        await session.end()
        got = [m.result for m in [m async for m in session] if m.HasField("result")]
        assert [(r.source_text, r.attempt) for r in got] == [("after a moment", 1)]
        beat.cancel()

"""What a session leaves in Redis, and the guard on Redis' memory: a real scheduler and node agents on a real
redis-server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis, RedisCluster

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Session
from lingua_grpc.pb import session_pb2
from node_agent.engines import SyntheticEngine
from tests.audio import tone
from tests.conftest import wait_until
from tests.integration._fleet import Fleet, answers, collect
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration

SESSION_SERVICE = "lingua.v1.SessionService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def store(redis_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Redis | RedisCluster]:
    """A client of the Redis the scheduler uses (the test's `redis_backend`)."""
    if redis_backend == "cluster":
        client: Redis | RedisCluster = RedisCluster.from_url(request.getfixturevalue("redis_cluster").url)
    else:
        client = Redis.from_url(request.getfixturevalue("redis_server").url)
    yield client
    await client.aclose()


async def session_keys(redis: Redis | RedisCluster, key_prefix: str, session_id: str, kind: str) -> list[str]:
    """The session's keys of one kind (audio, tts, tts_kept, job, session...)."""
    found = [k async for k in redis.scan_iter(match=f"{key_prefix}{{s:{session_id}}}:{kind}*", count=1000)]
    return sorted(k.decode() for k in found)


async def next_answers(session: Session, n: int, timeout_s: float = 20) -> list[session_pb2.StreamResponse]:
    out: list[session_pb2.StreamResponse] = []

    async def read() -> None:
        async for m in session:
            if m.WhichOneof("kind") in ("result", "skipped"):
                out.append(m)
                if len(out) == n:
                    return
        raise AssertionError(f"the stream ended after {len(out)} of {n} answers")

    await asyncio.wait_for(read(), timeout_s)
    return out


# A loaded test machine must not turn slow answers into skips: this test is about what the answers leave.
@pytest.mark.settings(
    session_queue_timeout_ms=10_000,
    session_gap_timeout_ms=10_000,
    accept_timeout_ms=20_000,
    job_deadline_ms=30_000,
)
async def test_a_hundred_completed_utterances_of_an_open_session_leave_no_audio_in_redis(
    client: LinguaClient, fleet: Fleet, redis: Redis, key_prefix: str
) -> None:
    await fleet.add("gpu-1", max_concurrency=10)
    session = await client.start_session("en", "es")
    session_id = session.started.session_id
    results = []
    for _ in range(20):  # in waves, within the session's outstanding bound and the node's slots
        for _ in range(5):
            await session.send_audio(tone(300), is_final=True)
        results += await next_answers(session, 5)
    assert [m.WhichOneof("kind") for m in results] == ["result"] * 100, [m.skipped for m in results]
    assert all(m.result.tts_audio for m in results)
    # The session is open still: its jobs are recorded, their results' speech is kept for a resume, and not
    # one utterance's audio is left.
    assert len(await session_keys(redis, key_prefix, session_id, "job:")) == 100
    assert len(await session_keys(redis, key_prefix, session_id, "tts:")) == 100
    assert await session_keys(redis, key_prefix, session_id, "audio:") == []
    await session.end()
    assert answers(await collect(session)) == []


@pytest.mark.parametrize("redis_backend", ["single", "cluster"])
async def test_a_session_ended_for_good_leaves_none_of_its_speech_in_redis(
    client: LinguaClient, fleet: Fleet, store: Redis | RedisCluster, key_prefix: str
) -> None:
    redis = store
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    session_id = session.started.session_id
    for _ in range(5):
        await session.send_audio(tone(300), is_final=True)
    await session.end()
    assert answers(await collect(session)) == [(i, "result") for i in range(5)]

    async def speech_gone() -> bool:
        kinds = ("audio:", "tts:", "tts_kept")
        return not any([await session_keys(redis, key_prefix, session_id, kind) for kind in kinds])

    await wait_until(speech_gone, what="the ended session's audio and TTS deleted")
    # What stays, until its TTL: the session's record (a resume is refused as ended) and its jobs' records,
    # for operators' GetSession and GetJob.
    record = await redis.hgetall(f"{key_prefix}{{s:{session_id}}}:session")
    assert record[b"ended"] == b"1"
    assert len(await session_keys(redis, key_prefix, session_id, "job:")) == 5


async def test_a_session_its_client_ends_in_error_with_jobs_in_flight_leaves_no_audio(
    client: LinguaClient, fleet: Fleet, redis: Redis, key_prefix: str
) -> None:
    await fleet.add("gpu-1", SyntheticEngine(asr_latency_s=2.0))
    session = await client.start_session("en", "es")
    session_id = session.started.session_id
    for _ in range(3):
        await session.send_audio(tone(300), is_final=True)

    async def audio_recorded() -> bool:
        return len(await session_keys(redis, key_prefix, session_id, "audio:")) == 3

    await wait_until(audio_recorded, what="the three utterances' audio recorded")
    await session.send_audio(b"\x00" * 3)  # not whole 16-bit samples: the client's own error ends the session
    with pytest.raises(Exception, match="16-bit samples"):
        await collect(session)

    async def ended_without_audio() -> bool:
        record = await redis.hget(f"{key_prefix}{{s:{session_id}}}:session", "ended")
        return record == b"1" and await session_keys(redis, key_prefix, session_id, "audio:") == []

    await wait_until(ended_without_audio, what="the ended session's audio deleted")
    states = [await redis.hget(k, "state") for k in await session_keys(redis, key_prefix, session_id, "job:")]
    assert states == [b"SKIPPED"] * 3


@pytest.mark.settings(redis_near_full_percent=50)
async def test_redis_memory_is_a_metric_and_health_says_when_it_is_near_full(
    scheduler: Scheduler, client: LinguaClient, redis: Redis
) -> None:
    health = health_pb2_grpc.HealthStub(client._channels[0])

    async def session_service_is(expected: int) -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SESSION_SERVICE))
        return bool(reply.status == expected)

    used = scheduler.metrics.redis_used_memory
    maxmemory = scheduler.metrics.redis_maxmemory
    near_full = scheduler.metrics.not_serving.labels("redis_near_full")

    async def metrics_read(limit: int) -> bool:
        return bool(used._value.get() > 0 and maxmemory._value.get() == limit)

    try:
        await redis.config_set("maxmemory", 1 << 30)
        await wait_until(lambda: metrics_read(1 << 30), what="Redis' memory read, with its maxmemory")
        assert await session_service_is(SERVING) and near_full._value.get() == 0
        info = await redis.info("memory")
        # About 67 % in use, over the test's 50 % threshold: near full whatever the other tests sharing this
        # redis-server add or let expire meanwhile (a limit at 95 % fell under 90 % in a clean-clone run).
        limit = int(info["used_memory"] * 1.5)
        await redis.config_set("maxmemory", limit)
        await wait_until(lambda: session_service_is(NOT_SERVING), what="SessionService NOT_SERVING")
        assert near_full._value.get() == 1
        assert maxmemory._value.get() == limit
    finally:
        await redis.config_set("maxmemory", 0)
    await wait_until(lambda: session_service_is(SERVING), what="SessionService SERVING again")
    assert near_full._value.get() == 0 and maxmemory._value.get() == 0


@pytest.fixture
async def embedded_scheduler(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Scheduler]:
    s = Scheduler(fast_settings("", key_prefix, **request.param))
    await s.start()
    yield s
    await s.stop(grace_s=0.5)


@pytest.mark.parametrize(
    "embedded_scheduler", [{"embedded_redis_maxmemory_mb": 64, "max_sessions": 100}], indirect=True
)
async def test_a_scheduler_warns_at_start_when_its_redis_cannot_keep_what_its_sessions_may(
    embedded_scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    records = caplog.get_records("setup")  # logged as the scheduler started
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("maxmemory (67.11 MB)" in w and "max_sessions is 100" in w for w in warnings), warnings
    assert embedded_scheduler.metrics.redis_maxmemory._value.get() == 64 * 1024 * 1024


@pytest.mark.parametrize(
    "embedded_scheduler", [{"embedded_redis_maxmemory_mb": 64, "max_sessions": 10}], indirect=True
)
async def test_a_scheduler_whose_redis_keeps_what_its_sessions_may_does_not_warn(
    embedded_scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    assert not [r for r in caplog.get_records("setup") if "maxmemory" in r.getMessage()]
    assert embedded_scheduler.metrics.redis_maxmemory._value.get() == 64 * 1024 * 1024

"""A write whose outcome is unknown is read back, not assumed failed (issue 27, defect 4): Redis runs a
placement's reserve-and-start and its reply is lost. The utterance waits, the same idempotent writes are
repeated once Redis answers, and they say the attempt started: it runs once, and no slot or ASSIGNED job is
left behind. A real redis-server behind a TCP link that drops its replies, a real scheduler and node agent."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.store import RegistryKeys
from tests.audio import silence, tone
from tests.conftest import RedisServer, wait_until
from tests.integration._fleet import Fleet, answers, collect
from tests.integration._proxy import CuttableLink
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[CuttableLink]:
    link = CuttableLink(f"127.0.0.1:{redis_server.port}")
    await link.start()
    yield link
    await link.stop()


@pytest.fixture
async def scheduler_behind_link(link: CuttableLink, key_prefix: str) -> AsyncIterator[Scheduler]:
    settings = fast_settings(
        f"redis://{link.address}/0",
        key_prefix,
        session_gap_timeout_ms=20000,
        session_queue_timeout_ms=10000,
        redis_socket_timeout_ms=500,
    )
    s = Scheduler(settings)
    await s.start()
    yield s
    await s.stop(grace_s=0.5)


async def test_a_placement_whose_reply_was_lost_is_read_back_and_runs_once(
    scheduler_behind_link: Scheduler,
    link: CuttableLink,
    redis: Redis,
    keys: RegistryKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = scheduler_behind_link
    assert scheduler.endpoints is not None
    caplog.set_level(logging.WARNING)
    fleet = Fleet(scheduler.endpoints.grpc)
    await fleet.add("gpu-1", max_concurrency=1)
    try:
        async with LinguaClient(scheduler.endpoints.grpc, reconnect=Reconnect(within_s=0)) as client:
            session = await client.start_session("en", "es")
            job_key = f"{{s:{session.session_id}}}:job:0"
            audio = tone(300, freq=333) + silence(100)
            link.swallow_replies_to = audio[3200:3264]  # Redis runs the job's writes; their replies are lost
            await session.send_audio(audio, is_final=True)

            async def started_in_redis() -> bool:
                states = [await redis.hget(k, "state") async for k in redis.scan_iter(f"*{job_key}")]
                return states == [b"ASSIGNED"]

            async def waits_for_redis() -> bool:
                return "job waits for Redis to record it" in caplog.text or "job not created" in caplog.text

            await wait_until(started_in_redis, what="the attempt started in Redis, its reply lost")
            await wait_until(waits_for_redis, timeout_s=20, what="the scheduler meeting the lost reply")
            link.swallow_replies_to = None
            await session.end()
            messages = await collect(session, 30)
        assert answers(messages) == [(0, "result")]
        assert [m.result.attempt for m in messages if m.HasField("result")] == [1]

        async def nothing_held() -> bool:
            reserved = int(await redis.hget(keys.node("gpu-1"), "reserved") or 0)
            states = [await redis.hget(k, "state") async for k in redis.scan_iter(f"*{job_key}")]
            return reserved == 0 and states == [b"COMPLETED"]

        await wait_until(nothing_held, what="the slot freed and the job COMPLETED")
    finally:
        await fleet.stop()

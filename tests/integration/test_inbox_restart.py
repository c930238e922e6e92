"""A process restarted under its instance id applies what its predecessor read from the inbox and never
acknowledged (issue 27: an instance killed and restarted within 1.6 s left an entry pending for good)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_grpc.app import Scheduler
from lingua_grpc.clock import SystemClock
from lingua_grpc.fleet import Inbox, InboxSettings
from lingua_grpc.fleet._inbox import GROUP
from lingua_grpc.fleet._messages import Assign, Lost, Message, encode
from lingua_grpc.jobs import Assignment, JobSpec
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair
from lingua_grpc.store import InstanceKeys
from tests.conftest import RedisServer, wait_until
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration


async def test_a_new_process_applies_the_entries_its_predecessor_left_pending(
    redis: Redis, key_prefix: str
) -> None:
    keys = InstanceKeys(key_prefix, "sched-a")
    settings = InboxSettings(max_entries=100, read_count=10, block_ms=50)
    lost = Lost("sched-b", "gpu-1", "s1:0", 1, "test", False, 0)
    applied: asyncio.Queue[Message] = asyncio.Queue()
    first = Inbox(redis, keys, applied.put, settings, SchedulerMetrics(), SystemClock())
    await first.start()
    await first.stop()
    await redis.xadd(keys.inbox, encode(lost))  # type: ignore[arg-type]
    # The previous process read it, then was killed before applying and acknowledging it.
    read: Any = await redis.xreadgroup(GROUP, keys.instance_id, {keys.inbox: ">"}, count=10)
    assert len(read[0][1]) == 1
    again = Inbox(redis, keys, applied.put, settings, SchedulerMetrics(), SystemClock())
    await again.start()
    try:
        assert await asyncio.wait_for(applied.get(), 5) == lost

        async def acknowledged() -> bool:
            pending = await redis.xpending(keys.inbox, GROUP)
            return int(pending["pending"]) == 0

        await wait_until(acknowledged, timeout_s=5, what="the entry acknowledged")
    finally:
        await again.stop()


async def test_a_graceful_stop_settles_what_its_inbox_still_holds(
    redis_server: RedisServer, redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance that stops cleanly leaves the fleet, so no survivor claims it: a hand-off it read but never
    applied (or that landed just before it left) is settled by the instance itself once its inbox reader has
    stopped. An attempt handed to it goes back to its owner as lost, and the inbox is left empty (issue 19:
    hand-offs in an inbox at a graceful stop were settled by nobody)."""
    caplog.set_level(logging.INFO)
    a = Scheduler(fast_settings(redis_server.url, key_prefix, instance_id="sched-a"))
    await a.start()
    keys = InstanceKeys(key_prefix, "sched-a")
    spec = JobSpec("s1", 0, LanguagePair("en", "es"), 16000, False, b"\x00\x00")
    handed = Assign("sched-b", "gpu-1", Assignment(spec, 1, 0), 0)
    # Landed and taken, in one transaction, by a reader that never applied it (as if its instance's reader
    # had been stopped right then): the live reader never sees it.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.inbox, encode(handed))  # type: ignore[arg-type]
        pipe.xreadgroup(GROUP, "stopped-reader", {keys.inbox: ">"}, count=10)
        _, read = await pipe.execute()
    assert len(read[0][1]) == 1
    await a.stop(grace_s=0)
    assert await redis.xlen(keys.inbox) == 0
    assert "inbox settled at the stop" in caplog.text

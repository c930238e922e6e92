"""A process restarted under its instance id applies what its predecessor read from the inbox and never
acknowledged (issue 27: an instance killed and restarted within 1.6 s left an entry pending for good)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_grpc.clock import SystemClock
from lingua_grpc.fleet import Inbox, InboxSettings
from lingua_grpc.fleet._inbox import GROUP
from lingua_grpc.fleet._messages import Lost, Message, encode
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import InstanceKeys
from tests.conftest import wait_until

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

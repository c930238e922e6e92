"""Fixtures of the session tests: a real scheduler on a real Redis, its node agents, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient
from tests.conftest import RedisServer
from tests.integration._fleet import Fleet
from tests.integration.test_scheduler_grpc import fast_settings


@pytest.fixture
async def scheduler(
    redis_server: RedisServer, key_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Scheduler]:
    """`@pytest.mark.settings(name=value, ...)` on a test changes these settings for it."""
    marker = request.node.get_closest_marker("settings")
    changes: dict[str, object] = {
        "session_gap_timeout_ms": 1000,
        "session_queue_timeout_ms": 500,
        "job_deadline_ms": 5000,
        **(marker.kwargs if marker else {}),
    }
    s = Scheduler(fast_settings(redis_server.url, key_prefix, **changes))
    await s.start()
    yield s
    await s.stop(grace_s=0.5)


@pytest.fixture
async def fleet(scheduler: Scheduler) -> AsyncIterator[Fleet]:
    assert scheduler.endpoints is not None
    f = Fleet(scheduler.endpoints.grpc)
    yield f
    await f.stop()


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[LinguaClient]:
    assert scheduler.endpoints is not None
    async with LinguaClient(scheduler.endpoints.grpc) as c:
        yield c

"""Fixtures of the session tests: a real scheduler on a real Redis, its node agents, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Reconnect
from tests.conftest import RedisServer
from tests.integration._fleet import Fleet
from tests.integration.test_scheduler_grpc import fast_settings


@pytest.fixture
def redis_backend() -> str:
    """Which Redis the scheduler uses: "single" (the session's redis-server) or "cluster" (a real Redis
    Cluster of three masters). A test module runs on both by overriding this fixture with params."""
    return "single"


@pytest.fixture
async def scheduler(
    redis_server: RedisServer, key_prefix: str, request: pytest.FixtureRequest, redis_backend: str
) -> AsyncIterator[Scheduler]:
    """`@pytest.mark.settings(name=value, ...)` on a test changes these settings for it."""
    marker = request.node.get_closest_marker("settings")
    changes: dict[str, object] = {
        "session_gap_timeout_ms": 1000,
        "session_queue_timeout_ms": 500,
        "job_deadline_ms": 5000,
        **(marker.kwargs if marker else {}),
    }
    url = redis_server.url
    if redis_backend == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        changes["redis_cluster"] = True
    s = Scheduler(fast_settings(url, key_prefix, **changes))
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
    async with LinguaClient(scheduler.endpoints.grpc, reconnect=Reconnect(within_s=0)) as c:
        yield c

"""SnapshotCache over a real Redis: versions, watchers, pools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import (
    LanguagePair,
    NodeLoad,
    NodeRegistry,
    NodeState,
    RegistrySnapshot,
    SnapshotCache,
)
from lingua_grpc.store import RegistryKeys, ScriptBook
from tests.integration.test_lua_scripts import LEASE_MS, registration

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(redis: Redis, keys: RegistryKeys) -> NodeRegistry:
    return NodeRegistry(redis, keys, ScriptBook(redis))


@pytest.fixture
async def cache(registry: NodeRegistry) -> AsyncIterator[SnapshotCache]:
    # A long full-refresh interval: every rebuild in these tests comes from a version change.
    c = SnapshotCache(registry, (), poll_s=0.01, refresh_s=30, metrics=SchedulerMetrics())
    await c.start()
    yield c
    await c.stop()


async def next_snapshot(watch: AsyncIterator[RegistrySnapshot]) -> RegistrySnapshot:
    return await asyncio.wait_for(anext(watch), timeout=5)


async def test_watcher_sees_each_change_once_in_order(cache: SnapshotCache, registry: NodeRegistry) -> None:
    watch = cache.watch()
    assert (await next_snapshot(watch)).version == 0, "a new watcher first gets the current snapshot"
    await registry.register(registration("a"), "i", "c1", LEASE_MS)
    first = await next_snapshot(watch)
    assert first.version == 1 and set(first.nodes) == {"a"}

    await registry.register(registration("b"), "i", "c2", LEASE_MS)
    second = await next_snapshot(watch)
    assert second.version == 2 and set(second.nodes) == {"a", "b"}

    await registry.drain("a")
    third = await next_snapshot(watch)
    assert third.version == 3 and third.nodes["a"].state is NodeState.DRAINING

    pending = asyncio.ensure_future(anext(watch))
    await registry.heartbeat("b", "c2", NodeLoad(running_jobs=1), LEASE_MS)
    await cache.refresh()  # a rebuild without a version change must not reach watchers
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "a watcher got a snapshot without a new version"
    await registry.deregister("b")
    fourth = await asyncio.wait_for(pending, timeout=5)
    assert fourth.version == 4 and set(fourth.nodes) == {"a"}


async def test_capability_change_moves_the_node_between_pools(
    cache: SnapshotCache, registry: NodeRegistry
) -> None:
    watch = cache.watch()
    await next_snapshot(watch)
    await registry.register(registration("a", "en-es"), "i", "c1", LEASE_MS)
    before = await next_snapshot(watch)
    await registry.register(registration("a", "en-zh"), "i", "c2", LEASE_MS)
    after = await next_snapshot(watch)
    assert before.pools_for(LanguagePair("en", "es"))[0].node_ids == ("a",)
    assert after.pools_for(LanguagePair("en", "es")) == ()
    assert after.pools_for(LanguagePair("en", "zh"))[0].node_ids == ("a",)
    assert after.version > before.version


async def test_current_snapshot_is_swapped_not_mutated(cache: SnapshotCache, registry: NodeRegistry) -> None:
    held = cache.current
    await registry.register(registration("a"), "i", "c1", LEASE_MS)
    await cache.refresh()
    assert cache.current is not held
    assert held.version == 0 and not held.nodes


async def test_a_registry_redis_lost_and_refilled_to_the_same_version_is_read_again(
    cache: SnapshotCache, registry: NodeRegistry, redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """Redis lost its data (a restart without persistence) and nodes registered again before this instance
    polled: the version is the one it holds, the nodes are not. The epoch set by the first registration on
    the empty registry makes it read them (every instance but the one the nodes registered through)."""
    watch = cache.watch()
    await next_snapshot(watch)
    await registry.register(registration("a"), "i", "c1", LEASE_MS)
    before = await next_snapshot(watch)
    assert before.version == 1 and set(before.nodes) == {"a"}

    scripts = ScriptBook(redis)
    call = scripts.register_node(
        keys,
        "b",
        capabilities_json=registration("b").capabilities.to_json(),
        max_concurrency=2,
        instance_id="i",
        connection_id="c2",
        lease_ms=LEASE_MS,
        credential="anonymous",
    )
    lost = [k async for k in redis.scan_iter(match=f"{key_prefix}*")]
    async with redis.pipeline(transaction=True) as pipe:  # at once, as far as any poll can tell
        pipe.delete(*lost)
        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        await pipe.execute()

    after = await next_snapshot(watch)
    assert after.version == 1 and set(after.nodes) == {"b"}
    assert after.epoch != before.epoch
    # A watcher that reconnects naming the version it last saw, and that version's epoch, gets the new
    # registry at once though its version is the same; naming the current epoch, it waits for a change.
    assert set((await next_snapshot(cache.watch(1, before.epoch))).nodes) == {"b"}
    pending = asyncio.ensure_future(anext(cache.watch(1, after.epoch)))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "the watcher already has this snapshot"
    pending.cancel()

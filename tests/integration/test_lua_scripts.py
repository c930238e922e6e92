"""Each registry script against a real redis-server: happy path, repeats, lease expiry, draining."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from lingua_grpc.registry import (
    DrainOutcome,
    HeartbeatOutcome,
    LanguagePair,
    NodeCapabilities,
    NodeLoad,
    NodeRegistry,
    NodeState,
    Registration,
)
from lingua_grpc.store import RegistryKeys, ScriptBook
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

LEASE_MS = 5000


def registration(node_id: str = "gpu-1", *pairs: str, max_concurrency: int = 2) -> Registration:
    parsed = tuple(LanguagePair.parse(p) for p in (pairs or ("en-es",)))
    return Registration(
        node_id,
        NodeCapabilities(
            asr_languages=tuple({p.source for p in parsed}),
            translation_pairs=parsed,
            tts_languages=tuple({p.target for p in parsed}),
            max_concurrency=max_concurrency,
        ),
    )


@pytest.fixture
def registry(redis: Redis, keys: RegistryKeys) -> NodeRegistry:
    return NodeRegistry(redis, keys, ScriptBook(redis))


async def test_register_creates_node_lease_and_bumps_version(
    registry: NodeRegistry, redis: Redis, keys: RegistryKeys
) -> None:
    result = await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    assert result.changed and result.version == 1
    stamp, records = await registry.read()
    assert stamp.version == 1 and stamp.epoch, "the first registration on an empty registry sets its epoch"
    (node,) = records
    assert node.node_id == "gpu-1" and node.state is NodeState.UP and node.instance_id == "inst-a"
    assert node.capabilities.pairs_served() == {LanguagePair("en", "es")}
    assert node.lease_remaining_ms in range(1, LEASE_MS + 1)
    assert 0 < await redis.pttl(keys.lease("gpu-1")) <= LEASE_MS


async def test_every_key_of_a_script_shares_one_hash_slot(redis: Redis, keys: RegistryKeys) -> None:
    from redis.crc import key_slot

    slots = {key_slot(k.encode()) for k in (keys.version, keys.nodes, keys.node("x"), keys.lease("y"))}
    assert len(slots) == 1


async def test_registering_again_unchanged_keeps_the_version(registry: NodeRegistry) -> None:
    first = await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    again = await registry.register(registration(), "inst-a", "conn-2", LEASE_MS)
    assert not again.changed and again.version == first.version
    assert len((await registry.read())[1]) == 1


async def test_a_node_held_by_another_instance_now_bumps_the_version(registry: NodeRegistry) -> None:
    """Every instance hands a node's attempts to its holder as its snapshot names it: a node that moved to
    another instance must reach every snapshot at once, not at the next full re-read (the soak's cluster run
    placed a job through the node's old holder nine times in 70 ms)."""
    first = await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    moved = await registry.register(registration(), "inst-b", "conn-2", LEASE_MS)
    assert moved.changed and moved.version == first.version + 1
    (node,) = (await registry.read())[1]
    assert node.instance_id == "inst-b"


async def test_capability_change_bumps_the_version(registry: NodeRegistry) -> None:
    await registry.register(registration("gpu-1", "en-es"), "inst-a", "conn-1", LEASE_MS)
    changed = await registry.register(registration("gpu-1", "en-zh"), "inst-a", "conn-2", LEASE_MS)
    assert changed.changed and changed.version == 2
    (node,) = (await registry.read())[1]
    assert node.capabilities.pairs_served() == {LanguagePair("en", "zh")}


async def test_heartbeat_renews_lease_and_records_load(
    registry: NodeRegistry, redis: Redis, keys: RegistryKeys
) -> None:
    await registry.register(registration(), "inst-a", "conn-1", 300)
    outcome = await registry.heartbeat(
        "gpu-1", "conn-1", NodeLoad(running_jobs=1, gpu_utilization=0.5), LEASE_MS
    )
    assert outcome is HeartbeatOutcome.RENEWED
    assert await redis.pttl(keys.lease("gpu-1")) > 300
    node = await registry.read_node("gpu-1")
    assert node is not None and node.load.running_jobs == 1 and node.load.gpu_utilization == 0.5
    assert (await registry.stamp()).version == 1, "a heartbeat is not a registry change"


async def test_heartbeat_from_an_older_connection_is_refused(registry: NodeRegistry) -> None:
    await registry.register(registration(), "inst-a", "conn-old", LEASE_MS)
    await registry.register(registration(), "inst-b", "conn-new", LEASE_MS)
    assert await registry.heartbeat("gpu-1", "conn-old", NodeLoad(), LEASE_MS) is HeartbeatOutcome.SUPERSEDED
    assert await registry.heartbeat("gpu-1", "conn-new", NodeLoad(), LEASE_MS) is HeartbeatOutcome.RENEWED
    assert not await registry.deregister("gpu-1", "conn-old"), "a stale stream must not remove the node"
    assert (await registry.read_node("gpu-1")) is not None


async def test_heartbeat_of_an_unknown_node_asks_for_registration(registry: NodeRegistry) -> None:
    assert await registry.heartbeat("ghost", "conn", NodeLoad(), LEASE_MS) is HeartbeatOutcome.UNKNOWN


async def test_lease_lapses_and_expiry_removes_the_node_once(
    registry: NodeRegistry, redis: Redis, keys: RegistryKeys
) -> None:
    await registry.register(registration("gpu-1"), "inst-a", "c1", 50)
    await registry.register(registration("gpu-2"), "inst-a", "c2", LEASE_MS)
    assert await registry.expire_lapsed() == [], "a live lease is left alone"

    async def lease_gone() -> bool:
        return not await redis.exists(keys.lease("gpu-1"))

    await wait_until(lease_gone, what="the 50 ms lease to lapse")
    assert await registry.heartbeat("gpu-1", "c1", NodeLoad(), LEASE_MS) is HeartbeatOutcome.UNKNOWN
    version_before = (await registry.stamp()).version
    assert await registry.expire_lapsed() == ["gpu-1"]
    assert await registry.expire_lapsed() == []
    assert (await registry.stamp()).version == version_before + 1
    assert [n.node_id for n in (await registry.read())[1]] == ["gpu-2"]
    assert not await redis.exists(keys.node("gpu-1"))


async def test_drain_is_idempotent_and_survives_heartbeats(registry: NodeRegistry) -> None:
    await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    assert await registry.drain("gpu-1") == (DrainOutcome.DRAINING, 2)
    assert await registry.drain("gpu-1") == (DrainOutcome.ALREADY_DRAINING, 2)
    assert await registry.heartbeat("gpu-1", "conn-1", NodeLoad(), LEASE_MS) is HeartbeatOutcome.RENEWED
    node = await registry.read_node("gpu-1")
    assert node is not None and node.state is NodeState.DRAINING
    assert (await registry.drain("ghost"))[0] is DrainOutcome.UNKNOWN


async def test_registering_again_after_drain_brings_the_node_back_up(registry: NodeRegistry) -> None:
    await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    await registry.drain("gpu-1")
    result = await registry.register(registration(), "inst-a", "conn-2", LEASE_MS)
    assert result.changed
    node = await registry.read_node("gpu-1")
    assert node is not None and node.state is NodeState.UP


async def test_deregister_is_idempotent(registry: NodeRegistry, redis: Redis, keys: RegistryKeys) -> None:
    await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    assert await registry.deregister("gpu-1", "conn-1")
    assert not await registry.deregister("gpu-1", "conn-1")
    assert (await registry.stamp()).version == 2
    assert await redis.scard(keys.nodes) == 0
    assert not await redis.exists(keys.node("gpu-1"), keys.lease("gpu-1"))


async def test_scripts_reload_themselves_after_script_flush(registry: NodeRegistry, redis: Redis) -> None:
    await registry.register(registration(), "inst-a", "conn-1", LEASE_MS)
    await redis.script_flush()
    assert await registry.heartbeat("gpu-1", "conn-1", NodeLoad(), LEASE_MS) is HeartbeatOutcome.RENEWED


async def test_scripts_take_ttls_from_arguments_never_literals() -> None:
    import re

    from lingua_grpc.store._scripts import LUA_DIR

    scripts = [entry for entry in LUA_DIR.iterdir() if entry.name.endswith(".lua")]
    assert scripts
    for script in scripts:
        code = "\n".join(
            line for line in script.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        assert not re.search(r"'P?X',\s*\d", code), f"{script.name} has a literal TTL"
        assert not re.search(r"P?EXPIRE'\s*,\s*KEYS\[\d\]\s*,\s*\d", code), f"{script.name} has a literal TTL"


async def test_complete_and_release_after_script_flush_applies_each_once(
    redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    from lingua_grpc.jobs import JobOutput, JobSpec, JobState, JobStore
    from lingua_grpc.store import Completed, JobKeys

    scripts = ScriptBook(redis)
    await NodeRegistry(redis, keys, scripts).register(registration("gpu-1"), "i", "c", LEASE_MS)
    store = JobStore(redis, JobKeys(key_prefix), keys, scripts, job_ttl_ms=60_000, audio_ttl_ms=60_000)
    spec = JobSpec("sess", 0, LanguagePair("en", "es"), 16000, False, b"\0\0")
    assert (await store.reserve("gpu-1", spec.job_id, 1)).held
    assert await store.start(spec, 0, "gpu-1") == (True, 1)
    await redis.script_flush()
    output = JobOutput(spec.job_id, 1, "hi", "hola", b"\x01\x02", 16000, 1, 2, 3)
    assert await store.complete_and_release(output, "gpu-1") == (Completed(True, ""), True)
    record = await store.get(spec.job_id)
    assert record is not None and record.state is JobState.COMPLETED
    assert record.fields["source_text"] == "hi"
    stored = (await store.records("sess", [0]))[0]
    assert stored.tts_audio == b"\x01\x02", "the result's speech is kept for a resuming client"
    assert await store.complete_and_release(output, "gpu-1") == (Completed(False, ""), False), "once"


async def test_reserve_and_start_in_one_round_trip_after_script_flush_and_on_a_full_node(
    redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    from lingua_grpc.jobs import JobSpec, JobState, JobStore, Reservation
    from lingua_grpc.store import JobKeys

    scripts = ScriptBook(redis)
    await NodeRegistry(redis, keys, scripts).register(
        registration("gpu-1", max_concurrency=1), "i", "c", LEASE_MS
    )
    store = JobStore(redis, JobKeys(key_prefix), keys, scripts, job_ttl_ms=60_000, audio_ttl_ms=60_000)
    first = JobSpec("sess", 0, LanguagePair("en", "es"), 16000, False, b"\0\0")
    await redis.script_flush()
    assert await store.reserve_and_start("gpu-1", first, 0) == (Reservation.RESERVED, 1)
    record = await store.get(first.job_id)
    assert record is not None and (record.state, record.attempt, record.node_id) == (
        JobState.ASSIGNED,
        1,
        "gpu-1",
    )
    # The node is full: the slot is refused, the attempt is started all the same (the caller spends it).
    second = JobSpec("sess", 1, LanguagePair("en", "es"), 16000, False, b"\0\0")
    assert await store.reserve_and_start("gpu-1", second, 0) == (Reservation.FULL, 1)
    assert int(await redis.hget(keys.node("gpu-1"), "reserved") or -1) == 1
    # The same call again (a retry after a lost reply): the slot is already held, the same attempt started.
    assert await store.reserve_and_start("gpu-1", first, 0) == (Reservation.ALREADY_HELD, 1)
    # Another node, or another attempt seen, is a start that lost the race: refused.
    assert await store.start(first, 0, "gpu-2") == (False, None)
    assert await store.start(first, 1, "gpu-1") == (False, 2), "the next attempt starts normally"


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(redis_server: object) -> None:
    from lingua_grpc.store import redis_client

    client = redis_client(redis_server.url, socket_timeout_s=5, max_connections=2)  # type: ignore[attr-defined]
    try:
        replies = await asyncio.gather(*(client.blpop([f"burst:{i}"], timeout=0.05) for i in range(20)))
        assert replies == [None] * 20
    finally:
        await client.aclose()


async def test_pooled_connections_left_from_before_a_redis_restart_are_retried_not_failed(
    tmp_path: Path, keys: RegistryKeys
) -> None:
    """Redis restarted (its data lost): every pooled connection is dead, and the first command on each must
    reconnect and run, scripts (loaded again) and pipelines alike. The retry policy was redis-py's
    synchronous Retry, which the asyncio client awaits without retrying: each connection's first command
    after a restart failed, and a client's utterance with it (skipped FAILED)."""
    from lingua_grpc.store import redis_client
    from tests.conftest import start_redis_server, stop_redis_server

    server = start_redis_server(tmp_path)
    client = redis_client(server.url, socket_timeout_s=5, max_connections=16)
    scripts = ScriptBook(client)
    registry = NodeRegistry(client, keys, scripts)
    try:
        await asyncio.gather(
            *(client.blpop([f"warm:{i}"], timeout=0.05) for i in range(16))
        )  # 16 in the pool
        stop_redis_server(server)
        server = start_redis_server(tmp_path, server.port)
        await asyncio.gather(
            *(registry.register(registration(f"gpu-{i}"), "inst", f"c{i}", LEASE_MS) for i in range(8)),
            *(scripts.run_pipelined(scripts.expire_node(keys, f"gpu-{i}")) for i in range(8)),
            *(client.blpop([f"after:{i}"], timeout=0.05) for i in range(8)),
        )
        assert len(await client.smembers(keys.nodes)) == 8
    finally:
        await client.aclose()
        stop_redis_server(server)


async def test_registering_again_makes_the_slot_set_exactly_what_the_node_runs(
    redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    """A scheduler killed with jobs running leaves their slots held; when the node registers again (with a
    restarted scheduler) and lists what it runs, the slot set becomes exactly that: no capacity stays lost."""
    import dataclasses

    from lingua_grpc.jobs import JobStore, Reservation
    from lingua_grpc.store import JobKeys

    scripts = ScriptBook(redis)
    registry = NodeRegistry(redis, keys, scripts)
    store = JobStore(redis, JobKeys(key_prefix), keys, scripts, job_ttl_ms=60_000, audio_ttl_ms=60_000)
    await registry.register(registration("gpu-1", max_concurrency=2), "dead", "c1", LEASE_MS)
    assert (await store.reserve("gpu-1", "s:0", 1)).held and (await store.reserve("gpu-1", "s:1", 1)).held
    assert await store.reserve("gpu-1", "s:2", 1) is Reservation.FULL

    still_running = dataclasses.replace(registration("gpu-1", max_concurrency=2), running=(("s:1", 1),))
    reconciled = await registry.register(still_running, "restarted", "c2", LEASE_MS)
    assert reconciled.slots_freed == 1  # counted (lingua_slots_reconciled_total)
    assert await redis.smembers(keys.slots("gpu-1")) == {b"s:1#1"}
    assert int(await redis.hget(keys.node("gpu-1"), "reserved") or -1) == 1
    assert (await store.reserve("gpu-1", "s:2", 1)).held  # the dead job's slot is capacity again

    await registry.register(registration("gpu-1", max_concurrency=2), "restarted", "c3", LEASE_MS)
    assert await redis.smembers(keys.slots("gpu-1")) == set()
    assert int(await redis.hget(keys.node("gpu-1"), "reserved") or -1) == 0

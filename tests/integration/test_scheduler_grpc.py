"""A real in-process scheduler on loopback with a real Redis, driven through real gRPC channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from lingua_grpc._grpc import read_message
from lingua_grpc.app import Scheduler
from lingua_grpc.config import Settings
from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conftest import RedisServer, wait_until
from tests.conftest import snapshot_where as watch_until

pytestmark = pytest.mark.integration

Call = grpc.aio.StreamStreamCall[node_pb2.ConnectRequest, node_pb2.ConnectResponse]


def fast_settings(redis_url: str, key_prefix: str, **changes: object) -> Settings:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "metrics_port": -1,
        "heartbeat_interval_ms": 100,
        "node_lease_heartbeats": 3,
        "lease_check_interval_ms": 50,
        "snapshot_poll_ms": 20,
        # Admission by load is off (see tests/e2e/_procs.py FAST); the tests of it turn it on.
        "overload_loop_lag_ms": 0,
        "overload_loop_busy_percent": 0,
        "overload_queue_wait_ms": 0,
    }
    base.update(changes)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def scheduler(redis_server: RedisServer, key_prefix: str) -> AsyncIterator[Scheduler]:
    s = Scheduler(fast_settings(redis_server.url, key_prefix))
    await s.start()
    yield s
    await s.stop(grace_s=0.5)


@pytest.fixture
async def channel(scheduler: Scheduler) -> AsyncIterator[grpc.aio.Channel]:
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(scheduler.endpoints.grpc) as ch:
        yield ch


def register_request(
    node_id: str = "gpu-1", pairs: tuple[tuple[str, str], ...] = (("en", "es"),), max_concurrency: int = 2
) -> node_pb2.ConnectRequest:
    return node_pb2.ConnectRequest(
        register=node_pb2.Register(
            node_id=node_id,
            capabilities=common_pb2.NodeCapabilities(
                asr_languages=sorted({s for s, _ in pairs}),
                translation_pairs=[
                    common_pb2.LanguagePair(source_language=s, target_language=t) for s, t in pairs
                ],
                tts_languages=sorted({t for _, t in pairs}),
                max_concurrency=max_concurrency,
                agent_version="test",
            ),
        )
    )


async def connect(
    channel: grpc.aio.Channel, node_id: str = "gpu-1", **kw: object
) -> tuple[Call, node_pb2.Registered]:
    call: Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
    await call.write(register_request(node_id, **kw))  # type: ignore[arg-type]
    first: node_pb2.ConnectResponse = await asyncio.wait_for(read_message(call), 5)
    assert first.WhichOneof("kind") == "registered"
    return call, first.registered


async def snapshot_where(
    channel: grpc.aio.Channel,
    predicate: Callable[[registry_pb2.RegistrySnapshot], bool],
    timeout_s: float = 5,
) -> registry_pb2.RegistrySnapshot:
    return await watch_until(registry_pb2_grpc.RegistryServiceStub(channel), predicate, timeout_s)


def node_ids(snapshot: registry_pb2.RegistrySnapshot) -> set[str]:
    return {n.node_id for n in snapshot.nodes}


async def test_registered_node_appears_in_snapshot_with_its_pools(channel: grpc.aio.Channel) -> None:
    call, registered = await connect(channel, pairs=(("en", "es"), ("en", "zh")))
    assert registered.heartbeat_interval_ms == 100
    assert registered.lease_ms == 300
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    snap = (await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot
    assert node_ids(snap) == {"gpu-1"}
    assert snap.version == registered.registry_version
    (node,) = snap.nodes
    assert node.state == common_pb2.NODE_STATE_UP
    assert list(node.pools) == ["en-es", "en-zh"]
    pools = await stub.ListPools(registry_pb2.ListPoolsRequest())
    assert [(p.name, list(p.node_ids)) for p in pools.pools] == [("en-es", ["gpu-1"]), ("en-zh", ["gpu-1"])]
    only_zh = await stub.ListNodes(
        registry_pb2.ListNodesRequest(
            language_pair=common_pb2.LanguagePair(source_language="en", target_language="zh")
        )
    )
    assert [n.node_id for n in only_zh.nodes] == ["gpu-1"]
    call.cancel()


async def test_first_message_other_than_register_is_refused(channel: grpc.aio.Channel) -> None:
    call: Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
    await call.write(node_pb2.ConnectRequest(heartbeat=node_pb2.Heartbeat()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_message(call)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be `register`" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (register_request("bad id!"), "node_id"),
        (register_request(max_concurrency=0), "max_concurrency"),
        (register_request(pairs=(("en", "en"),)), "both 'en'"),
    ],
)
async def test_bad_registration_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, request_: node_pb2.ConnectRequest, fragment: str
) -> None:
    call: Call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
    await call.write(request_)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_message(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (err.value.details() or "")


async def test_second_register_on_a_stream_is_refused(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)
    await call.write(register_request())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_message(call)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_broken_stream_removes_the_node_at_once(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)
    await snapshot_where(channel, lambda s: node_ids(s) == {"gpu-1"})
    call.cancel()
    # Well inside the 300 ms lease: removal comes from the broken stream, not from expiry.
    await snapshot_where(channel, lambda s: not s.nodes, timeout_s=0.25)


async def test_half_close_leaves_cleanly(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    await snapshot_where(channel, lambda s: not s.nodes)


async def test_silent_node_is_dropped_when_its_lease_expires(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)  # registers, then never heartbeats
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(read_message(call), 5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no heartbeat" in (err.value.details() or "")
    await snapshot_where(channel, lambda s: not s.nodes)


async def test_heartbeating_node_stays_past_its_lease(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)

    async def heartbeat(beats: int | None) -> None:
        n = 0
        while beats is None or n < beats:
            n += 1
            await call.write(
                node_pb2.ConnectRequest(
                    heartbeat=node_pb2.Heartbeat(load=common_pb2.NodeLoad(running_jobs=1))
                )
            )
            await asyncio.sleep(0.1)  # the heartbeat interval the scheduler asked for

    await heartbeat(8)  # 8 x 100 ms: well past the 300 ms lease
    # Loads are not registry changes (no new version): read them with GetSnapshot. The node goes on
    # heartbeating meanwhile, as a live node does (the snapshot's full re-read may be a lease away).
    beating = asyncio.create_task(heartbeat(None))

    async def load_shown() -> bool:
        snap = (await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot
        return bool(snap.nodes) and snap.nodes[0].load.running_jobs == 1

    try:
        await wait_until(load_shown, what="the heartbeat's load in the snapshot")
        assert node_ids((await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot) == {"gpu-1"}
    finally:
        beating.cancel()
    call.cancel()


async def test_drain_node_tells_the_node_and_marks_it_draining(channel: grpc.aio.Channel) -> None:
    call, _ = await connect(channel)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    reply = await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id="gpu-1", reason="kernel upgrade"))
    assert reply.node.state == common_pb2.NODE_STATE_DRAINING
    message: node_pb2.ConnectResponse = await asyncio.wait_for(read_message(call), 5)
    assert message.WhichOneof("kind") == "drain"
    assert message.drain.reason == "kernel upgrade"
    again = await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id="gpu-1"))
    assert again.version == reply.version, "draining twice is not a new registry version"
    call.cancel()


async def test_drain_of_unknown_node_is_not_found(channel: grpc.aio.Channel) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id="ghost"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_newer_stream_of_the_same_node_supersedes_the_older(channel: grpc.aio.Channel) -> None:
    old, _ = await connect(channel)
    new, _ = await connect(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(read_message(old), 5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    snap = await snapshot_where(channel, lambda s: bool(s.nodes))
    assert node_ids(snap) == {"gpu-1"}, "the superseded stream must not remove the node"
    new.cancel()


async def test_watch_snapshots_sends_each_version_once(channel: grpc.aio.Channel) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    stream = stub.WatchSnapshots(registry_pb2.WatchSnapshotsRequest())
    first = (await asyncio.wait_for(read_message(stream), 5)).snapshot
    a, _ = await connect(channel, "a")
    b, _ = await connect(channel, "b")
    seen = [first.version]
    while len(seen) < 3:
        seen.append((await asyncio.wait_for(read_message(stream), 5)).snapshot.version)
    assert seen == sorted(set(seen)), f"versions repeated or out of order: {seen}"
    stream.cancel()
    a.cancel()
    b.cancel()


async def test_reflection_lists_the_services(channel: grpc.aio.Channel, scheduler: Scheduler) -> None:
    assert scheduler.endpoints is not None
    sync_channel = grpc.insecure_channel(scheduler.endpoints.grpc)
    try:
        db = ProtoReflectionDescriptorDatabase(sync_channel)
        services = await asyncio.to_thread(db.get_services)
        assert {"lingua.v1.SessionService", "lingua.v1.NodeService", "lingua.v1.RegistryService"} <= set(
            services
        )
        assert "grpc.health.v1.Health" in services
        registry = await asyncio.to_thread(db.FindFileContainingSymbol, "lingua.v1.RegistryService")
        assert registry.name == "lingua/v1/registry.proto"
    finally:
        sync_channel.close()


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lingua.v1.NodeService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_reports_not_serving_and_closes_node_streams(
    redis_server: RedisServer, key_prefix: str
) -> None:
    s = Scheduler(fast_settings(redis_server.url, key_prefix))
    endpoints = await s.start()
    async with grpc.aio.insecure_channel(endpoints.grpc) as ch:
        call, _ = await connect(ch)
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await read_message(watch)).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(s.stop(grace_s=1))
        assert (
            await asyncio.wait_for(read_message(watch), 5)
        ).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(read_message(call), 5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await stopping


async def test_a_snapshot_watch_ends_unavailable_when_its_scheduler_stops(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """An ordered end a watcher can act on (watch another instance), not a cancelled stream."""
    s = Scheduler(fast_settings(redis_server.url, key_prefix))
    endpoints = await s.start()
    async with grpc.aio.insecure_channel(endpoints.grpc) as ch:
        stream = registry_pb2_grpc.RegistryServiceStub(ch).WatchSnapshots(
            registry_pb2.WatchSnapshotsRequest()
        )
        await asyncio.wait_for(read_message(stream), 5)
        stopping = asyncio.create_task(s.stop(grace_s=0))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(read_message(stream), 5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (err.value.details() or "")
        await stopping

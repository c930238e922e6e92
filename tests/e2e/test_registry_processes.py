"""The scheduler and node agent as real processes: registration, loss, lease expiry, drain, Redis."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from lingua_grpc.pb import common_pb2, registry_pb2, registry_pb2_grpc
from tests.conftest import free_port, snapshot_where, start_redis_server, stop_redis_server
from tests.e2e._procs import Proc, SchedulerProc, ready, start_node, start_scheduler

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.kill()


@pytest.fixture
async def scheduler(tmp_path: Path, procs: list[Proc]) -> SchedulerProc:
    proc = await start_scheduler(tmp_path)
    procs.append(proc)
    return proc


@pytest.fixture
async def registry(scheduler: SchedulerProc) -> AsyncIterator[registry_pb2_grpc.RegistryServiceAsyncStub]:
    async with grpc.aio.insecure_channel(scheduler.grpc) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


def has(node_id: str) -> Callable[[registry_pb2.RegistrySnapshot], bool]:
    return lambda s: any(n.node_id == node_id for n in s.nodes)


def lacks(node_id: str) -> Callable[[registry_pb2.RegistrySnapshot], bool]:
    return lambda s: all(n.node_id != node_id for n in s.nodes)


async def test_node_registers_and_shows_in_snapshot(
    tmp_path: Path,
    scheduler: SchedulerProc,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    procs: list[Proc],
) -> None:
    procs.append(start_node(tmp_path, scheduler.grpc, "gpu-a", "--label", "tier=gold"))
    snap = await snapshot_where(registry, has("gpu-a"))
    (node,) = snap.nodes
    assert node.state == common_pb2.NODE_STATE_UP
    assert list(node.pools) == ["en-es", "en-zh"]
    assert node.capabilities.max_concurrency == 2
    assert dict(node.capabilities.labels) == {"tier": "gold"}
    assert list(node.capabilities.gpus) == [], "no NVML here: a CPU node, not an error"
    assert node.capabilities.agent_version.startswith("lingua-node ")


async def test_killed_node_is_removed_at_once(
    tmp_path: Path, registry: registry_pb2_grpc.RegistryServiceAsyncStub, procs: list[Proc]
) -> None:
    # A long lease (10 s): a removal well before it can only come from the broken stream.
    slow_lease = await start_scheduler(
        tmp_path, "--heartbeat-interval-ms", "5000", "--node-lease-heartbeats", "2"
    )
    procs.append(slow_lease)
    async with grpc.aio.insecure_channel(slow_lease.grpc) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        node = start_node(tmp_path, slow_lease.grpc, "gpu-k")
        procs.append(node)
        await snapshot_where(stub, has("gpu-k"))
        node.send(signal.SIGKILL)
        await snapshot_where(stub, lacks("gpu-k"), timeout_s=5)
    # A dead peer reads as end of stream or as a cancelled call, depending on timing; either way it is
    # removed at once, and never by lease expiry.
    broken = await slow_lease.metric("lingua_node_departures_total", reason="stream_broken")
    left = await slow_lease.metric("lingua_node_departures_total", reason="left")
    assert broken + left == 1
    assert await slow_lease.metric("lingua_node_departures_total", reason="lease_expired") == 0


async def test_stopped_node_is_dropped_after_its_lease_and_rejoins_when_resumed(
    tmp_path: Path,
    scheduler: SchedulerProc,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    procs: list[Proc],
) -> None:
    node = start_node(tmp_path, scheduler.grpc, "gpu-s")
    procs.append(node)
    await snapshot_where(registry, has("gpu-s"))
    node.send(signal.SIGSTOP)  # stream stays open, heartbeats stop
    await snapshot_where(registry, lacks("gpu-s"))
    assert await scheduler.metric("lingua_node_departures_total", reason="lease_expired") == 1
    assert await scheduler.metric("lingua_node_departures_total", reason="stream_broken") == 0
    node.send(signal.SIGCONT)
    await snapshot_where(registry, has("gpu-s"))  # the agent reconnects and registers again
    await scheduler.log_contains("node lease expired")


async def test_sigterm_drains_the_node_and_it_exits_zero(
    tmp_path: Path,
    scheduler: SchedulerProc,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    procs: list[Proc],
) -> None:
    node = start_node(tmp_path, scheduler.grpc, "gpu-t")
    procs.append(node)
    await snapshot_where(registry, has("gpu-t"))
    node.send(signal.SIGTERM)
    assert await node.wait() == 0
    await snapshot_where(registry, lacks("gpu-t"))
    assert await scheduler.metric("lingua_node_departures_total", reason="left") == 1
    await scheduler.log_contains("node draining")


async def test_operator_drain_makes_the_node_leave(
    tmp_path: Path,
    scheduler: SchedulerProc,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    procs: list[Proc],
) -> None:
    node = start_node(tmp_path, scheduler.grpc, "gpu-d")
    procs.append(node)
    await snapshot_where(registry, has("gpu-d"))
    reply = await registry.DrainNode(registry_pb2.DrainNodeRequest(node_id="gpu-d", reason="maintenance"))
    assert reply.node.state == common_pb2.NODE_STATE_DRAINING
    assert await node.wait() == 0
    await snapshot_where(registry, lacks("gpu-d"))
    await node.log_contains("maintenance")


async def test_node_with_a_bad_registration_exits_with_the_reason(
    tmp_path: Path, scheduler: SchedulerProc, procs: list[Proc]
) -> None:
    node = start_node(tmp_path, scheduler.grpc, "gpu-bad", "--max-concurrency", "0")
    procs.append(node)
    assert await node.wait() == 2
    await node.log_contains("INVALID_ARGUMENT")
    await node.log_contains("max_concurrency")


async def test_scheduler_sigterm_stops_its_embedded_redis(tmp_path: Path, procs: list[Proc]) -> None:
    proc = await start_scheduler(tmp_path)
    procs.append(proc)
    assert proc.redis.startswith("embedded redis://127.0.0.1:")
    port = int(proc.redis.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    proc.send(signal.SIGTERM)
    assert await proc.wait() == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_scheduler_waits_for_redis_instead_of_crashing(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    proc = await start_scheduler(tmp_path, "--redis-url", f"redis://127.0.0.1:{port}/0", wait_ready=False)
    procs.append(proc)
    await proc.log_contains("redis unreachable, retrying")
    assert proc.popen.poll() is None, "the scheduler must keep trying, not exit"
    server = start_redis_server(tmp_path, port)
    try:
        await ready(proc)
        assert proc.redis == "configured Redis"
        async with grpc.aio.insecure_channel(proc.grpc) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            assert (await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot.version == 0
    finally:
        proc.kill()
        stop_redis_server(server)

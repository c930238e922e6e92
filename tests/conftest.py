"""Shared fixtures: a real redis-server on a free loopback port, and helpers to wait on conditions."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from lingua_grpc.pb import registry_pb2, registry_pb2_grpc
from lingua_grpc.store import RegistryKeys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis_server(workdir: Path, port: int | None = None, *extra_args: str) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make redis` (Debian package redis-server)")
    port = port or free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--loglevel",
            "warning",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return RedisServer(port, proc, workdir)
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}")
        time.sleep(0.01)  # waiting for the child to bind its port
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


def stop_redis_server(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis_server(server)


@dataclass
class RedisClusterServers:
    """A real Redis Cluster on loopback: masters only, every hash slot covered."""

    servers: list[RedisServer]

    @property
    def url(self) -> str:
        """A seed node: the client discovers the others."""
        return self.servers[0].url


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port + 10000)) != 0:
                return port


def start_redis_cluster(
    workdir: Path, masters: int = 3, *extra_args: str, own_dirs: bool = False
) -> RedisClusterServers:
    """`extra_args` go to every server (AOF, say); `own_dirs`: each server in `workdir/<port>`, so that
    one server's AOF files never meet another's (the chaos soak's cluster mode restarts them on their data)."""
    servers: list[RedisServer] = []
    try:
        for _ in range(masters):
            port = cluster_port()
            node_dir = workdir / str(port) if own_dirs else workdir
            node_dir.mkdir(parents=True, exist_ok=True)
            servers.append(
                start_redis_server(
                    node_dir,
                    port,
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                    *("--cluster-node-timeout", "5000"),
                    *extra_args,
                )
            )
        _create_cluster([s.port for s in servers])
    except BaseException:  # a cluster that did not come up leaves no redis-server behind
        for server in servers:
            stop_redis_server(server)
        raise
    return RedisClusterServers(servers)


def _create_cluster(ports: list[int]) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed (Debian package redis-tools, with redis-server)")
    created = subprocess.run(
        [
            cli,
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        pytest.fail(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
    deadline = time.monotonic() + 20
    for port in ports:  # every node must agree the cluster is up before a client may use it
        while True:
            info = subprocess.run(
                [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10
            ).stdout
            if "cluster_state:ok" in info:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Redis Cluster not ok on {port}: {info}")
            time.sleep(0.05)  # polling another process: the cluster's nodes are still meeting


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    for server in cluster.servers:
        stop_redis_server(server)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of its own per test, so tests sharing the session's Redis never see each other's keys."""
    return f"test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def keys(key_prefix: str) -> RegistryKeys:
    return RegistryKeys(key_prefix)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Polls `condition` until it holds; fails the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


async def snapshot_where(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    predicate: Callable[[registry_pb2.RegistrySnapshot], bool],
    timeout_s: float = 15,
) -> registry_pb2.RegistrySnapshot:
    """Follows WatchSnapshots until a snapshot satisfies `predicate`; fails after `timeout_s`."""
    stream = stub.WatchSnapshots(registry_pb2.WatchSnapshotsRequest())

    async def follow() -> registry_pb2.RegistrySnapshot:
        async for update in stream:
            if predicate(update.snapshot):
                return update.snapshot
        raise AssertionError("WatchSnapshots ended")

    try:
        return await asyncio.wait_for(follow(), timeout_s)
    finally:
        stream.cancel()


_LOG_TAIL_CHARS = 6000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test that ran real processes shows the end of each one's log (they write them under the
    test's tmp_path): a CI run's failure then says what the scheduler and nodes saw."""
    report: pytest.TestReport = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(tmp, Path) and tmp.is_dir():
        for log in sorted(tmp.glob("**/*.log")):
            text = log.read_text(errors="replace")
            report.sections.append((f"log {log.relative_to(tmp)} ({call.when})", text[-_LOG_TAIL_CHARS:]))
    return report

"""The soak's processes: one redis-server (AOF on, or no persistence) or a three-master Redis Cluster, three `lingua-scheduler` instances and
synthetic `lingua-node`s, each restarted under its own id and address after a kill, plus the TCP proxies the
faults use. A supervisor restarts what exits on its own (as systemd or Kubernetes would) and notes it; an
RSS sampler records every process's memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as redis_sync

from tests.conftest import RedisServer, start_redis_cluster, start_redis_server
from tests.e2e._procs import BIN, FAST, Proc, SchedulerProc, ready
from tests.soak._proxy import ChaosProxy

PREFIX = "lingua:v1:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Event:
    at: float  # monotonic
    what: str
    detail: str = ""


@dataclass
class Member:
    """One supervised process (a scheduler or a node): its current incarnation and how to start another."""

    name: str
    kind: str  # "scheduler" | "node"
    proc: Proc | None = None
    incarnation: int = 0
    held_down: bool = False  # a fault keeps it down (or stopped): the supervisor leaves it alone
    stopped: bool = False  # SIGSTOPped by a fault
    last_stop_at: float = -1e9
    last_cont_at: float = -1e9
    max_rss_mb: dict[int, float] = field(default_factory=dict)  # incarnation -> peak RSS


@dataclass
class SoakConfig:
    schedulers: int = 3
    nodes: int = 4
    node_concurrency: int = 2
    node_latency_ms: int = 100
    scheduler_args: tuple[str, ...] = ()
    cluster_masters: int = 0  # > 0: a Redis Cluster of that many masters instead of one redis-server


# Detection times short enough that a one-minute run sees recoveries, long enough that a busy 2-core machine
# does not declare a live process dead.
SCHEDULER_SETTINGS = (
    *("--instance-heartbeat-ms", "250", "--instance-lease-ms", "3000"),
    *("--node-lease-heartbeats", "5"),
    *("--accept-timeout-ms", "2000", "--job-deadline-ms", "8000"),
    *("--session-gap-timeout-ms", "20000", "--session-queue-timeout-ms", "10000"),
    *("--max-sessions", "16"),  # per instance: a burst goes past the fleet's 48
)


class Redis:
    """redis-server on a fixed port. `aof`: appendonly yes, appendfsync everysec (a restart keeps the data);
    otherwise no persistence at all (a restart loses it)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.aof = True
        self.generation = 0
        self.dir = workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, aof: bool, fresh: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make redis`")
        if fresh:
            self.generation += 1
            self.dir = self.workdir / f"redis-{self.generation}"
            self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        persistence = ("--appendonly", "yes", "--appendfsync", "everysec") if aof else ("--appendonly", "no")
        self.proc = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *persistence,
                *("--dir", str(self.dir), "--loglevel", "warning"),
                *("--logfile", str(self.workdir / f"redis-{self.generation}.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis_sync.RedisError), self.client() as c:
                if c.ping():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def enable_aof(self) -> None:
        """Turns AOF on in the running server and waits for its first rewrite, so a restart keeps the data."""
        if self.aof:
            return
        with self.client() as c:
            _enable_aof(c)
        self.aof = True

    def stop(self) -> None:
        """SIGTERM: with AOF on, redis-server writes the AOF out and exits; without, the data is gone."""
        if self.proc is None:
            return
        _terminate(self.proc)

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)


AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
# What tests/conftest.py's start_redis_cluster gives each server, for a restart under the same identity
CLUSTER_NODE_ARGS = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")


class ClusterRedis:
    """A Redis Cluster of masters only (`m0`.., started by tests/conftest.py's start_redis_cluster, each in its
    own directory, AOF on, appendfsync everysec). A master restarts on the same port and with its
    nodes-<port>.conf (its identity and slots), either on its AOF (`kept`) or in a new directory holding only
    that file, with no persistence: its slots are served again, their keys gone. (A master that loses its
    nodes.conf too comes back as a stranger holding no slot; the cluster reports those slots uncovered until
    an operator runs `redis-cli --cluster fix`, so the soak does not do that.)"""

    def __init__(self, workdir: Path, masters: int) -> None:
        self.workdir = workdir / "redis-cluster"
        self.count = masters
        self.servers: list[RedisServer] = []
        self.aof: list[bool] = [True] * masters
        self.restarts = 0

    @property
    def names(self) -> list[str]:
        return [f"m{i}" for i in range(self.count)]

    def _index(self, name: str) -> int:
        return self.names.index(name)

    def url(self, name: str) -> str:
        return self.servers[self._index(name)].url

    def start(self) -> None:
        try:
            self.servers = start_redis_cluster(self.workdir, self.count, *AOF, own_dirs=True).servers
        except pytest.fail.Exception as exc:  # a BaseException: make it an ordinary error
            raise RuntimeError(f"the Redis Cluster did not start: {exc}") from None

    def registry_master(self, key: str) -> str:
        """The master serving `key`'s slot, by CLUSTER SLOTS (`{registry}`: one master holds the registry)."""
        with self.client(self.names[0]) as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
            for low, high, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                if int(low) <= slot <= int(high):
                    port = int(primary[1])
                    return next(
                        n for n, srv in zip(self.names, self.servers, strict=True) if srv.port == port
                    )
        return "?"

    def enable_aof(self, name: str) -> None:
        i = self._index(name)
        if self.aof[i]:
            return
        with self.client(name) as c:
            _enable_aof(c)
        self.aof[i] = True

    def stop(self, name: str) -> None:
        server = self.servers[self._index(name)]
        _terminate(server.proc)

    def start_master(self, name: str, kept: bool) -> None:
        """Starts `name` again on its port and identity, then waits for it to serve (a master that rejoins
        waits ~2 s, CLUSTER_WRITABLE_DELAY, before it calls the cluster ok)."""
        i = self._index(name)
        old = self.servers[i]
        node_dir = old.workdir
        if not kept:
            self.restarts += 1
            node_dir = self.workdir / f"{old.port}-empty-{self.restarts}"
            node_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(old.workdir / f"nodes-{old.port}.conf", node_dir)
        persistence = AOF if kept else ("--appendonly", "no")
        try:
            self.servers[i] = start_redis_server(
                node_dir,
                old.port,
                *CLUSTER_NODE_ARGS,
                *("--cluster-config-file", f"nodes-{old.port}.conf", *persistence),
            )
        except pytest.fail.Exception as exc:  # as above
            raise RuntimeError(f"redis {name} did not start: {exc}") from None
        self.aof[i] = kept
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(redis_sync.RedisError), self.client(name) as c:
                if c.cluster("info").get("cluster_state") == "ok":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis {name} not cluster_state:ok 15 s after its restart")

    def client(self, name: str) -> redis_sync.Redis:
        """A plain client of one master (for what lives on it: SCAN, and commands on the keys it returned)."""
        return redis_sync.Redis.from_url(self.url(name), decode_responses=True, socket_timeout=5)

    def cluster_client(self) -> redis_sync.RedisCluster:
        return redis_sync.RedisCluster.from_url(
            self.url(self.names[0]), decode_responses=True, socket_timeout=5
        )

    def close(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()


def _enable_aof(c: redis_sync.Redis) -> None:
    """Turns AOF on in a running server and waits for its first rewrite, so a restart keeps the data."""
    c.config_set("appendonly", "yes")
    c.config_set("appendfsync", "everysec")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = c.info("persistence")
        if (
            info.get("aof_enabled") == 1
            and not info.get("aof_rewrite_in_progress")
            and not info.get("aof_rewrite_scheduled")
        ):
            break
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: with AOF on, redis-server writes the AOF out and exits; without, the data is gone."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Fleet:
    def __init__(self, workdir: Path, config: SoakConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.redis = Redis(workdir)
        # cluster mode: `redis` stays unstarted; the schedulers use the cluster, sched-i seeded by master i
        self.cluster = ClusterRedis(workdir, config.cluster_masters) if config.cluster_masters else None
        self.events: list[Event] = []
        self.schedulers = [Member(f"sched-{i}", "scheduler") for i in range(config.schedulers)]
        self.nodes = [Member(f"node-{i}", "node") for i in range(config.nodes)]
        self.listen = {m.name: f"127.0.0.1:{free_port()}" for m in self.schedulers}
        # sched-N's Redis goes through a proxy for the last instance; node-0 reaches its schedulers through
        # one proxy per scheduler (cut together: the node's network).
        self.redis_link: ChaosProxy | None = None
        self.node_links: list[ChaosProxy] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.rss_peak: dict[str, float] = {}
        self.stalls: list[
            tuple[float, float]
        ] = []  # (monotonic start, seconds) the soak's own loop stood still
        self.key_file = workdir / "resume.key"

    @property
    def members(self) -> list[Member]:
        return [*self.schedulers, *self.nodes]

    def addresses(self) -> list[str]:
        return [self.listen[m.name] for m in self.schedulers]

    def note(self, what: str, detail: str = "") -> None:
        self.events.append(Event(time.monotonic(), what, detail))

    def store_clients(self) -> list[redis_sync.Redis]:
        """A plain client per Redis holding keys: the server, or every master of the cluster."""
        if self.cluster is not None:
            return [self.cluster.client(name) for name in self.cluster.names]
        return [self.redis.client()]

    def redis_pids(self) -> dict[str, int]:
        if self.cluster is not None:
            return {
                f"redis {n}": srv.proc.pid
                for n, srv in zip(self.cluster.names, self.cluster.servers, strict=True)
            }
        return {"redis": self.redis.proc.pid} if self.redis.proc is not None else {}

    async def start(self) -> None:
        self.key_file.write_bytes(os.urandom(32))
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.start)
            holder = await asyncio.to_thread(self.cluster.registry_master, f"{PREFIX}{{registry}}:nodes")
            ports = ", ".join(
                f"{n} :{s.port}" for n, s in zip(self.cluster.names, self.cluster.servers, strict=True)
            )
            self.note("redis cluster", f"{ports}; {{registry}} on {holder}")
        else:
            self.redis.start(aof=True, fresh=True)
            self.redis_link = ChaosProxy("redis-link", f"127.0.0.1:{self.redis.port}")
            await self.redis_link.start()
        for m in self.schedulers:
            await self.start_member(m)
        for m in self.schedulers:
            link = ChaosProxy(f"node-link-{m.name}", self.listen[m.name])
            await link.start()
            self.node_links.append(link)
        for m in self.nodes:
            await self.start_member(m)
        await self.wait_nodes_registered(30)
        self._tasks = [
            asyncio.create_task(self._supervise()),
            asyncio.create_task(self._sample_rss()),
            asyncio.create_task(self._watch_stalls()),
        ]

    async def wait_nodes_registered(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            client = self.cluster.cluster_client() if self.cluster is not None else self.redis.client()
            with contextlib.suppress(redis_sync.RedisError), client as c:
                if c.scard(f"{PREFIX}{{registry}}:nodes") >= len(self.nodes):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("the nodes did not register")

    def _scheduler_argv(self, m: Member) -> list[str]:
        redis: tuple[str, ...] = ("--redis-url", self.redis.url)
        if self.cluster is not None:
            seed = self.cluster.names[self.schedulers.index(m) % self.cluster.count]
            redis = ("--redis-cluster", "--redis-url", self.cluster.url(seed))
        elif m is self.schedulers[-1] and self.redis_link is not None:
            redis = ("--redis-url", f"redis://{self.redis_link.address}/0")
        return [
            str(BIN / "lingua-scheduler"),
            *("--listen", self.listen[m.name], "--metrics-port", "-1"),
            *FAST,
            *("--instance-id", m.name, *redis),
            *("--resume-key-file", str(self.key_file)),
            *SCHEDULER_SETTINGS,
            *self.config.scheduler_args,
        ]

    def _node_argv(self, m: Member) -> list[str]:
        i = self.nodes.index(m)
        addresses = self.addresses()
        order = [addresses[(i + k) % len(addresses)] for k in range(len(addresses))]
        if i == 0 and self.node_links:
            order = [link.address for link in self.node_links]
        return [
            str(BIN / "lingua-node"),
            *("--scheduler", ",".join(order), "--node-id", m.name, "--pairs", "en-es"),
            *("--max-concurrency", str(self.config.node_concurrency), "--engine", "synthetic"),
            *("--synthetic-latency-ms", str(self.config.node_latency_ms)),
            *("--reconnect-max-ms", "500", "--log-format", "text"),
        ]

    async def start_member(self, m: Member) -> None:
        m.incarnation += 1
        popen, log_path = self._spawn(m)
        m.stopped = False
        if m.kind == "scheduler":
            proc = SchedulerProc(m.name, popen, log_path)
            m.proc = proc
            await ready(proc, timeout_s=60)
        else:
            m.proc = Proc(m.name, popen, log_path)
        self.note("started", f"{m.name}#{m.incarnation}")

    def _spawn(self, m: Member) -> tuple[subprocess.Popen[str], Path]:
        log_path = self.workdir / f"{m.name}.{m.incarnation}.log"
        argv = self._scheduler_argv(m) if m.kind == "scheduler" else self._node_argv(m)
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if m.kind == "scheduler" else subprocess.DEVNULL,
            stderr=log_path.open("w"),
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return popen, log_path

    def kill(self, m: Member) -> None:
        if m.proc is not None and m.proc.popen.poll() is None:
            m.proc.popen.send_signal(signal.SIGKILL)
            m.proc.popen.wait()

    def stop(self, m: Member) -> None:
        if m.proc is not None and m.proc.popen.poll() is None:
            m.proc.popen.send_signal(signal.SIGSTOP)
            m.stopped = True
            m.last_stop_at = time.monotonic()

    def cont(self, m: Member) -> None:
        if m.proc is not None and m.proc.popen.poll() is None:
            m.proc.popen.send_signal(signal.SIGCONT)
        m.stopped = False
        m.last_cont_at = time.monotonic()

    async def _supervise(self) -> None:
        """Restarts a process that exited while no fault holds it down, and notes why it exited."""
        while True:
            await asyncio.sleep(0.25)
            for m in self.members:
                if m.held_down or m.proc is None or (code := m.proc.popen.poll()) is None:
                    continue
                tail = _last_lines(m.proc.log_path, 3)
                self.note("exited", f"{m.name}#{m.incarnation} status {code}: {tail}")
                try:
                    await asyncio.sleep(0.3)
                    if not m.held_down:
                        await self.start_member(m)
                except Exception as exc:  # Redis away at start, say: tried again on the next round
                    self.note("restart failed", f"{m.name}: {exc!r}"[:300])

    async def _sample_rss(self) -> None:
        while True:
            for m in self.members:
                if m.proc is not None and (mb := rss_mb(m.proc.popen.pid)) is not None:
                    m.max_rss_mb[m.incarnation] = max(m.max_rss_mb.get(m.incarnation, 0.0), mb)
            for name, pid in self.redis_pids().items():
                if (mb := rss_mb(pid)) is not None:
                    self.rss_peak[name] = max(self.rss_peak.get(name, 0.0), mb)
            if (mb := rss_mb(os.getpid())) is not None:
                self.rss_peak["soak (clients, proxies)"] = max(
                    self.rss_peak.get("soak (clients, proxies)", 0), mb
                )
            await asyncio.sleep(1.0)

    async def _watch_stalls(self, tick_s: float = 0.1) -> None:
        """Notes when this process's loop stood still for half a second or more: the machine was starved (a
        shared CPU), and processes under test were starved with it."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick_s)
            if (late := time.monotonic() - before - tick_s) >= 0.5:
                self.stalls.append((before, late))
                self.note("machine stall", f"the soak's loop stood still {late:.1f} s")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for m in reversed(self.members):
            if m.proc is not None and m.proc.popen.poll() is None:
                m.proc.popen.send_signal(signal.SIGCONT)
                m.proc.popen.kill()
                m.proc.popen.wait()
        for link in [*self.node_links, *([self.redis_link] if self.redis_link else [])]:
            with contextlib.suppress(Exception):
                await link.stop()
        if self.redis.proc is not None and self.redis.proc.poll() is None:
            self.redis.proc.kill()
            self.redis.proc.wait()
        if self.cluster is not None:
            self.cluster.close()


def _last_lines(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[-200:] for line in lines[-n:])

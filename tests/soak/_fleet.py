"""The soak's processes: one redis-server (AOF on, or no persistence), three `lingua-scheduler` instances and
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

import redis as redis_sync

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
        self.aof = True

    def stop(self) -> None:
        """SIGTERM: with AOF on, redis-server writes the AOF out and exits; without, the data is gone."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)


class Fleet:
    def __init__(self, workdir: Path, config: SoakConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.redis = Redis(workdir)
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

    async def start(self) -> None:
        self.key_file.write_bytes(os.urandom(32))
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
            with contextlib.suppress(redis_sync.RedisError), self.redis.client() as c:
                if c.scard(f"{PREFIX}{{registry}}:nodes") >= len(self.nodes):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("the nodes did not register")

    def _scheduler_argv(self, m: Member) -> list[str]:
        redis_url = self.redis.url
        if m is self.schedulers[-1] and self.redis_link is not None:
            redis_url = f"redis://{self.redis_link.address}/0"
        return [
            str(BIN / "lingua-scheduler"),
            *("--listen", self.listen[m.name], "--metrics-port", "-1"),
            *FAST,
            *("--instance-id", m.name, "--redis-url", redis_url),
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
            if self.redis.proc is not None and (mb := rss_mb(self.redis.proc.pid)) is not None:
                self.rss_peak["redis"] = max(self.rss_peak.get("redis", 0.0), mb)
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


def _last_lines(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[-200:] for line in lines[-n:])

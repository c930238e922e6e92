"""A fault drill: redis-server, a scheduler and node agents as real processes, plus a client."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

import redis as redis_sync

from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.pb import session_pb2
from tests.audio import chunks, silence, tone
from tests.conftest import RedisServer, start_redis_server, stop_redis_server, wait_until
from tests.e2e._procs import Proc, SchedulerProc, start_node, start_scheduler

FINAL_STATES = {"COMPLETED", "FAILED", "SKIPPED"}
NO_RESUME = Reconnect(within_s=0)  # drills see a broken stream as it is; resume drills ask for it
RESUME = Reconnect(within_s=30, first_wait_s=0.05, max_wait_s=0.5)
FLEET = ("--instance-heartbeat-ms", "100", "--instance-lease-ms", "600")  # an instance dead in 0.6 s

# Fast failure detection for drills; the defaults are for production.
DRILL_SETTINGS = (
    "--accept-timeout-ms",
    "1000",
    "--job-deadline-ms",
    "2500",
    "--session-gap-timeout-ms",
    "15000",
    "--session-queue-timeout-ms",
    "8000",
    "--node-lease-heartbeats",
    "3",
)


def utterances(n: int) -> bytes:
    return b"".join(tone(400 + 100 * (i % 3), freq=300 + 70 * i) + silence(1000) for i in range(n))


class Drill:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.redis: RedisServer | None = None
        self.scheduler: SchedulerProc | None = None

    async def start(
        self, *scheduler_args: str, redis_args: tuple[str, ...] = (), fast_failure: bool = True
    ) -> SchedulerProc:
        """redis-server and a scheduler, with the drill's fast failure detection unless `fast_failure` is
        off (then the scheduler's own accept timeout and deadlines)."""
        self.redis = start_redis_server(self.tmp, None, *redis_args)
        drill = DRILL_SETTINGS if fast_failure else ()
        self.scheduler = await start_scheduler(
            self.tmp, "--redis-url", self.redis.url, *drill, *scheduler_args
        )
        self.procs.append(self.scheduler)
        return self.scheduler

    def start_redis_only(self) -> RedisServer:
        """The drill's redis-server, for schedulers the test starts itself."""
        self.redis = start_redis_server(self.tmp, None)
        return self.redis

    async def another_scheduler(self, *args: str) -> SchedulerProc:
        """One more instance on the drill's Redis (the drill's `scheduler` stays the first)."""
        assert self.redis is not None
        proc = await start_scheduler(self.tmp, "--redis-url", self.redis.url, *DRILL_SETTINGS, *args)
        self.procs.append(proc)
        return proc

    async def node(
        self,
        node_id: str,
        *args: str,
        max_concurrency: int = 2,
        schedulers: Sequence[SchedulerProc] = (),
    ) -> Proc:
        """A node agent on `schedulers` (in that order; default: the drill's scheduler)."""
        assert self.scheduler is not None
        proc = start_node(
            self.tmp,
            ",".join(s.grpc for s in schedulers or (self.scheduler,)),
            node_id,
            "--max-concurrency",
            str(max_concurrency),
            *args,
            pairs="en-es",
        )
        self.procs.append(proc)
        await proc.log_contains("registered")
        return proc

    def stop_redis(self) -> None:
        assert self.redis is not None
        stop_redis_server(self.redis)

    def start_redis_again(self) -> None:
        assert self.redis is not None
        self.redis = start_redis_server(self.tmp, self.redis.port)

    def restart_redis(self, keep_data: bool) -> None:
        assert self.redis is not None
        client = redis_sync.Redis.from_url(self.redis.url)
        if keep_data:
            client.save()
        client.close()
        port = self.redis.port
        stop_redis_server(self.redis)  # SIGTERM: redis-server exits without saving (--save "")
        self.redis = start_redis_server(self.tmp, port)

    def redis_client(self) -> redis_sync.Redis:
        assert self.redis is not None
        return redis_sync.Redis.from_url(self.redis.url, decode_responses=True)

    async def session(
        self,
        pcm: bytes,
        options: session_pb2.SessionOptions | None = None,
        pace_s: float = 0.0,
        during: object = None,
        scheduler: SchedulerProc | None = None,
    ) -> list[session_pb2.StreamResponse]:
        """Streams `pcm` in 100 ms chunks (`pace_s` apart) to `scheduler` (default: the drill's) and returns
        everything it sent."""
        scheduler = scheduler or self.scheduler
        assert scheduler is not None
        async with LinguaClient(scheduler.grpc, reconnect=NO_RESUME) as client:
            session = await client.start_session("en", "es", options=options)

            async def send() -> None:
                for chunk in chunks(pcm, 100):
                    await session.send_audio(chunk)
                    if pace_s:
                        await asyncio.sleep(pace_s)  # microphone pace, so faults land mid-session
                await session.end()

            sender = asyncio.create_task(send())
            try:
                return await asyncio.wait_for(_collect(session), 60)
            finally:
                sender.cancel()

    async def assert_redis_clean(self, jobs_final: bool = True) -> dict[str, str]:
        """No slot is still held and (`jobs_final`) every job is in a final state. Returns job id -> state."""
        client = self.redis_client()
        try:

            def held() -> dict[str, object]:
                counters = {k: client.hget(k, "reserved") for k in client.scan_iter("*{registry}:node:*")}
                members = {k: client.smembers(k) for k in client.scan_iter("*{registry}:slots:*")}
                return {
                    **{k: v for k, v in counters.items() if int(v or 0)},
                    **{k: v for k, v in members.items() if v},
                }

            async def no_slots_held() -> bool:
                return not held()

            try:
                await wait_until(no_slots_held, what="every node slot released")
            except BaseException:
                jobs = {k: client.hgetall(k) for k in client.scan_iter("*:job:*")}
                print(f"slots still held: {held()}; jobs: {jobs}")  # shown with the failure
                raise
            states = {client.hget(k, "job_id"): client.hget(k, "state") for k in client.scan_iter("*:job:*")}
            if jobs_final:
                assert set(states.values()) <= FINAL_STATES, f"jobs not final: {states}"
            return states  # type: ignore[return-value]
        finally:
            client.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
        if self.redis is not None:
            stop_redis_server(self.redis)


async def _collect(session: object) -> list[session_pb2.StreamResponse]:
    return [m async for m in session]  # type: ignore[attr-defined]


def answers(messages: Sequence[session_pb2.StreamResponse]) -> list[tuple[int, str]]:
    out = []
    for m in messages:
        if m.HasField("result"):
            out.append((m.result.utterance_index, "result"))
        elif m.HasField("skipped"):
            out.append((m.skipped.utterance_index, session_pb2.SkipReason.Name(m.skipped.reason)))
    return out


def results(messages: Sequence[session_pb2.StreamResponse]) -> list[session_pb2.UtteranceResult]:
    return [m.result for m in messages if m.HasField("result")]


def kill(proc: Proc, sig: signal.Signals = signal.SIGKILL) -> None:
    proc.send(sig)

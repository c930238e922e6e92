"""JobStore: job state machine and node slot reservations in Redis, one Lua script per step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from lingua_grpc.jobs._model import JobSpec, JobState, parse_job_id
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import (
    InstanceKeys,
    JobKeys,
    RegistryKeys,
    Reservation,
    ScriptBook,
    ScriptCall,
    Started,
    slot_member,
    text,
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    state: JobState
    attempt: int
    node_id: str
    fields: dict[str, str]


class JobStore:
    def __init__(
        self,
        redis: Redis,
        job_keys: JobKeys,
        registry_keys: RegistryKeys,
        scripts: ScriptBook,
        job_ttl_ms: int,
        audio_ttl_ms: int,
        metrics: SchedulerMetrics | None = None,
        on_full: Callable[[], None] | None = None,
        instance: InstanceKeys | None = None,
    ) -> None:
        """`on_full` is called each time Redis refuses to record a job for memory (OOM). `instance`: the
        instance whose sessions' jobs these are (recorded as their owner, the sessions in its index, so a
        survivor finds them if it dies); None records no owner."""
        self._instance = instance
        self._metrics = metrics
        self._on_full = on_full
        self._redis = redis
        self._jobs = job_keys
        self._nodes = registry_keys
        self._scripts = scripts
        self._job_ttl_ms = job_ttl_ms
        self._audio_ttl_ms = audio_ttl_ms

    def _job_key(self, job_id: str) -> str:
        return self._jobs.job(*parse_job_id(job_id))

    async def start(self, spec: JobSpec, current_attempt: int, node_id: str = "") -> tuple[bool, int | None]:
        """Records the job if new and, given a node, starts attempt current+1 there (one round trip).

        Returns (created, attempt): attempt None when the attempt moved on or the job is final; 0 when no
        node was given. A job recorded anew (e.g. after Redis lost its data) starts again at attempt 1.
        """
        self._round_trip("start")
        with self._reporting_full():
            started = await self._scripts.run(self._start_call(spec, current_attempt, node_id))
        return started.created, started.attempt

    async def reserve_and_start(
        self, node_id: str, spec: JobSpec, current_attempt: int
    ) -> tuple[Reservation, int | None]:
        """Reserves a slot of the node for attempt current+1 and starts that attempt there, pipelined in one
        round trip (the happy path of a dispatch).

        The slot and the job live in different hash slots, so these are two scripts, and the second runs
        even when the first finds the node full: the attempt number is then spent on a node that holds no
        slot for it, and the caller moves on with the next attempt (see `Placer.place`).
        Returns the reservation and the attempt started (as `start`).
        """
        self._round_trip("reserve_start")
        with self._reporting_full():
            reserved, started = await self._scripts.run_pipelined(
                self._scripts.reserve_slot(
                    self._nodes, node_id, member=slot_member(spec.job_id, current_attempt + 1)
                ),
                self._start_call(spec, current_attempt, node_id),
            )
        return reserved, started.attempt

    async def session_opened(self, session_id: str) -> None:
        """The session is in its instance's index (a survivor that takes over the instance finds its jobs)."""
        if self._instance is not None:
            await self._redis.sadd(self._instance.sessions, session_id)

    async def session_closed(self, session_id: str) -> None:
        """The session ended here: it leaves the instance's index (its jobs are final or being ended)."""
        if self._instance is not None:
            await self._redis.srem(self._instance.sessions, session_id)

    async def live_jobs(self, session_id: str) -> list[int]:
        """Indexes of the session's jobs not yet final, in order."""
        return sorted(int(text(i)) for i in await self._redis.smembers(self._jobs.live(session_id)))

    @contextlib.contextmanager
    def _reporting_full(self) -> Iterator[None]:
        try:
            yield
        except OutOfMemoryError:
            if self._on_full is not None:
                self._on_full()
            raise

    async def writable(self, ttl_ms: int) -> bool:
        """Whether Redis takes a write now (a short-lived probe key): False while it refuses for memory."""
        try:
            await self._redis.set(self._jobs.probe, b"1", px=ttl_ms)
        except OutOfMemoryError:
            return False
        return True

    def _start_call(self, spec: JobSpec, current_attempt: int, node_id: str) -> ScriptCall[Started]:
        return self._scripts.start_job(
            self._jobs,
            spec.session_id,
            spec.index,
            job_id=spec.job_id,
            source_language=spec.pair.source,
            target_language=spec.pair.target,
            sample_rate_hz=spec.sample_rate_hz,
            tts=spec.tts,
            audio=spec.audio,
            job_ttl_ms=self._job_ttl_ms,
            audio_ttl_ms=self._audio_ttl_ms,
            current_attempt=current_attempt,
            node_id=node_id,
            owner=self._instance.instance_id if self._instance is not None else "",
        )

    def _transition_call(
        self,
        job_id: str,
        attempt: int,
        allowed: tuple[JobState, ...],
        to: JobState,
        fields: dict[str, str | int | bytes],
    ) -> ScriptCall[bool]:
        session_id, index = parse_job_id(job_id)
        return self._scripts.transition_job(
            self._jobs,
            session_id,
            index,
            attempt=attempt,
            allowed=tuple(s.value for s in allowed),
            to=to.value,
            fields=fields,
        )

    async def complete_and_release(
        self,
        job_id: str,
        attempt: int,
        node_id: str,
        allowed: tuple[JobState, ...],
        **fields: str | int | bytes,
    ) -> tuple[bool, bool]:
        """COMPLETED (fenced) and the attempt's slot released, pipelined in one round trip.

        The two keys live in different hash slots (the job's session, the registry), so they are two
        scripts, not one; on a single Redis they still share the round trip.
        """
        self._round_trip("complete")
        applied, released = await self._scripts.run_pipelined(
            self._transition_call(job_id, attempt, allowed, JobState.COMPLETED, fields),
            self._scripts.release_slot(self._nodes, node_id, member=slot_member(job_id, attempt)),
        )
        return applied, released

    def _round_trip(self, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.redis_round_trips.labels(operation).inc()

    async def transition(
        self,
        job_id: str,
        attempt: int,
        allowed: tuple[JobState, ...],
        to: JobState,
        **fields: str | int | bytes,
    ) -> bool:
        """Applies the change only for the job's current attempt and an allowed current state."""
        self._round_trip(to.value.lower())
        return await self._scripts.run(self._transition_call(job_id, attempt, allowed, to, fields))

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self._job_key(job_id))
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items() if k != b"tts_audio"}
        return JobRecord(
            job_id, JobState(fields["state"]), int(fields["attempt"]), fields.get("node_id", ""), fields
        )

    async def owners(self, attempts: Iterable[tuple[str, int, str]]) -> dict[tuple[str, int], str]:
        """Of the attempts (job id, attempt, node id) still current and running on that node, the instance
        owning each one's session (one round trip)."""
        wanted = list(attempts)
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, _, _ in wanted:
                pipe.hmget(self._job_key(job_id), "state", "attempt", "node_id", "owner")
            replies = await pipe.execute()
        live = {s.value for s in (JobState.ASSIGNED, JobState.ACCEPTED)}
        out: dict[tuple[str, int], str] = {}
        for (job_id, attempt, node_id), (state, current, on, owner) in zip(wanted, replies, strict=True):
            if state is not None and text(state) in live and int(current) == attempt and text(on) == node_id:
                out[(job_id, attempt)] = text(owner or b"")
        return out

    async def reserve(self, node_id: str, job_id: str, attempt: int) -> Reservation:
        self._round_trip("reserve")
        return await self._scripts.run(
            self._scripts.reserve_slot(self._nodes, node_id, member=slot_member(job_id, attempt))
        )

    async def release(self, node_id: str, job_id: str, attempt: int) -> bool:
        self._round_trip("release")
        return await self._scripts.run(
            self._scripts.release_slot(self._nodes, node_id, member=slot_member(job_id, attempt))
        )

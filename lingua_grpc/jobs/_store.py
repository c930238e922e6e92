"""JobStore: job state machine and node slot reservations in Redis, one Lua script per step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from lingua_grpc.jobs._model import (
    LIVE_STATES,
    JobOutput,
    JobSpec,
    JobState,
    parse_job_id,
    result_fields,
)
from lingua_grpc.jobs._model import job_id as make_job_id
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import (
    Completed,
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


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job of a session as the store has it, for a session that resumes or an operator."""

    index: int
    record: JobRecord | None  # None: no record (never made, expired, or lost with Redis' data)
    tts_audio: bytes  # its result's synthesized speech, while kept (when asked for)
    tts_kept: bool  # its result's synthesized speech is still kept
    audio_kept: bool  # its utterance's audio is still kept (another attempt can run)


def _record(job_id: str, raw: Mapping[Any, Any]) -> JobRecord | None:
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    return JobRecord(
        job_id, JobState(fields["state"]), int(fields["attempt"]), fields.get("node_id", ""), fields
    )


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
        result_audio_ttl_ms: int = 30_000,
    ) -> None:
        """`on_full` is called each time Redis refuses to record a job for memory (OOM). `instance`: the
        instance whose sessions' jobs these are (recorded as their owner, the sessions in its index, so a
        survivor finds them if it dies); None records no owner. `result_audio_ttl_ms`: how long a result's
        TTS audio is kept for a session that resumes."""
        self.result_audio_ttl_ms = result_audio_ttl_ms
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

    async def start(
        self, spec: JobSpec, current_attempt: int, node_id: str = "", answers_sent: int = 0
    ) -> tuple[bool, int | None]:
        """Records the job if new and, given a node, starts attempt current+1 there (one round trip).

        Returns (created, attempt): attempt None when the attempt moved on, the job is final or the session
        is another instance's now; 0 when no node was given. A job recorded anew (e.g. after Redis lost its
        data) starts again at attempt 1. `answers_sent`: the session's progress, recorded with a new job.
        """
        self._round_trip("start")
        with self._reporting_full():
            started = await self._scripts.run(self._start_call(spec, current_attempt, node_id, answers_sent))
        return started.created, started.attempt

    async def reserve_and_start(
        self, node_id: str, spec: JobSpec, current_attempt: int, answers_sent: int = 0
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
                self._start_call(spec, current_attempt, node_id, answers_sent),
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

    async def session_owner(self, session_id: str) -> str | None:
        """The instance owning the session now; None when the session has no record."""
        owner = await self._redis.hget(self._jobs.session(session_id), "owner")
        return None if owner is None else text(owner)

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

    def _start_call(
        self, spec: JobSpec, current_attempt: int, node_id: str, answers_sent: int = 0
    ) -> ScriptCall[Started]:
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
            owner=self.instance_id,
            audio_end=spec.audio_end,
            answers_sent=answers_sent,
            duration_ms=spec.duration_ms,
        )

    @property
    def instance_id(self) -> str:
        return self._instance.instance_id if self._instance is not None else ""

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
        output: JobOutput,
        node_id: str,
        allowed: tuple[JobState, ...] = LIVE_STATES,
        attempts: int = 0,
    ) -> tuple[Completed, bool]:
        """The result recorded, COMPLETED (fenced), and the attempt's slot released, pipelined in one round
        trip. Returns the outcome (recorded? the session's owner, who delivers it) and whether a slot was
        freed. `attempts`: the job's attempts that reached a node, recorded with it when known (> 0).

        The two keys live in different hash slots (the job's session, the registry), so they are two
        scripts, not one; on a single Redis they still share the round trip.
        """
        self._round_trip("complete")
        session_id, index = parse_job_id(output.job_id)
        completed, released = await self._scripts.run_pipelined(
            self._scripts.complete_job(
                self._jobs,
                session_id,
                index,
                attempt=output.attempt,
                allowed=tuple(s.value for s in allowed),
                tts_audio=output.tts_audio,
                tts_ttl_ms=self.result_audio_ttl_ms,
                fields={**result_fields(output), **({"attempts": attempts} if attempts > 0 else {})},
            ),
            self._scripts.release_slot(
                self._nodes, node_id, member=slot_member(output.job_id, output.attempt)
            ),
        )
        return completed, released

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
        return _record(job_id, raw)

    async def records(
        self, session_id: str, indexes: Iterable[int], with_tts: bool = True
    ) -> list[StoredJob]:
        """The session's jobs at `indexes` as recorded (None where there is no record), each with its TTS
        audio (`with_tts`; else only whether it is kept) and whether its utterance's audio is still kept (one
        round trip)."""
        wanted = list(indexes)
        if not wanted:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in wanted:
                pipe.hgetall(self._jobs.job(session_id, index))
                if with_tts:
                    pipe.get(self._jobs.tts(session_id, index))
                else:
                    pipe.exists(self._jobs.tts(session_id, index))
                pipe.exists(self._jobs.audio(session_id, index))
            replies = await pipe.execute()
        out = []
        for n, index in enumerate(wanted):
            raw, tts, audio = replies[3 * n : 3 * n + 3]
            record = _record(make_job_id(session_id, index), raw)
            tts_audio = tts if isinstance(tts, bytes) else b""
            out.append(StoredJob(index, record, tts_audio, bool(tts), bool(audio)))
        return out

    async def audio(self, session_id: str, index: int) -> bytes | None:
        """The utterance's audio, while it is kept: until the job is final, at most `job_audio_ttl_ms`."""
        value = await self._redis.get(self._jobs.audio(session_id, index))
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def owners(self, attempts: Iterable[tuple[str, int, str]]) -> dict[tuple[str, int], str]:
        """Of the attempts (job id, attempt, node id) still current and running on that node, the instance
        owning each one's session now (the job's creator when the session has no record) (one round trip)."""
        wanted = list(attempts)
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, _, _ in wanted:
                pipe.hmget(self._job_key(job_id), "state", "attempt", "node_id", "owner")
                pipe.hget(self._jobs.session(parse_job_id(job_id)[0]), "owner")
            replies = await pipe.execute()
        live = {s.value for s in (JobState.ASSIGNED, JobState.ACCEPTED)}
        out: dict[tuple[str, int], str] = {}
        for n, (job_id, attempt, node_id) in enumerate(wanted):
            (state, current, on, creator), owner = replies[2 * n], replies[2 * n + 1]
            if state is not None and text(state) in live and int(current) == attempt and text(on) == node_id:
                out[(job_id, attempt)] = text(owner or creator or b"")
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

"""JobStore: job state machine and node slot reservations in Redis, one Lua script per step."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from redis.asyncio import Redis

from lingua_grpc.jobs._model import JobSpec, JobState, parse_job_id
from lingua_grpc.store import JobKeys, RegistryKeys, ScriptBook


class Reservation(enum.Enum):
    RESERVED = 1
    ALREADY_HELD = 2
    FULL = 0
    DRAINING = -1
    NODE_GONE = -2

    @property
    def held(self) -> bool:
        return self in (Reservation.RESERVED, Reservation.ALREADY_HELD)


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    state: JobState
    attempt: int
    node_id: str
    fields: dict[str, str]


def slot_member(job_id: str, attempt: int) -> str:
    return f"{job_id}#{attempt}"


class JobStore:
    def __init__(
        self,
        redis: Redis,
        job_keys: JobKeys,
        registry_keys: RegistryKeys,
        scripts: ScriptBook,
        job_ttl_ms: int,
        audio_ttl_ms: int,
    ) -> None:
        self._redis = redis
        self._jobs = job_keys
        self._nodes = registry_keys
        self._scripts = scripts
        self._job_ttl_ms = job_ttl_ms
        self._audio_ttl_ms = audio_ttl_ms

    def _job_key(self, job_id: str) -> str:
        return self._jobs.job(*parse_job_id(job_id))

    async def create(self, spec: JobSpec) -> tuple[bool, JobState, int]:
        """Creates the job, or finds the existing one with this key: (created, state, attempt)."""
        created, state, attempt = await self._scripts.create_job(
            keys=[self._jobs.job(spec.session_id, spec.index), self._jobs.audio(spec.session_id, spec.index)],
            args=[
                spec.job_id,
                spec.session_id,
                spec.index,
                spec.pair.source,
                spec.pair.target,
                spec.sample_rate_hz,
                int(spec.tts),
                spec.audio,
                self._job_ttl_ms,
                self._audio_ttl_ms,
            ],
        )
        return bool(created), JobState(_text(state)), int(attempt)

    async def assign(self, job_id: str, current_attempt: int, node_id: str) -> int | None:
        """Starts attempt current+1 on the node; None when the attempt moved on or the job is final."""
        attempt = int(
            await self._scripts.assign_job(keys=[self._job_key(job_id)], args=[current_attempt, node_id])
        )
        return attempt if attempt > 0 else None

    async def transition(
        self,
        job_id: str,
        attempt: int,
        allowed: tuple[JobState, ...],
        to: JobState,
        **fields: str | int | bytes,
    ) -> bool:
        """Applies the change only for the job's current attempt and an allowed current state."""
        args: list[str | int | bytes] = [attempt, " ".join(s.value for s in allowed), to.value]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._scripts.transition_job(keys=[self._job_key(job_id)], args=args))

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self._job_key(job_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items() if k != b"tts_audio"}
        return JobRecord(
            job_id, JobState(fields["state"]), int(fields["attempt"]), fields.get("node_id", ""), fields
        )

    async def reserve(self, node_id: str, job_id: str, attempt: int) -> Reservation:
        k = self._nodes
        result = await self._scripts.reserve_slot(
            keys=[k.node(node_id), k.lease(node_id), k.slots(node_id)], args=[slot_member(job_id, attempt)]
        )
        return Reservation(int(result))

    async def release(self, node_id: str, job_id: str, attempt: int) -> bool:
        k = self._nodes
        return bool(
            await self._scripts.release_slot(
                keys=[k.node(node_id), k.slots(node_id)], args=[slot_member(job_id, attempt)]
            )
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

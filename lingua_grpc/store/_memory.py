"""Redis memory: what one session keeps there by the settings, and a watch of what Redis holds.

Redis runs with `noeviction`, so a full Redis refuses writes and new utterances are skipped STORAGE_FULL. Two
guards come before that: at start the scheduler compares Redis' `maxmemory` with what its sessions can keep
(`SessionRetention`), and while it runs `MemoryWatch` reads Redis' memory once a `redis_memory_poll_ms` (one
INFO, never on a job's path) for the metrics and the health reason `redis_near_full`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

# What the estimate assumes of a session: it speaks all the time, in real time, 16 kHz 16-bit mono PCM (the
# format of our clients, the demo and the bench), one utterance every UTTERANCE_S, with TTS on, the speech
# synthesized about as long as the speech heard, at the same rate.
SPEECH_BYTES_PER_S = 32_000
UTTERANCE_S = 2.0
# A completed job's record in Redis (a hash of ~25 fields: states, timings, node, both texts), as MEMORY USAGE
# measures it for the synthetic engine's results (1,888 bytes: texts over 64 bytes make it a hashtable).
JOB_RECORD_BYTES = 2_000
# A reason in force is lifted once memory falls this far below its threshold, so it does not flap.
NEAR_FULL_HYSTERESIS = 0.05


@dataclass(frozen=True, slots=True)
class SessionRetention:
    """What one session slot keeps in Redis at most, by the settings (bytes)."""

    in_flight_audio: int  # speech of the utterance waiting for its result (deleted once it is final)
    results_tts: int  # results' synthesized speech, kept `result_audio_ttl_ms` for a resume
    records: int  # job records (texts, timings), kept `job_ttl_ms`: they outlive the session

    @property
    def total(self) -> int:
        return self.in_flight_audio + self.results_tts + self.records

    @classmethod
    def estimate(
        cls, *, max_utterance_ms: int, result_audio_ttl_ms: int, job_ttl_ms: int
    ) -> SessionRetention:
        return cls(
            in_flight_audio=int(SPEECH_BYTES_PER_S * max_utterance_ms / 1000),
            results_tts=int(SPEECH_BYTES_PER_S * result_audio_ttl_ms / 1000),
            records=int(JOB_RECORD_BYTES * job_ttl_ms / 1000 / UTTERANCE_S),
        )

    def sessions_within(self, max_bytes: int) -> int:
        return max_bytes // max(1, self.total)

    def describe(self) -> str:
        return (
            f"{_mb(self.total)} per session: {_mb(self.in_flight_audio)} of speech in flight,"
            f" {_mb(self.results_tts)} of results' TTS kept for a resume, {_mb(self.records)} of job records"
        )


def fit_warning(retention: SessionRetention, max_sessions: int, max_bytes: int) -> str | None:
    """Why Redis' maxmemory (`max_bytes`, 0: no limit) cannot keep what `max_sessions` sessions keep, or None
    when it can."""
    needed = retention.total * max_sessions
    if not max_bytes or needed <= max_bytes:
        return None
    return (
        f"Redis' maxmemory ({_mb(max_bytes)}) keeps what about {retention.sessions_within(max_bytes)} sessions"
        f" keep, and max_sessions is {max_sessions}: {max_sessions} real-time sessions need about"
        f" {_mb(needed)} ({retention.describe()}); past maxmemory new utterances are skipped STORAGE_FULL."
        " Raise --embedded-redis-maxmemory-mb (or Redis' maxmemory), or lower --max-sessions,"
        " --result-audio-ttl-ms or --job-ttl-ms"
    )


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.2f} MB"


@dataclass(frozen=True, slots=True)
class MemoryReading:
    used_bytes: int
    max_bytes: int  # Redis' maxmemory; 0: no limit

    @property
    def used_fraction(self) -> float | None:
        return self.used_bytes / self.max_bytes if self.max_bytes else None

    def describe(self) -> str:
        if not self.max_bytes:
            return f"Redis uses {_mb(self.used_bytes)} (no maxmemory)"
        return (
            f"Redis uses {_mb(self.used_bytes)} of its maxmemory {_mb(self.max_bytes)}"
            f" ({100 * self.used_bytes / self.max_bytes:.0f} %)"
        )


def memory_reading(info: Mapping[str, Any]) -> MemoryReading:
    """From INFO memory; on Redis Cluster (one reply per shard) the shard nearest its limit: the first that
    refuses writes."""
    shards = list(info.values()) if info and all(isinstance(v, Mapping) for v in info.values()) else [info]
    readings = [MemoryReading(int(s.get("used_memory", 0)), int(s.get("maxmemory", 0))) for s in shards]
    return max(readings, key=lambda r: (r.used_fraction or 0.0, r.used_bytes))


async def read_memory(redis: Redis) -> MemoryReading:
    return memory_reading(await redis.info("memory"))


class MemoryWatch:
    """Reads Redis' memory every `interval_s` and hands each reading to `on_reading`; `on_near_full(True,
    reading)` once used memory reaches `near_full_percent` of maxmemory, `(False, reading)` once it falls back
    below (less `NEAR_FULL_HYSTERESIS`). `near_full_percent` 0: never near full."""

    def __init__(
        self,
        redis: Redis,
        interval_s: float,
        near_full_percent: int,
        on_reading: Callable[[MemoryReading], None],
        on_near_full: Callable[[bool, MemoryReading], None],
    ) -> None:
        self._redis = redis
        self._interval_s = interval_s
        self._threshold = near_full_percent / 100
        self._on_reading = on_reading
        self._on_near_full = on_near_full
        self._near_full = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> MemoryReading | None:
        """Reads once now (None when Redis does not say: INFO refused, or Redis unreachable), then every
        interval in a task of its own."""
        first = await self._read()
        self._task = asyncio.create_task(self._run(), name="redis-memory-watch")
        return first

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._read()

    async def _read(self) -> MemoryReading | None:
        try:
            reading = await read_memory(self._redis)
        except (RedisError, OSError) as exc:  # unreachable is its own health reason; INFO may be disabled
            raise_if_cancelling()
            log.debug("Redis memory not read", extra={"error": repr(exc)})
            return None
        self._on_reading(reading)
        near_full = is_near_full(reading, self._threshold, self._near_full)
        if near_full != self._near_full:
            self._near_full = near_full
            self._on_near_full(near_full, reading)
        return reading


def is_near_full(reading: MemoryReading, threshold: float, was: bool) -> bool:
    """Near full at `threshold` (a share of maxmemory; 0: never) or above, and until `NEAR_FULL_HYSTERESIS`
    below it once it was (`was`). Redis without maxmemory is never near full."""
    fraction = reading.used_fraction
    if threshold <= 0 or fraction is None:
        return False
    if fraction >= threshold:
        return True
    return was and fraction >= threshold - NEAR_FULL_HYSTERESIS

"""What the settings let a session keep in Redis, and how Redis' memory is read and judged."""

from __future__ import annotations

import pytest

from lingua_grpc.config import Settings
from lingua_grpc.store import MemoryReading, SessionRetention, fit_warning
from lingua_grpc.store._memory import is_near_full, memory_reading

pytestmark = pytest.mark.unit

MB = 1_000_000


def retention(settings: Settings) -> SessionRetention:
    return SessionRetention.estimate(
        max_utterance_ms=settings.session_max_utterance_ms,
        result_audio_ttl_ms=settings.result_audio_ttl_ms,
        job_ttl_ms=settings.job_ttl_ms,
    )


def test_a_session_keeps_its_speech_in_flight_its_results_speech_and_its_records() -> None:
    kept = retention(Settings(listen="127.0.0.1:0"))
    # Defaults: one 15 s utterance of 16 kHz speech in flight, 30 s of results' TTS, an hour of records.
    assert (kept.in_flight_audio, kept.results_tts, kept.records) == (480_000, 960_000, 3_600_000)
    shorter = retention(Settings(listen="127.0.0.1:0", result_audio_ttl_ms=10_000, job_ttl_ms=600_000))
    assert shorter.total == 480_000 + 320_000 + 600_000


def test_the_warning_says_how_many_sessions_fit_and_what_to_change() -> None:
    kept = SessionRetention(in_flight_audio=MB, results_tts=2 * MB, records=MB)  # 4 MB per session
    assert fit_warning(kept, max_sessions=100, max_bytes=400 * MB) is None
    assert fit_warning(kept, max_sessions=100, max_bytes=0) is None  # no limit: nothing to compare
    why = fit_warning(kept, max_sessions=100, max_bytes=200 * MB)
    assert why is not None
    assert "about 50 sessions" in why and "max_sessions is 100" in why and "400.00 MB" in why
    assert "--embedded-redis-maxmemory-mb" in why


def test_redis_cluster_is_read_as_its_fullest_shard() -> None:
    assert memory_reading({"used_memory": 10, "maxmemory": 100}) == MemoryReading(10, 100)
    shards = {
        "127.0.0.1:7000": {"used_memory": 50, "maxmemory": 100},
        "127.0.0.1:7001": {"used_memory": 90, "maxmemory": 100},
        "127.0.0.1:7002": {"used_memory": 95, "maxmemory": 1000},
    }
    assert memory_reading(shards) == MemoryReading(90, 100)
    assert memory_reading({"a": {"used_memory": 5}, "b": {"used_memory": 7}}) == MemoryReading(7, 0)


def test_near_full_from_its_threshold_until_five_points_below() -> None:
    def near(used: int, was: bool, threshold: float = 0.9) -> bool:
        return is_near_full(MemoryReading(used, 100), threshold, was)

    assert not near(89, was=False) and near(90, was=False) and near(100, was=False)
    assert near(86, was=True) and not near(84, was=True)
    assert not near(99, was=False, threshold=0)  # off
    assert not is_near_full(MemoryReading(10**9, 0), 0.9, was=True)  # no maxmemory: never full

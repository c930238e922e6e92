"""Sessions end to end in one process: real scheduler, real node agents (synthetic engine), real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Session
from lingua_grpc.jobs import JobState
from lingua_grpc.pb import common_pb2, registry_pb2, registry_pb2_grpc, session_pb2
from node_agent.engines import SyntheticEngine
from tests.audio import chunks, silence, tone
from tests.conftest import snapshot_where
from tests.integration._fleet import THREE_UTTERANCES, Fleet, answers, collect, stream

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> str:
    """The session suite runs on one redis-server and again on a real Redis Cluster (three masters)."""
    return str(request.param)


async def test_every_utterance_once_in_order_with_progress_first(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    assert session.started.options.pause_ms == 600, "the effective options are echoed"
    await stream(session, THREE_UTTERANCES)
    messages = await collect(session)
    assert answers(messages) == [(0, "result"), (1, "result"), (2, "result")]
    for index in range(3):
        kinds = [
            k
            for m in messages
            if (k := m.WhichOneof("kind")) not in (None, "audio_recorded")
            and getattr(m, k).utterance_index == index
        ]
        assert kinds == ["progress", "progress", "result"], f"utterance {index}: {kinds}"
    result = next(m.result for m in messages if m.HasField("result"))
    assert result.source_text.startswith("[synthetic en] utterance of ")
    assert result.translated_text.startswith("[synthetic en>es]")
    assert result.node_id == "gpu-1" and result.attempt == 1
    assert result.tts_audio and result.tts_audio_format.sample_rate_hz == 16000
    assert result.audio_duration_ms, "the utterance duration is reported"
    assert result.timings.scheduler_dispatch_us, "the scheduler reports its own dispatch time"
    assert result.timings.scheduler_delivery_us, "the scheduler reports its own delivery time"


class OutOfOrderEngine(SyntheticEngine):
    """The first utterance takes longer than the others, so results reach the scheduler out of order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def transcribe(self, audio, language):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.5)  # stands in for a slow model run on the first utterance
        return await super().transcribe(audio, language)


async def test_results_arriving_out_of_order_reach_the_client_in_order(
    client: LinguaClient, fleet: Fleet
) -> None:
    await fleet.add("gpu-1", engine=OutOfOrderEngine())
    session = await client.start_session("en", "es")
    await stream(session, THREE_UTTERANCES)
    assert answers(await collect(session)) == [(0, "result"), (1, "result"), (2, "result")]


class StallFirstEngine(SyntheticEngine):
    """Never answers the first utterance (a lost job); answers the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def transcribe(self, audio, language):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        return await super().transcribe(audio, language)


async def test_a_lost_utterance_is_skipped_after_the_gap_timeout(
    client: LinguaClient, fleet: Fleet, scheduler: Scheduler
) -> None:
    await fleet.add("gpu-1", engine=StallFirstEngine())
    session = await client.start_session("en", "es", options=session_pb2.SessionOptions(gap_timeout_ms=1000))
    await stream(session, THREE_UTTERANCES)
    messages = await collect(session)
    assert answers(messages) == [(0, "skipped"), (1, "result"), (2, "result")]
    skipped = next(m.skipped for m in messages if m.HasField("skipped"))
    assert skipped.reason == session_pb2.SKIP_REASON_GAP_TIMEOUT


class SlowEngine(SyntheticEngine):
    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def transcribe(self, audio, language):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        return await super().transcribe(audio, language)


async def test_jobs_queue_per_pair_while_every_slot_is_busy(
    client: LinguaClient, fleet: Fleet, scheduler: Scheduler
) -> None:
    gate = asyncio.Event()
    await fleet.add("gpu-1", engine=SlowEngine(gate), max_concurrency=1)
    session = await client.start_session(
        "en", "es", options=session_pb2.SessionOptions(queue_timeout_ms=10000)
    )
    await stream(session, THREE_UTTERANCES)
    assert scheduler.dispatcher is not None

    async def two_queued() -> bool:
        return scheduler.dispatcher is not None and scheduler.dispatcher.queued == 2

    from tests.conftest import wait_until

    await wait_until(two_queued, what="two jobs waiting behind the one running")
    gate.set()
    messages = await collect(session)
    assert answers(messages) == [(0, "result"), (1, "result"), (2, "result")]
    assert all(
        m.result.timings.queue_ms > 0 for m in messages if m.HasField("result") and m.result.utterance_index
    )


async def test_queue_timeout_skips_with_no_capacity(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1", engine=SlowEngine(asyncio.Event()), max_concurrency=1)  # never finishes
    session = await client.start_session(
        "en", "es", options=session_pb2.SessionOptions(queue_timeout_ms=300, gap_timeout_ms=1000)
    )
    await stream(session, THREE_UTTERANCES)
    messages = await collect(session)
    reasons = {m.skipped.utterance_index: m.skipped.reason for m in messages if m.HasField("skipped")}
    assert reasons[1] == session_pb2.SKIP_REASON_NO_CAPACITY
    assert reasons[2] == session_pb2.SKIP_REASON_NO_CAPACITY


async def test_duplicate_job_creation_returns_the_same_job(scheduler: Scheduler, fleet: Fleet) -> None:
    from lingua_grpc.jobs import JobSpec
    from lingua_grpc.registry import LanguagePair

    assert scheduler.dispatcher is not None
    store = scheduler.dispatcher._store
    spec = JobSpec("sess1", 0, LanguagePair("en", "es"), 16000, False, tone(100))
    results = await asyncio.gather(*(store.start(spec, 0) for _ in range(5)))
    assert sorted(created for created, _ in results) == [False, False, False, False, True]
    record = await store.get(spec.job_id)
    assert record is not None and record.state is JobState.CREATED and record.attempt == 0


async def test_final_chunk_racing_the_pause_timer_creates_one_job(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session(
        "en", "es", options=session_pb2.SessionOptions(pause_ms=100, hangover_ms=0)
    )
    await session.send_audio(tone(200))
    await asyncio.sleep(0.1)  # lets the 100 ms arrival-gap timer come due just as the final chunk arrives
    await session.send_audio(tone(20), is_final=True)
    await session.end()
    messages = await collect(session)
    assert len([a for a in answers(messages)]) == len({i for i, _ in answers(messages)}), (
        "one answer per index"
    )
    assert [i for i, _ in answers(messages)] == list(range(len(answers(messages))))


BadStart = Callable[[LinguaClient], Awaitable[Session]]


@pytest.mark.parametrize(
    ("start", "code", "fragment"),
    [
        (
            lambda c: c.start_session("en", "fr"),
            grpc.StatusCode.UNAVAILABLE,
            "no registered node serves en-fr",
        ),
        (lambda c: c.start_session("en", "english"), grpc.StatusCode.INVALID_ARGUMENT, "BCP-47"),
        (
            lambda c: c.start_session("en", "es", sample_rate_hz=4000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sample_rate_hz must be 8000 to 48000",
        ),
        (
            lambda c: c.start_session("en", "es", options=session_pb2.SessionOptions(pause_ms=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "options.pause_ms must be 100 to 10000",
        ),
        (
            lambda c: c.start_session("en", "es", options=session_pb2.SessionOptions(gap_timeout_ms=999999)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "options.gap_timeout_ms",
        ),
    ],
)
async def test_bad_starts_get_a_status_that_says_what_to_fix(
    client: LinguaClient, fleet: Fleet, start: BadStart, code: grpc.StatusCode, fragment: str
) -> None:
    await fleet.add("gpu-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start(client)
    assert err.value.code() == code
    assert fragment in (err.value.details() or "")


async def test_stream_not_starting_with_start_is_failed_precondition(scheduler: Scheduler) -> None:
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel:
        from lingua_grpc.pb import session_pb2_grpc

        call = session_pb2_grpc.SessionServiceStub(channel).Stream()  # type: ignore[call-arg]
        await call.write(session_pb2.StreamRequest(audio=session_pb2.AudioChunk(data=b"\0\0")))
        assert await call.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "must be `start`" in (await call.details() or "")


async def test_odd_sized_chunk_is_invalid_argument(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await session.send_audio(b"\x01\x02\x03")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(session)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whole 16-bit samples" in (err.value.details() or "")


async def test_bad_format_is_invalid_argument(
    client: LinguaClient, fleet: Fleet, scheduler: Scheduler
) -> None:
    await fleet.add("gpu-1")
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel:
        from lingua_grpc.pb import session_pb2_grpc

        call = session_pb2_grpc.SessionServiceStub(channel).Stream()  # type: ignore[call-arg]
        await call.write(
            session_pb2.StreamRequest(
                start=session_pb2.SessionStart(
                    language_pair=common_pb2.LanguagePair(source_language="en", target_language="es"),
                    audio_format=common_pb2.AudioFormat(
                        encoding=common_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=16000, channels=2
                    ),
                )
            )
        )
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "mono" in (await call.details() or "")


async def test_silence_only_stream_ends_with_no_utterances(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await stream(session, silence(3000))
    assert answers(await collect(session)) == []


async def test_nodes_slots_are_all_released_after_a_session(
    client: LinguaClient, fleet: Fleet, scheduler: Scheduler
) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await stream(session, THREE_UTTERANCES)
    await collect(session)
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(scheduler.endpoints.grpc) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await snapshot_where(stub, lambda s: True)

        async def released() -> bool:
            assert scheduler.cache is not None
            snap = await scheduler.cache.refresh()
            return snap.nodes["gpu-1"].reserved_slots == 0

        from tests.conftest import wait_until

        await wait_until(released, what="every slot released")
        reply = await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())
        assert reply.snapshot.nodes[0].reserved_slots == 0


async def test_voiced_only_client_is_cut_by_arrival_gaps(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session(
        "en", "es", options=session_pb2.SessionOptions(pause_ms=150, hangover_ms=50)
    )
    for utterance in range(3):
        for chunk in chunks(tone(300, freq=300 + 100 * utterance), 50):
            await session.send_audio(chunk)  # speech only: no silence is ever sent
        await asyncio.sleep(0.4)  # the client's pause between utterances, longer than pause + hangover
    await session.end()
    messages = await collect(session)
    assert answers(messages) == [(0, "result"), (1, "result"), (2, "result")]
    assert all(m.result.audio_duration_ms == 300 for m in messages if m.HasField("result"))


async def test_latency_histograms_count_every_result(
    scheduler: Scheduler, client: LinguaClient, fleet: Fleet
) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await stream(session, THREE_UTTERANCES)
    assert answers(await collect(session)) == [(0, "result"), (1, "result"), (2, "result")]
    registry = scheduler.metrics.registry
    for name in ("lingua_end_to_end_seconds", "lingua_dispatch_seconds", "lingua_queue_wait_seconds"):
        assert registry.get_sample_value(f"{name}_count") == 3, name
    assert (registry.get_sample_value("lingua_end_to_end_seconds_sum") or 0) > 0


async def test_a_later_message_over_the_session_bound_ends_the_session_resource_exhausted(
    client: LinguaClient, fleet: Fleet, scheduler: Scheduler
) -> None:
    """A chunk over the SessionService bound (max_chunk_bytes and a margin), after `start`, is refused before
    it is parsed, and the stream ends at once RESOURCE_EXHAUSTED; the session does not hang waiting for a
    reader that is gone."""
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await session.send_audio(bytes(scheduler.settings.max_chunk_bytes + 200_000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(collect(session), 10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

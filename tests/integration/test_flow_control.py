"""Flow control: a client that sends a recording as fast as it reads waits for room in its session's window of
outstanding utterances instead of losing utterances to SESSION_BACKLOG; one that does not wait keeps them."""

from __future__ import annotations

import asyncio

import pytest

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Reconnect, Session
from lingua_grpc.pb import session_pb2
from node_agent.engines import SyntheticEngine
from tests.audio import chunks, silence, tone
from tests.integration._fleet import Fleet, Messages, answers, collect
from tests.integration._proxy import CuttableLink

pytestmark = pytest.mark.integration

UTTERANCES = 40
WINDOW = 3


def recording(n: int = UTTERANCES) -> bytes:
    """`n` utterances: 300 ms of tone, then more silence than a pause (600 + 200 ms by default)."""
    return b"".join(tone(300, freq=300 + 11 * i) + silence(900) for i in range(n))


async def send_flat_out(session: Session, pcm: bytes) -> int:
    """Sends `pcm` as fast as the session takes it; returns the most audio it kept for a resume (bytes)."""
    most_kept = 0
    for chunk in chunks(pcm, 100):
        await session.send_audio(chunk)
        most_kept = max(most_kept, session.kept_bytes)
    await session.end()
    return most_kept


async def read_watching_the_window(session: Session, timeout_s: float = 60) -> tuple[Messages, int]:
    """Every message, and the most utterances the session had outstanding as it went."""
    most = 0

    async def run() -> Messages:
        nonlocal most
        out = []
        async for message in session:
            out.append(message)
            most = max(most, session.outstanding)
        return out

    return await asyncio.wait_for(run(), timeout_s), most


@pytest.mark.settings(session_max_outstanding=WINDOW)
async def test_a_recording_sent_flat_out_waits_for_room_and_every_utterance_is_translated(
    client: LinguaClient, fleet: Fleet
) -> None:
    await fleet.add("gpu-1", SyntheticEngine(asr_latency_s=0.03), max_concurrency=1)
    session = await client.start_session("en", "es", options=session_pb2.SessionOptions(tts_enabled=False))
    assert session.window == WINDOW
    assert session.started.options.wait_for_room, "the library waits for room unless told otherwise"
    sender = asyncio.create_task(send_flat_out(session, recording()))
    messages, most_outstanding = await read_watching_the_window(session)
    most_kept = await sender
    assert answers(messages) == [(i, "result") for i in range(UTTERANCES)], answers(messages)
    durations = {m.result.audio_duration_ms for m in messages if m.HasField("result")}
    assert min(durations) >= 1000, f"no utterance was cut while its client waited: {sorted(durations)}"
    assert 1 <= most_outstanding <= WINDOW
    # send_audio waited: the audio sent past the last AudioRecorded stayed within the longest utterance
    # (15 s) plus a second and one chunk, a third of the 48 s recording.
    assert most_kept <= 2 * 16000 * 16 + 3200 < len(recording()) / 2
    cut = [m.audio_recorded.next_utterance_index for m in messages if m.HasField("audio_recorded")]
    assert cut == sorted(cut) and sorted(set(cut)) == list(range(1, UTTERANCES + 1)), (
        f"each AudioRecorded says how many utterances lie before it: {cut}"
    )


@pytest.mark.settings(session_max_outstanding=WINDOW)
async def test_a_client_that_does_not_wait_for_room_keeps_its_backlog_skips(
    client: LinguaClient, fleet: Fleet
) -> None:
    await fleet.add("gpu-1", SyntheticEngine(asr_latency_s=0.03), max_concurrency=1)
    options = session_pb2.SessionOptions(tts_enabled=False, wait_for_room=False)
    session = await client.start_session("en", "es", options=options)
    assert not session.started.options.wait_for_room
    sender = asyncio.create_task(send_flat_out(session, recording()))
    messages = await collect(session, 60)
    await sender
    assert [i for i, _ in answers(messages)] == list(range(UTTERANCES)), "every utterance answered, once"
    skipped = [m.skipped for m in messages if m.HasField("skipped")]
    assert skipped and all(s.reason == session_pb2.SKIP_REASON_SESSION_BACKLOG for s in skipped)


@pytest.mark.settings(
    session_max_outstanding=WINDOW, session_gap_timeout_ms=20000, session_queue_timeout_ms=5000
)
async def test_a_session_held_at_its_window_resumes_after_a_dropped_connection_and_loses_nothing(
    scheduler: Scheduler, fleet: Fleet
) -> None:
    await fleet.add("gpu-1", SyntheticEngine(asr_latency_s=0.03), max_concurrency=1)
    assert scheduler.endpoints is not None
    link = CuttableLink(scheduler.endpoints.grpc)
    await link.start()
    try:
        reconnect = Reconnect(within_s=10, first_wait_s=0.02, max_wait_s=0.2)
        async with LinguaClient(link.address, reconnect=reconnect) as client:
            options = session_pb2.SessionOptions(tts_enabled=False)
            session = await client.start_session("en", "es", options=options)
            sender = asyncio.create_task(send_flat_out(session, recording()))
            messages: Messages = []

            async def read() -> None:
                async for message in session:
                    messages.append(message)
                    if message.HasField("result") and message.result.utterance_index == 9:
                        assert not sender.done(), "the client is still held back by its window"
                        link.cut()

            await asyncio.wait_for(read(), 60)
            await sender
        assert session.resumes >= 1
        skipped = [m.skipped for m in messages if m.HasField("skipped")]
        assert answers(messages) == [(i, "result") for i in range(UTTERANCES)], skipped
    finally:
        await link.stop()

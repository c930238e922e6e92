"""Load without loss: a burst of whole utterances on busy live nodes runs each job once (no re-dispatch
storm), a node stopped in the middle of a burst has its attempts run again after its lease, each answered
once, and the attempt a client is told counts only attempts that reached a node. Real lingua-scheduler and
lingua-node processes, a real redis-server."""

from __future__ import annotations

import asyncio
import signal

import pytest

from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import session_pb2
from tests.audio import silence, tone
from tests.conftest import wait_until
from tests.fault._drill import NO_RESUME, Drill, answers, results

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(180)]


def whole_utterance(i: int) -> bytes:
    """1.2 s: 300 ms of tone (its pitch names the utterance) then silence, sent as one final chunk."""
    return tone(300, freq=200 + 7 * i) + silence(900)


async def burst_session(address: str, utterances: int) -> list[session_pb2.StreamResponse]:
    """A session that sends all its utterances at once (each whole, marked final), TTS on (the default),
    then reads everything."""
    async with LinguaClient(address, reconnect=NO_RESUME) as client:
        session = await client.start_session("en", "es")
        for i in range(utterances):
            await session.send_audio(whole_utterance(i), is_final=True)
        await session.end()
        return await asyncio.wait_for(_collect(session), 120)


async def _collect(session: object) -> list[session_pb2.StreamResponse]:
    return [m async for m in session]  # type: ignore[attr-defined]


async def test_a_burst_on_busy_live_nodes_runs_every_job_once(drill: Drill) -> None:
    """The burst of issue 24: the scheduler's own accept timeout and deadlines (defaults), four synthetic
    nodes of concurrency 64, 20 sessions sending 20 whole utterances each at once with TTS on. Every node is
    alive and only busy: every utterance gets its result, none runs twice. (Before: 216 of 400 skipped
    FAILED after 860 re-dispatches, each busy node's late acceptance taken for a lost node.)"""
    defaults = ("--heartbeat-interval-ms", "5000", "--lease-check-interval-ms", "1000")  # not the tests' fast
    scheduler = await drill.start(*defaults, fast_failure=False)
    for n in range(4):
        await drill.node(f"node-{n}", max_concurrency=64)
    sessions = await asyncio.gather(*(burst_session(scheduler.grpc, 20) for _ in range(20)))
    for messages in sessions:
        assert answers(messages) == [(i, "result") for i in range(20)]
        for r in results(messages):
            assert r.attempt == 1 and r.tts_audio, "run once, with its speech"
    assert await scheduler.metric("lingua_job_redispatches_total") == 0
    assert await scheduler.metric("lingua_job_timeouts_total") == 0
    assert await scheduler.metric("lingua_results_fenced_total") == 0
    await drill.assert_redis_clean()


async def test_a_node_stopped_in_a_burst_has_its_attempts_run_again_after_its_lease_each_answered_once(
    drill: Drill,
) -> None:
    """SIGSTOP of one of two nodes while a burst runs on both: it is not slow, it is gone. Its attempts run
    again on the other once its lease lapses (no heartbeat), and every utterance is answered once, with a
    result."""
    scheduler = await drill.start()
    stopped = await drill.node("node-0", "--synthetic-latency-ms", "300", max_concurrency=8)
    await drill.node("node-1", "--synthetic-latency-ms", "300", max_concurrency=8)
    burst = [asyncio.create_task(burst_session(scheduler.grpc, 10)) for _ in range(4)]
    await stopped.log_contains("job started")
    stopped.send(signal.SIGSTOP)
    try:
        sessions = await asyncio.gather(*burst)
    finally:
        stopped.send(signal.SIGCONT)
    for messages in sessions:
        assert answers(messages) == [(i, "result") for i in range(10)]
        assert all(1 <= r.attempt <= 2 for r in results(messages))
    moved = [r for messages in sessions for r in results(messages) if r.attempt == 2]
    assert moved and all(r.node_id == "node-1" for r in moved)
    assert "node lease expired" in scheduler.log() or "node removed after its lease lapsed" in scheduler.log()
    await drill.assert_redis_clean()


async def test_a_job_that_waited_for_a_full_node_is_told_attempt_1(drill: Drill) -> None:
    """Three utterances at once to a node of concurrency 2: the third waits for a slot (its first fencing
    number spent on the full node) and then runs once; the client is told attempt 1 for each (issue 19)."""
    scheduler = await drill.start()
    await drill.node("node-0", "--synthetic-latency-ms", "300", max_concurrency=2)
    messages = await burst_session(scheduler.grpc, 3)
    assert answers(messages) == [(0, "result"), (1, "result"), (2, "result")]
    assert [r.attempt for r in results(messages)] == [1, 1, 1]

    async def recorded() -> bool:
        return all(s == "COMPLETED" for s in (await drill.assert_redis_clean()).values())

    await wait_until(recorded, what="every job recorded COMPLETED")

"""Sessions outlive their streams: a client resumes on any instance with its token and gets every answer
once, in order; what ran while it was away is delivered from the store; bad tokens, racing resumes and a
store that lost its data get clear statuses. Real schedulers on one real Redis, real gRPC, real node
agents (synthetic engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from lingua_grpc._grpc import read_message
from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.clock import ManualClock
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc, session_pb2, session_pb2_grpc
from lingua_grpc.sessions import ResumeTokens
from lingua_grpc.store import RegistryKeys
from node_agent.engines import SyntheticEngine
from tests.audio import chunks, silence, tone
from tests.conftest import RedisServer, wait_until
from tests.integration._fleet import Fleet, Messages, answers, collect
from tests.integration._proxy import CuttableLink
from tests.integration.test_scheduler_grpc import fast_settings

pytestmark = pytest.mark.integration

RESUME_FAST = Reconnect(within_s=10, first_wait_s=0.02, max_wait_s=0.2)


def utterance(i: int) -> bytes:
    return tone(400 + 100 * (i % 3), freq=300 + 70 * i) + silence(800)


@pytest.fixture
async def pair(redis_server: RedisServer, key_prefix: str) -> AsyncIterator[tuple[Scheduler, Scheduler]]:
    settings = fast_settings(
        redis_server.url,
        key_prefix,
        instance_heartbeat_ms=50,
        instance_lease_ms=300,
        session_gap_timeout_ms=20000,
        job_deadline_ms=5000,
    )
    a = Scheduler(settings.with_overrides(instance_id="sched-a"))
    b = Scheduler(settings.with_overrides(instance_id="sched-b"))
    await a.start()
    await b.start()
    yield a, b
    await a.stop(grace_s=0.2)
    await b.stop(grace_s=0.2)


def address(s: Scheduler) -> str:
    assert s.endpoints is not None
    return s.endpoints.grpc


async def node_seen(*schedulers: Scheduler, count: int = 1) -> None:
    async def seen() -> bool:
        return all(s.cache is not None and len(s.cache.current.nodes) >= count for s in schedulers)

    await wait_until(seen, what="the nodes in every scheduler's snapshot")


def assert_every_index_once_as_results(messages: Messages, n: int) -> None:
    assert answers(messages) == [(i, "result") for i in range(n)], answers(messages)


async def test_a_session_whose_instance_stops_resumes_on_the_next_with_every_answer_once(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    """The client's instance stops (SIGTERM's path, no grace) with jobs running on a node of the other
    instance: the client resumes there on its own, the running jobs' answers and the rest arrive, each
    index once and in order, all as results; no audio is lost (the utterance cut mid-speech is re-sent)."""
    a, b = pair
    fleet = Fleet(address(b))
    await fleet.add("gpu-1", SyntheticEngine(mt_latency_s=0.3))
    await node_seen(a, b)
    try:
        async with LinguaClient([address(a), address(b)], reconnect=RESUME_FAST) as client:
            session = await client.start_session("en", "es")
            assert session.started.resume_token and not session.started.resumed
            first_result = asyncio.Event()

            async def send() -> None:
                for i in range(6):
                    for chunk in chunks(utterance(i), 100):
                        await session.send_audio(chunk)
                        await asyncio.sleep(0.01)
                    if i == 2:
                        await first_result.wait()
                        await a.stop(grace_s=0)  # mid-session, jobs in flight
                await session.end()

            sender = asyncio.create_task(send())
            messages: Messages = []
            async for m in session:
                messages.append(m)
                if m.HasField("result"):
                    first_result.set()
            await sender
        assert session.resumes == 1 and session.started.resumed
        assert_every_index_once_as_results(messages, 6)
    finally:
        await fleet.stop()


async def test_a_dropped_connection_resumes_on_the_same_instance_while_a_job_runs(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    """The network between client and scheduler drops while the session's job runs on its node: the
    scheduler keeps the job; the client reconnects to the same instance and resumes; the running job's
    result arrives once, nothing is re-run."""
    a, _ = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1", SyntheticEngine(mt_latency_s=0.5))
    link = CuttableLink(address(a))
    await link.start()
    try:
        async with LinguaClient(link.address, reconnect=RESUME_FAST) as client:
            session = await client.start_session("en", "es")

            async def send() -> None:
                for chunk in chunks(utterance(0), 100):
                    await session.send_audio(chunk)

                async def running() -> bool:
                    return a.dispatcher is not None and a.dispatcher.running == 1

                await wait_until(running, what="the job running on the node")
                link.cut()
                for i in (1, 2):
                    for chunk in chunks(utterance(i), 100):
                        await session.send_audio(chunk)
                await session.end()

            sender = asyncio.create_task(send())
            messages = await collect(session, 30)
            await sender
        assert session.resumes >= 1
        assert_every_index_once_as_results(messages, 3)
        assert [r.attempt for r in (m.result for m in messages if m.HasField("result"))] == [1, 1, 1], (
            "the job running at the drop was kept, not run again"
        )
    finally:
        await link.stop()
        await fleet.stop()


async def raw_start(addr: str, start: session_pb2.SessionStart) -> tuple[Any, session_pb2.StreamResponse]:
    """A stream opened by hand: its call, and its first answer."""
    channel = grpc.aio.insecure_channel(addr)
    call = session_pb2_grpc.SessionServiceStub(channel).Stream()  # type: ignore[call-arg]
    await call.write(session_pb2.StreamRequest(start=start))
    first = await read_message(call)
    return call, first


async def read_all(call: Any) -> Messages:
    out = []
    while (m := await asyncio.wait_for(read_message(call), 20)) is not None:
        out.append(m)
    return out


async def open_and_leave(addr: str, utterances: int = 0) -> tuple[str, str]:
    """A session opened on `addr` with `utterances` answered, whose stream then breaks (the client goes).
    Returns its id and resume token."""
    async with LinguaClient(addr, reconnect=Reconnect(within_s=0)) as client:
        session = await client.start_session("en", "es")
        for i in range(utterances):
            for chunk in chunks(utterance(i), 100):
                await session.send_audio(chunk)
        got = 0
        if utterances:
            async for m in session:
                got += m.HasField("result")
                if got == utterances:
                    break
        session.cancel()
    return session.session_id, session.resume_token


async def test_answers_recorded_while_the_client_was_away_come_from_the_store_with_their_speech(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    await node_seen(a, b)
    try:
        session_id, token = await open_and_leave(address(a), utterances=2)
        call, first = await raw_start(
            address(b), session_pb2.SessionStart(resume_token=token, next_utterance_index=0)
        )
        assert first.started.session_id == session_id and first.started.resumed
        assert first.started.next_utterance_index == 0
        await call.write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
        messages = await read_all(call)
        assert_every_index_once_as_results(messages, 2)
        for m in messages:
            if m.HasField("result"):
                assert m.result.tts_audio and m.result.tts_audio_format.sample_rate_hz == 16000
                assert m.result.source_text.startswith("[synthetic en]") and m.result.node_id == "gpu-1"
    finally:
        await fleet.stop()


async def test_a_resume_says_what_it_received_and_gets_only_the_rest(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    await node_seen(a, b)
    try:
        _, token = await open_and_leave(address(a), utterances=3)
        sent = sum(len(utterance(i)) // 2 for i in range(3))  # samples: the new audio starts there
        call, first = await raw_start(
            address(b),
            session_pb2.SessionStart(resume_token=token, next_utterance_index=2, audio_offset=sent),
        )
        assert first.started.next_utterance_index == 2 and first.started.audio_offset == sent
        await call.write(session_pb2.StreamRequest(audio=session_pb2.AudioChunk(data=utterance(3))))
        await call.write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
        messages = await read_all(call)
        assert answers(messages) == [(2, "result"), (3, "result")], "indexes go on after the resume"
    finally:
        await fleet.stop()


async def test_forged_and_expired_tokens_are_refused_and_change_nothing(
    pair: tuple[Scheduler, Scheduler], redis: Redis, keys: RegistryKeys
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    try:
        session_id, token = await open_and_leave(address(a))
        body, _, signature = token.rpartition(".")
        forged = [
            "not-a-token",
            f"{body}.{signature[:-2]}xx",  # signature altered
            token.replace(session_id, "f" * 32),  # another session's id under this signature
            ResumeTokens(b"another fleet's key, 32 bytes..", 60_000, ManualClock()).issue(session_id),
        ]
        for bad in forged:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_start(address(b), session_pb2.SessionStart(resume_token=bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        key = await redis.get(keys.resume_key)
        assert isinstance(key, bytes)
        past = ManualClock()  # the fleet's own key, but the token's life is over
        expired = ResumeTokens(key, 1_000, past).issue(session_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_start(address(b), session_pb2.SessionStart(resume_token=expired))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expired" in (refused.value.details() or "")
        assert b.session_records is not None
        state = await b.session_records.get(session_id)
        assert state is not None and state.owner == "sched-a" and state.epoch == 1, "nothing touched"
    finally:
        await fleet.stop()


async def test_two_clients_racing_to_resume_one_session_one_wins_the_other_is_aborted(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    await node_seen(a, b)
    try:
        session_id, token = await open_and_leave(address(a))
        start = session_pb2.SessionStart(resume_token=token)
        (call_a, first_a), (call_b, first_b) = await asyncio.gather(
            raw_start(address(a), start), raw_start(address(b), start)
        )
        assert first_a.started.resumed and first_b.started.resumed
        assert b.session_records is not None
        state = await b.session_records.get(session_id)
        assert state is not None and state.epoch == 3, "each claim moved ownership once"
        winner, loser = (call_a, call_b) if state.owner == "sched-a" else (call_b, call_a)
        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await read_all(loser)
        assert aborted.value.code() == grpc.StatusCode.ABORTED
        assert "resumed on another stream" in (aborted.value.details() or "")
        await winner.write(session_pb2.StreamRequest(audio=session_pb2.AudioChunk(data=utterance(0))))
        await winner.write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
        assert answers(await read_all(winner)) == [(0, "result")], "the winner carries the session on"
    finally:
        await fleet.stop()


async def test_resuming_after_the_store_lost_its_data_is_refused_not_found_at_once(
    pair: tuple[Scheduler, Scheduler], redis: Redis, keys: RegistryKeys, key_prefix: str
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    try:
        _, token = await open_and_leave(address(a), utterances=1)
        async for name in redis.scan_iter(
            f"{key_prefix}*"
        ):  # every key of this fleet: its Redis lost its data
            if name != keys.resume_key.encode():  # (an operator's --resume-key-file keeps the key anyway)
                await redis.delete(name)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(raw_start(address(b), session_pb2.SessionStart(resume_token=token)), 5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "start a new session" in (refused.value.details() or "")
    finally:
        await fleet.stop()


async def test_operators_read_a_session_and_its_jobs_from_the_store(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    try:
        session_id, _ = await open_and_leave(address(a), utterances=2)
        async with grpc.aio.insecure_channel(address(b)) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)

            async def sent_recorded() -> bool:
                reply = await stub.GetSession(registry_pb2.GetSessionRequest(session_id=session_id))
                return reply.session.answers_sent == 2

            await wait_until(sent_recorded, what="the session's end recorded")
            reply = await stub.GetSession(registry_pb2.GetSessionRequest(session_id=session_id))
            s = reply.session
            assert (s.owner_instance_id, s.owner_alive, s.ended) == ("sched-a", True, False)
            assert s.next_utterance_index == 2 and s.language_pair.target_language == "es"
            assert [j.utterance_index for j in reply.jobs] == [0, 1]
            assert all(j.state == registry_pb2.JOB_STATE_COMPLETED for j in reply.jobs)
            job = (await stub.GetJob(registry_pb2.GetJobRequest(job_id=f"{session_id}:1"))).job
            assert (job.attempt, job.node_id, job.created_by_instance_id) == (1, "gpu-1", "sched-a")
            # A completed job's utterance audio went with its result; its TTS stays for the resume.
            assert job.tts_audio_kept and not job.audio_kept
            assert job.updated_unix_ms >= job.created_unix_ms > 0
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetJob(registry_pb2.GetJobRequest(job_id=f"{session_id}:9"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetJob(registry_pb2.GetJobRequest(job_id="no-index"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await fleet.stop()


async def test_a_resume_naming_an_index_far_from_the_session_s_is_refused_and_changes_nothing(
    pair: tuple[Scheduler, Scheduler],
) -> None:
    """A hostile or broken client cannot make a resume read (or an operator's GetSession list) millions of
    jobs, nor push the session's indexes towards overflow: `session_resume_max_answers` bounds both."""
    a, b = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    try:
        session_id, token = await open_and_leave(address(a))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_start(
                address(b), session_pb2.SessionStart(resume_token=token, next_utterance_index=4_000_000_000)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 1000 away" in (refused.value.details() or "")
        assert b.session_records is not None
        state = await b.session_records.get(session_id)
        assert state is not None and (state.owner, state.epoch, state.next_index) == ("sched-a", 1, 0)
    finally:
        await fleet.stop()


async def test_a_live_session_is_recorded_again_when_redis_loses_its_data_and_resumes_after_its_instance_stops(
    pair: tuple[Scheduler, Scheduler], redis: Redis, key_prefix: str
) -> None:
    """Redis loses every key while a session streams on A: A records the session again where it stands
    (its nodes registering anew give the registry a new epoch), so when A then stops the client resumes on
    B and every utterance is answered once, in order. (Before, the session's record was gone for good: the
    resume was refused NOT_FOUND and the jobs A had recorded again waited CREATED for a resume that could not
    come.)"""
    a, b = pair
    fleet = Fleet(address(b))
    await fleet.add("gpu-1")
    await node_seen(a, b)
    try:
        async with LinguaClient([address(a), address(b)], reconnect=RESUME_FAST) as client:
            session = await client.start_session("en", "es")
            session_key = f"{key_prefix}{{s:{session.session_id}}}:session"
            messages: Messages = []
            reader = asyncio.create_task(_read_all(session, messages))
            await session.send_audio(tone(300) + silence(100), is_final=True)
            await wait_until(lambda: _answered(messages, 1), what="a first answer")
            async for name in redis.scan_iter(f"{key_prefix}*"):  # Redis lost its data
                if not name.endswith(b"resume_key"):
                    await redis.delete(name)

            async def recorded_again() -> bool:
                return int(await redis.hget(session_key, "next_index") or -1) == 1

            await wait_until(recorded_again, timeout_s=15, what="the session recorded again, at index 1")
            await session.send_audio(tone(400) + silence(100), is_final=True)
            await wait_until(lambda: _answered(messages, 2), what="a second answer")
            await a.stop(grace_s=0)
            await session.send_audio(tone(500) + silence(100), is_final=True)
            await session.end()
            await asyncio.wait_for(reader, 30)
        assert session.resumes == 1
        assert_every_index_once_as_results(messages, 3)
    finally:
        await fleet.stop()


async def _read_all(session: Any, messages: Messages) -> None:
    async for m in session:
        messages.append(m)


async def _answered(messages: Messages, n: int) -> bool:
    return len(answers(messages)) >= n


async def test_a_node_its_holder_does_not_hold_is_not_tried_again_until_the_registry_changes(
    pair: tuple[Scheduler, Scheduler], redis: Redis, key_prefix: str
) -> None:
    """The registry names B as gpu-1's holder, but B holds no such stream (the node moved, or B came back
    without it): A's attempt through B comes back lost, never having reached a node. It does not count, and
    A does not hand the job to B again and again at the same registry version: it waits, and runs on the
    node that registers next. (The soak's cluster run saw an utterance placed nine times in 70 ms through a
    holder that no longer held its node, then skipped FAILED.)"""
    from lingua_grpc.registry import NodeRegistry
    from lingua_grpc.store import ScriptBook
    from tests.integration.test_lua_scripts import registration

    a, _ = pair
    ghost = NodeRegistry(redis, RegistryKeys(key_prefix), ScriptBook(redis))
    await ghost.register(registration("gpu-ghost"), "sched-b", "no-such-stream", 60_000)
    await node_seen(a)
    fleet = Fleet(address(a))
    try:
        async with LinguaClient(address(a), reconnect=Reconnect(within_s=0)) as client:
            options = session_pb2.SessionOptions(queue_timeout_ms=10_000)
            session = await client.start_session("en", "es", options=options)
            await session.send_audio(tone(300) + silence(100), is_final=True)

            async def handed_to_the_ghost() -> bool:
                assert a.metrics is not None
                return (a.metrics.registry.get_sample_value("lingua_job_redispatches_total") or 0) >= 1

            await wait_until(handed_to_the_ghost, what="an attempt handed to B and lost")
            for _ in range(20):  # at this registry version, B is not tried again: the job waits
                await asyncio.sleep(0.025)
                assert a.metrics.registry.get_sample_value("lingua_job_redispatches_total") == 1
            await fleet.add("gpu-1")
            await session.end()
            messages = await collect(session, 20)
        assert answers(messages) == [(0, "result")]
        result = messages[-1].result if messages[-1].HasField("result") else None
        assert result is None or result.node_id == "gpu-1"
        assert [m.result.attempt for m in messages if m.HasField("result")] == [1]
        assert (a.metrics.registry.get_sample_value("lingua_job_redispatches_total") or 0) <= 3
    finally:
        await fleet.stop()


async def test_a_lost_reply_that_overtakes_its_hand_off_is_applied_not_dropped(
    pair: tuple[Scheduler, Scheduler], redis: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's answer to A's hand-off (lost: B holds no such node) reaches A before the hand-off's own return
    does, as it can when the two replies arrive together: A applies it once the placement is known. (Before,
    it found no running attempt and was dropped; the attempt waited for its deadline, which counted, and the
    job ran on the node that came next as attempt 2: a clean-clone CI run of the test above.)"""
    from lingua_grpc.fleet._inbox import Courier
    from lingua_grpc.fleet._messages import Assign, Message
    from lingua_grpc.registry import NodeRegistry
    from lingua_grpc.store import HandOff, ScriptBook
    from tests.integration.test_lua_scripts import registration

    a, _ = pair
    assert a.dispatcher is not None and a.metrics is not None
    dispatcher = a.dispatcher
    told_lost = asyncio.Event()
    attempt_lost = dispatcher.attempt_lost

    def note_lost(*args: Any, **kwargs: Any) -> None:
        told_lost.set()
        attempt_lost(*args, **kwargs)

    monkeypatch.setattr(dispatcher, "attempt_lost", note_lost)
    courier: Courier = dispatcher._transport._courier  # type: ignore[attr-defined]
    send = courier.send

    def overtaken(to: str, message: Message) -> asyncio.Future[HandOff]:
        """The hand-off's return comes only after B's answer to it has been applied."""
        sent = send(to, message)
        if not isinstance(message, Assign):
            return sent

        async def after_the_answer() -> HandOff:
            outcome: HandOff = await sent
            await asyncio.wait_for(told_lost.wait(), 10)
            return outcome

        return asyncio.ensure_future(after_the_answer())

    monkeypatch.setattr(courier, "send", overtaken)
    ghost = NodeRegistry(redis, RegistryKeys(key_prefix), ScriptBook(redis))
    await ghost.register(registration("gpu-ghost"), "sched-b", "no-such-stream", 60_000)
    await node_seen(a)
    fleet = Fleet(address(a))
    try:
        async with LinguaClient(address(a), reconnect=Reconnect(within_s=0)) as client:
            options = session_pb2.SessionOptions(queue_timeout_ms=10_000)
            session = await client.start_session("en", "es", options=options)
            await session.send_audio(tone(300) + silence(100), is_final=True)

            async def lost_attempt_applied() -> bool:
                assert a.metrics is not None
                return (a.metrics.registry.get_sample_value("lingua_job_redispatches_total") or 0) >= 1

            # Well before the attempt's deadline (5 s): the lost reply was applied, not dropped.
            await wait_until(lost_attempt_applied, timeout_s=3, what="the lost attempt placed again")
            await fleet.add("gpu-1")
            await session.end()
            messages = await collect(session, 20)
        assert answers(messages) == [(0, "result")]
        assert [m.result.attempt for m in messages if m.HasField("result")] == [1]
        assert a.metrics.registry.get_sample_value("lingua_job_timeouts_total") in (None, 0.0)
    finally:
        await fleet.stop()


async def test_a_session_opened_while_its_instance_begins_to_stop_is_refused_not_left_open(
    pair: tuple[Scheduler, Scheduler], redis: Redis
) -> None:
    """A session start that was recording its session when its instance began to stop is refused
    UNAVAILABLE: the stop closes every session it knows, and this one was not known yet. (Before, it was
    let in after the stop had closed the others; its stream was cut when the server went, the open
    utterance recorded in part, and after the client's resume every later result sat one index off: the
    soak's cluster run.)"""
    a, _ = pair
    fleet = Fleet(address(a))
    await fleet.add("gpu-1")
    try:
        async with LinguaClient(address(a), reconnect=Reconnect(within_s=0)) as client:
            await redis.client_pause(400, all=False)  # writes wait: the session's record among them
            opening = asyncio.create_task(client.start_session("en", "es"))
            await asyncio.sleep(0.1)  # (its start reaches the instance, which waits on Redis)
            await a.stop(grace_s=0)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(opening, 10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await fleet.stop()

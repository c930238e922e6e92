"""Bounds on what one caller can make the scheduler do: each over-limit input costs only its sender."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lingua_grpc._grpc import read_message
from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc, session_pb2
from tests.audio import tone
from tests.integration._fleet import THREE_UTTERANCES, Fleet, answers, collect, stream

pytestmark = pytest.mark.integration


async def test_language_tags_in_any_case_name_the_same_pair(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("EN", "Es")
    assert session.started.language_pair.source_language == "en"
    assert session.started.language_pair.target_language == "es"
    await stream(session, THREE_UTTERANCES)
    assert answers(await collect(session)) == [(0, "result"), (1, "result"), (2, "result")]


async def test_a_second_end_of_stream_loses_no_pending_result(client: LinguaClient, fleet: Fleet) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    await session.send_audio(tone(500), is_final=True)
    end = session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream())
    await session._call.write(end)
    await session._call.write(end)
    await session._call.done_writing()
    assert answers(await collect(session)) == [(0, "result")]


def huge_registration(pairs: int) -> node_pb2.ConnectRequest:
    targets = (f"x{i:05d}"[:3] for i in range(pairs))  # well-formed tags are not needed to be refused
    return node_pb2.ConnectRequest(
        register=node_pb2.Register(
            node_id="rogue",
            capabilities=common_pb2.NodeCapabilities(
                asr_languages=["en"],
                translation_pairs=[
                    common_pb2.LanguagePair(source_language="en", target_language=t) for t in targets
                ],
                tts_languages=["es"],
                max_concurrency=4,
            ),
        )
    )


async def test_a_huge_registration_is_refused_at_once_while_a_session_completes(
    scheduler: Scheduler, client: LinguaClient, fleet: Fleet
) -> None:
    await fleet.add("gpu-1")
    session = await client.start_session("en", "es")
    sender = asyncio.create_task(stream(session, THREE_UTTERANCES))
    assert scheduler.endpoints is not None
    async with grpc.aio.insecure_channel(
        scheduler.endpoints.grpc, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    ) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
        await call.write(huge_registration(100_000))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(read_message(call), 10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "translation_pairs has 100000 entries; at most 1024" in (refused.value.details() or "")
    await sender
    assert answers(await collect(session)) == [(0, "result"), (1, "result"), (2, "result")]
    assert scheduler.cache is not None
    assert set(scheduler.cache.current.nodes) == {"gpu-1"}

"""The node agent keeps its jobs across a reconnect: it lists them when it registers again, and what they say
while no stream is up reaches the next one. Against a scripted NodeService on a real loopback server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from lingua_grpc.app import Scheduler
from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc
from node_agent.agent import AgentConfig, NodeAgent
from node_agent.engines import Audio, SyntheticEngine
from tests.audio import silence, tone
from tests.conftest import wait_until
from tests.integration._fleet import answers, capabilities, collect
from tests.integration._proxy import CuttableLink

pytestmark = pytest.mark.integration


class HeldEngine(SyntheticEngine):
    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def transcribe(self, audio: Audio, language: str) -> str:
        self.started.set()
        await self.release.wait()
        return await super().transcribe(audio, language)


class ScriptedScheduler(node_pb2_grpc.NodeServiceServicer):
    """First stream: assigns one job, and drops the stream once the node started it. Later streams: record
    what the node sends."""

    def __init__(self, engine: HeldEngine) -> None:
        self.engine = engine
        self.registers: list[node_pb2.Register] = []
        self.after: asyncio.Queue[node_pb2.ConnectRequest] = asyncio.Queue()

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[node_pb2.ConnectResponse]:
        first = await anext(request_iterator)
        self.registers.append(first.register)
        yield node_pb2.ConnectResponse(
            registered=node_pb2.Registered(node_id=first.register.node_id, heartbeat_interval_ms=1000)
        )
        if len(self.registers) == 1:
            yield node_pb2.ConnectResponse(
                assign_job=node_pb2.AssignJob(
                    job_id="s1:0",
                    attempt=1,
                    audio=tone(300),
                    audio_format=common_pb2.AudioFormat(sample_rate_hz=16000, channels=1),
                    language_pair=common_pb2.LanguagePair(source_language="en", target_language="es"),
                    stages=[common_pb2.STAGE_ASR, common_pb2.STAGE_TRANSLATION],
                )
            )
            await self.engine.started.wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the network dropped the stream")
        async for message in request_iterator:
            if message.WhichOneof("kind") != "heartbeat":
                await self.after.put(message)


async def test_a_job_outlives_its_stream_and_its_result_arrives_on_the_next() -> None:
    engine = HeldEngine()
    scripted = ScriptedScheduler(engine)
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent = NodeAgent(
        AgentConfig(f"127.0.0.1:{port}", "gpu-1", capabilities(2), reconnect_initial_s=0.05), engine
    )
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(engine.started.wait(), 5)

        async def registered_again() -> bool:
            return len(scripted.registers) >= 2

        await wait_until(registered_again, 5, "the agent registering again")
        again = scripted.registers[1]
        assert [(j.job_id, j.attempt) for j in again.running_jobs] == [("s1:0", 1)]
        engine.release.set()  # the job finishes after the reconnect: its messages go on the new stream
        kinds = []
        while "job_result" not in kinds:
            message = await asyncio.wait_for(scripted.after.get(), 5)
            kinds.append(message.WhichOneof("kind"))
            if kinds[-1] == "job_result":
                assert (message.job_result.job_id, message.job_result.attempt) == ("s1:0", 1)
                assert message.job_result.translated_text
        # `job_accepted` comes again when the old stream had not written it before it dropped.
        assert kinds in (
            ["job_progress"] * 2 + ["job_result"],
            ["job_accepted"] + ["job_progress"] * 2 + ["job_result"],
        )
    finally:
        agent.drain("test over")
        await server.stop(0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_node_whose_stream_breaks_and_comes_back_at_once_keeps_its_running_job(
    scheduler: Scheduler, client: LinguaClient
) -> None:
    """The network between a node and its scheduler drops while a job runs; the agent registers again at
    once, listing the job: within the scheduler's reconnect grace the job runs on there and its result is
    the client's, attempt 1. (Before, the broken stream re-ran the job at once: on the only node, excluded
    from it, the utterance was skipped; with others, it ran twice.)"""
    assert scheduler.endpoints is not None
    link = CuttableLink(scheduler.endpoints.grpc)
    await link.start()
    engine = HeldEngine()
    config = AgentConfig(link.address, "gpu-1", capabilities(2), reconnect_initial_s=0.05, drain_timeout_s=5)
    agent = NodeAgent(config, engine)
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.registered.wait(), 5)
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300) + silence(100), is_final=True)
        await asyncio.wait_for(engine.started.wait(), 5)
        link.cut()

        async def registered_again() -> bool:
            registrations = scheduler.metrics.registry.get_sample_value("lingua_node_registrations_total")
            return registrations == 2 and agent.registered.is_set()

        await wait_until(registered_again, what="the node registered again")
        assert agent.running_jobs == 1
        engine.release.set()
        await session.end()
        messages = await collect(session)
        assert answers(messages) == [(0, "result")]
        assert [m.result.attempt for m in messages if m.HasField("result")] == [1]
    finally:
        agent.drain("test over")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 5)
        await link.stop()

"""The node agent keeps its jobs across a reconnect: it lists them when it registers again, and what they say
while no stream is up reaches the next one. Against a scripted NodeService on a real loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc
from node_agent.agent import AgentConfig, NodeAgent
from node_agent.engines import Audio, SyntheticEngine
from tests.audio import tone
from tests.conftest import wait_until
from tests.integration._fleet import capabilities

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

"""Helpers the session tests share: node agents (synthetic engine) running in this process as real gRPC
clients of the scheduler, and ways to stream audio and read what comes back."""

from __future__ import annotations

import asyncio
import contextlib

from lingua_grpc.client import Session
from lingua_grpc.pb import common_pb2, session_pb2
from node_agent import AgentConfig, NodeAgent
from node_agent.engines import SyntheticEngine
from tests.audio import chunks, silence, tone

Messages = list[session_pb2.StreamResponse]


def capabilities(max_concurrency: int = 4, pairs: tuple[str, ...] = ("es",)) -> common_pb2.NodeCapabilities:
    return common_pb2.NodeCapabilities(
        asr_languages=["en"],
        translation_pairs=[common_pb2.LanguagePair(source_language="en", target_language=t) for t in pairs],
        tts_languages=list(pairs),
        max_concurrency=max_concurrency,
        agent_version="test",
    )


class Fleet:
    """Node agents running in this process, each a real gRPC client of the scheduler."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.agents: dict[str, tuple[NodeAgent, asyncio.Task[int]]] = {}

    async def add(
        self, node_id: str, engine: SyntheticEngine | None = None, max_concurrency: int = 4
    ) -> NodeAgent:
        config = AgentConfig(
            self.address, node_id, capabilities(max_concurrency), reconnect_initial_s=0.05, drain_timeout_s=5
        )
        agent = NodeAgent(config, engine or SyntheticEngine())
        self.agents[node_id] = (agent, asyncio.create_task(agent.run()))
        await asyncio.wait_for(agent.registered.wait(), 5)
        return agent

    async def stop(self) -> None:
        for agent, task in self.agents.values():
            agent.drain("test over")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            task.cancel()


async def collect(session: Session, timeout_s: float = 20) -> Messages:
    async def run() -> Messages:
        return [m async for m in session]

    return await asyncio.wait_for(run(), timeout_s)


def answers(messages: Messages) -> list[tuple[int, str]]:
    """(utterance index, 'result' or 'skipped') in the order they arrived."""
    out = []
    for m in messages:
        kind = m.WhichOneof("kind")
        if kind == "result":
            out.append((m.result.utterance_index, "result"))
        elif kind == "skipped":
            out.append((m.skipped.utterance_index, "skipped"))
    return out


THREE_UTTERANCES = tone(600) + silence(1000) + tone(800, freq=550) + silence(1000) + tone(400, freq=660)


async def stream(session: Session, pcm: bytes) -> None:
    for chunk in chunks(pcm, 100):
        await session.send_audio(chunk)
    await session.end()

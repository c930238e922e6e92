"""A scheduler killed mid-session: its clients resume (on another instance, or on the same address once it is
back) and get every utterance exactly once, in order, all as results. Real lingua-scheduler and lingua-node
processes, a real redis-server, clients streaming at a microphone's pace."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import session_pb2
from tests.audio import chunks
from tests.conftest import wait_until
from tests.e2e._procs import SchedulerProc
from tests.fault._drill import FLEET, RESUME, Drill, answers, utterances

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(120)]


class Timed:
    """What a client received, with when (loop time)."""

    def __init__(self) -> None:
        self.messages: list[session_pb2.StreamResponse] = []
        self.at: list[float] = []


async def live_session(addresses: list[str], pcm: bytes, kill: asyncio.Event, got: Timed) -> int:
    """Streams `pcm` at real-time pace to the first address; sets `kill` once a first result arrived and
    half the audio is sent. Returns how many times the session resumed."""
    loop = asyncio.get_running_loop()
    async with LinguaClient(addresses, reconnect=RESUME) as client:
        session = await client.start_session("en", "es")
        pieces = chunks(pcm, 100)

        async def send() -> None:
            for n, chunk in enumerate(pieces):
                await session.send_audio(chunk)
                await asyncio.sleep(0.1)
                if n == len(pieces) // 2 and got.messages:
                    kill.set()
            kill.set()
            await session.end()

        sender = asyncio.create_task(send())
        async for m in session:
            got.messages.append(m)
            got.at.append(loop.time())
        await sender
        return session.resumes


def first_result_after(got: Timed, t: float) -> float:
    return next(at for m, at in zip(got.messages, got.at, strict=True) if at > t and m.HasField("result"))


async def test_a_killed_instance_s_client_resumes_on_another_and_gets_every_utterance_once(
    drill: Drill,
) -> None:
    """Each instance holds a node; the client is on A. kill -9 A: its node reconnects to B with the jobs it
    runs, the client resumes on B with what it kept, and every utterance is answered once, in order."""
    a = await drill.start("--instance-id", "sched-a", *FLEET)
    b = await drill.another_scheduler("--instance-id", "sched-b", *FLEET)
    await drill.node("gpu-1", "--synthetic-latency-ms", "400", schedulers=[a, b])
    await drill.node("gpu-2", "--synthetic-latency-ms", "400", schedulers=[b, a])
    await both_see_two_nodes(drill, a, b)
    kill, got = asyncio.Event(), Timed()
    session = asyncio.create_task(live_session([a.grpc, b.grpc], utterances(8), kill, got))
    await kill.wait()
    a.send(signal.SIGKILL)
    killed_at = asyncio.get_running_loop().time()
    resumes = await asyncio.wait_for(session, 60)
    assert resumes == 1
    assert answers(got.messages) == [(i, "result") for i in range(8)], answers(got.messages)
    print(
        f"\nkill -9 to the first resumed result: {(first_result_after(got, killed_at) - killed_at) * 1000:.0f} ms"
    )
    assert await b.metric("lingua_sessions_resumed_total", previous="other_instance") == 1
    await drill.assert_redis_clean()


async def test_a_lone_instance_restarted_on_its_address_resumes_its_sessions(drill: Drill) -> None:
    """One instance, killed -9 and started again on the same address (a supervisor's restart): the client
    keeps retrying that address, resumes on the new process, and gets every utterance once, in order."""
    listen = f"127.0.0.1:{free_port()}"
    first = await drill.start("--listen", listen, *FLEET)
    await drill.node("gpu-1", "--synthetic-latency-ms", "400")
    kill, got = asyncio.Event(), Timed()
    session = asyncio.create_task(live_session([first.grpc], utterances(8), kill, got))
    await kill.wait()
    first.send(signal.SIGKILL)
    killed_at = asyncio.get_running_loop().time()
    await first.wait(10)
    second = await drill.another_scheduler("--listen", listen, *FLEET)
    assert second.grpc == first.grpc
    resumes = await asyncio.wait_for(session, 60)
    assert resumes == 1
    assert answers(got.messages) == [(i, "result") for i in range(8)], answers(got.messages)
    print(
        f"\nkill -9, restart, first resumed result: {(first_result_after(got, killed_at) - killed_at) * 1000:.0f} ms"
    )
    await drill.assert_redis_clean()


async def both_see_two_nodes(drill: Drill, a: SchedulerProc, b: SchedulerProc) -> None:
    client = drill.redis_client()

    async def seen() -> bool:
        version = int(client.get("lingua:v1:{registry}:version") or 0)
        registered = client.scard("lingua:v1:{registry}:nodes") == 2
        return registered and all([await s.metric("lingua_registry_version") >= version for s in (a, b)])

    await wait_until(seen, what="both nodes in both instances' snapshots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

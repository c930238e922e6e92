"""Hypothesis at the gRPC level against a real scheduler process: random message sequences with random
field values and sizes. The scheduler never crashes, answers only with documented status codes, and a
well-behaved session alongside gets its result every time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lingua_grpc._grpc import read_message
from lingua_grpc.client import LinguaClient
from lingua_grpc.pb import (
    common_pb2,
    node_pb2,
    node_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.audio import tone
from tests.e2e._procs import BANNER, BIN, FAST

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

SESSION_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
NODE_CODES = SESSION_CODES | {grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    proc = subprocess.Popen(
        [
            str(BIN / "lingua-scheduler"),
            *("--listen", "127.0.0.1:0", "--metrics-port", "-1", *FAST),
            *("--session-idle-timeout-ms", "2000", "--session-gap-timeout-ms", "2000"),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp / "scheduler.log").open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    match = BANNER.search(proc.stdout.readline())
    assert match, (tmp / "scheduler.log").read_text()
    node = subprocess.Popen(
        [
            str(BIN / "lingua-node"),
            *("--scheduler", match["grpc"], "--node-id", "good", "--pairs", "en-es", "--engine", "synthetic"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "node.log").open("w"),
    )
    with grpc.insecure_channel(match["grpc"]) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 30
        while not registry.ListNodes(registry_pb2.ListNodesRequest()).nodes:
            assert time.monotonic() < deadline, (tmp / "node.log").read_text()
            time.sleep(0.05)  # polling another process's registration
    yield match["grpc"]
    node.send_signal(signal.SIGTERM)
    node.wait(20)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert alive, "the scheduler died under fuzzing: " + Path(tmp / "scheduler.log").read_text()[-3000:]


def text(max_size: int) -> st.SearchStrategy[str]:
    """Any text a client can send: protobuf cannot encode lone surrogates, so no client can send them."""
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


languages = st.sampled_from(
    ["en", "es", "EN", "Es", "", "x", "xx", "pt-BR", "zh-Hant-TW", "e" * 300, "en\x00"]
)
small_int = st.integers(min_value=0, max_value=2**32 - 1)
options = st.builds(
    session_pb2.SessionOptions,
    pause_ms=st.none() | small_int,
    hangover_ms=st.none() | small_int,
    max_utterance_ms=st.none() | small_int,
    gap_timeout_ms=st.none() | small_int,
    tts_enabled=st.none() | st.booleans(),
    silence_threshold_dbfs=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    queue_timeout_ms=st.none() | small_int,
)
start = st.builds(
    session_pb2.SessionStart,
    language_pair=st.builds(common_pb2.LanguagePair, source_language=languages, target_language=languages),
    audio_format=st.builds(
        common_pb2.AudioFormat,
        encoding=st.integers(min_value=0, max_value=5),
        sample_rate_hz=st.sampled_from([0, 7999, 8000, 16000, 48000, 48001, 2**32 - 1]),
        channels=st.integers(min_value=0, max_value=3),
    ),
    options=options,
    resume_token=st.sampled_from(["", "x" * 100]),
    client_name=text(max_size=40),
)
stream_request = st.one_of(
    st.builds(lambda s: session_pb2.StreamRequest(start=s), start),
    st.builds(
        lambda data, final: session_pb2.StreamRequest(
            audio=session_pb2.AudioChunk(data=data, is_final=final)
        ),
        st.binary(max_size=4000) | st.sampled_from([tone(300), b"\x00" * 300_000]),
        st.booleans(),
    ),
    st.builds(
        lambda p: session_pb2.StreamRequest(playback=session_pb2.PlaybackState(playing=p)), st.booleans()
    ),
    st.just(session_pb2.StreamRequest(finalize=session_pb2.Finalize())),
    st.just(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream())),
    st.just(session_pb2.StreamRequest()),
)
# Nodes only for languages no real client asks for, so a fuzzed node never takes the good session's job.
fuzz_languages = st.sampled_from(["xx", "yy", "XX", "", "x", "qq-Latn", "y" * 200])
register = st.builds(
    node_pb2.Register,
    node_id=st.sampled_from(["fuzz-1", "fuzz-2", "", "bad id", "good", "n" * 200]),
    capabilities=st.builds(
        common_pb2.NodeCapabilities,
        asr_languages=st.lists(fuzz_languages, max_size=4),
        translation_pairs=st.lists(
            st.builds(
                common_pb2.LanguagePair, source_language=fuzz_languages, target_language=fuzz_languages
            ),
            max_size=4,
        ),
        tts_languages=st.lists(fuzz_languages, max_size=3),
        max_concurrency=st.integers(min_value=0, max_value=5000),
        agent_version=text(max_size=300),
        labels=st.dictionaries(text(max_size=20), text(max_size=300), max_size=40),
    ),
)
job_id = st.sampled_from(["", "nope", "abc:0", "x" * 500])
connect_request = st.one_of(
    st.builds(lambda r: node_pb2.ConnectRequest(register=r), register),
    st.builds(
        lambda n: node_pb2.ConnectRequest(
            heartbeat=node_pb2.Heartbeat(load=common_pb2.NodeLoad(running_jobs=n))
        ),
        st.integers(min_value=0, max_value=2**32 - 1),
    ),
    st.builds(
        lambda j, a: node_pb2.ConnectRequest(job_accepted=node_pb2.JobAccepted(job_id=j, attempt=a)),
        job_id,
        small_int,
    ),
    st.builds(
        lambda j, a, t: node_pb2.ConnectRequest(
            job_result=node_pb2.JobResult(job_id=j, attempt=a, source_text=t, translated_text=t)
        ),
        job_id,
        small_int,
        text(max_size=100),
    ),
    st.builds(
        lambda j, a: node_pb2.ConnectRequest(job_failed=node_pb2.JobFailed(job_id=j, attempt=a)),
        job_id,
        small_int,
    ),
    st.just(node_pb2.ConnectRequest(draining=node_pb2.Draining(reason="fuzz"))),
    st.just(node_pb2.ConnectRequest()),
)


async def _drive(call: grpc.aio.StreamStreamCall, messages: list[object]) -> tuple[grpc.StatusCode, str]:  # type: ignore[type-arg]
    write_failed = False

    async def write() -> None:
        nonlocal write_failed
        try:
            for message in messages:
                await call.write(message)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            write_failed = True  # the server ended the stream first

    writer = asyncio.create_task(write())
    try:
        while await asyncio.wait_for(read_message(call), 15) is not None:
            pass
        code, details = await call.code(), await call.details()
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    except TimeoutError:
        call.cancel()  # a stream the server keeps open (a node that registered): ours to end
        code, details = grpc.StatusCode.OK, ""
    await writer
    if write_failed and code is grpc.StatusCode.INTERNAL and details == "Internal error from Core":
        # The client's own write raced the server's end of the stream, and the client library reported
        # that instead of the server's status (seen on grpcio 1.85 when the server answers before reading
        # everything): not an answer of the scheduler's.
        return grpc.StatusCode.OK, details
    return code, details


async def _good_session(address: str) -> list[str]:
    async with LinguaClient(address) as client:
        session = await client.start_session("en", "es")
        await session.send_audio(tone(300), is_final=True)
        await session.end()
        return [str(m.WhichOneof("kind")) for m in [m async for m in session]]


def _fuzz_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("LINGUA_FUZZ_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@_fuzz_settings()
@given(messages=st.lists(stream_request, max_size=10))
def test_random_client_streams_get_documented_codes_and_spare_a_good_session(
    scheduler: str, messages: list[session_pb2.StreamRequest]
) -> None:
    async def example() -> tuple[tuple[grpc.StatusCode, str], list[str]]:
        async with grpc.aio.insecure_channel(scheduler) as channel:
            call = session_pb2_grpc.SessionServiceStub(channel).Stream()  # type: ignore[call-arg]
            return await asyncio.gather(_drive(call, list(messages)), _good_session(scheduler))

    (code, details), good = asyncio.run(example())
    assert code in SESSION_CODES, details
    assert good.count("result") == 1, good


@_fuzz_settings()
@given(messages=st.lists(connect_request, max_size=8))
def test_random_node_streams_get_documented_codes_and_spare_a_good_session(
    scheduler: str, messages: list[node_pb2.ConnectRequest]
) -> None:
    async def example() -> tuple[tuple[grpc.StatusCode, str], list[str]]:
        async with grpc.aio.insecure_channel(scheduler) as channel:
            call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
            return await asyncio.gather(_drive(call, list(messages)), _good_session(scheduler))

    (code, details), good = asyncio.run(example())
    assert code in NODE_CODES, details
    assert good.count("result") == 1, good

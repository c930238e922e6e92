"""Async Python client for Lingua sessions.

    async with LinguaClient("sched-a:50051,sched-b:50051", token="...", tls_ca="ca.pem") as client:
        session = await client.start_session("en", "es", sample_rate_hz=16000)
        await session.send_audio(pcm_bytes)
        await session.end()
        async for message in session:          # lingua.v1.StreamResponse: progress, result, skipped...
            if message.HasField("result"):
                print(message.result.translated_text)

`token` travels as `authorization: Bearer <token>` metadata; `tls_ca` (the CA that signed the scheduler's
certificate) turns TLS on, `tls_cert`/`tls_key` add a client certificate (mTLS). Errors arrive as
grpc.aio.AioRpcError with the scheduler's status code and message.

Flow control: sessions set `SessionOptions.wait_for_room` unless the caller's options say otherwise, so the
scheduler holds back a session's audio, and `send_audio` waits, while the session has as many utterances
outstanding as it allows (`Session.window`); none is then skipped SESSION_BACKLOG, however fast audio is sent.
Iterate over the session while sending (a task each): the answers are what make room.

Several addresses (a list, or one string with commas): a session starts on the first that accepts it, and
when its stream breaks (the connection, or the scheduler's death) it resumes on the next one, with backoff,
for up to `reconnect.within_s`: every utterance is answered once, in order, and no audio is lost (see
`Session`). `Reconnect(within_s=0)` turns that off: a broken stream then raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from lingua_grpc._grpc import read_message
from lingua_grpc.client._channel import MAX_MESSAGE_BYTES, ChannelSecurity, open_channel
from lingua_grpc.client._session import RESUMABLE, Reconnect, Session
from lingua_grpc.pb import common_pb2, session_pb2, session_pb2_grpc

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChannelSecurity",
    "LinguaClient",
    "Reconnect",
    "Session",
    "addresses_of",
    "open_channel",
]


def addresses_of(addresses: str | Sequence[str]) -> list[str]:
    """HOST:PORT addresses from a list, or from one string separated by commas."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = [a.strip() for a in items if a.strip()]
    if not out:
        raise ValueError("no scheduler address given")
    return out


class LinguaClient:
    def __init__(
        self,
        address: str | Sequence[str],
        token: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        options: Sequence[tuple[str, Any]] = (),
        reconnect: Reconnect | None = None,
    ) -> None:
        """`address`: one scheduler, or several (a list, or commas) of one fleet. `options`: more gRPC
        channel arguments (keepalive, `grpc.use_local_subchannel_pool` for a connection of its own rather than
        one shared with the process's other channels to the address). `reconnect`: how sessions resume
        (default `Reconnect()`)."""
        security = ChannelSecurity(token, tls_ca, tls_cert, tls_key)
        self.addresses = addresses_of(address)
        self._channels = [open_channel(a, security, options) for a in self.addresses]
        self._stubs = [session_pb2_grpc.SessionServiceStub(c) for c in self._channels]
        self._reconnect = reconnect or Reconnect()

    async def __aenter__(self) -> LinguaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def start_session(
        self,
        source_language: str,
        target_language: str,
        sample_rate_hz: int = 16000,
        options: session_pb2.SessionOptions | None = None,
        client_name: str = "lingua_grpc.client",
    ) -> Session:
        """Starts a session on the first address that accepts it (an address that is unreachable, or
        refuses for load, is passed over); raises the last refusal. `options.wait_for_room` is set unless
        `options` sets it (false: utterances beyond the window are skipped SESSION_BACKLOG, as for live audio
        that must not fall behind)."""
        if options is None or not options.HasField("wait_for_room"):
            chosen = session_pb2.SessionOptions(wait_for_room=True)
            if options is not None:
                chosen.MergeFrom(options)
            options = chosen
        last: grpc.aio.AioRpcError | None = None
        for index in range(len(self._stubs)):
            try:
                call, started = await self._start(
                    index, source_language, target_language, sample_rate_hz, options, client_name
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESUMABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}:
                    raise
                last = exc
                continue
            return Session(self._open_call, len(self._stubs), index, call, started, self._reconnect)
        assert last is not None
        raise last

    def _open_call(self, index: int) -> Any:
        return self._stubs[index].Stream()  # type: ignore[call-arg]

    async def _start(
        self,
        index: int,
        source_language: str,
        target_language: str,
        sample_rate_hz: int,
        options: session_pb2.SessionOptions | None,
        client_name: str,
    ) -> tuple[Any, session_pb2.SessionStarted]:
        call = self._open_call(index)
        await call.write(
            session_pb2.StreamRequest(
                start=session_pb2.SessionStart(
                    language_pair=common_pb2.LanguagePair(
                        source_language=source_language, target_language=target_language
                    ),
                    audio_format=common_pb2.AudioFormat(
                        encoding=common_pb2.AUDIO_ENCODING_PCM_S16LE,
                        sample_rate_hz=sample_rate_hz,
                        channels=1,
                    ),
                    options=options,
                    client_name=client_name,
                )
            )
        )
        first: session_pb2.StreamResponse | None = await read_message(call)
        if first is None or first.WhichOneof("kind") != "started":
            await call.code()
            raise RuntimeError("the scheduler ended the stream without starting the session")
        return call, first.started
